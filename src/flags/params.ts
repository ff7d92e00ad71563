// What the flags routes read from the URL and the headers, before anything reaches SQL.
import { z } from 'zod';
import { httpErrors } from '../http/errors.ts';
import { ifMatchVersions } from '../http/etag.ts';

// NUL and lone surrogates, which PostgreSQL text cannot hold, are refused for every route's path,
// query and cursor by src/http (`validation.ts`, `decodeCursor`): 400 before any query.
export const envParam = z.string().min(1).max(40);
/**
 * A flag name in a path. Not the write rule (`flagName` in routes.ts): a flag stored before that
 * rule must stay reachable; only what no stored name can hold is refused.
 */
export const flagNameParam = z.string().min(1).max(100);
export const envParams = z.object({ env: envParam });
export const flagParams = z.object({ env: envParam, name: flagNameParam });

/** The list's cursor: the last name of the previous page (`invalid_cursor` otherwise). */
export const flagCursor = z.object({ name: flagNameParam });

/**
 * The versions an `If-Match` accepts (any of them matches; an empty list matches nothing: 412);
 * undefined for no header or `*`. The header is read by `ifMatchVersions` (src/http/etag.ts), as
 * settings read it, so one header gets one answer on both; what it cannot read is 400.
 */
export function ifMatchOf(header: string | undefined): readonly number[] | undefined {
  const versions = ifMatchVersions(header);
  if (versions === null) {
    throw httpErrors.validation_failed('If-Match must be ETags ("3", a list "2", "3") or *', {
      errors: [{ path: 'headers.if-match', message: 'not "*" or a list of entity tags' }],
    });
  }
  return versions === '*' ? undefined : versions;
}
