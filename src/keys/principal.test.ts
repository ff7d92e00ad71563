import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';

// "What can this key do?" — authz answers for `key_…` ids through the keys domain:
// the owner's rights narrowed to the key's scopes; a revoked key is nobody.
describe('API keys as principals in authz', () => {
  let t: IdentityTestApp;
  let admin: string;
  let keyId: string;
  let devId: string;

  before(async () => {
    t = await identityTestApp('pglite');
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const dev = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'dev@example.com', password: 'a much longer passphrase', roles: ['developer'] },
    });
    assert.equal(dev.statusCode, 201, dev.body);
    devId = dev.json().id;
    const key = await t.call('POST', '/v1/keys', {
      token: admin,
      body: { name: 'ci', owner: dev.json().id, scopes: ['secrets:read', 'secrets:delete', 'flags:read'] },
    });
    assert.equal(key.statusCode, 201, key.body);
    keyId = key.json().id;
  });
  after(() => t.close());

  test("a key's effective permissions are its scopes within its owner's rights", async () => {
    const res = await t.call('GET', `/v1/authz/principals/${keyId}/permissions`, { token: admin });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json();
    assert.equal(body.kind, 'key');
    const allowed = body.permissions.map((p: { permission: string }) => p.permission).sort();
    // secrets:delete is in scope but beyond a developer; roles:read is a developer's but out of scope.
    assert.deepEqual(allowed, ['flags:read', 'secrets:read']);
  });

  test('checks about a key explain why', async () => {
    const res = await t.call('POST', '/v1/authz/check', {
      token: admin,
      body: {
        checks: [
          { principal: keyId, permission: 'secrets:read' },
          { principal: keyId, permission: 'secrets:delete' },
          { principal: keyId, permission: 'roles:read' },
        ],
      },
    });
    assert.equal(res.statusCode, 200, res.body);
    const [read, del, roles] = res.json().results;
    assert.equal(read.allowed, true);
    assert.equal(del.allowed, false);
    assert.equal(roles.allowed, false);
    assert.equal(roles.decision.reason, 'out_of_scope');
  });

  // Session 9 (tester's finding): a switched-off or burst-suspended key answered as a live
  // principal (allowed, its permissions listed) while verification called it `disabled`.
  test('a disabled key (switched off, suspended for a burst, inactive owner) is not a principal', async () => {
    const created = await t.call('POST', '/v1/keys', {
      token: admin,
      body: { name: 'off', owner: devId, scopes: ['secrets:read'] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const id: string = created.json().id;
    const permissions = () => t.call('GET', `/v1/authz/principals/${id}/permissions`, { token: admin });
    const allowed = async () => {
      const res = await t.call('POST', '/v1/authz/check', {
        token: admin,
        body: { principal: id, permission: 'secrets:read' },
      });
      return res.statusCode === 200 && res.json().allowed === true;
    };
    assert.equal((await permissions()).statusCode, 200);
    assert.equal(await allowed(), true);

    const off = await t.call('PATCH', `/v1/keys/${id}`, { token: admin, body: { active: false } });
    assert.equal(off.statusCode, 200, off.body);
    assert.equal((await permissions()).statusCode, 404);
    assert.equal(await allowed(), false);

    const on = await t.call('PATCH', `/v1/keys/${id}`, { token: admin, body: { active: true } });
    assert.equal(on.statusCode, 200, on.body);
    assert.equal((await permissions()).statusCode, 200);
    assert.equal(await allowed(), true);

    // As the verifier's burst report writes it.
    await t.store.db.query(
      "update api_keys set active = false, disabled_reason = 'burst_detected' where id = $1",
      [id],
    );
    assert.equal((await permissions()).statusCode, 404);
    assert.equal(await allowed(), false);
    await t.store.db.query('update api_keys set active = true, disabled_reason = null where id = $1', [id]);
    assert.equal((await permissions()).statusCode, 200);

    // Its owner deactivated: verification answers `disabled`, authz nobody.
    const deactivated = await t.call('PATCH', `/v1/users/${devId}`, {
      token: admin,
      body: { active: false },
    });
    assert.equal(deactivated.statusCode, 200, deactivated.body);
    assert.equal((await permissions()).statusCode, 404);
    assert.equal(await allowed(), false);
    const back = await t.call('PATCH', `/v1/users/${devId}`, { token: admin, body: { active: true } });
    assert.equal(back.statusCode, 200, back.body);
    assert.equal((await permissions()).statusCode, 200);
  });

  test('a revoked key, or another org’s id, is not a principal (404)', async () => {
    const revoked = await t.call('DELETE', `/v1/keys/${keyId}`, {
      token: admin,
      body: { reason: 'rotated' },
    });
    assert.ok([200, 204].includes(revoked.statusCode), revoked.body);
    const res = await t.call('GET', `/v1/authz/principals/${keyId}/permissions`, { token: admin });
    assert.equal(res.statusCode, 404);
    const unknown = await t.call('GET', '/v1/authz/principals/key_01JAAAAAAAAAAAAAAAAAAAAAAA/permissions', {
      token: admin,
    });
    assert.equal(unknown.statusCode, 404);
  });
});
