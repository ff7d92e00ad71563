// A number JSON can write but no double holds (1e400 parses as Infinity) is refused in a json
// value, at any depth, as float refuses it: until session 11 a json setting took it and stored
// null in its place (JSON has no Infinity), answering 201 for a value it did not keep.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkRules, checkValue } from './rules.ts';
import { settingsOverHttp } from './test-support.ts';

// What arrives other than through a JSON body (a held change's payload, a rollback) is checked
// by the settings rules themselves.
test('the rules refuse an Infinity at any depth of a json value, an enum option or a schema', () => {
  assert.throws(() => checkValue('json', {}, { a: [1, { b: Number.POSITIVE_INFINITY }] }), /finite/);
  assert.throws(() => checkValue('json', {}, Number.NEGATIVE_INFINITY, true), /finite/);
  assert.doesNotThrow(() => checkValue('json', {}, { big: 1.7e308 }));
  assert.throws(() => checkRules('json', { enum: [1, Number.POSITIVE_INFINITY] }));
  assert.throws(() =>
    checkRules('json', { json_schema: { type: 'number', maximum: Number.POSITIVE_INFINITY } }),
  );
});

describe('settings: json values hold finite numbers only', () => {
  const { app } = settingsOverHttp();

  /** A PUT whose body is sent as written (1e400 cannot be written from a JS object). */
  const putRaw = (key: string, body: string) =>
    app().req('PUT', `/v1/settings/development/${key}`, {
      token: app().tokens.developer,
      body,
      headers: { 'content-type': 'application/json' },
    });

  test('1e400 in a json value, top level or nested, secret or encrypted: 400 at body.value', async () => {
    const cases: [string, string][] = [
      ['top', '{"value_type":"json","value":1e400}'],
      ['negative', '{"value_type":"json","value":-1e400}'],
      ['nested', '{"value_type":"json","value":{"a":[1,{"b":1e400}]}}'],
      ['encrypted', '{"value_type":"json","encrypted":true,"value":{"limit":1e400}}'],
      ['secret', '{"value_type":"json","is_secret":true,"value":[1e400]}'],
    ];
    for (const [key, body] of cases) {
      const res = await putRaw(`nonfinite_${key}`, body);
      assert.equal(res.statusCode, 400, `${key}: ${res.body}`);
      // Refused by the JSON body parser for every route (src/http/body.ts), naming the top-level
      // member only: below it are the value's own keys, a secret setting's included.
      assert.equal(res.json().code, 'number_out_of_range', key);
      assert.match(res.json().detail, /^body\.value: /, key);
      assert.ok(!/\b(a|b|limit)\b/.test(res.json().detail), `${key}: no key of the value named`);
      const read = await app().req('GET', `/v1/settings/development/nonfinite_${key}`, {
        token: app().tokens.viewer,
      });
      assert.equal(read.statusCode, 404, `${key}: nothing stored`);
    }
  });

  test('an update to 1e400 is refused and the stored value stays', async () => {
    const created = await putRaw('nonfinite_update', '{"value_type":"json","value":{"n":1}}');
    assert.equal(created.statusCode, 201, created.body);
    const res = await app().req('PUT', '/v1/settings/development/nonfinite_update', {
      token: app().tokens.developer,
      body: '{"value":{"n":1e400}}',
      headers: { 'content-type': 'application/json', 'if-match': '"1"' },
    });
    assert.equal(res.statusCode, 400, res.body);
    assert.equal(res.json().code, 'number_out_of_range');
    const read = await app().req('GET', '/v1/settings/development/nonfinite_update', {
      token: app().tokens.viewer,
    });
    assert.deepEqual(read.json().value, { n: 1 });
  });

  test('in rules too: a json enum option or a JSON Schema number of 1e400 is refused where it is', async () => {
    const option = await putRaw(
      'nonfinite_enum',
      '{"value_type":"json","value":1,"rules":{"enum":[1,1e400]}}',
    );
    assert.equal(option.statusCode, 400, option.body);
    assert.match(option.json().detail, /^body\.rules: /);
    const schema = await putRaw(
      'nonfinite_schema',
      '{"value_type":"json","value":1,"rules":{"json_schema":{"type":"number","maximum":1e400}}}',
    );
    assert.equal(schema.statusCode, 400, schema.body);
    assert.match(schema.json().detail, /^body\.rules: /);
  });

  test('large finite numbers are fine', async () => {
    const res = await putRaw('finite_large', '{"value_type":"json","value":{"big":1.7e308,"small":-5e-324}}');
    assert.equal(res.statusCode, 201, res.body);
    const read = await app().req('GET', '/v1/settings/development/finite_large', {
      token: app().tokens.viewer,
    });
    assert.deepEqual(read.json().value, { big: 1.7e308, small: -5e-324 });
  });
});
