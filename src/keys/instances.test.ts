// Two Steward instances on one PostgreSQL database and one Redis: rate limits are shared, and a
// revoke (or a settings change) on one instance is seen by verification on the other within a second.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { type TwoInstances, twoInstances } from '../../test/helpers/instances.ts';
import type { DbHandle } from '../db/client.ts';

const skip =
  process.env.DATABASE_URL && process.env.REDIS_URL
    ? false
    : 'DATABASE_URL and REDIS_URL are needed: two instances share a database and a Redis';

describe('API keys across two instances (PostgreSQL + Redis)', { skip }, () => {
  let a: FastifyInstance;
  let b: FastifyInstance;
  let token: string;
  let dbA: DbHandle;
  let instances: TwoInstances | undefined;
  before(async () => {
    instances = await twoInstances({ env: { REDIS_URL: process.env.REDIS_URL, API_KEY_POLL_MS: '200' } });
    ({ a, b, token, dbA } = instances);
  });
  after(() => instances?.close());

  const create = async (body: Record<string, unknown>) => {
    const res = await a.inject({
      method: 'POST',
      url: '/v1/keys',
      headers: { authorization: `Bearer ${token}` },
      payload: { name: 'shared', scopes: ['*'], tier: 'enterprise', ...body },
    });
    assert.equal(res.statusCode, 201, res.body);
    return res.json() as { id: string; key: string };
  };
  const verifyOn = async (app: FastifyInstance, key: string) => {
    const res = await app.inject({
      method: 'POST',
      url: '/v1/keys/verify',
      headers: { authorization: `Bearer ${token}` },
      payload: { key },
    });
    assert.equal(res.statusCode, 200, res.body);
    return res.json() as { code: string; ratelimit: { remaining: number } | null };
  };

  /** Verifies on `app` until the key is no longer valid (2 s at most): the code, and ms since `from`. */
  const untilRefused = async (app: FastifyInstance, key: string, from: number) => {
    let code = 'valid';
    while (code === 'valid' && performance.now() - from < 2000) {
      code = (await verifyOn(app, key)).code;
      if (code === 'valid') await new Promise((r) => setTimeout(r, 5));
    }
    return { code, elapsed: performance.now() - from };
  };

  test('one rate limit for the key, whichever instance answers', async () => {
    const k = await create({ ratelimit: { limit: 5, window_seconds: 60 } });
    const codes: string[] = [];
    for (let i = 0; i < 3; i++) {
      codes.push((await verifyOn(a, k.key)).code);
      codes.push((await verifyOn(b, k.key)).code);
    }
    assert.deepEqual(codes, ['valid', 'valid', 'valid', 'valid', 'valid', 'rate_limited']);
    const mw = await b.inject({ method: 'GET', url: '/v1/auth/whoami', headers: { 'x-api-key': k.key } });
    assert.equal(mw.statusCode, 429);
    assert.ok(Number(mw.headers['retry-after']) >= 1);
  });

  test('a revoke on A is refused by B within one second', async () => {
    const k = await create({});
    assert.equal((await verifyOn(b, k.key)).code, 'valid'); // B's cache is warm
    const revokedAt = performance.now();
    const del = await a.inject({
      method: 'DELETE',
      url: `/v1/keys/${k.id}`,
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(del.statusCode, 200, del.body);
    const { code, elapsed } = await untilRefused(b, k.key, revokedAt);
    assert.equal(code, 'revoked');
    assert.ok(elapsed < 1000, `took ${elapsed.toFixed(0)} ms`);
  });

  test('without the bus message, the poll still revokes within one second', async () => {
    const k = await create({});
    assert.equal((await verifyOn(b, k.key)).code, 'valid');
    // Revoke behind Steward's back (no bus message): only B's poll of updated_at can notice.
    const revokedAt = performance.now();
    await dbA.query('update api_keys set revoked_at = now(), updated_at = now() where id = $1', [k.id]);
    const { code, elapsed } = await untilRefused(b, k.key, revokedAt);
    assert.equal(code, 'revoked');
    assert.ok(elapsed < 1000, `took ${elapsed.toFixed(0)} ms`);
  });

  test('without the bus message, the poll applies a settings change within one second', async () => {
    const k = await create({});
    // B caches the key and its org's settings (defaults: threshold 50, no suspension).
    const warm = (await verifyOn(b, k.key)) as { code: string; org_id?: string };
    assert.equal(warm.code, 'valid');
    // Switch suspension on behind Steward's back (no bus message): only B's poll can notice.
    const changedAt = performance.now();
    await dbA.query(
      `insert into api_key_settings (org_id, burst_threshold, burst_window_seconds, suspend_on_burst, updated_at)
       values ($1, 3, 60, true, now())
       on conflict (org_id) do update set burst_threshold = 3, suspend_on_burst = true, updated_at = now()`,
      [warm.org_id],
    );
    try {
      // Once B has the new settings, the fourth request crosses the threshold and is suspended.
      const { code, elapsed } = await untilRefused(b, k.key, changedAt);
      assert.equal(code, 'disabled');
      assert.ok(elapsed < 1000, `took ${elapsed.toFixed(0)} ms`);
    } finally {
      const reset = await a.inject({
        method: 'PUT',
        url: '/v1/keys/settings',
        headers: { authorization: `Bearer ${token}` },
        payload: { burst_threshold: 50, burst_window_seconds: 60, suspend_on_burst: false },
      });
      assert.equal(reset.statusCode, 200, reset.body);
    }
  });

  test('a user deactivated on A: their keys are disabled on B within one second', async () => {
    const email = 'owner@example.com';
    const user = await a.inject({
      method: 'POST',
      url: '/v1/users',
      headers: { authorization: `Bearer ${token}` },
      payload: { email, password: 'a long enough passphrase 42', roles: ['developer'] },
    });
    assert.equal(user.statusCode, 201, user.body);
    const userId = user.json().id as string;
    const k = await create({ owner: userId, scopes: ['secrets:read'] });
    assert.equal((await verifyOn(b, k.key)).code, 'valid'); // B's cache is warm
    const deactivatedAt = performance.now();
    const del = await a.inject({
      method: 'DELETE',
      url: `/v1/users/${userId}`,
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(del.statusCode, 204, del.body);
    const { code, elapsed } = await untilRefused(b, k.key, deactivatedAt);
    assert.equal(code, 'disabled');
    assert.ok(elapsed < 1000, `took ${elapsed.toFixed(0)} ms`);
  });

  test('usage counted on both instances adds up in the database', async () => {
    const k = await create({});
    for (let i = 0; i < 4; i++) await verifyOn(a, k.key);
    for (let i = 0; i < 3; i++) await verifyOn(b, k.key);
    await a.steward.keys.verifier.flush();
    await b.steward.keys.verifier.flush();
    const [row] = await dbA.query<{ request_count: number }>(
      'select request_count from api_keys where id = $1',
      [k.id],
    );
    assert.equal(row?.request_count, 7);
  });
});
