// Setting patterns are RE2 (linear time): a hostile pattern cannot hold the event loop. The inputs
// below would take far longer than any test timeout with a backtracking engine (each extra `a`
// doubles the work of `^(a+)+$` against a string that ends in `!`: 30 of them took ~4 s), so
// these tests finish only because matching is linear — no timing is measured.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { validate } from './json-schema.ts';
import { createPatternMatcher, MATCH_BUDGET } from './pattern.ts';
import { settingsOverHttp } from './test-support.ts';

const EVIL = '^(a+)+$';
const LONG_MISS = `${'a'.repeat(100_000)}!`;
const LONG_HIT = 'a'.repeat(100_000);

describe('setting patterns are RE2', () => {
  test('the catastrophic pattern answers at once, both ways', () => {
    const m = createPatternMatcher();
    assert.equal(m.test(EVIL, LONG_MISS), 'no_match');
    assert.equal(m.test(EVIL, LONG_HIT), 'match');
    assert.equal(m.test('(?=a)a', 'a'), 'invalid_pattern', 'lookahead is not RE2');
  });

  test('one write shares one budget across every pattern it meets', () => {
    // ~994 instructions (under the 1,000 allowed): 5,000 characters fit the budget, 10,000 do not.
    const big = String.raw`[\s\S]{990}x$`;
    assert.equal(createPatternMatcher().test(big, 'y'.repeat(4_000)), 'no_match');
    assert.equal(createPatternMatcher().test(big, 'y'.repeat(10_000)), 'over_budget');
    const schema = { type: 'array', items: { type: 'string', pattern: EVIL } };
    const many = Array.from({ length: 20 }, () => 'a'.repeat(MATCH_BUDGET / 9 / 10));
    const errors = validate(schema, many);
    assert.ok(
      errors.some((e) => /too long to check/.test(e.message)),
      JSON.stringify(errors.slice(0, 2)),
    );
  });
});

describe('settings: patterns over HTTP (pglite)', () => {
  const { app, put } = settingsOverHttp();
  const errorsOf = (res: { json(): { errors?: { path: string; message: string }[] } }) =>
    res.json().errors ?? [];

  test('a pattern RE2 cannot compile is refused when saved, with its path', async () => {
    const cases: [string, unknown, string][] = [
      ['lookahead', { pattern: '^(?=.*\\d).+$' }, 'body.rules.pattern'],
      ['backref', { pattern: '(a)\\1' }, 'body.rules.pattern'],
      ['too_big', { pattern: 'a{1001}' }, 'body.rules.pattern'],
      [
        'schema_backref',
        { json_schema: { type: 'object', properties: { x: { type: 'string', pattern: '(a)\\1' } } } },
        'body.rules.json_schema.properties.x.pattern',
      ],
      [
        'schema_lookbehind',
        { json_schema: { type: 'string', pattern: '(?<=a)b' } },
        'body.rules.json_schema.pattern',
      ],
    ];
    for (const [key, rules, path] of cases) {
      const res = await put(`re_${key}`, { value: 'a', value_type: 'string', rules });
      assert.equal(res.statusCode, 400, `${key}: ${res.body}`);
      assert.equal(res.json().code, 'validation_failed');
      assert.ok(
        errorsOf(res).some((e) => e.path === path && /RE2/.test(e.message)),
        `${key}: ${JSON.stringify(errorsOf(res))}`,
      );
    }
  });

  test('rules.pattern ^(a+)+$: a 100,000-character value is refused or accepted at once', async () => {
    const miss = await put('redos', { value: LONG_MISS, value_type: 'string', rules: { pattern: EVIL } });
    assert.equal(miss.statusCode, 400, miss.body.slice(0, 300));
    assert.deepEqual(errorsOf(miss), [
      { path: 'body.value', message: 'does not match the pattern (rule pattern)' },
    ]);
    const hit = await put('redos', { value: LONG_HIT, value_type: 'string', rules: { pattern: EVIL } });
    assert.equal(hit.statusCode, 201, hit.body.slice(0, 300));
    // The server was never held: another request answers.
    assert.equal((await app().req('GET', '/healthz')).statusCode, 200);
  });

  test('json_schema.pattern ^(a+)+$: the same, at the value path', async () => {
    const rules = {
      json_schema: { type: 'object', properties: { name: { type: 'string', pattern: EVIL } } },
    };
    const miss = await put('redos_js', { value: { name: LONG_MISS }, value_type: 'json', rules });
    assert.equal(miss.statusCode, 400, miss.body.slice(0, 300));
    assert.deepEqual(
      errorsOf(miss).map((e) => e.path),
      ['body.value.name'],
    );
    const hit = await put('redos_js', { value: { name: LONG_HIT }, value_type: 'json', rules });
    assert.equal(hit.statusCode, 201, hit.body.slice(0, 300));
  });

  test('a value too long for its pattern is refused (the budget), not matched for seconds', async () => {
    const res = await put('budget', {
      value: 'y'.repeat(10_000),
      value_type: 'string',
      rules: { pattern: String.raw`[\s\S]{990}x$` },
    });
    assert.equal(res.statusCode, 400, res.body.slice(0, 300));
    assert.deepEqual(errorsOf(res), [
      { path: 'body.value', message: 'is too long to check against the pattern (rule pattern)' },
    ]);
  });
});
