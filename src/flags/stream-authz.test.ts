import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { type TwoInstances, twoInstances } from '../../test/helpers/instances.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Opens an event stream and waits for its hydration; `ended` resolves when the server ends it. */
async function open(url: string, authorization: string) {
  const res = await fetch(url, { headers: { authorization } });
  assert.equal(res.status, 200, `${url}: ${res.status}`);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = '';
  while (!text.includes('event: unleash-connected')) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'ended before its hydration');
    text += decoder.decode(value, { stream: true });
  }
  let closed = false;
  const ended = (async () => {
    while (!(await reader.read()).done) {}
    closed = true;
  })();
  return { ended, isOpen: () => !closed, cancel: () => reader.cancel() };
}

const endsWithin = async (ended: Promise<void>, ms: number, what: string) => {
  const start = Date.now();
  await Promise.race([ended, sleep(ms).then(() => assert.fail(`${what}: not ended within ${ms} ms`))]);
  return Date.now() - start;
};

// Losing the permission a stream was opened with ends it (stream-guard.ts, `authz` topic): before,
// a deny grant or an unassigned role left /v1/flags/{env}/stream and /api/client/streaming open,
// getting every change, until the hourly re-authentication, while a fresh request was 403.
describe('flag streams end when their principal loses flags:read (one instance)', () => {
  let v: VaultTestApp;
  let address: string;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(() => v.close());

  /** A key acting for `owner`, reading staging (also through the Unleash client API). */
  async function keyOf(owner: string) {
    const res = await v.req('POST', '/v1/keys', {
      token: v.tokens.admin,
      body: {
        name: `of-${owner}`,
        owner,
        scopes: ['flags:read'],
        tier: 'enterprise',
        metadata: { flags_environment: 'staging' },
      },
    });
    assert.equal(res.statusCode, 201, res.body);
    return res.json().key as string;
  }
  const v1 = (authorization: string) => open(`${address}/v1/flags/staging/stream`, authorization);
  const sdk = (key: string) => open(`${address}/api/client/streaming`, key);

  test('a deny grant on the owner: its session and key streams end within 2 s; others go on', async () => {
    const key = await keyOf(v.ids.viewer);
    const streams = {
      session: await v1(`Bearer ${v.tokens.viewer}`),
      key: await v1(`Bearer ${key}`),
      client: await sdk(key),
    };
    const other = await v1(`Bearer ${v.tokens.developer}`);
    const otherClient = await sdk(await keyOf(v.ids.developer));
    const grant = await v.req('POST', '/v1/authz/grants', {
      token: v.tokens.admin,
      body: { principal: v.ids.viewer, permission: 'flags:read', resource_type: 'flags', effect: 'deny' },
    });
    assert.equal(grant.statusCode, 201, grant.body);
    for (const [what, s] of Object.entries(streams)) await endsWithin(s.ended, 2000, what);
    // A fresh request is refused, as it was before the fix.
    assert.equal((await v.req('GET', '/v1/flags/staging', { token: v.tokens.viewer })).statusCode, 403);
    const poll = await fetch(`${address}/api/client/features`, { headers: { authorization: key } });
    assert.equal(poll.status, 403);
    await sleep(300);
    assert.ok(other.isOpen() && otherClient.isOpen(), "another principal's streams go on");
    await other.cancel();
    await otherClient.cancel();
    // The deny lifted: the viewer streams again.
    const gone = await v.req('DELETE', `/v1/authz/grants/${grant.json().id}`, { token: v.tokens.admin });
    assert.ok(gone.statusCode < 300, gone.body);
    const again = await v1(`Bearer ${v.tokens.viewer}`);
    await again.cancel();
  });

  test('a role unassigned: the session and key streams of that user end within 2 s', async () => {
    const key = await keyOf(v.ids.developer);
    const session = await v1(`Bearer ${v.tokens.developer}`);
    const keyStream = await v1(`Bearer ${key}`);
    const client = await sdk(key);
    const kept = await v1(`Bearer ${v.tokens.viewer}`);
    const list = await v.req('GET', `/v1/role-assignments?principal=${v.ids.developer}`, {
      token: v.tokens.admin,
    });
    assert.equal(list.statusCode, 200, list.body);
    const assignments = list.json().data as { id: string }[];
    assert.ok(assignments.length > 0);
    for (const a of assignments) {
      const res = await v.req('DELETE', `/v1/role-assignments/${a.id}`, { token: v.tokens.admin });
      assert.equal(res.statusCode, 204, res.body);
    }
    await endsWithin(session.ended, 2000, 'session stream');
    await endsWithin(keyStream.ended, 2000, 'key stream');
    await endsWithin(client.ended, 2000, 'client stream');
    assert.equal((await v.req('GET', '/v1/flags/staging', { token: v.tokens.developer })).statusCode, 403);
    await sleep(300);
    assert.ok(kept.isOpen(), "another user's stream goes on");
    await kept.cancel();
  });

  test('an authz change that leaves the permission: the streams go on', async () => {
    const s = await v1(`Bearer ${v.tokens.viewer}`);
    const grant = await v.req('POST', '/v1/authz/grants', {
      token: v.tokens.admin,
      body: { principal: v.ids.viewer, permission: 'secrets:read', resource_type: 'secrets', effect: 'deny' },
    });
    assert.equal(grant.statusCode, 201, grant.body);
    await sleep(1500);
    assert.ok(s.isOpen(), 'still open');
    await s.cancel();
  });
});

const skip =
  process.env.DATABASE_URL && process.env.REDIS_URL
    ? false
    : 'DATABASE_URL and REDIS_URL are needed: two instances share a database and a Redis';

describe('flag streams end when their principal loses flags:read (two instances, PostgreSQL + Redis)', {
  skip,
}, () => {
  let instances: TwoInstances | undefined;
  let a: FastifyInstance;
  let addressB: string;
  let token: string;
  before(async () => {
    instances = await twoInstances({ env: { REDIS_URL: process.env.REDIS_URL } });
    ({ a, token } = instances);
    addressB = await instances.b.listen({ port: 0, host: '127.0.0.1' });
  });
  after(() => instances?.close());

  const onA = async (method: 'POST' | 'GET', url: string, payload?: Record<string, unknown>) =>
    a.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(payload ? { payload } : {}) });

  test("a deny grant made on A ends B's stream within 3 s (B's index rebuilt in the background)", async () => {
    const password = 'a sturdy stream passphrase';
    const user = await onA('POST', '/v1/users', { email: 'reader@example.com', password, roles: ['viewer'] });
    assert.equal(user.statusCode, 201, user.body);
    const login = await instances?.b.inject({
      method: 'POST',
      url: '/v1/auth/login',
      payload: { email: 'reader@example.com', password },
    });
    assert.equal(login?.statusCode, 200, login?.body);
    const s = await open(`${addressB}/v1/flags/development/stream`, `Bearer ${login?.json().access_token}`);
    const grant = await onA('POST', '/v1/authz/grants', {
      principal: user.json().id,
      permission: 'flags:read',
      resource_type: 'flags',
      effect: 'deny',
    });
    assert.equal(grant.statusCode, 201, grant.body);
    await endsWithin(s.ended, 3000, "B's stream");
  });
});
