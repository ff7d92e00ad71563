import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from './test-support.ts';

const PASS = 'lantern meadow copper 77';
const HOUR = 3_600_000;

interface Ev {
  action: string;
  actor: { id: string };
  resource: { id: string };
  details?: Record<string, unknown>;
}

for (const { kind, skip } of STORES) {
  describe(`registration: invitations, open sign-up, admin sessions (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    let admin: string;
    let manager: string;
    let viewer: string;
    let globexAdmin: string;

    before(async () => {
      t = await identityTestApp(kind, { LOGIN_IP_MAX_FAILURES: '1000' });
      admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      for (const [email, role] of [
        ['mona@example.com', 'manager'],
        ['vic@example.com', 'viewer'],
      ] as const) {
        const res = await t.call('POST', '/v1/users', {
          token: admin,
          body: { email, password: PASS, roles: [role] },
        });
        assert.equal(res.statusCode, 201, res.body);
      }
      manager = (await t.tokensFor('mona@example.com', PASS)).access_token;
      viewer = (await t.tokensFor('vic@example.com', PASS)).access_token;
      const org = await t.call('POST', '/v1/orgs', {
        token: admin,
        body: { slug: 'globex', name: 'Globex' },
      });
      assert.equal(org.statusCode, 201, org.body);
      const inGlobex = (await t.login(ADMIN.email, ADMIN.password, { org: 'globex' })).json().access_token;
      const ivan = await t.call('POST', '/v1/users', {
        token: inGlobex,
        body: { email: 'ivan@globex.example', password: PASS, roles: ['admin'] },
      });
      assert.equal(ivan.statusCode, 201, ivan.body);
      globexAdmin = (await t.tokensFor('ivan@globex.example', PASS)).access_token;
    });
    after(() => t.close());

    const invite = (token: string, body: Record<string, unknown>) =>
      t.call('POST', '/v1/invitations', { token, body });
    const accept = (body: Record<string, unknown>) => t.call('POST', '/v1/auth/invitations/accept', { body });

    test('an invitation is accepted once: the user exists in the org with the invited roles', async () => {
      const created = await invite(admin, { email: 'nina@example.com', roles: ['developer'] });
      assert.equal(created.statusCode, 201, created.body);
      const inv = created.json();
      assert.match(inv.token, /^inv_[A-Za-z0-9_-]{43}$/);
      assert.equal(inv.status, 'pending');
      assert.deepEqual(inv.roles, ['developer']);
      assert.equal(inv.org_id, t.orgId);
      assert.equal(Date.parse(inv.expires_at) - t.now.ms, 168 * HOUR, 'default lifetime: 7 days');

      // The token is never shown again.
      const listed = await t.call('GET', '/v1/invitations', { token: admin });
      assert.equal(listed.statusCode, 200);
      const row = listed.json().data.find((i: { id: string }) => i.id === inv.id);
      assert.equal(row.status, 'pending');
      assert.ok(!('token' in row) && !listed.body.includes(inv.token));

      // Password rules apply.
      for (const [password, code] of [
        ['short pass', 'password_too_short'],
        ['password1234', 'password_too_common'],
        ['nina@example.com rocks!', 'password_contains_identity'],
      ]) {
        const res = await accept({ token: inv.token, password });
        assert.equal(res.statusCode, 400, res.body);
        assert.equal(res.json().code, code);
      }

      const ok = await accept({ token: inv.token, password: PASS, username: 'nina', full_name: 'Nina' });
      assert.equal(ok.statusCode, 201, ok.body);
      const user = ok.json().user;
      assert.equal(ok.json().org_id, t.orgId);
      assert.equal(user.email, 'nina@example.com');
      assert.equal(user.username, 'nina');
      assert.deepEqual(user.roles, ['developer']);
      assert.ok(!ok.body.includes('argon2'));

      const again = await accept({ token: inv.token, password: PASS });
      assert.equal(again.statusCode, 409);
      assert.equal(again.json().code, 'invitation_used');

      const login = await t.login('nina@example.com', PASS);
      assert.equal(login.statusCode, 200, login.body);
      const me = await t.call('GET', '/v1/me', { token: login.json().access_token });
      assert.equal(me.json().org_id, t.orgId);
      assert.deepEqual(me.json().roles, ['developer']);

      const after = (await t.call('GET', '/v1/invitations', { token: admin })).json().data;
      const done = after.find((i: { id: string }) => i.id === inv.id);
      assert.equal(done.status, 'accepted');
      assert.equal(done.accepted_user_id, user.id);

      // An accepted invitation cannot be revoked.
      const revoke = await t.call('DELETE', `/v1/invitations/${inv.id}`, { token: admin });
      assert.equal(revoke.statusCode, 409);
      assert.equal(revoke.json().code, 'invitation_used');

      const events = (await t.call('GET', '/v1/audit/events?limit=500', { token: admin })).json().data;
      const of = (action: string) => events.filter((e: { action: string }) => e.action === action);
      assert.ok(of('invitation.created').some((e: Ev) => e.resource.id === inv.id));
      const accepted = of('invitation.accepted').find((e: Ev) => e.resource.id === inv.id);
      assert.ok(accepted, 'invitation.accepted audited');
      assert.equal(accepted.actor.id, user.id);
      assert.ok(of('user.created').some((e: Ev) => e.resource.id === user.id));
      assert.ok(!JSON.stringify(events).includes(inv.token), 'no token in the audit trail');
      assert.ok(!JSON.stringify(events).includes(PASS), 'no password in the audit trail');
    });

    test('revoked, expired and unknown tokens are refused with their own codes', async () => {
      const revoked = (await invite(admin, { email: 'olga@example.com' })).json();
      const del = await t.call('DELETE', `/v1/invitations/${revoked.id}`, { token: admin });
      assert.equal(del.statusCode, 204);
      assert.equal(
        (await t.call('DELETE', `/v1/invitations/${revoked.id}`, { token: admin })).statusCode,
        204,
        'revoking twice is harmless',
      );
      const r = await accept({ token: revoked.token, password: PASS });
      assert.equal(r.statusCode, 410);
      assert.equal(r.json().code, 'invitation_revoked');

      const short = (await invite(admin, { email: 'pete@example.com', expires_in_hours: 1 })).json();
      t.now.ms += HOUR + 1000;
      try {
        const e = await accept({ token: short.token, password: PASS });
        assert.equal(e.statusCode, 410);
        assert.equal(e.json().code, 'invitation_expired');
        // The admin's access token has expired by now (15 min): a new login.
        const later = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
        const listed = (await t.call('GET', '/v1/invitations', { token: later })).json().data;
        assert.equal(listed.find((i: { id: string }) => i.id === short.id).status, 'expired');
        assert.equal(listed.find((i: { id: string }) => i.id === revoked.id).status, 'revoked');
      } finally {
        t.now.ms -= HOUR + 1000;
      }
      assert.equal((await t.login('pete@example.com', PASS)).statusCode, 401, 'no user was created');

      const unknown = await accept({ token: `inv_${'A'.repeat(43)}`, password: PASS });
      assert.equal(unknown.statusCode, 404);
      assert.equal(unknown.json().code, 'invitation_invalid');

      const events = (await t.call('GET', '/v1/audit/events?limit=500', { token: admin })).json().data;
      const revokes = events.filter(
        (e: Ev) => e.action === 'invitation.revoked' && e.resource.id === revoked.id,
      );
      assert.equal(revokes.length, 1, 'one invitation.revoked event, not two');
    });

    test('invitations: roles are checked against the inviter, members refused, other orgs 404', async () => {
      const escalate = await invite(manager, { email: 'quinn@example.com', roles: ['admin'] });
      assert.equal(escalate.statusCode, 403, escalate.body);
      const unknownRole = await invite(admin, { email: 'quinn@example.com', roles: ['no-such-role'] });
      assert.equal(unknownRole.statusCode, 404);
      assert.equal(unknownRole.json().code, 'role_not_found');
      // Nothing of the dry run was kept: the email is still free and no user exists.
      const fine = await invite(manager, { email: 'quinn@example.com', roles: ['viewer'] });
      assert.equal(fine.statusCode, 201, fine.body);
      assert.equal((await t.login('quinn@example.com', PASS)).statusCode, 401);

      const taken = await invite(admin, { email: 'VIC@example.com' });
      assert.equal(taken.statusCode, 409);
      assert.equal(taken.json().code, 'already_member');

      const forbidden = await invite(viewer, { email: 'rita@example.com' });
      assert.equal(forbidden.statusCode, 403);
      assert.equal(
        (await t.call('POST', '/v1/invitations', { body: { email: 'a@b.example' } })).statusCode,
        401,
      );

      // Another org's admin sees none of ours and cannot revoke them.
      const theirs = await t.call('GET', '/v1/invitations', { token: globexAdmin });
      assert.ok(!theirs.body.includes(fine.json().id));
      const cross = await t.call('DELETE', `/v1/invitations/${fine.json().id}`, { token: globexAdmin });
      assert.equal(cross.statusCode, 404);
      assert.equal(cross.json().code, 'invitation_not_found');
      const madeUp = await t.call('DELETE', '/v1/invitations/inv_nonsense', { token: admin });
      assert.equal(madeUp.statusCode, 404);
      // Still pending for its own org.
      assert.equal(
        (await accept({ token: fine.json().token, password: PASS, username: 'quinn' })).statusCode,
        201,
      );
    });

    test('an account from another org joins with its own password; a wrong one is refused', async () => {
      // Gus has an account in Globex; our admin invites him here as a developer.
      const gus = await t.call('POST', '/v1/users', {
        token: globexAdmin,
        body: { email: 'gus@globex.example', password: PASS, roles: ['manager'] },
      });
      assert.equal(gus.statusCode, 201, gus.body);
      const created = await invite(admin, { email: 'Gus@Globex.example', roles: ['developer'] });
      assert.equal(created.statusCode, 201, created.body);
      const { token, id } = created.json();
      const wrong = await accept({ token, password: 'not his password at all' });
      assert.equal(wrong.statusCode, 401);
      assert.equal(wrong.json().code, 'invalid_credentials');
      const listed = await t.call('GET', '/v1/invitations', { token: admin });
      assert.equal(
        listed.json().data.find((i: { id: string }) => i.id === id)?.status,
        'pending',
        'a failed proof does not use the invitation',
      );
      const joined = await accept({ token, password: PASS });
      assert.equal(joined.statusCode, 201, joined.body);
      assert.deepEqual(joined.json().user.roles, ['developer']);
      assert.equal(joined.json().user.id, gus.json().id, 'the same account, not a new one');
      assert.equal((await accept({ token, password: PASS })).json().code, 'invitation_used');
      // Same account, same password, now in both orgs: each login lands where it is asked to.
      const here = await t.login('gus@globex.example', PASS, { org: 'default' });
      assert.equal(here.statusCode, 200, here.body);
      const me = await t.call('GET', '/v1/me', { token: here.json().access_token });
      assert.deepEqual(me.json().roles, ['developer']);
      const there = await t.login('gus@globex.example', PASS, { org: 'globex' });
      const meThere = await t.call('GET', '/v1/me', { token: there.json().access_token });
      assert.deepEqual(meThere.json().roles, ['manager'], 'his roles in Globex are untouched');
      // A member is not invited twice.
      const again = await invite(admin, { email: 'gus@globex.example' });
      assert.equal(again.json().code, 'already_member');
      const events = (
        await t.call('GET', '/v1/audit/events?action=invitation.accepted', { token: admin })
      ).json().data as Ev[];
      assert.ok(events.some((e) => e.resource.id === id && e.details?.existing_account === true));
    });

    test('sign-up role: new users start with it; only a role the admin may assign; a deleted one means none', async () => {
      const put = (token: string, body: Record<string, unknown>) =>
        t.call('PUT', '/v1/auth/settings', { token, body });
      const signup = (email: string) =>
        t.call('POST', '/v1/auth/signup', { body: { email, password: PASS, org: 'default' } });
      assert.equal((await put(admin, { open_signup: true, signup_role: 'no-such-role' })).statusCode, 404);
      assert.equal((await put(admin, { open_signup: true, signup_role: 7 })).statusCode, 400);
      const custom = await t.call('POST', '/v1/roles', {
        token: admin,
        body: { name: 'reader', permissions: ['secrets:read'] },
      });
      assert.equal(custom.statusCode, 201, custom.body);
      const set = await put(admin, { open_signup: true, signup_role: 'reader' });
      assert.equal(set.statusCode, 200, set.body);
      assert.deepEqual(set.json(), { open_signup: true, signup_role: 'reader' });
      const first = await signup('ursula@example.com');
      assert.equal(first.statusCode, 201, first.body);
      assert.deepEqual(first.json().user.roles, ['reader']);
      // The role is deleted afterwards: sign-up still works, with no role.
      const del = await t.call('DELETE', `/v1/roles/${custom.json().id}`, { token: admin });
      assert.equal(del.statusCode, 204, del.body);
      const second = await signup('umar@example.com');
      assert.equal(second.statusCode, 201, second.body);
      assert.deepEqual(second.json().user.roles, []);
      // Omitted in a PUT: none again.
      assert.deepEqual((await put(admin, { open_signup: false })).json(), {
        open_signup: false,
        signup_role: null,
      });
    });

    test('invitations: bad inputs answer 400, never 500', async () => {
      const bad: [string, string, Record<string, unknown>][] = [
        ['POST', '/v1/invitations', {}],
        ['POST', '/v1/invitations', { email: 'not an email' }],
        ['POST', '/v1/invitations', { email: 'x@example.com', roles: 'viewer' }],
        ['POST', '/v1/invitations', { email: 'x@example.com', expires_in_hours: 0 }],
        ['POST', '/v1/invitations', { email: 'x@example.com', expires_in_hours: 1.5 }],
        ['POST', '/v1/invitations', { email: 'x@example.com', admin: true }],
        ['POST', '/v1/auth/invitations/accept', {}],
        ['POST', '/v1/auth/invitations/accept', { token: 'inv_x' }],
        ['POST', '/v1/auth/invitations/accept', { token: 42, password: PASS }],
        ['POST', '/v1/auth/invitations/accept', { token: 'inv_x', password: PASS, roles: ['admin'] }],
        ['POST', '/v1/auth/invitations/accept', { token: 'inv_x', password: PASS, username: 'a b' }],
      ];
      for (const [method, url, body] of bad) {
        const res = await t.call(method as 'POST', url, { token: admin, body });
        assert.equal(res.statusCode, 400, `${url} ${JSON.stringify(body)}: ${res.body}`);
        assert.equal(res.json().code, 'validation_failed');
      }
    });

    test('open sign-up is off by default (403), an org admin turns it on, and it is audited', async () => {
      const closed = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'sam@example.com', password: PASS, org: 'default' },
      });
      assert.equal(closed.statusCode, 403);
      assert.equal(closed.json().code, 'signup_disabled');
      const unknownOrg = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'sam@example.com', password: PASS, org: 'no-such-org' },
      });
      assert.equal(unknownOrg.statusCode, 403, 'an unknown org answers like a closed one');
      assert.equal(unknownOrg.json().code, 'signup_disabled');

      assert.deepEqual((await t.call('GET', '/v1/auth/settings', { token: viewer })).json(), {
        open_signup: false,
        signup_role: null,
      });
      const denied = await t.call('PUT', '/v1/auth/settings', {
        token: manager,
        body: { open_signup: true },
      });
      assert.equal(denied.statusCode, 403, 'org:admin only');
      for (const body of [{}, { open_signup: 'yes' }, { open_signup: true, extra: 1 }]) {
        const res = await t.call('PUT', '/v1/auth/settings', { token: admin, body });
        assert.equal(res.statusCode, 400, JSON.stringify(body));
      }
      const on = await t.call('PUT', '/v1/auth/settings', {
        token: admin,
        body: { open_signup: true },
      });
      assert.equal(on.statusCode, 200, on.body);
      assert.deepEqual(on.json(), { open_signup: true, signup_role: null });
      // Only this org: globex is still closed.
      const globex = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'sam@example.com', password: PASS, org: 'globex' },
      });
      assert.equal(globex.json().code, 'signup_disabled');

      const weak = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'sam@example.com', password: 'qwertyuiop123', org: 'default' },
      });
      assert.equal(weak.statusCode, 400);
      assert.equal(weak.json().code, 'password_too_common');
      for (const body of [
        { email: 'sam@example.com', password: PASS },
        { email: 'sam@example.com', org: 'default' },
        { email: 'nope', password: PASS, org: 'default' },
        { email: 'sam@example.com', password: PASS, org: 'default', roles: ['admin'] },
        { email: 'sam@example.com', password: 12, org: 'default' },
      ]) {
        const res = await t.call('POST', '/v1/auth/signup', { body });
        assert.equal(res.statusCode, 400, JSON.stringify(body));
      }

      const ok = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'sam@example.com', password: PASS, org: t.orgId, full_name: 'Sam' },
      });
      assert.equal(ok.statusCode, 201, ok.body);
      assert.deepEqual(ok.json().user.roles, [], 'no role until an admin gives one');
      assert.equal(ok.json().org_id, t.orgId);
      const dup = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'SAM@example.com', password: PASS, org: 'default' },
      });
      assert.equal(dup.statusCode, 409);
      assert.equal(dup.json().code, 'email_taken');
      assert.equal((await t.login('sam@example.com', PASS)).statusCode, 200);

      const off = await t.call('PUT', '/v1/auth/settings', {
        token: admin,
        body: { open_signup: false },
      });
      assert.equal(off.statusCode, 200);
      const closedAgain = await t.call('POST', '/v1/auth/signup', {
        body: { email: 'tess@example.com', password: PASS, org: 'default' },
      });
      assert.equal(closedAgain.json().code, 'signup_disabled');

      const events = (await t.call('GET', '/v1/audit/events?limit=500', { token: admin })).json().data;
      const changes = events.filter((e: { action: string }) => e.action === 'signup.policy_changed');
      assert.ok(changes.length >= 2);
      const signedUp = events.find((e: { action: string }) => e.action === 'user.signed_up');
      assert.equal(signedUp?.resource.id, ok.json().user.id);
    });

    test('admins list and revoke anyone’s sessions in their org; other orgs’ ids answer 404', async () => {
      const created = await t.call('POST', '/v1/users', {
        token: admin,
        body: { email: 'uma@example.com', password: PASS, roles: ['viewer'] },
      });
      const uma = created.json().id;
      const s1 = await t.tokensFor('uma@example.com', PASS);
      await t.tokensFor('uma@example.com', PASS);

      const list = await t.call('GET', `/v1/users/${uma}/sessions`, { token: admin });
      assert.equal(list.statusCode, 200, list.body);
      assert.equal(list.json().data.length, 2);
      assert.ok(list.json().data.every((s: { org_id: string; current: boolean }) => s.org_id === t.orgId));
      const paged = await t.call('GET', `/v1/users/${uma}/sessions?limit=1`, { token: admin });
      assert.equal(paged.json().data.length, 1);
      const rest = await t.call('GET', `/v1/users/${uma}/sessions?cursor=${paged.json().next_cursor}`, {
        token: admin,
      });
      assert.equal(rest.json().data.length, 1);
      assert.notEqual(rest.json().data[0].id, paged.json().data[0].id);

      assert.equal((await t.call('GET', `/v1/users/${uma}/sessions`, { token: viewer })).statusCode, 403);
      assert.equal((await t.call('GET', `/v1/users/${uma}/sessions`)).statusCode, 401);
      const bad = await t.call('GET', `/v1/users/${uma}/sessions?limit=0`, { token: admin });
      assert.equal(bad.statusCode, 400);

      // Another org's admin: the user and the session do not exist for them.
      const cross = await t.call('GET', `/v1/users/${uma}/sessions`, { token: globexAdmin });
      assert.equal(cross.statusCode, 404);
      assert.equal(cross.json().code, 'user_not_found');
      const whoami = await t.call('GET', '/v1/auth/whoami', { token: s1.access_token });
      const sid = whoami.json().session_id;
      const crossRevoke = await t.call('DELETE', `/v1/auth/sessions/${sid}`, { token: globexAdmin });
      assert.equal(crossRevoke.statusCode, 404);
      assert.equal(crossRevoke.json().code, 'session_not_found');
      assert.equal((await t.call('GET', '/v1/me', { token: s1.access_token })).statusCode, 200);

      // A viewer cannot revoke someone else's session either.
      assert.equal((await t.call('DELETE', `/v1/auth/sessions/${sid}`, { token: viewer })).statusCode, 404);

      const revoked = await t.call('DELETE', `/v1/auth/sessions/${sid}`, { token: admin });
      assert.equal(revoked.statusCode, 204);
      const refused = await t.call('GET', '/v1/me', { token: s1.access_token });
      assert.equal(refused.statusCode, 401);
      assert.equal(refused.json().code, 'session_revoked');
      const left = (await t.call('GET', `/v1/users/${uma}/sessions`, { token: admin })).json().data;
      assert.deepEqual(left.map((s: { id: string }) => s.id).includes(sid), false);
      assert.equal(left.length, 1);

      // Globex's admin lists their own user's sessions, not ours.
      const ivan = (await t.call('GET', '/v1/users', { token: globexAdmin }))
        .json()
        .data.find((u: { email: string }) => u.email === 'ivan@globex.example').id;
      const theirs = await t.call('GET', `/v1/users/${ivan}/sessions`, { token: globexAdmin });
      assert.equal(theirs.statusCode, 200);
      assert.ok(theirs.json().data.every((s: { org_id: string }) => s.org_id !== t.orgId));
      assert.equal((await t.call('GET', `/v1/users/${ivan}/sessions`, { token: admin })).statusCode, 404);

      const events = (await t.call('GET', '/v1/audit/events?limit=500', { token: admin })).json().data;
      const event = events.find((e: Ev) => e.action === 'session.revoked' && e.resource.id === sid);
      assert.equal(event?.details?.reason, 'revoked_by_admin');
      assert.equal(event?.actor.id, t.adminId);
    });
  });
}
