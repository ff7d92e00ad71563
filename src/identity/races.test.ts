// Races a tester found between a login and what changes under it, made deterministic on
// PostgreSQL by holding a lock from a second connection until the request under test is seen
// waiting on it: a password change committing while a login with the old password is between
// its read and its session, a wrong 2FA code racing the right one, two invitations of one org
// accepted at once. (PGlite runs one statement at a time: the first two also run there, looser.)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { postgresSkip } from '../../test/helpers/postgres.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';
import { sha256Hex } from './tokens.ts';

const PASS = 'quiet harbour lantern 42';
const NEW_PASS = 'fresh granite orchard 17';

interface Ev {
  action: string;
  actor: { id?: string };
  details: { reason?: string };
}

/** Waits until `n` backends of this database wait for a lock (the request under test is parked). */
async function lockWaiters(client: pg.Client, n: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const { rows } = await client.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    );
    if ((rows[0]?.n ?? 0) >= n) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error(`never saw ${n} lock waiter(s)`);
}

const liveSessions = async (t: IdentityTestApp, userId: string) =>
  Number(
    (
      await t.store.db.query<{ n: number | string }>(
        'select count(*) as n from sessions where user_id = $1 and revoked_at is null',
        [userId],
      )
    )[0]?.n,
  );

describe('a login racing a change to the account (postgres)', { skip: postgresSkip }, () => {
  let t: IdentityTestApp;
  let admin: string;
  let locker: pg.Client;

  before(async () => {
    t = await identityTestApp('postgres', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    locker = new pg.Client({ connectionString: t.store.url });
    await locker.connect();
  });
  after(async () => {
    await locker.end();
    await t.close();
  });

  const newUser = async (email: string) => {
    const res = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
    assert.equal(res.statusCode, 201, res.body);
    return res.json().id as string;
  };

  /**
   * A login with the old password that has read the account (its hash) when a password change
   * commits: the login is parked on org_memberships (its next read) while the change runs.
   */
  const loginAcrossChange = async (email: string, changeToken: string) => {
    await locker.query('begin');
    await locker.query('lock table org_memberships in access exclusive mode');
    const login = t.login(email, PASS, { org: 'default' });
    try {
      await lockWaiters(locker, 1);
      t.now.ms += 1000; // the change is later than the password it replaces
      const changed = await t.call('POST', '/v1/auth/password', {
        token: changeToken,
        body: { current_password: PASS, new_password: NEW_PASS },
      });
      assert.equal(changed.statusCode, 200, changed.body);
    } finally {
      await locker.query('commit');
    }
    return login;
  };

  test('a login that read the old hash opens no session after the password changed', async () => {
    const email = 'paula@example.com';
    const id = await newUser(email);
    const own = await t.tokensFor(email, PASS);
    const login = await loginAcrossChange(email, own.access_token);
    assert.equal(login.statusCode, 401, 'the old password opened a session');
    assert.equal(login.json().code, 'invalid_credentials');
    assert.equal(await liveSessions(t, id), 1, "only the changer's own session is live");
    // Answered and counted as a wrong password.
    await t.app.steward.identity.settled();
    const failures = (
      await t.call('GET', '/v1/audit/events?action=user.login_failed&limit=50', { token: admin })
    ).json().data as Ev[];
    assert.deepEqual(
      failures.filter((e) => e.actor.id === id).map((e) => e.details.reason),
      ['wrong_password'],
    );
    // The new password works; the old one is refused.
    assert.equal((await t.login(email, NEW_PASS)).statusCode, 200);
    assert.equal((await t.login(email, PASS)).statusCode, 401);
  });

  test('with 2FA: no mfa_token is issued for a password changed since it was read', async () => {
    const email = 'quentin@example.com';
    const id = await newUser(email);
    const own = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: own.access_token, body: { password: PASS } })
    ).json();
    const on = await t.call('POST', '/v1/auth/totp/confirm', {
      token: own.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    assert.equal(on.statusCode, 200, on.body);
    t.now.ms += 30_000;
    const login = await loginAcrossChange(email, own.access_token);
    if (login.statusCode === 200) {
      // Before the fix: a challenge for the old password, created after the change, completed.
      const mfa = await t.call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: login.json().mfa_token, code: totpAt(secret, t.now.ms) },
      });
      assert.fail(`the old password got an mfa_token; its code step answered ${mfa.statusCode}`);
    }
    assert.equal(login.statusCode, 401, login.body);
    assert.equal(login.json().code, 'invalid_credentials');
    assert.equal(await liveSessions(t, id), 1);
  });

  test('a wrong 2FA code racing the right one cannot bring the spent mfa_token back', async () => {
    const email = 'rhea@example.com';
    await newUser(email);
    const own = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: own.access_token, body: { password: PASS } })
    ).json();
    const on = await t.call('POST', '/v1/auth/totp/confirm', {
      token: own.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    assert.equal(on.statusCode, 200, on.body);
    const codes = on.json().recovery_codes as string[];
    const pending = (await t.login(email, PASS)).json();
    assert.equal(pending.mfa_required, true);
    // Park the right code's transaction on the challenge's row, then the wrong code's count behind it.
    await locker.query('begin');
    await locker.query('select 1 from mfa_challenges where token_hash = $1 for update', [
      sha256Hex(pending.mfa_token),
    ]);
    let right: Promise<{ statusCode: number; body: string }>;
    let wrong: Promise<{ statusCode: number; body: string; json(): { code: string } }>;
    try {
      right = t.call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: pending.mfa_token, code: codes[0] },
      });
      await lockWaiters(locker, 1);
      wrong = t.call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: pending.mfa_token, code: 'aaaa-bbbb-cccc' },
      });
      await lockWaiters(locker, 2);
    } finally {
      await locker.query('commit');
    }
    assert.equal((await right).statusCode, 200, (await right).body);
    assert.equal((await wrong).json().code, 'mfa_code_invalid');
    const again = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: pending.mfa_token, code: codes[1] },
    });
    assert.equal(again.statusCode, 401, 'the spent mfa_token opened another session');
    assert.equal(again.json().code, 'mfa_token_invalid');
    const [row] = await t.store.db.query<{ used_at: unknown }>(
      'select used_at from mfa_challenges where token_hash = $1',
      [sha256Hex(pending.mfa_token)],
    );
    assert.notEqual(row?.used_at, null);
  });

  test('two invitations of one org accepted at once for an existing account: one joins, the rest 409', async () => {
    const email = 'sven@example.com';
    const id = await newUser(email);
    for (let round = 0; round < 3; round++) {
      const slug = `race-org-${round}`;
      const org = await t.call('POST', '/v1/orgs', { token: admin, body: { slug, name: slug } });
      assert.equal(org.statusCode, 201, org.body);
      const orgAdmin = (await t.login(ADMIN.email, ADMIN.password, { org: slug })).json().access_token;
      const tokens: string[] = [];
      // Five at once: a sixth proof of the account's password in flight would be refused (429)
      // unchecked, whatever the password (lockout.ts, withAccountSlot).
      for (let i = 0; i < 5; i++) {
        const inv = await t.call('POST', '/v1/invitations', {
          token: orgAdmin,
          body: { email, roles: [i % 2 ? 'viewer' : 'developer'] },
        });
        assert.equal(inv.statusCode, 201, inv.body);
        tokens.push(inv.json().token);
      }
      const answers = await Promise.all(
        tokens.map((token) =>
          t.call('POST', '/v1/auth/invitations/accept', { body: { token, password: PASS } }),
        ),
      );
      const codes = answers.map((r) => (r.statusCode === 201 ? 201 : `${r.statusCode} ${r.json().code}`));
      assert.equal(codes.filter((c) => c === 201).length, 1, JSON.stringify(codes));
      assert.equal(codes.filter((c) => c === '409 already_member').length, 4, JSON.stringify(codes));
      const member = await t.call('GET', `/v1/users/${id}`, { token: orgAdmin });
      assert.equal(member.statusCode, 200, member.body);
      assert.equal(member.json().roles.length, 1, 'the winning invitation’s roles only');
    }
  });

  test('two password changes with the same old password: the first wins, the second is 409, not a silent overwrite', async () => {
    const id = await newUser('petra@example.com');
    const a = (await t.tokensFor('petra@example.com', PASS)).access_token;
    const b = (await t.tokensFor('petra@example.com', PASS)).access_token;
    // Both have checked the old password when they reach the row: held here until both wait on it.
    await locker.query('begin');
    await locker.query('select 1 from users where id = $1 for update', [id]);
    const change = (token: string, next: string) =>
      t.call('POST', '/v1/auth/password', { token, body: { current_password: PASS, new_password: next } });
    const both = Promise.all([change(a, NEW_PASS), change(b, 'second granite orchard 99')]);
    try {
      await lockWaiters(locker, 2);
    } finally {
      await locker.query('commit');
    }
    const answers = (await both).map((r) => r.statusCode).sort();
    assert.deepEqual(answers, [200, 409]);
    const winner = (await both).findIndex((r) => r.statusCode === 200);
    const [won, lost] =
      winner === 0 ? [NEW_PASS, 'second granite orchard 99'] : ['second granite orchard 99', NEW_PASS];
    assert.equal((await t.login('petra@example.com', won)).statusCode, 200);
    assert.equal((await t.login('petra@example.com', lost)).statusCode, 401);
    const changes = (
      await t.call('GET', `/v1/audit/events?action=user.password_changed&resource_id=${id}`, { token: admin })
    ).json().data;
    assert.equal(changes.length, 1, 'one change on the record');
  });
});

describe('a login racing a password change, many times over (pglite)', () => {
  let t: IdentityTestApp;

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '100000' });
  });
  after(() => t.close());

  test('four login loops with the old password across a change: no session of theirs survives it', async () => {
    const admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const created = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'tomas@example.com', password: PASS },
    });
    assert.equal(created.statusCode, 201, created.body);
    const id = created.json().id as string;
    const own = await t.tokensFor('tomas@example.com', PASS);
    let stop = false;
    let opened = 0;
    const loop = async () => {
      while (!stop) {
        const res = await t.login('tomas@example.com', PASS);
        if (res.statusCode === 200) opened++;
      }
    };
    const loops = [loop(), loop(), loop(), loop()];
    await new Promise((resolve) => setTimeout(resolve, 150));
    t.now.ms += 1000;
    const changed = await t.call('POST', '/v1/auth/password', {
      token: own.access_token,
      body: { current_password: PASS, new_password: NEW_PASS },
    });
    assert.equal(changed.statusCode, 200, changed.body);
    await new Promise((resolve) => setTimeout(resolve, 150));
    stop = true;
    await Promise.all(loops);
    assert.ok(opened > 0, 'the loops logged in before the change');
    assert.equal(await liveSessions(t, id), 1, "only the changer's own session is live");
  });

  test('two password changes at once with the same old password: exactly one succeeds', async () => {
    const admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const created = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'paula@example.com', password: PASS },
    });
    assert.equal(created.statusCode, 201, created.body);
    const a = (await t.tokensFor('paula@example.com', PASS)).access_token;
    const b = (await t.tokensFor('paula@example.com', PASS)).access_token;
    const answers = await Promise.all(
      [
        [a, NEW_PASS],
        [b, 'second granite orchard 99'],
      ].map(([token, next]) =>
        t.call('POST', '/v1/auth/password', { token, body: { current_password: PASS, new_password: next } }),
      ),
    );
    // The loser either checked the old password before the winner committed (409) or after (403).
    const codes = answers.map((r) => r.statusCode).sort();
    assert.equal(codes[0], 200, JSON.stringify(codes));
    assert.ok(codes[1] === 409 || codes[1] === 403, JSON.stringify(codes));
  });
});
