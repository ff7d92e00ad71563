import { appendFileSync } from 'node:fs';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { type ErrorSpec, registeredErrorCodes, type StewardError } from './errors.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The error codes this route may answer beyond what the shared layer lists for it (the HTTP
     * layer's from its schemas and body, the access layer's on a route that needs a caller):
     * `['grant_exists', 'grant_escalation']`, or `permission_denied` for a route that checks a
     * permission in its service. The OpenAPI document lists them under their statuses; the test
     * suite checks that every problem a route answers is listed so (`noteIfUndocumented`).
     */
    errors?: readonly string[];
  }
}

/**
 * The HTTP layer's codes any request may get whatever its route, listed once in the document's
 * description rather than under every operation: refusals of the request line or headers, the
 * router's, and those of a server closing or overloaded. Every other code is listed by each
 * operation that answers it.
 */
export const ANY_REQUEST_CODES: ReadonlySet<string> = new Set([
  'bad_request',
  'method_not_allowed',
  'request_timeout',
  'uri_too_long',
  'headers_too_large',
  'service_unavailable',
]);

/** A code's registered status and title; throws for a code no domain defines (a typo). */
export function specOf(code: string, where: string): ErrorSpec {
  const spec = registeredErrorCodes().get(code);
  if (spec === undefined) throw new Error(`${where}: error code ${code} is not defined by any domain`);
  return spec;
}

/** Declared codes grouped by status, each list in declaration order. */
export function codesByStatus(codes: readonly string[], where: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const code of codes) {
    const status = specOf(code, where).status;
    out.set(status, [...(out.get(status) ?? []), code]);
  }
  return out;
}

/**
 * Set by the test runner (scripts/test.ts): every problem a route answers whose code the route
 * neither declares nor shares is appended to this file, and the run fails listing them. Unset in
 * production: the check then costs one environment lookup, on the error path only.
 */
export const UNDOCUMENTED_ERRORS_FILE = 'STEWARD_UNDOCUMENTED_ERRORS_FILE';

/** Each operation's listed codes by `METHOD /path/{param} status`, read once from the document. */
const listedBy = new WeakMap<object, Map<string, ReadonlySet<string>>>();

type Paths = Record<string, Record<string, { responses?: Record<string, { 'x-steward-codes'?: string[] }> }>>;

function listedCodes(server: FastifyInstance): Map<string, ReadonlySet<string>> | undefined {
  const swagger = (server as FastifyInstance & { swagger?: () => { paths?: Paths } }).swagger;
  if (swagger === undefined) return undefined;
  let listed = listedBy.get(swagger);
  if (listed === undefined) {
    listed = new Map();
    for (const [path, operations] of Object.entries(swagger.call(server).paths ?? {}))
      for (const [method, operation] of Object.entries(operations))
        for (const [status, response] of Object.entries(operation.responses ?? {}))
          listed.set(`${method.toUpperCase()} ${path} ${status}`, new Set(response['x-steward-codes'] ?? []));
    listedBy.set(swagger, listed);
  }
  return listed;
}

/**
 * Records a problem whose code the route's OpenAPI operation does not list under the status it
 * answered: the document itself is the reference, so a code the shared layer lists for some
 * routes and not others (`permission_denied` on a route that checks in its service) is caught
 * too. Routes the document hides, and requests no route matched, are not checked.
 */
export function noteIfUndocumented(request: FastifyRequest, problem: StewardError): void {
  const sink = process.env[UNDOCUMENTED_ERRORS_FILE];
  if (!sink) return;
  const url = request.routeOptions.url;
  if (request.routeOptions.config?.access === undefined || url === undefined) return;
  if (ANY_REQUEST_CODES.has(problem.code)) return;
  let listed: Map<string, ReadonlySet<string>> | undefined;
  try {
    listed = listedCodes(request.server);
  } catch (error) {
    // A test's check must never change the answer: the document's failure is recorded instead.
    appendFileSync(sink, `${request.method} ${url}: the OpenAPI document failed: ${String(error)}\n`);
    return;
  }
  if (listed === undefined) return;
  const method = request.method === 'HEAD' ? 'GET' : request.method;
  const path = openApiPath(url);
  const codes = listed.get(`${method} ${path} ${problem.status}`);
  // An operation the document does not hold at all (a hidden route) is not checked.
  if (codes === undefined && ![...listed.keys()].some((key) => key.startsWith(`${method} ${path} `))) return;
  if (codes?.has(problem.code)) return;
  appendFileSync(sink, `${request.method} ${url} ${problem.status} ${problem.code}\n`);
}

/** Fastify's `/v1/things/:id` as OpenAPI writes it: `/v1/things/{id}`. */
export const openApiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}');
