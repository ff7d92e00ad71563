import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { requestIdGenerator } from './request-id.ts';

describe('request ids', () => {
  test('a plain caller id is kept; anything else gets a fresh one', () => {
    const next = requestIdGenerator();
    assert.equal(next('abc-123'), 'abc-123');
    assert.equal(next('trace:01J9.x_y'), 'trace:01J9.x_y');
    for (const hostile of ['a b', '<script>', '', 'x'.repeat(129), ['one', 'two'], undefined]) {
      assert.match(next(hostile), /^[0-9a-v]{13}-[0-9a-z]+$/, String(hostile));
    }
  });

  test('unique within an instance, and instances differ', () => {
    const first = requestIdGenerator();
    const seen = new Set<string>();
    for (let i = 0; i < 100_000; i++) seen.add(first(undefined));
    assert.equal(seen.size, 100_000);
    const prefixes = new Set<string>();
    for (let i = 0; i < 50; i++) prefixes.add(requestIdGenerator()(undefined).split('-')[0] as string);
    assert.equal(prefixes.size, 50, '64 random bits per instance');
  });
});
