// Two Steward instances on one PostgreSQL database and one Redis: rate limits are shared, and a
// revoke (or a settings change) on one instance is seen by verification on the other within a second.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createTestDatabase } from '../../test/helpers/postgres.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { runMigrations } from '../db/migrate.ts';
import { ADMIN } from '../identity/test-support.ts';

const skip =
  process.env.DATABASE_URL && process.env.REDIS_URL
    ? false
    : 'DATABASE_URL and REDIS_URL are needed: two instances share a database and a Redis';

describe('API keys across two instances (PostgreSQL + Redis)', { skip }, () => {
  let drop: () => Promise<void>;
  const dbs: DbHandle[] = [];
  let a: FastifyInstance;
  let b: FastifyInstance;
  let token: string;
  before(async () => {
    const database = await createTestDatabase();
    drop = database.drop;
    const keyring = createKeyring(randomBytes(32));
    const config = loadConfig({
      LOG_LEVEL: 'silent',
      REDIS_URL: process.env.REDIS_URL,
      API_KEY_POLL_MS: '200',
    });
    const open = async () => {
      const db = await openDatabase({ dataDir: 'unused', databaseUrl: database.url, poolSize: 5 });
      dbs.push(db);
      return db;
    };
    const first = await open();
    await runMigrations(first);
    a = await buildApp(config, { db: first, keyring });
    await a.ready();
    await a.steward.identity.bootstrap(ADMIN);
    b = await buildApp(config, { db: await open(), keyring });
    await b.ready();
    const login = await a.inject({ method: 'POST', url: '/v1/auth/login', payload: ADMIN });
    token = login.json().access_token;
  });
  after(async () => {
    await a?.close();
    await b?.close();
    for (const db of dbs) await db.close();
    await drop?.();
  });

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
    await dbs[0]?.query('update api_keys set revoked_at = now(), updated_at = now() where id = $1', [k.id]);
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
    await dbs[0]?.query(
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
    const [row] = await dbs[0]!.query<{ request_count: number }>(
      'select request_count from api_keys where id = $1',
      [k.id],
    );
    assert.equal(row?.request_count, 7);
  });
});
