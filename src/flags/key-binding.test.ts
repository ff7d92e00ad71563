import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

const ALL_FLAG_SCOPES = ['flags:read', 'flags:create', 'flags:update', 'flags:delete'];
type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

// A key bound to an environment — `metadata.flags_environment`, or a `stw_test_…` key — is held to
// it on every `/v1/flags/{env}…` route, as the Unleash client API holds it there. Before, such a
// key read production's flags (descriptions, constraint values), evaluated them and streamed them.
describe('a key bound to a flags environment on /v1', () => {
  let v: VaultTestApp;
  let address: string;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
    for (const env of ['development', 'staging']) {
      const res = await v.req('POST', `/v1/flags/${env}`, {
        token: v.tokens.manager,
        body: { name: 'f', description: `secret of ${env}`, enabled: true, strategies: [] },
      });
      assert.equal(res.statusCode, 201, res.body);
    }
  });
  after(() => v.close());

  async function newKey(name: string, extra: Record<string, unknown> = {}) {
    const res = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name, scopes: ALL_FLAG_SCOPES, tier: 'enterprise', ...extra },
    });
    assert.equal(res.statusCode, 201, res.body);
    return res.json() as { id: string; key: string };
  }

  /** Every route with an `{env}`: method, path, body. */
  const routes = (env: string, name: string): [Method, string, unknown?][] => [
    ['GET', `/v1/flags/${env}`],
    ['GET', `/v1/flags/${env}/f`],
    ['POST', `/v1/flags/${env}/evaluate`, {}],
    ['GET', `/v1/flags/${env}/f/metrics`],
    ['GET', `/v1/flag-clients/${env}`],
    ['POST', `/v1/flags/${env}`, { name, enabled: true, strategies: [] }],
    ['PUT', `/v1/flags/${env}/${name}`, { name, enabled: false, strategies: [] }],
    ['DELETE', `/v1/flags/${env}/${name}`],
  ];

  const stream = async (env: string, key: string) => {
    const res = await fetch(`${address}/v1/flags/${env}/stream`, {
      headers: { authorization: `Bearer ${key}` },
    });
    const type = res.headers.get('content-type') ?? '';
    await res.body?.cancel();
    return { status: res.status, type };
  };

  async function refusedElsewhere(key: string, own: string, other: string) {
    for (const [method, url, body] of routes(other, 'made-by-bound-key')) {
      const res = await v.req(method, url, { token: key, ...(body === undefined ? {} : { body }) });
      assert.equal(res.statusCode, 403, `${method} ${url}: ${res.body}`);
      assert.equal(res.json().code, 'key_environment_mismatch', `${method} ${url}`);
      assert.equal(res.json().key_environment, own);
      assert.doesNotMatch(res.body, /secret of/);
    }
    const s = await stream(other, key);
    assert.equal(s.status, 403, 'stream of another environment');
    // Its own environment: everything as before.
    for (const [method, url, body] of routes(own, `made-by-bound-key-${own}`)) {
      const res = await v.req(method, url, { token: key, ...(body === undefined ? {} : { body }) });
      assert.ok(res.statusCode < 300, `${method} ${url}: ${res.body}`);
    }
    const mine = await stream(own, key);
    assert.equal(mine.status, 200);
    assert.match(mine.type, /text\/event-stream/);
  }

  test('metadata.flags_environment: development only, reads and writes, the stream too', async () => {
    const { key } = await newKey('bound-dev', { metadata: { flags_environment: 'development' } });
    await refusedElsewhere(key, 'development', 'staging');
    // An environment that does not exist is refused the same way (the binding is checked first).
    const nowhere = await v.req('GET', '/v1/flags/nowhere', { token: key });
    assert.equal(nowhere.json().code, 'key_environment_mismatch');
  });

  test('a stw_test_ key without the metadata is bound to development, as /api/client reads it', async () => {
    const { key } = await newKey('test-marker', { environment: 'test' });
    assert.match(key, /^stw_test_/);
    await refusedElsewhere(key, 'development', 'staging');
    const production = await v.req('GET', '/v1/flags/production', { token: key });
    assert.equal(production.statusCode, 403);
  });

  test('the binding follows the key: metadata changed, the next request is held to the new one', async () => {
    const { id, key } = await newKey('moved', { metadata: { flags_environment: 'development' } });
    assert.equal((await v.req('GET', '/v1/flags/staging', { token: key })).statusCode, 403);
    const moved = await v.req('PATCH', `/v1/keys/${id}`, {
      token: v.tokens.manager,
      body: { metadata: { flags_environment: 'staging' } },
    });
    assert.equal(moved.statusCode, 200, moved.body);
    assert.equal((await v.req('GET', '/v1/flags/staging', { token: key })).statusCode, 200);
    assert.equal((await v.req('GET', '/v1/flags/development', { token: key })).statusCode, 403);
  });

  test('unbound: a stw_live_ key without the metadata and a user token use any environment, as before', async () => {
    const { key } = await newKey('live-unbound');
    assert.match(key, /^stw_live_/);
    for (const token of [key, v.tokens.manager]) {
      for (const env of ['development', 'staging']) {
        const res = await v.req('GET', `/v1/flags/${env}/f`, { token });
        assert.equal(res.statusCode, 200, res.body);
      }
    }
    // Segments serve every environment: not held to one.
    const bound = await newKey('bound-segments', { metadata: { flags_environment: 'development' } });
    assert.equal((await v.req('GET', '/v1/segments', { token: bound.key })).statusCode, 200);
  });

  test('the permission is checked first: a bound key without the scope is 403 permission_denied', async () => {
    const res = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name: 'read-only', scopes: ['flags:read'], metadata: { flags_environment: 'development' } },
    });
    const key = res.json().key as string;
    const put = await v.req('PUT', '/v1/flags/staging/f', {
      token: key,
      body: { name: 'f', enabled: false, strategies: [] },
    });
    assert.equal(put.json().code, 'permission_denied');
  });
});
