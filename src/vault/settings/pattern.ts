import { RE2JS } from 're2js';
import { MAX_REGEX_LENGTH, MAX_REGEX_PROGRAM, re2Problem } from '../../flags/regex.ts';
import { fewestInstructions } from '../../flags/regex-size.ts';

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
//
// Compiling is not free either: ~2-5 µs per instruction (`[\pL\pN]{990}`: ~2 ms; a pattern refused
// for its size, `(\pL|\pN){999}x`, ~5 ms; `a{1000}` written 71 times, 150-330 ms). A JSON Schema
// of 300 patterns of the second kind held the event loop for 0.9 s, each compiled and refused in
// turn. So the patterns of one setting's rules are checked by one PatternChecker: at most
// MAX_RULE_PATTERNS different patterns, compiling to at most MAX_RULE_PROGRAM instructions
// together, and checking stops at the first refusal. A pattern whose text already shows it
// compiles to more than allowed (src/flags/regex-size.ts) is refused without being compiled.

/** Instructions × characters one write may spend matching its values against its patterns. */
export const MATCH_BUDGET = 5_000_000;
/** Different patterns one setting's rules (`rules.pattern` and the JSON Schema's) may hold. */
export const MAX_RULE_PATTERNS = 100;
/** Compiled instructions all the patterns of one setting's rules may add up to (~20-50 ms to compile). */
export const MAX_RULE_PROGRAM = 10_000;

const compiled = new Map<string, RE2JS | null>();

function remember(pattern: string, re: RE2JS | null): void {
  if (compiled.size > 1000) compiled.clear();
  compiled.set(pattern, re);
}

function compileUncached(pattern: string): RE2JS | null {
  try {
    return RE2JS.compile(pattern);
  } catch {
    return null;
  }
}

/** Compiles (and caches) an RE2 pattern; null when RE2 refuses it. */
function compile(pattern: string): RE2JS | null {
  let re = compiled.get(pattern);
  if (re === undefined) {
    re = compileUncached(pattern);
    remember(pattern, re);
  }
  return re;
}

/** Checks the patterns of one setting's rules; see MAX_RULE_PATTERNS and MAX_RULE_PROGRAM. */
export interface PatternChecker {
  /** Why a pattern cannot be saved (not RE2, too large, over the rules' limits), or undefined. */
  problem(pattern: string): string | undefined;
  /** True once a pattern was refused: the rules are refused, later patterns are not compiled. */
  readonly stopped: boolean;
}

const overTotal =
  `the rules' patterns compile to more than ${MAX_RULE_PROGRAM} instructions together: ` +
  'use fewer or smaller patterns';

export function createPatternChecker(): PatternChecker {
  const seen = new Set<string>();
  let instructions = 0;
  let stopped = false;
  const refuse = (why: string) => {
    stopped = true;
    return why;
  };
  const problem = (pattern: string): string | undefined => {
    if (seen.has(pattern)) return undefined;
    if (seen.size === MAX_RULE_PATTERNS)
      return refuse(`one setting's rules may hold at most ${MAX_RULE_PATTERNS} different patterns`);
    seen.add(pattern);
    // Longer than allowed: refused before compiling (flags' message).
    if (pattern.length > MAX_REGEX_LENGTH) return refuse(re2Problem(pattern, false) ?? 'too long');
    const fewest = fewestInstructions(pattern);
    if (fewest > MAX_REGEX_PROGRAM)
      return refuse(
        `compiles to at least ${fewest} instructions, more than ${MAX_REGEX_PROGRAM}: use a smaller pattern`,
      );
    if (instructions + fewest > MAX_RULE_PROGRAM) return refuse(overTotal);
    // Compiled once, here: a pattern accepted is cached for matching; one refused for its size is
    // not kept (a program of tens of thousands of instructions, one per request, would pile up).
    const re = compiled.get(pattern) ?? compileUncached(pattern);
    // A syntax error is found by the parser, before anything is compiled: asking flags for its
    // message (with the hint for JavaScript habits) parses the pattern again, cheaply.
    if (re === null) return refuse(re2Problem(pattern, false) ?? 'not an RE2 pattern');
    const size = re.programSize();
    // flags' wording (src/flags/regex.ts), without compiling the large program a second time.
    if (size > MAX_REGEX_PROGRAM)
      return refuse(
        `compiles to ${size} instructions, more than ${MAX_REGEX_PROGRAM}: use a smaller pattern`,
      );
    remember(pattern, re);
    instructions += size;
    if (instructions > MAX_RULE_PROGRAM) return refuse(overTotal);
    return undefined;
  };
  return {
    problem,
    get stopped() {
      return stopped;
    },
  };
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
