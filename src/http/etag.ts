// Conditional request headers (RFC 9110 §8.8.3, §13.1.1, §13.1.2), for every domain that serves ETags.

/** One entity tag of a header: its opaque part with the quotes (`"abc"`), and whether it is weak. */
export interface EntityTag {
  weak: boolean;
  opaque: string;
}

// entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text.
const TAG = /^(W\/)?("[\x21\x23-\x7e\x80-\xff]*")$/;

/**
 * `*`, or the entity tags of a comma-separated list (empty elements allowed, as RFC 9110 §5.6.1
 * says a recipient must accept); null when an element is not an entity tag.
 */
export function parseEntityTags(header: string): '*' | EntityTag[] | null {
  const h = header.trim();
  if (h === '*') return '*';
  const tags: EntityTag[] = [];
  // An entity tag may hold a comma: split on commas outside quotes.
  let start = 0;
  let quoted = false;
  for (let i = 0; i <= h.length; i++) {
    const c = h[i];
    if (c === '"') quoted = !quoted;
    else if ((c === ',' && !quoted) || i === h.length) {
      const element = h.slice(start, i).trim();
      start = i + 1;
      if (element === '') continue;
      const m = TAG.exec(element);
      if (m === null || m[2] === undefined) return null;
      tags.push({ weak: m[1] !== undefined, opaque: m[2] });
    }
  }
  return tags;
}

/**
 * `If-None-Match` against the current strong ETag, with the weak comparison RFC 9110 §13.1.2
 * requires: `W/"x"` matches `"x"` (a compressing proxy makes strong tags weak), any element of a
 * list may match, `*` matches any current representation. A malformed header matches nothing.
 */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header === etag) return true; // the usual case, without parsing
  const tags = parseEntityTags(header);
  if (tags === null) return false;
  return tags === '*' || tags.some((t) => t.opaque === etag);
}

/**
 * `If-Match` on a resource whose ETag is `"<version>"` (settings, flags, segments): undefined (no
 * header), `*`, the versions its strong tags name, or null when it is not `*`, a bare number or a
 * non-empty list of entity tags (the caller answers 400). The strong comparison of RFC 9110
 * §13.1.1: a weak tag never matches, and `"06"` is not version 6 (only the canonical decimal is).
 * A bare number of up to 9 digits (not RFC syntax; for curl users) is that entity tag: `3` is
 * `"3"`, `03` is `"03"`, which names no version. Tags naming no version are kept out, so a list
 * with none left matches nothing (412).
 */
export function ifMatchVersions(header: string | undefined): '*' | readonly number[] | null | undefined {
  if (header === undefined) return undefined;
  const h = header.trim();
  const tags = /^\d{1,9}$/.test(h) ? [{ weak: false, opaque: `"${h}"` }] : parseEntityTags(h);
  if (tags === null || tags === '*') return tags;
  if (tags.length === 0) return null;
  const versions: number[] = [];
  for (const t of tags) {
    const m = /^"(0|[1-9]\d{0,8})"$/.exec(t.opaque);
    if (!t.weak && m?.[1] !== undefined) versions.push(Number(m[1]));
  }
  return versions;
}
