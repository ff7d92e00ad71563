/** What a domain declares for each of its error codes. */
export interface ErrorSpec {
  readonly status: number;
  readonly title: string;
}

/**
 * An error a caller may see. `detail` is public; `internal` goes to the log only.
 * `extra` adds members to the problem document (e.g. `locked_until`, `errors`).
 */
export class StewardError extends Error {
  override readonly name = 'StewardError';
  constructor(
    readonly code: string,
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
    readonly internal?: unknown,
  ) {
    super(`${code}: ${detail}`);
  }
}

type Factory = (
  detail?: string,
  extra?: Record<string, unknown>,
  headers?: Record<string, string>,
) => StewardError;

/**
 * One registry of codes per domain, each with its status, checked at compile time:
 *
 *   export const keyErrors = defineErrors({ key_revoked: { status: 401, title: 'Key revoked' } });
 *   throw keyErrors.key_revoked('Revoked at 2026-01-01');
 */
export function defineErrors<const T extends Record<string, ErrorSpec>>(
  specs: T,
): { [K in keyof T]: Factory } {
  const factories = {} as { [K in keyof T]: Factory };
  for (const code of Object.keys(specs) as (keyof T & string)[]) {
    const spec = specs[code] as ErrorSpec;
    registerCode(code, spec);
    factories[code] = (detail = spec.title, extra = {}, headers = {}) =>
      new StewardError(code, spec.status, spec.title, detail, extra, headers);
  }
  return factories;
}

const registry = new Map<string, ErrorSpec>();

function registerCode(code: string, spec: ErrorSpec): void {
  const existing = registry.get(code);
  if (existing && (existing.status !== spec.status || existing.title !== spec.title)) {
    throw new Error(`Error code ${code} registered twice with different meanings`);
  }
  registry.set(code, spec);
}

/** Every code registered so far (documented in the OpenAPI description). */
export function registeredErrorCodes(): ReadonlyMap<string, ErrorSpec> {
  return registry;
}

/** Codes produced by the HTTP layer itself, whatever the domain. */
export const httpErrors = defineErrors({
  bad_request: { status: 400, title: 'Malformed request' },
  invalid_json: { status: 400, title: 'Malformed JSON body' },
  json_too_deep: { status: 400, title: 'JSON body nested too deeply' },
  unsupported_character: { status: 400, title: 'Unsupported character' },
  /** A JSON number no double holds (`1e400`): JSON.parse reads it as Infinity, stored as null. */
  number_out_of_range: { status: 400, title: 'Number out of range' },
  validation_failed: { status: 400, title: 'Request failed validation' },
  unauthenticated: { status: 401, title: 'Authentication required' },
  permission_denied: { status: 403, title: 'Permission denied' },
  not_found: { status: 404, title: 'Not found' },
  method_not_allowed: { status: 405, title: 'Method not allowed' },
  request_timeout: { status: 408, title: 'Request timeout' },
  conflict: { status: 409, title: 'Conflict' },
  payload_too_large: { status: 413, title: 'Payload too large' },
  uri_too_long: { status: 414, title: 'URI too long' },
  unsupported_media_type: { status: 415, title: 'Unsupported media type' },
  rate_limited: { status: 429, title: 'Too many requests' },
  headers_too_large: { status: 431, title: 'Request header fields too large' },
  internal_error: { status: 500, title: 'Internal server error' },
  service_unavailable: { status: 503, title: 'Service unavailable' },
});
