// Every proof of an account's secrets counts like a login's: the current password of a password
// change, the password and code that turn 2FA off, the password of an existing account accepting
// an invitation. Lockout (423), the per-IP limiter (429) and an audit event per failure.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

const PASS = 'seven sleepy walruses';
const WRONG = 'not the password at all';

interface Ev {
  action: string;
  actor: { id: string | null; name: string | null };
  resource: { id: string | null };
  details: Record<string, unknown>;
  org_id?: string;
}

describe('failed proofs outside login count toward lockout (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  async function newUser(email: string): Promise<{ id: string; token: string }> {
    const res = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
    assert.equal(res.statusCode, 201, res.body);
    return { id: res.json().id, token: (await t.tokensFor(email, PASS)).access_token };
  }

  const events = async (userId: string): Promise<Ev[]> =>
    (await t.call('GET', `/v1/audit/events?resource_id=${userId}&limit=500`, { token: admin })).json().data;

  const changePassword = (token: string, current: string) =>
    t.call('POST', '/v1/auth/password', {
      token,
      body: { current_password: current, new_password: 'a brand new passphrase' },
    });

  test('wrong current passwords lock the account; a locked account refuses the change too', async () => {
    const u = await newUser('olive@example.com');
    for (let i = 1; i <= 4; i++) {
      const res = await changePassword(u.token, WRONG);
      assert.equal(res.statusCode, 403, res.body);
      assert.equal(res.json().code, 'password_incorrect');
    }
    const fifth = await changePassword(u.token, WRONG);
    assert.equal(fifth.statusCode, 423, fifth.body);
    assert.equal(fifth.json().code, 'account_locked');
    assert.equal(Date.parse(fifth.json().locked_until) - t.now.ms, 15 * 60_000);
    const right = await changePassword(u.token, PASS);
    assert.equal(right.statusCode, 423, 'the right password is refused while locked');
    assert.equal((await t.login('olive@example.com', PASS)).statusCode, 423, 'login is locked too');

    const evs = await events(u.id);
    const failed = evs.filter((e) => e.action === 'user.login_failed');
    assert.equal(failed.filter((e) => e.details.reason === 'wrong_password').length, 5);
    assert.ok(failed.every((e) => e.actor.id === u.id));
    assert.ok(failed.some((e) => e.details.during === 'password_change'));
    assert.ok(failed.some((e) => e.details.reason === 'locked'));
    assert.equal(evs.filter((e) => e.action === 'user.locked').length, 1);
    assert.ok(!JSON.stringify(evs).includes(WRONG), 'no password in the audit trail');
  });

  test('a successful change resets the failure count, as a login does', async () => {
    const u = await newUser('pablo@example.com');
    for (let i = 0; i < 4; i++) {
      assert.equal((await t.login('pablo@example.com', WRONG)).json().code, 'invalid_credentials');
    }
    assert.equal((await changePassword(u.token, PASS)).statusCode, 200);
    // Four more failures do not lock: the count started again.
    for (let i = 0; i < 4; i++) {
      assert.equal((await t.login('pablo@example.com', WRONG)).json().code, 'invalid_credentials');
    }
    assert.equal((await t.login('pablo@example.com', 'a brand new passphrase')).statusCode, 200);
  });

  test('wrong password or code on totp/disable count and lock; audited without the code', async () => {
    const u = await newUser('quinn@example.com');
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: u.token, body: { password: PASS } })
    ).json();
    const confirm = await t.call('POST', '/v1/auth/totp/confirm', {
      token: u.token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    assert.equal(confirm.statusCode, 200, confirm.body);
    const disable = (password: string, code: string) =>
      t.call('POST', '/v1/auth/totp/disable', { token: u.token, body: { password, code } });
    t.now.ms += 60_000;
    const good = totpAt(secret, t.now.ms);
    const badCode = good === '000000' ? '111111' : '000000';
    for (let i = 0; i < 2; i++) assert.equal((await disable(WRONG, good)).json().code, 'password_incorrect');
    for (let i = 0; i < 2; i++) assert.equal((await disable(PASS, badCode)).json().code, 'totp_code_invalid');
    const fifth = await disable(PASS, badCode);
    assert.equal(fifth.statusCode, 423, fifth.body);
    assert.equal(fifth.json().code, 'account_locked');
    assert.equal((await disable(PASS, good)).statusCode, 423, 'locked: even both right proofs are refused');

    const evs = await events(u.id);
    const failed = evs.filter((e) => e.action === 'user.login_failed' && e.details.during === 'totp_disable');
    assert.deepEqual(failed.map((e) => e.details.reason).sort(), [
      'locked',
      'wrong_password',
      'wrong_password',
      'wrong_totp',
      'wrong_totp',
      'wrong_totp',
    ]);
    assert.ok(!JSON.stringify(evs).includes(badCode) && !JSON.stringify(evs).includes(WRONG));
  });

  test("another org's admin cannot guess an account's password by invitation", async () => {
    // rita belongs to the default org; beta's admin (mallory) invites her email.
    const rita = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'rita@example.com', password: PASS, full_name: 'Rita Secret' },
    });
    assert.equal(rita.statusCode, 201, rita.body);
    const ritaId = rita.json().id;
    const beta = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'beta', name: 'Beta' } });
    assert.equal(beta.statusCode, 201, beta.body);
    const inBeta = (await t.login(ADMIN.email, ADMIN.password, { org: 'beta' })).json().access_token;
    const mallory = await t.call('POST', '/v1/users', {
      token: inBeta,
      body: { email: 'mallory@beta.example', password: PASS, roles: ['admin'] },
    });
    assert.equal(mallory.statusCode, 201, mallory.body);
    const malloryToken = (await t.tokensFor('mallory@beta.example', PASS)).access_token;
    const inv = await t.call('POST', '/v1/invitations', {
      token: malloryToken,
      body: { email: 'rita@example.com' },
    });
    assert.equal(inv.statusCode, 201, inv.body);
    const accept = (password: string) =>
      t.call('POST', '/v1/auth/invitations/accept', { body: { token: inv.json().token, password } });

    for (let i = 0; i < 4; i++) assert.equal((await accept(WRONG)).json().code, 'invalid_credentials');
    const fifth = await accept(WRONG);
    assert.equal(fifth.statusCode, 423, fifth.body);
    assert.equal(fifth.json().code, 'account_locked');
    assert.equal((await accept(PASS)).statusCode, 423, 'locked: the right password is refused');
    assert.equal((await t.login('rita@example.com', PASS)).statusCode, 423);

    // Audited in rita's own org, not in beta's, where her id and name would leak.
    const home = (
      await t.call('GET', `/v1/audit/events?resource_id=${ritaId}&limit=500`, { token: admin })
    ).json().data as Ev[];
    const failed = home.filter((e) => e.action === 'user.login_failed');
    assert.equal(failed.filter((e) => e.details.during === 'invitation_accept').length, 6);
    assert.equal(home.filter((e) => e.action === 'user.locked').length, 1);
    const betaLog = await t.call('GET', '/v1/audit/events?limit=500', { token: malloryToken });
    assert.equal(betaLog.statusCode, 200, betaLog.body);
    assert.ok(!betaLog.body.includes(ritaId) && !betaLog.body.includes('Rita Secret'));

    // Unlocked, the right password joins and resets the count.
    assert.equal((await t.call('POST', `/v1/users/${ritaId}/unlock`, { token: admin })).statusCode, 200);
    for (let i = 0; i < 3; i++) await accept(WRONG);
    const joined = await accept(PASS);
    assert.equal(joined.statusCode, 201, joined.body);
    for (let i = 0; i < 4; i++) await t.login('rita@example.com', WRONG);
    assert.equal((await t.login('rita@example.com', PASS)).statusCode, 200, 'the count started again');
  });
});

describe('failed proofs outside login count toward the per-IP limiter (pglite)', () => {
  let t: IdentityTestApp;

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '3' });
  });
  after(() => t.close());

  test('a stolen token is no password oracle: 429 with retry-after, then logins too', async () => {
    const { access_token: token } = await t.tokensFor(ADMIN.email, ADMIN.password);
    const change = () =>
      t.call('POST', '/v1/auth/password', {
        token,
        body: { current_password: WRONG, new_password: 'a brand new passphrase' },
      });
    for (let i = 0; i < 3; i++) assert.equal((await change()).statusCode, 403);
    const limited = await change();
    assert.equal(limited.statusCode, 429, limited.body);
    assert.equal(limited.json().code, 'rate_limited');
    assert.ok(Number(limited.headers['retry-after']) > 0);
    assert.equal((await t.login(ADMIN.email, ADMIN.password)).statusCode, 429, 'the IP is slowed for logins');
  });
});
