import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { httpErrors } from './errors.ts';

/**
 * JSON is the only body the API reads. Fastify also parses text/plain out of the box, so a text
 * body reached validation as a string (400 "expected object") where every other non-JSON type
 * gets 415 `unsupported_media_type`. Without the parser, text/plain gets the 415 too. Contexts
 * that read raw bodies bring their own parsers (keys' /v1/ingest reads every type as a Buffer);
 * this runs before the domains register, so their contexts inherit JSON only.
 *
 * The JSON parser is Fastify's own (same prototype-poisoning rules), with these additions:
 *
 * - **A string PostgreSQL cannot store is refused** (400 `unsupported_character`): U+0000 (text
 *   and jsonb refuse it) and an unpaired surrogate (not Unicode: jsonb refuses its escape, text
 *   would store U+FFFD in its place). Either can only arrive as a `\u` escape (JSON forbids a raw
 *   control character in a string, and UTF-8 decoding turns a raw lone surrogate into U+FFFD),
 *   so one regex test on the raw text clears almost every body; only a body carrying such an
 *   escape (or an escaped emoji's pair) has its parsed value walked. Measured (docs/adr/0003):
 *   ~0.02 µs on a 400-byte body, 0.6 µs on 64 KB, at most ~1 µs on 4 KB full of backslashes.
 * - **A number no double holds is refused** (400 `number_out_of_range`): JSON.parse reads `1e400`
 *   as Infinity, which JSON cannot write back: stored, it became null (metadata, settings values,
 *   flag payloads) behind a 201. Only a body with a three-digit exponent or 309 digits in a row
 *   (one regex test) has its parsed value walked; the detail names the top-level member only.
 * - **An empty body is no body** on a route whose body schema accepts none (no schema, or an
 *   optional one): fetch wrappers send `content-type: application/json` with nothing after it.
 *   A route that needs a body still answers 400 `invalid_json`.
 * - **A body declared in another charset is refused** (415 `unsupported_media_type`): JSON is
 *   UTF-8 (RFC 8259 §8.1) and the bytes are decoded as such, so `charset=iso-8859-1` with 0xE9
 *   would have been stored as U+FFFD. A type without parameters pays one length comparison;
 *   `charset=utf-8` as most clients write it, one string comparison.
 * - **A body nested deeper than 64 levels is refused** (400 `json_too_deep`): every recursive walk
 *   of a stored value (JSON.stringify on its way to jsonb, the audit trail's redaction, a JSON
 *   Schema's `enum` comparison) overflowed the stack on a value a few thousand levels deep and
 *   answered 500. No document Steward keeps needs 64 levels. Counting the openers with `indexOf`
 *   clears almost every body (fewer than 65 `{` or `[` in all); only the others are scanned.
 */
export function installJsonOnlyBodies(app: FastifyInstance): void {
  app.removeContentTypeParser('text/plain');
  const parseJson = app.getDefaultJsonParser(
    app.initialConfig.onProtoPoisoning ?? 'error',
    app.initialConfig.onConstructorPoisoning ?? 'error',
  );
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    // Fastify decoded the bytes as UTF-8 whatever the charset said; a body declared in another
    // charset was misread (0xE9 in Latin-1 became U+FFFD): refused instead of stored corrupted.
    const type = request.headers['content-type'] as string;
    if (type.length > JSON_TYPE_LENGTH && !declaresUtf8OrNothing(type)) {
      done(httpErrors.unsupported_media_type(NOT_UTF8), undefined);
      return;
    }
    const text = body as string;
    if (text.length === 0) {
      if (acceptsNoBody(request)) done(null, undefined);
      else
        done(httpErrors.invalid_json('The request body is empty; this route expects a JSON body'), undefined);
      return;
    }
    if (nestedTooDeep(text)) {
      done(httpErrors.json_too_deep(`JSON bodies may nest at most ${MAX_JSON_DEPTH} levels`), undefined);
      return;
    }
    const strings = mayHoldUnstorable(text);
    const numbers = mayHoldHugeNumber(text);
    if (!strings && !numbers) {
      void parseJson(request, text, done); // Fastify's parser is synchronous: it calls done
      return;
    }
    void parseJson(request, text, (error, value) => {
      if (error) {
        done(error, undefined);
        return;
      }
      const problem = strings ? unstorableIn(value) : undefined;
      if (problem !== undefined) {
        done(httpErrors.unsupported_character(problem), undefined);
        return;
      }
      const huge = numbers ? nonFiniteIn(value) : undefined;
      if (huge !== undefined) done(httpErrors.number_out_of_range(huge), undefined);
      else done(null, value);
    });
  });
}

/**
 * The body of a route that takes none: absent (Fastify gives null) or `{}`. Anything else is refused like an unknown
 * field elsewhere (`{"all": true}` on logout must not quietly end only this session; `{"org_id": …}` on audit
 * verify must not read as verifying another org).
 */
export const noBody = z.strictObject({}).nullish();

/** `application/json` without parameters: the length below which no charset can be declared. */
const JSON_TYPE_LENGTH = 'application/json'.length;
const NOT_UTF8 = 'JSON bodies are UTF-8: send charset=utf-8 or no charset';
/** The charset parameter's value (RFC 9110 §5.6.6: a token or a quoted string). */
const CHARSET = /;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]*))/i;

/**
 * Whether a JSON media type declares UTF-8 (`utf-8` or `utf8`, any case) or no charset at all.
 * Asked only of a media type longer than `application/json` (one with parameters, or a suffix
 * Fastify matched), and the usual one is answered by a comparison.
 */
function declaresUtf8OrNothing(type: string): boolean {
  if (type === 'application/json; charset=utf-8') return true;
  const match = CHARSET.exec(type);
  if (match === null) return true;
  const charset = (match[1] ?? match[2] ?? '').toLowerCase();
  return charset === 'utf-8' || charset === 'utf8';
}

/** How deep a request body's arrays and objects may nest. */
export const MAX_JSON_DEPTH = 64;

/**
 * Whether a JSON text nests arrays and objects deeper than `MAX_JSON_DEPTH`. A text with no more
 * openers than the limit cannot (`indexOf` counts them at memchr speed); any other is scanned once,
 * brackets inside strings skipped. Malformed JSON is the parser's to refuse.
 */
export function nestedTooDeep(text: string, limit = MAX_JSON_DEPTH): boolean {
  if (!hasMoreOpeners(text, limit)) return false;
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === QUOTE) {
      // Skip the string: to the next quote not escaped by a backslash.
      for (i++; i < text.length; i++) {
        const d = text.charCodeAt(i);
        if (d === BACKSLASH) i++;
        else if (d === QUOTE) break;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > limit) return true;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
    }
  }
  return false;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/** Whether the text holds more than `limit` of `{` and `[` together (strings included). */
function hasMoreOpeners(text: string, limit: number): boolean {
  let count = 0;
  for (const opener of ['{', '[']) {
    for (let i = text.indexOf(opener); i !== -1; i = text.indexOf(opener, i + 1)) {
      if (++count > limit) return true;
    }
  }
  return false;
}

/** A `\u0000` escape or the escape of a surrogate (`\uD800`–`\uDFFF`), in either case. */
const SUSPECT_ESCAPE = /\\u(?:0000|[dD][89a-fA-F])/;
/** A surrogate without its other half (only sought once `isWellFormed` said there is one). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Whether a JSON text may hold a number no double holds: one with an exponent of three digits or
 * more, or 309 digits in a row (a string that looks so only costs the walk below). Most bodies
 * have neither, and pay one regex test.
 */
export function mayHoldHugeNumber(text: string): boolean {
  return HUGE_NUMBER.test(text);
}
const HUGE_NUMBER = /[0-9][eE][+-]?0*[1-9][0-9]{2}|[0-9]{309}/;

/**
 * Which top-level member of a parsed JSON body holds a number that is not finite (JSON.parse read
 * `1e400` as Infinity), as `body.metadata: …`; undefined when none does. JSON has no Infinity:
 * stored, it became null (secret and key metadata, settings values, flag payloads). Only the
 * top-level member is named: below it may be a secret setting's own keys. Iterative, as
 * `unstorableIn`.
 */
export function nonFiniteIn(value: unknown, root = 'body'): string | undefined {
  const top = (key: string) => `${root}.${key}`;
  const stack: [unknown, string][] =
    value !== null && typeof value === 'object' && !Array.isArray(value)
      ? Object.entries(value).map(([key, member]) => [member, top(key)])
      : [[value, root]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [item, where] = next;
    if (typeof item === 'number') {
      if (!Number.isFinite(item)) return `${where}: holds numbers beyond ±1.8e308, which cannot be stored`;
    } else if (Array.isArray(item)) {
      for (const member of item) stack.push([member, where]);
    } else if (item !== null && typeof item === 'object') {
      for (const member of Object.values(item)) stack.push([member, where]);
    }
  }
  return undefined;
}

/**
 * Whether a JSON text may hold, once parsed, a string PostgreSQL cannot store. Both NUL and a lone
 * surrogate can only arrive as a `\u` escape (JSON forbids a raw control character in a string,
 * and UTF-8 decoding turns a raw lone surrogate into U+FFFD). Most bodies hold no backslash at all:
 * `indexOf` finds that at memchr speed (0.6 µs for 64 KB), where the regex alone takes ~15 µs.
 */
export function mayHoldUnstorable(text: string): boolean {
  return text.indexOf('\\') !== -1 && SUSPECT_ESCAPE.test(text);
}

/**
 * Where in a parsed JSON value a string (or a member name) holds what PostgreSQL's text and jsonb
 * cannot store — NUL or an unpaired surrogate — and what, as `body.tags.1: …`; undefined when
 * nothing does. Iterative: a deeply nested body costs no stack. Also used by routes that parse
 * their raw body themselves (`/v1/ingest`), and by the path and query check (`validation.ts`),
 * which names its own root.
 */
export function unstorableIn(value: unknown, root = 'body'): string | undefined {
  const stack: [unknown, string][] = [[value, root]];
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    const [item, path] = next;
    if (typeof item === 'string') {
      const found = problemIn(item, path);
      if (found !== undefined) return found;
    } else if (Array.isArray(item)) {
      for (let i = item.length - 1; i >= 0; i--) stack.push([item[i], `${path}.${i}`]);
    } else if (item !== null && typeof item === 'object') {
      const members = Object.entries(item);
      for (const [key] of members) {
        const found = problemIn(key, `${path} (a key)`);
        if (found !== undefined) return found;
      }
      for (let i = members.length - 1; i >= 0; i--) {
        const [key, member] = members[i] as [string, unknown];
        stack.push([member, `${path}.${key}`]);
      }
    }
  }
  return undefined;
}

function problemIn(text: string, path: string): string | undefined {
  if (text.includes('\0')) return `${path}: contains U+0000 (NUL), which cannot be stored`;
  if (text.isWellFormed()) return undefined;
  const lone = LONE_SURROGATE.exec(text)?.[0] ?? '';
  return `${path}: contains an unpaired surrogate (\\u${lone.charCodeAt(0).toString(16)}), which is not valid Unicode`;
}

/** Per body schema: does it accept an absent body? Asked only of empty bodies. */
const acceptsAbsent = new WeakMap<object, boolean>();

function acceptsNoBody(request: FastifyRequest): boolean {
  const schema: unknown = request.routeOptions.schema?.body;
  if (schema === undefined || schema === null) return true;
  if (typeof schema !== 'object') return false;
  let accepts = acceptsAbsent.get(schema);
  if (accepts === undefined) {
    const zod = schema as { safeParse?: (value: unknown) => { success: boolean } };
    accepts = typeof zod.safeParse === 'function' && zod.safeParse(undefined).success;
    acceptsAbsent.set(schema, accepts);
  }
  return accepts;
}
