import { appendFileSync } from 'node:fs';
import type { FastifyRequest } from 'fastify';
import { type ErrorSpec, httpErrors, registeredErrorCodes, type StewardError } from './errors.ts';
import { paginationErrors } from './pagination.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * The error codes this route may answer beyond the shared layer's (the HTTP layer's own codes,
     * and the access layer's on a route that needs a caller): `['grant_exists', 'grant_escalation']`.
     * The OpenAPI document lists them under their statuses; the test suite checks that every
     * problem a route answers is one it declares (`noteIfUndocumented`).
     */
    errors?: readonly string[];
  }
}

/**
 * The HTTP layer's own codes: any route may answer them (documented once per status), and
 * `invalid_cursor`, which the document lists for every route taking a `cursor`.
 */
const SHARED_CODES: ReadonlySet<string> = new Set([
  ...Object.keys(httpErrors),
  ...Object.keys(paginationErrors),
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

/**
 * Records a problem the route's OpenAPI operation does not document. `accessCodes` are the access
 * layer's (its authenticators' and authorizer's), shared by every route that needs a caller.
 */
export function noteIfUndocumented(
  request: FastifyRequest,
  problem: StewardError,
  accessCodes: () => ReadonlySet<string>,
): void {
  const sink = process.env[UNDOCUMENTED_ERRORS_FILE];
  if (!sink) return;
  const config = request.routeOptions.config;
  // No route matched (a 404 or 405 of the router): the shared layer's own answer.
  if (config?.access === undefined || request.routeOptions.url === undefined) return;
  if (SHARED_CODES.has(problem.code)) return;
  if (config.access !== 'public' && accessCodes().has(problem.code)) return;
  if (config.errors?.includes(problem.code)) return;
  appendFileSync(sink, `${request.method} ${request.routeOptions.url} ${problem.status} ${problem.code}\n`);
}
