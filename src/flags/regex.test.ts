// Why a pattern is refused, in words a JavaScript-regex user can act on (flags' REGEX constraints
// and settings' patterns share this check).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RE2JS } from 're2js';
import { compileRe2, MAX_WRITE_REGEX_PROGRAM, re2Problem } from './regex.ts';
import type { Feature } from './types.ts';
import { flagIssues } from './validate.ts';

test('RE2 refusals name what to write instead for the usual JavaScript habits', () => {
  const cases: [pattern: string, hint: RegExp | null][] = [
    ['^[\\u0041-\\u005A]+$', /writes a code point as \\x\{41\}/],
    ['(a)\\1', /no backreferences/],
    ['a(?=b)', /no lookahead or lookbehind/],
    ['a(?<!b)', /no lookahead or lookbehind/],
    ['abc\\Z', /end of the text as \\z/],
    ['a++', null],
  ];
  for (const [pattern, hint] of cases) {
    const problem = re2Problem(pattern, false) ?? '';
    assert.ok(problem.startsWith('not an RE2 pattern ('), `${pattern}: ${problem}`);
    if (hint) assert.match(problem, hint, pattern);
    // A hint is given only where it is true: a nested repetition is not a lookaround.
    else assert.doesNotMatch(problem, /lookahead|backreference|code point/, pattern);
  }
  assert.equal(re2Problem('^[\\x{41}-\\x{5A}]+$', false), undefined, 'the RE2 spelling compiles');
  assert.equal(re2Problem('^[a-z0-9-]+$', false), undefined);
});

// Counts RE2 compilations: what the limits below bound is work, not time.
function countingCompiles<T>(run: () => T): { result: T; compiles: number } {
  const original = RE2JS.compile;
  let compiles = 0;
  RE2JS.compile = (...args: Parameters<typeof original>) => {
    compiles++;
    return original(...args);
  };
  try {
    return { result: run(), compiles };
  } finally {
    RE2JS.compile = original;
  }
}

test('a pattern whose text shows it too large is refused without compiling it', () => {
  // 71 × `a{1000}`: 71,003 instructions, 150-330 ms to compile before this check.
  const huge = 'a{1000}'.repeat(71);
  const { result, compiles } = countingCompiles(() => re2Problem(huge, false));
  assert.match(result ?? '', /compiles to at least 71000 instructions, more than 1000/);
  assert.equal(compiles, 0);
  // One just under the limit still compiles, and is measured as before.
  assert.equal(re2Problem('a{990}', false), undefined);
});

test("one flag's patterns together may compile to 20,000 instructions; the rest are refused uncompiled", () => {
  // 1,000 strategies with a ~900-instruction pattern each: ~900,000 instructions, a minute of compiling.
  const strategies = Array.from({ length: 1000 }, (_, i) => ({
    name: 'default',
    parameters: {},
    constraints: [{ contextName: 'userId', operator: 'REGEX' as const, value: `u${i}[a-z]{900}` }],
  }));
  const feature = { name: 'many-patterns', enabled: true, strategies } as unknown as Feature;
  const { result, compiles } = countingCompiles(() => flagIssues(feature));
  assert.ok(compiles <= MAX_WRITE_REGEX_PROGRAM / 900 + 1, `${compiles} compilations`);
  assert.ok(result.length > 0);
  assert.match(result[0]?.message ?? '', /may compile to 20000 instructions in all/);
  assert.match(result[0]?.path ?? '', /^body\.strategies\[\d+\]\.constraints\[0\]\.value$/);
  // Within the budget, nothing is refused.
  const few = { ...feature, strategies: strategies.slice(0, 20) } as unknown as Feature;
  assert.deepEqual(flagIssues(few), []);
});

test('a compiled pattern is kept: rebuilding a snapshot does not compile unchanged patterns again', () => {
  const stamp = Date.now();
  const pattern = `^kept-${stamp}-[a-z]+$`;
  const first = countingCompiles(() => compileRe2(pattern, true));
  const again = countingCompiles(() => compileRe2(pattern, true));
  assert.equal(first.compiles, 1);
  assert.equal(again.compiles, 0);
  assert.equal(again.result, first.result);
  assert.equal(first.result?.test(`KEPT-${stamp}-ABC`), true);
  // The same text without caseInsensitive is another program.
  assert.equal(countingCompiles(() => compileRe2(pattern, false)).compiles, 1);
});
