import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type VaultTestApp, vaultTestApp } from './test-support.ts';

const VALUE = 'prod-db-password-four-eyes-only';

describe('four-eyes changes for production (pglite)', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v?.close());

  test('policy: off by default; org:update to change; audited', async () => {
    const get = await v.req('GET', '/v1/vault/policy', { token: v.tokens.viewer });
    assert.deepEqual(get.json(), { four_eyes: false, environments: ['production'] });
    const dev = await v.req('PUT', '/v1/vault/policy', {
      token: v.tokens.developer,
      body: { four_eyes: true },
    });
    assert.equal(dev.statusCode, 403);
    const on = await v.req('PUT', '/v1/vault/policy', { token: v.tokens.admin, body: { four_eyes: true } });
    assert.equal(on.statusCode, 200, on.body);
    assert.equal(on.json().four_eyes, true);
  });

  test('a production secret is held, the requester cannot approve, another manager applies it', async () => {
    const held = await v.req('POST', '/v1/secrets', {
      token: v.tokens.manager,
      body: { name: 'DB_PASSWORD', environment: 'production', value: VALUE },
    });
    assert.equal(held.statusCode, 202, held.body);
    assert.equal(held.json().status, 'pending_approval');
    const changeId = held.json().change_id;
    const none = await v.req('GET', '/v1/secrets?environment=production', { token: v.tokens.manager });
    assert.equal(none.json().data.length, 0, 'nothing applied yet');

    const list = await v.req('GET', '/v1/vault/changes?status=pending', { token: v.tokens.manager });
    assert.equal(list.statusCode, 200, list.body);
    assert.equal(list.json().data[0].id, changeId);
    assert.ok(!list.body.includes(VALUE), 'summary never holds the value');

    const self = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.manager });
    assert.equal(self.statusCode, 403);
    assert.equal(self.json().code, 'self_approval');
    const dev = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.developer });
    assert.equal(dev.statusCode, 403, 'developers hold no approvals:approve');
    const ok = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, {
      token: v.tokens.manager2,
      body: { reason: 'checked' },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.equal(ok.json().status, 'applied');
    const secretId = ok.json().result_id;
    const again = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.admin });
    assert.equal(again.statusCode, 409);

    const reveal = await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.manager2 });
    assert.equal(reveal.json().value, VALUE);
    const meta = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
    assert.equal(meta.json().created_by, v.ids.manager, 'applied as the requester');

    // A new value is held too; rejecting leaves the secret as it was.
    const put = await v.req('PUT', `/v1/secrets/${secretId}/value`, {
      token: v.tokens.manager,
      body: { value: 'other' },
    });
    assert.equal(put.statusCode, 202);
    const rej = await v.req('POST', `/v1/vault/changes/${put.json().change_id}/reject`, {
      token: v.tokens.manager2,
      body: { reason: 'no' },
    });
    assert.equal(rej.json().status, 'rejected');
    const still = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
    assert.equal(still.json().current_version, 1);

    // Other environments are not covered.
    const dev2 = await v.req('POST', '/v1/secrets', {
      token: v.tokens.developer,
      body: { name: 'DEV_ONLY', environment: 'development', value: 'x' },
    });
    assert.equal(dev2.statusCode, 201);
  });

  test('a production setting is held and applied with its If-Match version; audit has the decisions', async () => {
    const held = await v.req('PUT', '/v1/settings/production/timeout_ms', {
      token: v.tokens.developer,
      body: { value: 500, value_type: 'int' },
    });
    assert.equal(held.statusCode, 202, held.body);
    const ok = await v.req('POST', `/v1/vault/changes/${held.json().change_id}/approve`, {
      token: v.tokens.manager,
    });
    assert.equal(ok.statusCode, 200, ok.body);
    const read = await v.req('GET', '/v1/settings/production/timeout_ms', { token: v.tokens.viewer });
    assert.equal(read.json().value, 500);

    const actions = await v.t.store.db.query<{ action: string }>(
      `select action from audit_events where action like 'change.%' order by id`,
    );
    assert.deepEqual([...new Set(actions.map((a) => a.action))].sort(), [
      'change.approved',
      'change.rejected',
      'change.requested',
    ]);
    const all = await v.t.store.db.query<{ j: string }>(
      `select row_to_json(a)::text as j from audit_events a`,
    );
    for (const r of all) assert.ok(!r.j.includes(VALUE), r.j);
    const other = await v.req('POST', `/v1/vault/changes/${held.json().change_id}/approve`, {
      token: v.tokens.other,
    });
    assert.equal(other.statusCode, 404, 'another org never sees the change');
  });
});
