// Saving and checking a setting's rules is bounded work, whatever the schema and the value. A
// schema of 300 patterns RE2 refuses (each compiled in turn, ~3 ms apiece) held the event loop for
// 0.9 s, an `items.enum` of 20,000 options against 20,000 items (compared pairwise) for 3.8 s. No
// time is measured here: the work is counted (compilations, units of the validation budget).
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { RE2JS } from 're2js';
import {
  checkSchema,
  equalsOneOf,
  MAX_SCHEMA_ENUM,
  MAX_SCHEMA_ERRORS,
  MAX_SCHEMA_SIZE,
  validate,
} from './json-schema.ts';
import { MAX_RULE_PATTERNS, MAX_RULE_PROGRAM } from './pattern.ts';
import { settingsOverHttp } from './test-support.ts';

/**
 * A pattern RE2 refuses for its size (1,200-2,100 instructions) once it has compiled it: its text
 * alone does not show it (src/flags/regex-size.ts counts the alternation as its largest branch). Different
 * for each `i`.
 */
const tooLarge = (i: number) => String.raw`(\pL|\pN){${400 + (i % 300)}}x${i}`;
const propertiesWith = (pattern: (i: number) => string, n: number) => ({
  type: 'object',
  properties: Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { pattern: pattern(i) }])),
});

// Counts RE2 compilations (flags/regex.ts and pattern.ts both compile through RE2JS.compile).
let compiles = 0;
const compile = RE2JS.compile;
beforeEach(() => {
  compiles = 0;
  RE2JS.compile = (...args: Parameters<typeof compile>) => {
    compiles++;
    return compile.apply(RE2JS, args);
  };
});
afterEach(() => {
  RE2JS.compile = compile;
});

describe('saving a schema: bounded', () => {
  test('300 patterns RE2 refuses: the first is reported, the others are not compiled', () => {
    const errors = checkSchema(propertiesWith(tooLarge, 300));
    assert.equal(errors.length, 1, JSON.stringify(errors.slice(0, 3)));
    assert.equal(errors[0]?.path, '/properties/p0/pattern');
    assert.match(errors[0]?.message ?? '', /compiles to \d+ instructions, more than 1000/);
    assert.equal(compiles, 1, 'compiled once, not re-compiled for the message');
  });

  test('a pattern whose text shows it is too large is refused without being compiled', () => {
    // 71,003 instructions: 150-330 ms to compile, before being refused.
    const errors = checkSchema({ pattern: 'a{1000}'.repeat(71) });
    assert.deepEqual(errors, [
      {
        path: '/pattern',
        message: 'compiles to at least 71000 instructions, more than 1000: use a smaller pattern',
      },
    ]);
    assert.equal(compiles, 0);
  });

  test('a syntax error is the first refusal too (its message from flags, with the RE2 hint)', () => {
    const errors = checkSchema(propertiesWith((i) => (i === 3 ? '(?=a)a' : `^a${i}$`), 50));
    assert.deepEqual(
      errors.map((e) => e.path),
      ['/properties/p3/pattern'],
    );
    assert.match(errors[0]?.message ?? '', /RE2 has no lookahead/);
    assert.ok(compiles <= 5, `${compiles} compilations`);
  });

  test(`at most ${MAX_RULE_PATTERNS} different patterns; one repeated counts once`, () => {
    assert.deepEqual(checkSchema(propertiesWith(() => '^[a-z]+$', 1_000)), []);
    assert.equal(compiles <= 1, true, 'the same pattern is compiled once');
    compiles = 0;
    assert.deepEqual(checkSchema(propertiesWith((i) => `^a{${i}}$`, MAX_RULE_PATTERNS)), []);
    compiles = 0;
    const errors = checkSchema(propertiesWith((i) => `^b{${i}}$`, 1_000));
    assert.equal(errors.length, 1);
    assert.equal(errors[0]?.path, `/properties/p${MAX_RULE_PATTERNS}/pattern`);
    assert.match(errors[0]?.message ?? '', /at most 100 different patterns/);
    assert.ok(compiles <= MAX_RULE_PATTERNS, `${compiles} compilations`);
  });

  test(`the patterns of one rule set compile to at most ${MAX_RULE_PROGRAM} instructions together`, () => {
    // ~900 instructions each, each accepted alone: the twelfth passes the total.
    const errors = checkSchema(propertiesWith((i) => `[a-z]{${890 + i}}`, 50));
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.equal(errors[0]?.path, '/properties/p11/pattern');
    assert.match(errors[0]?.message ?? '', /more than 10000 instructions together/);
    assert.ok(compiles <= 12, `${compiles} compilations`);
  });

  test(`a schema of more than ${MAX_SCHEMA_SIZE} JSON values is refused before anything is compiled`, () => {
    const errors = checkSchema(propertiesWith((i) => `^c${i}$`, MAX_SCHEMA_SIZE / 2));
    assert.deepEqual(errors, [{ path: '', message: 'a schema may hold at most 10000 JSON values' }]);
    assert.equal(compiles, 0);
    assert.deepEqual(checkSchema({ enum: Array.from({ length: MAX_SCHEMA_SIZE }, (_, i) => i) }), [
      { path: '', message: 'a schema may hold at most 10000 JSON values' },
    ]);
    // Wider than a spread of arguments may be (a RangeError), counted without one.
    assert.equal(checkSchema({ enum: Array(500_000).fill(0) }).length, 1);
    const nested = Array.from({ length: 5_000 }, () => Array(5_000).fill(0));
    assert.equal(checkSchema({ const: nested }).length, 1);
  });

  test(`an enum lists at most ${MAX_SCHEMA_ENUM} options; other errors stop at ${MAX_SCHEMA_ERRORS}`, () => {
    const options = (n: number) => Array.from({ length: n }, (_, i) => i);
    assert.deepEqual(checkSchema({ items: { enum: options(MAX_SCHEMA_ENUM) } }), []);
    assert.deepEqual(checkSchema({ items: { enum: options(MAX_SCHEMA_ENUM + 1) } }), [
      { path: '/items/enum', message: 'enum may list at most 1000 values' },
    ]);
    const unknown = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`kw${i}`, 1]));
    assert.equal(checkSchema(unknown).length, MAX_SCHEMA_ERRORS);
  });
});

describe('checking a value: bounded and linear', () => {
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);

  test('enum membership is one lookup per item: 20,000 items against 1,000 options fit 45,000 units', () => {
    const schema = { type: 'array', items: { enum: range(MAX_SCHEMA_ENUM) } };
    const value = Array.from({ length: 20_000 }, (_, i) => i % MAX_SCHEMA_ENUM);
    // Compared pairwise this is 10 million comparisons; a lookup each is ~2 units per item.
    assert.deepEqual(validate(schema, value, undefined, 45_000), []);
    const over = validate(schema, value, undefined, 20_000);
    assert.equal(over.length, 1);
    assert.deepEqual(over[0]?.message, 'too large to check against the schema');
  });

  test('JSON equality: key order does not matter, 1 and 1.0 are one number, types are not mixed', () => {
    const options = [{ a: 1, b: [1, { c: null }] }, 'x', 0, false];
    assert.equal(equalsOneOf(options, { b: [1.0, { c: null }], a: 1 }), true);
    assert.equal(equalsOneOf(options, -0), true);
    assert.equal(equalsOneOf(options, '0'), false);
    assert.equal(equalsOneOf(options, 0.5), false);
    assert.equal(equalsOneOf(options, null), false);
    assert.equal(equalsOneOf(options, { a: 1, b: [1, { c: null }], d: 1 }), false);
    assert.equal(equalsOneOf(options, { a: 1, 'b"': 1 }), false);
    assert.equal(equalsOneOf([range(100)], range(100), 50), 'over_budget');
    // A value longer than every option equals none of them: answered without writing it all out.
    assert.equal(equalsOneOf([1, 'ab'], range(1_000_000), 10), false);
    assert.equal(equalsOneOf([1, 'ab'], 'x'.repeat(1_000_000), 10), false);
    assert.deepEqual(validate({ const: { a: [1, 2] } }, { a: [1, 2] }), []);
    assert.equal(validate({ const: { a: [1, 2] } }, { a: [2, 1] }).length, 1);
  });

  test('failures stop at 100 errors; a long `required` on many objects stops at the budget', () => {
    const schema = { type: 'array', items: { enum: range(10) } };
    assert.equal(validate(schema, Array(20_000).fill(-1)).length, MAX_SCHEMA_ERRORS);
    const required = { type: 'array', items: { type: 'object', required: range(1_000).map(String) } };
    const objects = Array.from({ length: 3_000 }, () => Object.fromEntries(range(1_000).map((i) => [i, 1])));
    const errors = validate(required, objects);
    assert.equal(errors.length, 1, JSON.stringify(errors.slice(0, 2)));
    assert.equal(errors[0]?.message, 'too large to check against the schema');
  });
});

describe('settings: bounded rules over HTTP (pglite)', () => {
  const { put } = settingsOverHttp();

  test('300 refused patterns: one 400 naming the first, no other compiled', async () => {
    const res = await put('many_patterns', {
      value: {},
      value_type: 'json',
      rules: { json_schema: propertiesWith(tooLarge, 300) },
    });
    assert.equal(res.statusCode, 400, res.body.slice(0, 300));
    assert.equal(res.json().code, 'validation_failed');
    assert.deepEqual(
      res.json().errors.map((e: { path: string }) => e.path),
      ['body.rules.json_schema.properties.p0.pattern'],
    );
    assert.equal(compiles, 1);
  });

  test('rules.pattern and the schema share one checker: a refused rules.pattern stops the schema', async () => {
    const res = await put('shared_checker', {
      value: 'a',
      value_type: 'string',
      rules: { pattern: tooLarge(0), json_schema: propertiesWith(tooLarge, 50) },
    });
    assert.equal(res.statusCode, 400, res.body.slice(0, 300));
    assert.deepEqual(
      res.json().errors.map((e: { path: string }) => e.path),
      ['body.rules.pattern'],
    );
    assert.equal(compiles, 1);
  });

  test('an enum of 10,000 options is refused when saved; 1,000 against 20,000 items is answered', async () => {
    const big = await put('big_enum', {
      value: [-1],
      value_type: 'json',
      rules: { json_schema: { type: 'array', items: { enum: range(10_000) } } },
    });
    assert.equal(big.statusCode, 400);
    assert.deepEqual(big.json().errors, [
      { path: 'body.rules.json_schema', message: 'a schema may hold at most 10000 JSON values' },
    ]);
    const rules = { json_schema: { type: 'array', items: { enum: range(1_000) } } };
    const miss = await put('enum_miss', { value: Array(20_000).fill(-1), value_type: 'json', rules });
    assert.equal(miss.statusCode, 400);
    assert.equal(miss.json().errors.length, MAX_SCHEMA_ERRORS);
    const hit = await put('enum_hit', { value: Array(20_000).fill(999), value_type: 'json', rules });
    assert.equal(hit.statusCode, 201, hit.body.slice(0, 300));
  });

  function range(n: number) {
    return Array.from({ length: n }, (_, i) => i);
  }
});
