import { RE2JS } from 're2js';
import { re2Problem } from '../../flags/regex.ts';

// Setting patterns (`rules.pattern`, JSON Schema `pattern`) are RE2, compiled with re2js as flags'
// REGEX constraints are (src/flags/regex.ts: same engine, same limits, same refusals). JavaScript's
// RegExp backtracks: `^(a+)+$` against 30 a's and a `!` held the event loop — every org's
// requests — for ~4 s, doubling per character. RE2 never backtracks: lookaround and
// backreferences do not compile and are refused when a rule is saved.
//
// Linear is not free: re2js simulates the program over the input, ~16 ns per instruction and
// character on this machine in the worst case (`[\s\S]{1000}x$`, 1,004 instructions, 100,000
// characters: 1.6 s). One write may therefore spend at most MATCH_BUDGET instructions × characters
// on its patterns (~80 ms at worst): a 20-instruction pattern checks values of up to 250,000
// characters, the largest pattern allowed (1,000 instructions) values of up to 5,000.

/** Instructions × characters one write may spend matching its values against its patterns. */
export const MATCH_BUDGET = 5_000_000;

const compiled = new Map<string, RE2JS | null>();

/** Compiles (and caches) an RE2 pattern; null when RE2 refuses it. */
function compile(pattern: string): RE2JS | null {
  let re = compiled.get(pattern);
  if (re === undefined) {
    try {
      re = RE2JS.compile(pattern);
    } catch {
      re = null;
    }
    if (compiled.size > 1000) compiled.clear();
    compiled.set(pattern, re);
  }
  return re;
}

/** Why a pattern cannot be saved in a rule (not RE2, too long, too large), or undefined. */
export function patternProblem(pattern: string): string | undefined {
  return re2Problem(pattern, false);
}

/** What testing a value against a pattern gave. */
export type PatternResult = 'match' | 'no_match' | 'invalid_pattern' | 'over_budget';

/** The patterns of one write, sharing its budget (several values may meet several patterns). */
export interface PatternMatcher {
  test(pattern: string, value: string): PatternResult;
}

export function createPatternMatcher(budget = MATCH_BUDGET): PatternMatcher {
  let left = budget;
  return {
    test(pattern, value) {
      const re = compile(pattern);
      // Saved before patterns were RE2 (a JavaScript-only pattern): refused until the rule is replaced.
      if (re === null) return 'invalid_pattern';
      left -= re.programSize() * (value.length + 1);
      if (left < 0) return 'over_budget';
      return re.test(value) ? 'match' : 'no_match';
    },
  };
}
