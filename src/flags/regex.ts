import { RE2JS } from 're2js';
import { fewestInstructions } from './regex-size.ts';

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

/**
 * What one write (a flag, a segment) may compile in all: compiling costs ~2-5 µs per instruction,
 * so 20,000 keep a write's checks under ~100 ms, and so every later rebuild of its snapshot.
 * Without it, a flag of 1,000 strategies × 100 REGEX constraints was a minute of compiling.
 */
export const MAX_WRITE_REGEX_PROGRAM = 20_000;

/** The instructions a write's patterns compiled to so far (`re2Problem` adds to it). */
export interface RegexBudget {
  spent: number;
}

/** A compiled pattern: only what evaluation needs. */
export interface Re2Pattern {
  test(input: string): boolean;
}

// The flag unleash-client passes for `caseInsensitive`; throws RE2's syntax errors.
const compile = (pattern: string, caseInsensitive: boolean): RE2JS =>
  RE2JS.compile(pattern, caseInsensitive ? RE2JS.CASE_INSENSITIVE : 0);

// Compiled patterns by flag and text: a snapshot is rebuilt, every pattern of its environment
// compiled again, on each change there; the patterns a change did not touch come from here.
// RE2 programs are immutable and safe to share. Cleared whole when full (a bound, not an LRU).
const compiledPatterns = new Map<string, Re2Pattern | undefined>();
const MAX_COMPILED_PATTERNS = 10_000;

/** Compiles an RE2 pattern, or undefined when RE2 refuses it (the constraint never matches). */
export function compileRe2(pattern: string, caseInsensitive: boolean): Re2Pattern | undefined {
  const key = `${caseInsensitive ? 'i' : 's'}${pattern}`;
  if (compiledPatterns.has(key)) return compiledPatterns.get(key);
  let compiled: Re2Pattern | undefined;
  try {
    compiled = compile(pattern, caseInsensitive);
  } catch {
    compiled = undefined;
  }
  if (compiledPatterns.size >= MAX_COMPILED_PATTERNS) compiledPatterns.clear();
  compiledPatterns.set(key, compiled);
  return compiled;
}

/**
 * Why a pattern cannot be stored, or undefined when it can. A pattern whose text alone shows it
 * too large (`fewestInstructions`, a lower bound) is refused uncompiled: one such pattern cost
 * 150-330 ms to compile before being refused. With a `budget`, the write's patterns together may
 * compile to `MAX_WRITE_REGEX_PROGRAM`; past it, the rest are refused uncompiled too.
 */
export function re2Problem(
  pattern: string,
  caseInsensitive: boolean,
  budget: RegexBudget = { spent: 0 },
): string | undefined {
  if (pattern.length > MAX_REGEX_LENGTH)
    return `regular expressions are limited to ${MAX_REGEX_LENGTH} characters`;
  const least = fewestInstructions(pattern);
  if (least > MAX_REGEX_PROGRAM)
    return `compiles to at least ${least} instructions, more than ${MAX_REGEX_PROGRAM}: use a smaller pattern`;
  if (budget.spent + least > MAX_WRITE_REGEX_PROGRAM) return overBudget;
  let compiled: RE2JS;
  try {
    compiled = compile(pattern, caseInsensitive);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return `not an RE2 pattern (${reason})${hintFor(reason)}`;
  }
  const size = compiled.programSize();
  budget.spent += size;
  if (size > MAX_REGEX_PROGRAM)
    return `compiles to ${size} instructions, more than ${MAX_REGEX_PROGRAM}: use a smaller pattern`;
  if (budget.spent > MAX_WRITE_REGEX_PROGRAM) return overBudget;
  return undefined;
}

const overBudget =
  `the regular expressions of one flag or segment may compile to ${MAX_WRITE_REGEX_PROGRAM} ` +
  'instructions in all; this one goes past it: use fewer or smaller patterns';

/** What to write instead, for the refusals people coming from JavaScript regexes meet most. */
function hintFor(reason: string): string {
  if (/`\\u/.test(reason)) return '; RE2 writes a code point as \\x{41} (or \\x{1F600}), not \\u0041';
  if (/`\\[1-9]/.test(reason)) return '; RE2 has no backreferences';
  if (/`\(\?[=!<]/.test(reason)) return '; RE2 has no lookahead or lookbehind';
  if (/`\\[Zz]/.test(reason)) return '; RE2 writes the end of the text as \\z';
  return '';
}
