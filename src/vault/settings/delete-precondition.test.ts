// A DELETE without If-Match is 428 with a detail that speaks of deleting: until session 11 it
// read "Updating needs If-Match…" (the PUT's words).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { settingsOverHttp } from './test-support.ts';

describe('settings: 428 details name the write refused', () => {
  const { app, put } = settingsOverHttp();

  test('DELETE without If-Match says deleting; PUT says updating', async () => {
    const created = await put('to_delete', { value: 1, value_type: 'int' });
    assert.equal(created.statusCode, 201, created.body);
    const del = await app().req('DELETE', '/v1/settings/development/to_delete', {
      token: app().tokens.manager,
    });
    assert.equal(del.statusCode, 428, del.body);
    assert.equal(del.json().code, 'precondition_required');
    assert.equal(del.json().current_version, 1);
    assert.match(
      del.json().detail,
      /^Deleting needs If-Match with the version you read \(current version 1\)$/,
    );
    const update = await put('to_delete', { value: 2 });
    assert.equal(update.statusCode, 428, update.body);
    assert.match(update.json().detail, /^Updating needs If-Match/);
  });
});
