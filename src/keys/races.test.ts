// Writes to one key racing each other (PostgreSQL, where requests really run at once). Each test
// makes the interleaving certain instead of hoping for it: another connection holds the row's
// lock, the requests are sent one after the other and each is seen waiting on that lock — after
// its own read of the row — and then the lock is let go. The first request in the queue commits
// first, so the second has read the row as it was before the first's change, and must answer as
// it would have after it (the sequential answer), never write over it.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import pg from 'pg';
import { postgresSkip } from '../../test/helpers/postgres.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';
import { createKey, problem, TEST_TIERS } from './test-support.ts';

const PASS = 'a long enough passphrase 42';

describe('concurrent writes to one key answer as if in sequence (postgres)', { skip: postgresSkip }, () => {
  let t: IdentityTestApp;
  let holder: pg.Client;
  let token: string;
  before(async () => {
    t = await identityTestApp('postgres', { API_KEY_TIERS: TEST_TIERS });
    holder = new pg.Client({ connectionString: t.store.url });
    await holder.connect();
  });
  beforeEach(async () => {
    token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(async () => {
    await holder?.end();
    await t?.close();
  });

  const create = (body: Record<string, unknown> = {}, as = token) => createKey(t, as, body);
  const get = async (id: string) => (await t.call('GET', `/v1/keys/${id}`, { token })).json();
  const events = (action: string, id: string) =>
    t.store.db.query('select changes from audit_events where action = $1 and resource_id = $2', [action, id]);

  /** Holds the row's lock in another transaction until `release()`. */
  async function hold(table: 'api_keys' | 'webhook_keys' | 'api_key_settings', column: string, id: string) {
    await holder.query('begin');
    await holder.query(`select 1 from ${table} where ${column} = $1 for update`, [id]);
  }
  const release = () => holder.query('commit');

  /** Waits until `n` sessions of the test database are blocked on a lock (5 s at most). */
  async function waiting(n: number): Promise<void> {
    const until = performance.now() + 5000;
    for (;;) {
      const [row] = await t.store.db.query<{ n: number }>(
        "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
      );
      if ((row?.n ?? 0) >= n) return;
      if (performance.now() > until) throw new Error(`${row?.n ?? 0} sessions waiting, expected ${n}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Waits for the request to block on the lock; one that answers instead fails the test. */
  async function blockedOrAnswered(request: Promise<LightMyRequestResponse>, n: number): Promise<void> {
    const early = request.then((res) => {
      throw new Error(`answered without waiting: ${res.statusCode} ${res.body}`);
    });
    early.catch(() => {});
    await Promise.race([waiting(n), early]);
  }

  /**
   * Sends `first`, waits until it is blocked on the held lock, sends `second`, waits until it is
   * blocked too (so it has read the row), lets the lock go: `first` commits before `second` writes.
   */
  async function race(
    lock: () => Promise<void>,
    first: () => Promise<LightMyRequestResponse>,
    second: () => Promise<LightMyRequestResponse>,
  ): Promise<[LightMyRequestResponse, LightMyRequestResponse]> {
    await lock();
    try {
      const one = first();
      await blockedOrAnswered(one, 1);
      const two = second();
      await blockedOrAnswered(two, 2);
      await release();
      return await Promise.all([one, two]);
    } catch (error) {
      await holder.query('rollback').catch(() => {});
      throw error;
    }
  }
  const holdKey = (id: string) => () => hold('api_keys', 'id', id);

  test('a PATCH of expires_at racing a roll: 409 api_key_already_rolled, the old key still ends with its grace', async () => {
    for (const expiresAt of [new Date(t.now.ms + 365 * 86_400_000).toISOString(), null]) {
      const k = await create({ expires_at: new Date(t.now.ms + 86_400_000).toISOString() });
      const [rolled, patched] = await race(
        holdKey(k.id),
        () => t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 2 } }),
        () => t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { expires_at: expiresAt } }),
      );
      assert.equal(rolled.statusCode, 201, rolled.body);
      const refused = problem(patched, 409, 'api_key_already_rolled');
      assert.deepEqual([refused.rolled_to, refused.field], [rolled.json().id, 'expires_at']);
      const old = await get(k.id);
      assert.equal(Date.parse(old.expires_at), t.now.ms + 2000);
      assert.equal((await events('key.updated', k.id)).length, 0);
      // Past the grace the old key is dead, the new one alive.
      t.now.ms += 3000;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      const verify = async (key: string) =>
        (await t.call('POST', '/v1/keys/verify', { token, body: { key } })).json().code;
      assert.deepEqual([await verify(k.key), await verify(rolled.json().key)], ['expired', 'valid']);
    }
  });

  test('an owner’s PATCH active:false racing a burst suspension keeps the suspension (admin-only to lift)', async () => {
    const created = await t.call('POST', '/v1/users', {
      token,
      body: { email: 'racer@example.com', password: PASS, roles: ['developer'] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const dev = (await t.tokensFor('racer@example.com', PASS)).access_token;
    const k = await create({ scopes: ['secrets:read'] }, dev);
    const settings = (body: Record<string, unknown>) =>
      t.call('PUT', '/v1/keys/settings', {
        token,
        body: { burst_window_seconds: 60, ...body },
      });
    assert.equal((await settings({ burst_threshold: 3, suspend_on_burst: true })).statusCode, 200);
    try {
      const verify = async () =>
        (await t.call('POST', '/v1/keys/verify', { token, body: { key: k.key } })).json().code;
      await hold('api_keys', 'id', k.id);
      try {
        // The fourth request crosses the threshold: it answers at once, and the report's
        // suspension (written in the background) waits on the lock.
        assert.deepEqual(
          [await verify(), await verify(), await verify(), await verify()],
          ['valid', 'valid', 'valid', 'disabled'],
        );
        await waiting(1);
        const patched = t.call('PATCH', `/v1/keys/${k.id}`, { token: dev, body: { active: false } });
        await blockedOrAnswered(patched, 2);
        await release();
        assert.equal((await patched).statusCode, 200, (await patched).body);
      } catch (error) {
        await holder.query('rollback').catch(() => {});
        throw error;
      }
      assert.equal((await events('key.suspended', k.id)).length, 1);
      const row = await get(k.id);
      assert.deepEqual([row.active, row.disabled_reason], [false, 'burst_detected']);
      // Still a suspension: its owner cannot switch it back on.
      problem(
        await t.call('PATCH', `/v1/keys/${k.id}`, { token: dev, body: { active: true } }),
        403,
        'api_key_suspended',
      );
    } finally {
      await settings({ burst_threshold: 50, suspend_on_burst: false });
    }
  });

  test('a revoke by a narrow key racing a PATCH that widens the target: 403 scope_not_held, target kept', async () => {
    const narrow = await create({ scopes: ['api_keys:delete', 'secrets:read'] });
    const target = await create({ scopes: ['secrets:read'] });
    const [widened, revoked] = await race(
      holdKey(target.id),
      () =>
        t.call('PATCH', `/v1/keys/${target.id}`, {
          token,
          body: { scopes: ['secrets:read', 'secrets:delete'] },
        }),
      () =>
        t.app.inject({
          method: 'DELETE',
          url: `/v1/keys/${target.id}`,
          headers: { 'x-api-key': narrow.key },
        }),
    );
    assert.equal(widened.statusCode, 200, widened.body);
    assert.equal(problem(revoked, 403, 'scope_not_held').scope, 'secrets:delete');
    const row = await get(target.id);
    assert.deepEqual([row.revoked_at, row.active], [null, true]);
    assert.equal((await events('key.revoked', target.id)).length, 0);
  });

  test('a roll racing a revoke: 409 api_key_revoked (not already_rolled), no successor', async () => {
    const k = await create();
    const [revoked, rolled] = await race(
      holdKey(k.id),
      () => t.call('DELETE', `/v1/keys/${k.id}`, { token }),
      () => t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 30 } }),
    );
    assert.equal(revoked.statusCode, 200, revoked.body);
    problem(rolled, 409, 'api_key_revoked');
    assert.equal((await get(k.id)).rolled_to, null);
    assert.equal((await events('key.rolled', k.id)).length, 0);
  });

  test('a roll racing a PATCH that narrows the key: the successor copies the key as narrowed', async () => {
    const k = await create({ scopes: ['*'] });
    const [narrowed, rolled] = await race(
      holdKey(k.id),
      () =>
        t.call('PATCH', `/v1/keys/${k.id}`, {
          token,
          body: { scopes: ['secrets:read'], allowed_ips: ['10.0.0.0/8'], tier: 'tiny' },
        }),
      () => t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 30 } }),
    );
    assert.equal(narrowed.statusCode, 200, narrowed.body);
    assert.equal(rolled.statusCode, 201, rolled.body);
    const successor = await get(rolled.json().id);
    assert.deepEqual(
      [successor.scopes, successor.allowed_ips, successor.tier],
      [['secrets:read'], ['10.0.0.0/8'], 'tiny'],
    );
  });

  test('two DELETEs of one webhook key: one 204, the other 404, one event', async () => {
    const res = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'deleted-twice' } });
    assert.equal(res.statusCode, 201, res.body);
    const id = res.json().id as string;
    const del = () => t.call('DELETE', `/v1/webhook-keys/${id}`, { token });
    const answers = await race(() => hold('webhook_keys', 'id', id), del, del);
    assert.deepEqual(
      answers.map((a) => a.statusCode),
      [204, 404],
    );
    problem(answers[1], 404, 'webhook_key_not_found');
    assert.equal((await events('webhook_key.deleted', id)).length, 1);
  });

  test('the same webhook-key PATCH twice at once: one change, one event, the other a no-op', async () => {
    const res = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'switched-twice' } });
    assert.equal(res.statusCode, 201, res.body);
    const id = res.json().id as string;
    const off = () => t.call('PATCH', `/v1/webhook-keys/${id}`, { token, body: { active: false } });
    const answers = await race(() => hold('webhook_keys', 'id', id), off, off);
    for (const answer of answers) {
      assert.equal(answer.statusCode, 200, answer.body);
      assert.equal(answer.json().active, false);
    }
    const updated = (await events('webhook_key.updated', id)) as { changes: Record<string, unknown> }[];
    assert.equal(updated.length, 1);
    assert.deepEqual(updated[0]?.changes, {
      before: { name: 'switched-twice', active: true },
      after: { name: 'switched-twice', active: false },
    });
  });

  test('two settings PUTs at once: each event’s before is the row it replaced', async () => {
    const put = (threshold: number) =>
      t.call('PUT', '/v1/keys/settings', {
        token,
        body: { burst_threshold: threshold, burst_window_seconds: 60, suspend_on_burst: false },
      });
    assert.equal((await put(50)).statusCode, 200);
    const [one, two] = await race(
      () => hold('api_key_settings', 'org_id', t.orgId),
      () => put(70),
      () => put(80),
    );
    assert.deepEqual([one.statusCode, two.statusCode], [200, 200]);
    const rows = (await t.store.db.query(
      "select changes from audit_events where action = 'key.updated' and resource_type = 'api_key_settings' order by id desc limit 2",
    )) as { changes: { before: { burst_threshold: number }; after: { burst_threshold: number } } }[];
    const transitions = rows
      .map((r) => [r.changes.before.burst_threshold, r.changes.after.burst_threshold])
      .sort((a, b) => (a[1] ?? 0) - (b[1] ?? 0));
    assert.deepEqual(transitions, [
      [50, 70],
      [70, 80],
    ]);
    assert.equal((await put(50)).statusCode, 200);
  });
});
