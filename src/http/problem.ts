import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { noteIfUndocumented } from './documented-errors.ts';
import { httpErrors, StewardError } from './errors.ts';
import { securityHeadersFor } from './security.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json; charset=utf-8';

/** One field that failed validation: where, and why. */
export interface FieldError {
  path: string;
  message: string;
}

/** `body` + `/items/0/name` → `body.items.0.name`. */
function fieldPath(root: string, instancePath: string, key?: string): string {
  return [root, ...instancePath.split('/'), key ?? ''].filter((s) => s.length > 0).join('.');
}

/** Maps Fastify's own errors to our stable codes; anything unknown becomes a 500. */
function toStewardError(error: FastifyError): StewardError {
  if (error instanceof StewardError) return error;
  if (hasZodFastifySchemaValidationErrors(error)) {
    const root = error.validationContext ?? '';
    const errors: FieldError[] = error.validation.flatMap((v) => {
      // Unknown fields are reported once per field, each with its own path.
      const unknownKeys =
        v.keyword === 'unrecognized_keys' ? (v.params as { keys?: string[] }).keys : undefined;
      if (unknownKeys && unknownKeys.length > 0) {
        return unknownKeys.map((key) => ({
          path: fieldPath(root, v.instancePath, key),
          message: 'Unknown field',
        }));
      }
      return [{ path: fieldPath(root, v.instancePath), message: v.message ?? 'Invalid value' }];
    });
    const first = errors[0];
    return httpErrors.validation_failed(first ? `${first.path}: ${first.message}` : 'Invalid request', {
      errors,
    });
  }
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return httpErrors.invalid_json('The request body is not valid JSON');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return httpErrors.payload_too_large('The request body exceeds the size limit');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return error.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE'
        ? httpErrors.unsupported_media_type('Send application/json')
        : httpErrors.validation_failed('Content-Length does not match the body');
    case 'FST_ERR_VALIDATION':
      return httpErrors.validation_failed(error.message);
    // The router's own refusals, which reach us through `frameworkErrors` (app.ts).
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return httpErrors.uri_too_long('A path parameter exceeds the length limit');
    case 'FST_ERR_BAD_URL':
      return httpErrors.bad_request('The URL is not valid (bad percent-encoding)');
  }
  // A SyntaxError with status 400 is how Fastify's JSON parser reports bad JSON.
  if (error.statusCode === 400 && error instanceof SyntaxError) return httpErrors.invalid_json();
  if (error.statusCode === 413) return httpErrors.payload_too_large();
  if (error.statusCode === 415) return httpErrors.unsupported_media_type();
  return httpErrors.internal_error('An unexpected error occurred');
}

// RFC 9110 §15.5.2: every 401 carries WWW-Authenticate, whatever refused the request: the access
// layer's token check, a login's password, a refresh token, an mfa_token, a webhook key. One rule
// here, so no domain (nor a future one) can answer a 401 without it. RFC 6750 §3: `invalid_token`
// when a bearer token was sent to a route that checks one and refused (expired, revoked, bad
// signature, unknown); no error when none was sent. A public route does not read the
// Authorization header at all, and the credential it refuses is in the body or its own headers
// (a password, a refresh token, a webhook key): the plain challenge. An API key refused in
// X-API-Key gets the plain challenge too (keys are also accepted as bearer tokens; the problem's
// `code` says what was wrong). Built only on the 401 path: it costs a success nothing.
const CHALLENGE = 'Bearer realm="steward"';
const INVALID_TOKEN = 'Bearer realm="steward", error="invalid_token"';
const BEARER_TOKEN = /^bearer\s+\S/i;

/** The WWW-Authenticate challenge of a 401 that carries none. */
function challengeFor(request: FastifyRequest): string {
  const checksTokens = request.routeOptions.config?.access !== 'public';
  return checksTokens && BEARER_TOKEN.test(request.headers.authorization ?? '') ? INVALID_TOKEN : CHALLENGE;
}

function sendProblem(request: FastifyRequest, reply: FastifyReply, problem: StewardError) {
  noteIfUndocumented(request, problem);
  reply.code(problem.status).headers(problem.headers);
  if (problem.status === 401 && problem.headers['www-authenticate'] === undefined) {
    reply.header('www-authenticate', challengeFor(request));
  }
  reply.type(PROBLEM_CONTENT_TYPE).send({
    type: `https://steward.dev/problems/${problem.code}`,
    title: problem.title,
    status: problem.status,
    detail: problem.detail,
    code: problem.code,
    request_id: request.id,
    ...problem.extra,
  });
}

/** What Fastify's `frameworkErrors` option is given: errors the router raises before any route. */
export type FrameworkErrorHandler = (
  error: FastifyError,
  request: FastifyRequest,
  reply: FastifyReply,
) => void;

/**
 * Every error leaves as RFC 9457 problem+json. 4xx say what was wrong; 5xx say
 * nothing specific and the log has the detail (never the request body, never a query's
 * parameters: see `log.ts`). Returns the handler for Fastify's `frameworkErrors` option (an
 * over-long path parameter, a malformed URL), whose replies have no route, like a 404's.
 */
export function installProblemHandlers(
  app: FastifyInstance,
  unrouted: (request: FastifyRequest, reply: FastifyReply, statusCode: number) => void,
): FrameworkErrorHandler {
  const fail = (error: FastifyError, request: FastifyRequest): StewardError => {
    const problem = toStewardError(error);
    if (problem.status >= 500) {
      request.log.error(
        { err: problem.internal ?? error, route: request.routeOptions.url, request_id: request.id },
        'request failed',
      );
    }
    return problem;
  };
  app.setErrorHandler((error: FastifyError, request, reply) => {
    sendProblem(request, reply, fail(error, request));
  });
  const allowedAt = allowedMethods(app);
  app.setNotFoundHandler((request, reply) => {
    const allow = allowedAt(request);
    const problem =
      allow === undefined
        ? httpErrors.not_found(`No route for ${request.method} at this path`)
        : httpErrors.method_not_allowed(`This path answers ${allow}`, {}, { allow });
    unrouted(request, reply, problem.status);
    sendProblem(request, reply, problem);
  });
  return (error, request, reply) => {
    const problem = fail(error, request);
    unrouted(request, reply, problem.status);
    sendProblem(request, reply, problem);
  };
}

/**
 * For a request no route matched: the methods its path answers (`GET, HEAD, POST`), or undefined
 * when the path answers none, or when the request is a HEAD or an OPTIONS, which keep their 404
 * (HEAD routes are Fastify's own, OPTIONS is CORS's). RFC 9110 §15.5.6: a known path asked with
 * another method is 405 with `Allow`. Asks the router (`findRoute` matches a concrete URL, as
 * the router does for a request) once per method any route uses; runs only on this path, never
 * on a routed request. OPTIONS counts in `Allow` but not towards existence: CORS answers it at
 * every path (`OPTIONS *`).
 */
function allowedMethods(app: FastifyInstance): (request: FastifyRequest) => string | undefined {
  // In this order in `Allow`; any other method a route uses comes after them.
  const methods = new Set<string>(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
  app.addHook('onRoute', (route) => {
    for (const method of typeof route.method === 'string' ? [route.method] : route.method)
      methods.add(method);
  });
  return (request) => {
    if (request.method === 'HEAD' || request.method === 'OPTIONS') return undefined;
    const found: string[] = [];
    for (const method of methods) {
      if (method !== request.method && app.findRoute({ method, url: request.url }) !== null)
        found.push(method);
    }
    if (found.every((method) => method === 'OPTIONS')) return undefined;
    return found.join(', ');
  };
}

/**
 * Node's HTTP parser refuses some requests before Fastify sees them (headers over the size limit,
 * a malformed request line, a request that took too long to arrive) and hands the socket to the
 * server's `clientError` listener; this one (Fastify's `clientErrorHandler` option) answers with a
 * problem document like every other error, carrying a fresh request id, and closes the
 * connection, as Node and Fastify do. Nothing is logged: these are the client's or the network's
 * faults, and a line per malformed request would let anyone fill the log.
 */
export function clientErrorResponder(newRequestId: () => string): (error: Error, socket: Socket) => void {
  return (error, socket) => {
    const code = (error as NodeJS.ErrnoException).code;
    // A reset connection is already gone; a socket whose response has begun cannot take another.
    const started = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage
      ?.headersSent;
    if (code === 'ECONNRESET' || socket.destroyed || !socket.writable || started === true) {
      socket.destroy();
      return;
    }
    const problem =
      code === 'HPE_HEADER_OVERFLOW'
        ? httpErrors.headers_too_large('The request headers exceed the size limit')
        : code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? httpErrors.request_timeout('The request did not arrive in time')
          : httpErrors.bad_request('The request is not valid HTTP');
    const requestId = newRequestId();
    const body = JSON.stringify({
      type: `https://steward.dev/problems/${problem.code}`,
      title: problem.title,
      status: problem.status,
      detail: problem.detail,
      code: problem.code,
      request_id: requestId,
    });
    let head = `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status]}\r\n`;
    for (const [name, value] of Object.entries(securityHeadersFor('/'))) head += `${name}: ${value}\r\n`;
    head += `x-request-id: ${requestId}\r\ncontent-type: ${PROBLEM_CONTENT_TYPE}\r\n`;
    head += `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n`;
    socket.end(head + body);
    socket.destroySoon();
  };
}
