import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';

// "What can this key do?" — authz answers for `key_…` ids through the keys domain:
// the owner's rights narrowed to the key's scopes; a revoked key is nobody.
describe('API keys as principals in authz', () => {
  let t: IdentityTestApp;
  let admin: string;
  let keyId: string;

  before(async () => {
    t = await identityTestApp('pglite');
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const dev = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'dev@example.com', password: 'a much longer passphrase', roles: ['developer'] },
    });
    assert.equal(dev.statusCode, 201, dev.body);
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
