import { RE2JS } from 're2js';

// Unleash's REGEX operator is specified as RE2 syntax, and unleash-client compiles it with re2js;
// so do we. RE2 matches in time linear in the input (no backtracking), so a pattern such as
// `(a+)+$` cannot stall the event loop, and a pattern means here what it means in the SDK.
// RE2 has no lookaround and no backreferences: such patterns do not compile, are refused when a
// flag is written, and evaluate to false if they are already stored.

/** Longest pattern a flag may store; Unleash's UI has no limit, ours keeps compilation cheap. */
export const MAX_REGEX_LENGTH = 500;
// Matching costs (compiled instructions × input length); `[\s\S]{1000}c` is ~1,000 instructions
// and ~90 ms on a 10,000-character value. Real patterns are far smaller.
export const MAX_REGEX_PROGRAM = 1_000;

/** A compiled pattern: only what evaluation needs. */
export interface Re2Pattern {
  test(input: string): boolean;
}

// The flag unleash-client passes for `caseInsensitive`; throws RE2's syntax errors.
const compile = (pattern: string, caseInsensitive: boolean): RE2JS =>
  RE2JS.compile(pattern, caseInsensitive ? RE2JS.CASE_INSENSITIVE : 0);

/** Compiles an RE2 pattern, or undefined when RE2 refuses it (the constraint never matches). */
export function compileRe2(pattern: string, caseInsensitive: boolean): Re2Pattern | undefined {
  try {
    return compile(pattern, caseInsensitive);
  } catch {
    return undefined;
  }
}

/** Why a pattern cannot be stored, or undefined when it can. */
export function re2Problem(pattern: string, caseInsensitive: boolean): string | undefined {
  if (pattern.length > MAX_REGEX_LENGTH)
    return `regular expressions are limited to ${MAX_REGEX_LENGTH} characters`;
  let compiled: RE2JS;
  try {
    compiled = compile(pattern, caseInsensitive);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return `not an RE2 pattern (${reason})${hintFor(reason)}`;
  }
  const size = compiled.programSize();
  if (size > MAX_REGEX_PROGRAM)
    return `compiles to ${size} instructions, more than ${MAX_REGEX_PROGRAM}: use a smaller pattern`;
  return undefined;
}

/** What to write instead, for the refusals people coming from JavaScript regexes meet most. */
function hintFor(reason: string): string {
  if (/`\\u/.test(reason)) return '; RE2 writes a code point as \\x{41} (or \\x{1F600}), not \\u0041';
  if (/`\\[1-9]/.test(reason)) return '; RE2 has no backreferences';
  if (/`\(\?[=!<]/.test(reason)) return '; RE2 has no lookahead or lookbehind';
  if (/`\\[Zz]/.test(reason)) return '; RE2 writes the end of the text as \\z';
  return '';
}
