// Lockout under concurrency and its bounds: failures that race one another lock once, the lock
// period is capped, and a wrong password answers without waiting for its bookkeeping (the same
// time as an unknown email, even when that write is slow).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { eq } from 'drizzle-orm';
import pg from 'pg';
import { postgresSkip } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { MAX_LOCK_MINUTES } from './lockout.ts';
import { users } from './schema.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from './test-support.ts';

const PASS = 'seven sleepy walruses';
const WRONG = 'not the password at all';

async function newUser(t: IdentityTestApp, email: string): Promise<string> {
  const admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  const res = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
  assert.equal(res.statusCode, 201, res.body);
  return res.json().id;
}

async function row(t: IdentityTestApp, id: string) {
  const [r] = await t.store.db.db.select().from(users).where(eq(users.id, id));
  assert.ok(r);
  return r;
}

async function actions(
  t: IdentityTestApp,
  id: string,
): Promise<{ action: string; details: Record<string, unknown> }[]> {
  const admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  return (await t.call('GET', `/v1/audit/events?resource_id=${id}&limit=500`, { token: admin })).json().data;
}

for (const { kind, skip } of STORES) {
  describe(`lockout races and bounds (${kind})`, { skip }, () => {
    test('40 concurrent wrong passwords lock once: lock_count 1, locked for the base period', async () => {
      const t = await identityTestApp(kind, { LOGIN_IP_MAX_FAILURES: '1000' });
      try {
        const id = await newUser(t, 'racer@example.com');
        const answers = await Promise.all(
          Array.from({ length: 40 }, () => t.login('racer@example.com', WRONG)),
        );
        await t.app.steward.identity.settled();
        for (const a of answers) assert.ok([401, 423].includes(a.statusCode), a.body);
        const r = await row(t, id);
        assert.equal(r.lockCount, 1, 'one lock');
        assert.equal(r.failedLoginCount, 0);
        assert.equal(r.lockedUntil?.getTime(), t.now.ms + 15 * 60_000);
        const evs = await actions(t, id);
        assert.equal(evs.filter((e) => e.action === 'user.locked').length, 1);
        const failed = evs.filter((e) => e.action === 'user.login_failed');
        assert.equal(failed.length, 40, 'every failure audited');
        // Five counted; the others came after the lock, refused before the password (reason
        // `locked`) or after it (their Argon2 ran on the row read before the lock): not counted.
        const counted = failed.filter(
          (e) => e.details.reason === 'wrong_password' && e.details.counted !== false,
        );
        assert.equal(counted.length, 5);
        // The right password is refused until the lock ends.
        assert.equal((await t.login('racer@example.com', PASS)).statusCode, 423);
        t.now.ms += 15 * 60_000;
        assert.equal((await t.login('racer@example.com', PASS)).statusCode, 200);
      } finally {
        await t.close();
      }
    });

    test(`the doubling stops at ${MAX_LOCK_MINUTES / 60} h`, async () => {
      const t = await identityTestApp(kind, { LOGIN_IP_MAX_FAILURES: '1000', LOGIN_MAX_FAILURES: '1' });
      try {
        await newUser(t, 'doubler@example.com');
        const periods: number[] = [];
        for (let i = 0; i < 9; i++) {
          const res = await t.login('doubler@example.com', WRONG);
          assert.equal(res.statusCode, 423, res.body);
          const minutes = (Date.parse(res.json().locked_until) - t.now.ms) / 60_000;
          periods.push(minutes);
          t.now.ms += minutes * 60_000;
        }
        assert.deepEqual(periods, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
      } finally {
        await t.close();
      }
    });
  });
}

describe('a wrong password answers before its bookkeeping is written (postgres)', {
  skip: postgresSkip,
}, () => {
  test('unknown email and wrong password: similar time while the account row is held elsewhere', async () => {
    const t = await identityTestApp('postgres', { LOGIN_IP_MAX_FAILURES: '1000', LOGIN_MAX_FAILURES: '100' });
    const holder = new pg.Client({ connectionString: t.store.url });
    await holder.connect();
    try {
      const id = await newUser(t, 'slowrow@example.com');
      const time = async (email: string) => {
        const started = performance.now();
        const res = await t.login(email, WRONG);
        assert.equal(res.statusCode, 401, res.body);
        return performance.now() - started;
      };
      await time('warmup@example.com');
      const unknown: number[] = [];
      const wrong: number[] = [];
      for (let i = 0; i < 5; i++) {
        // Another transaction holds the user's row for 300 ms: the failure's write waits for it,
        // the answer must not.
        await holder.query('begin');
        await holder.query('select 1 from users where id = $1 for update', [id]);
        const released = new Promise((resolve) => setTimeout(resolve, 300)).then(() =>
          holder.query('commit'),
        );
        unknown.push(await time(`nobody${i}@example.com`));
        wrong.push(await time('slowrow@example.com'));
        await released;
        await t.app.steward.identity.settled();
      }
      const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[2] ?? 0;
      const ratio = median(unknown) / median(wrong);
      assert.ok(
        ratio > 0.33 && ratio < 3,
        `unknown ${median(unknown).toFixed(1)} ms vs wrong ${median(wrong).toFixed(1)} ms`,
      );
      // Every failure counted once its write went through.
      assert.equal((await row(t, id)).failedLoginCount, 5);
    } finally {
      await holder.end();
      await t.close();
    }
  });
});
