// Why a pattern is refused, in words a JavaScript-regex user can act on (flags' REGEX constraints
// and settings' patterns share this check).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { re2Problem } from './regex.ts';

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
