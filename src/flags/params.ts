// What the flags routes read from the URL and the headers, before anything reaches SQL.
import { z } from 'zod';
import { httpErrors } from '../http/errors.ts';
import { parseEntityTags } from '../http/etag.ts';

/**
 * PostgreSQL text holds neither U+0000 nor a lone surrogate: sent as a query parameter, either is
 * a database error (a 500). Refused here as any other invalid parameter (400 `validation_failed`).
 */
const storable = (s: string) => !s.includes('\u0000') && s.isWellFormed();
const STORABLE = 'no NUL (U+0000) or lone surrogate';

export const envParam = z.string().min(1).max(40).refine(storable, STORABLE);
/**
 * A flag name in a path. Not the write rule (`flagName` in routes.ts): a flag stored before that
 * rule must stay reachable; only what no stored name can hold is refused.
 */
export const flagNameParam = z.string().min(1).max(100).refine(storable, STORABLE);
export const envParams = z.object({ env: envParam });
export const flagParams = z.object({ env: envParam, name: flagNameParam });

/** The list's cursor: the last name of the previous page (`invalid_cursor` otherwise). */
export const flagCursor = z.object({ name: flagNameParam });

/**
 * The versions an `If-Match` accepts (any of them matches; an empty list matches nothing: 412);
 * undefined for no header or `*`. Read exactly as settings read it (`parseIfMatch` in
 * src/vault/settings/service.ts), so one header gets one answer on both: a bare number of up to 9
 * digits is that entity tag (`3` is `"3"`; `03` is `"03"`, which names no version: 412); a strong
 * tag names a version only in its canonical form; a weak tag never matches; anything that is not
 * `*`, a bare number or a non-empty list of entity tags is 400.
 */
export function ifMatchVersions(header: string | undefined): readonly number[] | undefined {
  if (header === undefined) return undefined;
  const h = header.trim();
  const tags = /^\d{1,9}$/.test(h) ? [{ weak: false, opaque: `"${h}"` }] : parseEntityTags(h);
  if (tags === '*') return undefined;
  if (tags === null || tags.length === 0) {
    throw httpErrors.validation_failed('If-Match must be ETags ("3", a list "2", "3") or *', {
      errors: [{ path: 'headers.if-match', message: 'not "*" or a list of entity tags' }],
    });
  }
  const versions: number[] = [];
  for (const t of tags) {
    const m = /^"(0|[1-9]\d{0,8})"$/.exec(t.opaque);
    if (!t.weak && m?.[1] !== undefined) versions.push(Number(m[1]));
  }
  return versions;
}
