// What an org admin may do to an account, and what the account's owner must prove: turning 2FA on
// takes the current password (a proof counted as a login's), an admin with users:admin resets a
// user's 2FA, and what every org of an account shares (name, username, lock, 2FA) is changed by
// an org admin only for an account of that org alone. GET /v1/users/{id} shows who added the user
// to the caller's org. POST /v1/orgs is declared as what it is: superuser only.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

const PASS = 'lichen on the north wall';
const WRONG = 'not the password at all';

interface Ev {
  action: string;
  org_id: string;
  actor: { id: string | null };
  success: boolean;
  changes: { before?: Record<string, unknown>; after?: Record<string, unknown> } | null;
  details: Record<string, unknown>;
}

for (const { kind, skip } of STORES) {
  describe(`2FA enrolment needs the password; admins reset 2FA; shared accounts (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    let root: string; // superuser, admin of the first org
    let rootInBeta: string;
    let adminA: string; // org admin (not a superuser) of the first org
    let adminAId: string;
    let adminB: string; // org admin (not a superuser) of beta
    let adminBId: string;

    const call = (...args: Parameters<IdentityTestApp['call']>) => t.call(...args);
    const token = async (email: string, org?: string) => {
      const res = await t.login(email, PASS, org ? { org } : {});
      assert.equal(res.statusCode, 200, res.body);
      return res.json().access_token as string;
    };
    const create = async (by: string, email: string, roles: string[] = []) => {
      const res = await call('POST', '/v1/users', { token: by, body: { email, password: PASS, roles } });
      assert.equal(res.statusCode, 201, res.body);
      return res.json().id as string;
    };
    const events = async (by: string, userId: string, action: string): Promise<Ev[]> =>
      (
        await call('GET', `/v1/audit/events?resource_id=${userId}&action=${action}&limit=100`, { token: by })
      ).json().data;
    /** A user of the first org, created by adminA, with 2FA on. */
    const twoFactorUser = async (email: string) => {
      const id = await create(adminA, email);
      const own = await token(email);
      const enrol = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: PASS } });
      assert.equal(enrol.statusCode, 200, enrol.body);
      const on = await call('POST', '/v1/auth/totp/confirm', {
        token: own,
        body: { code: totpAt(enrol.json().secret, t.now.ms) },
      });
      assert.equal(on.statusCode, 200, on.body);
      return id;
    };
    /** Adds an account of the first org to beta, by beta's admin's invitation. */
    const joinBeta = async (email: string) => {
      const inv = await call('POST', '/v1/invitations', { token: adminB, body: { email } });
      assert.equal(inv.statusCode, 201, inv.body);
      const joined = await call('POST', '/v1/auth/invitations/accept', {
        body: { token: inv.json().token, password: PASS },
      });
      assert.ok(joined.statusCode < 300, joined.body);
    };

    before(async () => {
      t = await identityTestApp(kind, { LOGIN_IP_MAX_FAILURES: '1000' });
      root = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      adminAId = await create(root, 'anna@example.com', ['admin']);
      adminA = await token('anna@example.com');
      const beta = await call('POST', '/v1/orgs', { token: root, body: { slug: 'beta', name: 'Beta' } });
      assert.equal(beta.statusCode, 201, beta.body);
      rootInBeta = (await t.login(ADMIN.email, ADMIN.password, { org: 'beta' })).json().access_token;
      adminBId = await create(rootInBeta, 'boris@example.com', ['admin']);
      adminB = await token('boris@example.com');
    });
    after(() => t.close());

    test('enrolling takes the current password: a wrong one is refused and counted, the right one works', async () => {
      const id = await create(adminA, 'carla@example.com');
      const own = await token('carla@example.com');
      const none = await call('POST', '/v1/auth/totp/enroll', { token: own });
      assert.equal(none.statusCode, 400, none.body);
      assert.equal(none.json().code, 'validation_failed');
      const wrong = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: WRONG } });
      assert.equal(wrong.statusCode, 403, wrong.body);
      assert.equal(wrong.json().code, 'password_incorrect');
      assert.ok(!('secret' in wrong.json()), 'no secret for a wrong password');
      const [failed] = await events(adminA, id, 'user.login_failed');
      assert.equal(failed?.details.during, 'totp_enroll');
      assert.equal(failed?.details.reason, 'wrong_password');
      // Counted toward the lock as a login's failures: the fifth locks (LOGIN_MAX_FAILURES 5).
      for (let i = 0; i < 3; i++) {
        const again = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: WRONG } });
        assert.equal(again.json().code, 'password_incorrect');
      }
      const fifth = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: WRONG } });
      assert.equal(fifth.statusCode, 423, fifth.body);
      assert.equal(fifth.json().code, 'account_locked');
      const locked = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: PASS } });
      assert.equal(locked.statusCode, 423, 'locked: even the right password is not checked');
      assert.equal((await call('POST', `/v1/users/${id}/unlock`, { token: adminA })).statusCode, 200);
      // One failure, then the right password: enrolled, and the count starts again.
      await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: WRONG } });
      const ok = await call('POST', '/v1/auth/totp/enroll', { token: own, body: { password: PASS } });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.match(ok.json().otpauth_uri, /^otpauth:\/\/totp\//);
      const confirm = await call('POST', '/v1/auth/totp/confirm', {
        token: own,
        body: { code: totpAt(ok.json().secret, t.now.ms) },
      });
      assert.equal(confirm.statusCode, 200, confirm.body);
      // The right password cleared the failure before it: an unlock finds nothing to clear.
      const unlocked = await call('POST', `/v1/users/${id}/unlock`, { token: adminA });
      assert.equal(unlocked.json().totp_enabled, true);
      assert.equal((await events(adminA, id, 'user.unlocked')).length, 1, 'only the first unlock');
    });

    test('an admin with users:admin resets a 2FA; other orgs 404, viewers and managers 403, not oneself', async () => {
      const id = await twoFactorUser('dora@example.com');
      assert.equal((await t.login('dora@example.com', PASS)).json().mfa_required, true);
      const pending = (await t.login('dora@example.com', PASS)).json().mfa_token as string;
      await create(adminA, 'vic@example.com', ['viewer']);
      await create(adminA, 'max@example.com', ['manager']);
      for (const email of ['vic@example.com', 'max@example.com']) {
        const refused = await call('POST', `/v1/users/${id}/totp/reset`, { token: await token(email) });
        assert.equal(refused.statusCode, 403, refused.body);
        assert.equal(refused.json().code, 'permission_denied');
        assert.equal(refused.json().permission, 'users:admin');
      }
      const otherOrg = await call('POST', `/v1/users/${id}/totp/reset`, { token: adminB });
      assert.equal(otherOrg.statusCode, 404, otherOrg.body);
      assert.equal(otherOrg.json().code, 'user_not_found');
      const self = await call('POST', `/v1/users/${adminAId}/totp/reset`, { token: adminA });
      assert.equal(self.statusCode, 403, self.body);
      assert.equal(self.json().code, 'self_modification');
      const ofRoot = await call('POST', `/v1/users/${t.adminId}/totp/reset`, { token: adminA });
      assert.equal(ofRoot.json().code, 'superuser_protected');

      const reset = await call('POST', `/v1/users/${id}/totp/reset`, { token: adminA });
      assert.equal(reset.statusCode, 200, reset.body);
      assert.equal(reset.json().totp_enabled, false);
      const login = await t.login('dora@example.com', PASS);
      assert.equal(login.statusCode, 200, login.body);
      assert.ok(login.json().access_token, 'no second step any more');
      // The login pending before the reset cannot finish: its code step is gone with the secret.
      const late = await call('POST', '/v1/auth/login/mfa', { body: { mfa_token: pending, code: '123456' } });
      assert.equal(late.statusCode, 401, late.body);
      const done = async () => (await events(adminA, id, 'user.totp_disabled')).filter((e) => e.success);
      const [event] = await done();
      assert.equal(event?.details.by, 'admin');
      assert.equal(event?.actor.id, adminAId);
      // The refusals are on the record too (the viewer's and the manager's), as other user-admin
      // refusals are.
      const refusals = (await events(adminA, id, 'user.totp_disabled')).filter((e) => !e.success);
      assert.deepEqual(
        refusals.map((e) => e.details.reason),
        ['permission_denied', 'permission_denied'],
      );
      // 2FA off: answered as is, nothing more audited; she can enrol again.
      assert.equal((await call('POST', `/v1/users/${id}/totp/reset`, { token: adminA })).statusCode, 200);
      assert.equal((await done()).length, 1);
      const again = await call('POST', '/v1/auth/totp/enroll', {
        token: login.json().access_token,
        body: { password: PASS },
      });
      assert.equal(again.statusCode, 200, again.body);
    });

    test("an account shared with another org: name, username, lock and 2FA are a superuser's to change", async () => {
      const id = await twoFactorUser('sam@example.com');
      await joinBeta('sam@example.com');
      // Failures in beta lock the account (the lock is the account's).
      for (let i = 0; i < 5; i++) await t.login('sam@example.com', WRONG, { org: 'beta' });
      await t.app.steward.identity.settled();
      const seen = await call('GET', `/v1/users/${id}`, { token: adminA });
      assert.ok(seen.json().locked_until, 'locked');
      for (const [by, label] of [
        [adminA, 'the org that created it'],
        [adminB, 'the org it joined'],
      ] as const) {
        const unlock = await call('POST', `/v1/users/${id}/unlock`, { token: by });
        assert.equal(unlock.statusCode, 403, `${label}: ${unlock.body}`);
        assert.equal(unlock.json().code, 'shared_account');
        const rename = await call('PATCH', `/v1/users/${id}`, { token: by, body: { full_name: 'Renamed' } });
        assert.equal(rename.statusCode, 403, `${label}: ${rename.body}`);
        assert.equal(rename.json().code, 'shared_account');
        const handle = await call('PATCH', `/v1/users/${id}`, { token: by, body: { username: 'sammy' } });
        assert.equal(handle.json().code, 'shared_account');
        const reset = await call('POST', `/v1/users/${id}/totp/reset`, { token: by });
        assert.equal(reset.statusCode, 403, `${label}: ${reset.body}`);
        assert.equal(reset.json().code, 'shared_account');
      }
      const still = (await call('GET', `/v1/users/${id}`, { token: adminB })).json();
      assert.ok(still.locked_until, 'still locked');
      assert.equal(still.full_name, null);
      assert.equal(still.totp_enabled, true);
      // Refusals are audited where they were asked.
      const refused = await events(adminB, id, 'user.unlocked');
      assert.equal(refused[0]?.success, false);
      assert.equal(refused[0]?.details.reason, 'shared_account');
      // What is the org's own stays its admin's: roles.
      const roles = await call('PATCH', `/v1/users/${id}`, { token: adminB, body: { roles: ['viewer'] } });
      assert.equal(roles.statusCode, 200, roles.body);
      // A superuser may, from either org.
      const unlock = await call('POST', `/v1/users/${id}/unlock`, { token: rootInBeta });
      assert.equal(unlock.statusCode, 200, unlock.body);
      assert.equal(unlock.json().locked_until, null);
      const renamed = await call('PATCH', `/v1/users/${id}`, { token: root, body: { full_name: 'Sam' } });
      assert.equal(renamed.statusCode, 200, renamed.body);
      // Once beta deactivates its membership, the account is the first org's alone again.
      assert.equal((await call('DELETE', `/v1/users/${id}`, { token: adminB })).statusCode, 204);
      const reset = await call('POST', `/v1/users/${id}/totp/reset`, { token: adminA });
      assert.equal(reset.statusCode, 200, reset.body);
      const rename = await call('PATCH', `/v1/users/${id}`, { token: adminA, body: { full_name: 'Samuel' } });
      assert.equal(rename.statusCode, 200, rename.body);
      assert.equal(rename.json().full_name, 'Samuel');
    });

    test('GET /v1/users/{id} shows who added the user to the org asking, not to another org', async () => {
      const id = await create(adminA, 'tess@example.com');
      await joinBeta('tess@example.com');
      const inA = await call('GET', `/v1/users/${id}`, { token: adminA });
      assert.equal(inA.json().created_by, adminAId);
      const inB = await call('GET', `/v1/users/${id}`, { token: adminB });
      assert.equal(inB.json().created_by, adminBId, "the inviter in beta, not the other org's admin");
      const listed = (await call('GET', '/v1/users?limit=100', { token: adminB })).json().data;
      assert.equal(listed.find((u: { id: string }) => u.id === id)?.created_by, adminBId);
      assert.ok(!JSON.stringify(listed).includes(adminAId), "beta's list names nobody of the other org");
    });
  });
}

describe('POST /v1/orgs is declared superuser-only, as enforced (pglite)', () => {
  let t: IdentityTestApp;
  before(async () => {
    t = await identityTestApp('pglite');
  });
  after(() => t.close());

  test('no org:admin in the document; an org admin is refused, a superuser creates', async () => {
    const doc = (await t.call('GET', '/openapi.json')).json();
    const op = doc.paths['/v1/orgs'].post;
    assert.equal(op['x-steward-permission'], undefined, 'org:admin is not what it takes');
    assert.notEqual(op['x-steward-access'], 'permission');
    assert.match(op.description, /Superuser only/);
    assert.doesNotMatch(op.description, /Requires `org:admin`/);
    assert.ok(op.responses['403']['x-steward-codes'].includes('permission_denied'));
    const root = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const made = await t.call('POST', '/v1/users', {
      token: root,
      body: { email: 'olga@example.com', password: PASS, roles: ['admin'] },
    });
    assert.equal(made.statusCode, 201, made.body);
    const orgAdmin = (await t.tokensFor('olga@example.com', PASS)).access_token;
    const refused = await t.call('POST', '/v1/orgs', { token: orgAdmin, body: { slug: 'gamma', name: 'G' } });
    assert.equal(refused.statusCode, 403, refused.body);
    assert.equal(refused.json().code, 'permission_denied');
    const created = await t.call('POST', '/v1/orgs', { token: root, body: { slug: 'gamma', name: 'G' } });
    assert.equal(created.statusCode, 201, created.body);
  });
});
