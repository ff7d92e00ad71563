// The users admin API's delegation rules: roles removed by PATCH as authz's unassign route removes
// them, deactivation under users:delete whichever route, superusers protected (and the last one
// kept), a key's owner as oneself, idempotent deactivation, no-op PATCH, and GET /v1/orgs paged.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sql } from 'drizzle-orm';
import { StewardError } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from './test-support.ts';

const PASS = 'a sturdy passphrase here';

interface Ev {
  action: string;
  success: boolean;
  details?: { reason?: string; request?: Record<string, unknown> };
  actor: { id: string | null };
  resource: { id: string | null };
  changes?: { before?: Record<string, unknown>; after?: Record<string, unknown> };
}

describe('users admin API: delegation, deactivation and superuser rules (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;
  let manager: { id: string; token: string };

  async function newUser(email: string, roles: string[]): Promise<{ id: string; token: string }> {
    const res = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS, roles } });
    assert.equal(res.statusCode, 201, res.body);
    return { id: res.json().id, token: (await t.tokensFor(email, PASS)).access_token };
  }

  const events = async (id: string): Promise<Ev[]> =>
    (await t.call('GET', `/v1/audit/events?resource_id=${id}&limit=500`, { token: admin })).json().data;
  const roles = async (id: string): Promise<string[]> =>
    (await t.call('GET', `/v1/users/${id}`, { token: admin })).json().roles;

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    manager = await newUser('manny@example.com', ['manager']);
  });
  after(() => t.close());

  test("PATCH roles cannot remove a role whose permissions the caller lacks (an admin's admin)", async () => {
    // A manager who may also remove roles (roles:delete): only authz's delegation rule stops it.
    const keeperRole = await t.call('POST', '/v1/roles', {
      token: admin,
      body: { name: 'role-keeper', permissions: ['roles:delete'], inherits: 'manager' },
    });
    assert.equal(keeperRole.statusCode, 201, keeperRole.body);
    const keeper = await newUser('keeper@example.com', ['role-keeper']);
    const boss = await newUser('boss@example.com', ['admin', 'viewer']);
    const res = await t.call('PATCH', `/v1/users/${boss.id}`, {
      token: keeper.token,
      body: { full_name: 'Renamed', roles: ['viewer'] },
    });
    assert.equal(res.statusCode, 403, res.body);
    assert.equal(res.json().code, 'role_escalation');
    // Nothing half-written: the name, the roles and the events are as before.
    const after = (await t.call('GET', `/v1/users/${boss.id}`, { token: admin })).json();
    assert.equal(after.full_name, null);
    assert.deepEqual([...after.roles].sort(), ['admin', 'viewer']);
    // The refusal is on the record (success: false), the change is not.
    const recorded = await events(boss.id);
    assert.ok(!recorded.some((e) => e.action === 'user.updated' && e.success));
    const refused = recorded.find((e) => e.action === 'user.updated' && !e.success);
    assert.equal(refused?.details?.reason, 'role_escalation');
    assert.equal(refused?.actor.id, keeper.id);
    assert.deepEqual(refused?.details?.request?.roles, ['viewer']);
    // Authz's own unassign route says the same.
    const ras = (
      await t.call('GET', `/v1/role-assignments?principal=${boss.id}&limit=50`, { token: admin })
    ).json().data as { id: string; role: string }[];
    const adminAssignment = ras.find((a) => a.role === 'admin');
    assert.ok(adminAssignment);
    const un = await t.call('DELETE', `/v1/role-assignments/${adminAssignment.id}`, { token: keeper.token });
    assert.equal(un.statusCode, 403, un.body);
    assert.equal(un.json().code, 'role_escalation');
    // Adding a role the caller holds, keeping admin untouched, is allowed.
    const add = await t.call('PATCH', `/v1/users/${boss.id}`, {
      token: keeper.token,
      body: { roles: ['admin', 'viewer', 'developer'] },
    });
    assert.equal(add.statusCode, 200, add.body);
    assert.deepEqual([...add.json().roles].sort(), ['admin', 'developer', 'viewer']);
    // A role the caller holds can be removed.
    const drop = await t.call('PATCH', `/v1/users/${boss.id}`, {
      token: keeper.token,
      body: { roles: ['admin', 'viewer'] },
    });
    assert.equal(drop.statusCode, 200, drop.body);
    // Deactivation removes every role, so it is refused too: a caller with users:delete but not
    // admin's permissions cannot take admin away.
    const deleter = await newUser('dee@example.com', []);
    const role = await t.call('POST', '/v1/roles', {
      token: admin,
      body: { name: 'user-deleter', permissions: ['users:read', 'users:update', 'users:delete'] },
    });
    assert.equal(role.statusCode, 201, role.body);
    const granted = await t.call('PATCH', `/v1/users/${deleter.id}`, {
      token: admin,
      body: { roles: ['user-deleter'] },
    });
    assert.equal(granted.statusCode, 200, granted.body);
    for (const [method, body] of [
      ['DELETE', undefined],
      ['PATCH', { active: false }],
    ] as const) {
      const off = await t.call(method, `/v1/users/${boss.id}`, { token: deleter.token, body });
      assert.equal(off.statusCode, 403, off.body);
      assert.equal(off.json().code, 'role_escalation');
    }
    // Both refusals are recorded: DELETE as the deactivation, PATCH as the update it would have been.
    const refusals = (await events(boss.id)).filter((e) => !e.success && e.actor.id === deleter.id);
    assert.deepEqual(refusals.map((e) => e.action).sort(), ['user.deactivated', 'user.updated']);
    assert.ok(refusals.every((e) => e.details?.reason === 'role_escalation'));
    const still = (await t.call('GET', `/v1/users/${boss.id}`, { token: admin })).json();
    assert.equal(still.active, true);
    assert.deepEqual([...still.roles].sort(), ['admin', 'viewer']);
  });

  test("PATCH of one's own roles, removal included: 403 self_modification (a key acts as its owner)", async () => {
    const ada = await newUser('ada@example.com', ['admin']);
    const self = await t.call('PATCH', `/v1/users/${ada.id}`, { token: ada.token, body: { roles: [] } });
    assert.equal(self.statusCode, 403, self.body);
    assert.equal(self.json().code, 'self_modification');
    assert.deepEqual(await roles(ada.id), ['admin']);
    // The manager may not remove roles at all (no roles:delete): refused before the rule applies.
    const managerSelf = await t.call('PATCH', `/v1/users/${manager.id}`, {
      token: manager.token,
      body: { roles: [] },
    });
    assert.equal(managerSelf.statusCode, 403, managerSelf.body);
    assert.equal(managerSelf.json().code, 'permission_denied');
    assert.deepEqual(await roles(manager.id), ['manager']);
    const key = await t.call('POST', '/v1/keys', {
      token: ada.token,
      body: { name: 'ada key', scopes: ['users:*', 'roles:*'] },
    });
    assert.equal(key.statusCode, 201, key.body);
    const headers = { 'x-api-key': key.json().key };
    const byKey = await t.call('PATCH', `/v1/users/${ada.id}`, { headers, body: { roles: ['viewer'] } });
    assert.equal(byKey.statusCode, 403, byKey.body);
    assert.equal(byKey.json().code, 'self_modification');
    // And the key cannot deactivate its owner, by either route.
    const del = await t.call('DELETE', `/v1/users/${ada.id}`, { headers });
    assert.equal(del.statusCode, 409, del.body);
    assert.equal(del.json().code, 'cannot_deactivate_self');
    const patch = await t.call('PATCH', `/v1/users/${ada.id}`, { headers, body: { active: false } });
    assert.equal(patch.statusCode, 409, patch.body);
    assert.equal(patch.json().code, 'cannot_deactivate_self');
    const after = (await t.call('GET', `/v1/users/${ada.id}`, { token: admin })).json();
    assert.equal(after.active, true);
    assert.deepEqual(after.roles, ['admin']);
  });

  test("roles changed through the users API need the role routes' permissions: roles:update to add, roles:delete to remove", async () => {
    // A manager holds roles:update but not roles:delete: DELETE /v1/role-assignments refuses it,
    // and so must PATCH /v1/users/{id}, whose `roles` would otherwise demote a peer.
    const peer = await newUser('peer@example.com', ['manager']);
    const demote = await t.call('PATCH', `/v1/users/${peer.id}`, {
      token: manager.token,
      body: { full_name: 'Demoted', roles: [] },
    });
    assert.equal(demote.statusCode, 403, demote.body);
    assert.equal(demote.json().code, 'permission_denied');
    assert.equal(demote.json().permission, 'roles:delete');
    const peerAfter = (await t.call('GET', `/v1/users/${peer.id}`, { token: admin })).json();
    assert.deepEqual(peerAfter.roles, ['manager']);
    assert.equal(peerAfter.full_name, null, 'nothing half-written');
    assert.ok(!(await events(peer.id)).some((e) => e.action === 'user.updated' && e.success));
    // Adding is what roles:update allows: the manager may add a role below its own.
    const added = await t.call('PATCH', `/v1/users/${peer.id}`, {
      token: manager.token,
      body: { roles: ['manager', 'viewer'] },
    });
    assert.equal(added.statusCode, 200, added.body);

    // A custom role with users:read/create/update and no roles:* permission at all.
    const hrRole = await t.call('POST', '/v1/roles', {
      token: admin,
      body: {
        name: 'hr',
        permissions: ['users:read', 'users:create', 'users:update', 'flags:read', 'flags:update'],
      },
    });
    assert.equal(hrRole.statusCode, 201, hrRole.body);
    const flagReader = await t.call('POST', '/v1/roles', {
      token: admin,
      body: { name: 'flag-reader', permissions: ['flags:read'] },
    });
    assert.equal(flagReader.statusCode, 201, flagReader.body);
    const hr = await newUser('hr@example.com', ['hr']);
    const target = await newUser('target@example.com', ['flag-reader']);
    const direct = await t.call('POST', '/v1/role-assignments', {
      token: hr.token,
      body: { principal: target.id, role: 'flag-reader' },
    });
    assert.equal(direct.statusCode, 403, 'the role route refuses it');
    for (const [body, permission] of [
      [{ roles: ['flag-reader', 'viewer'] }, 'roles:update'],
      [{ roles: [] }, 'roles:delete'],
      [{ roles: ['viewer'] }, 'roles:update'],
    ] as const) {
      const res = await t.call('PATCH', `/v1/users/${target.id}`, { token: hr.token, body });
      assert.equal(res.statusCode, 403, res.body);
      assert.equal(res.json().code, 'permission_denied');
      assert.equal(res.json().permission, permission);
    }
    assert.deepEqual(await roles(target.id), ['flag-reader']);
    // A user created, or invited, with roles: roles:update too. Without roles: users:create is enough.
    const created = await t.call('POST', '/v1/users', {
      token: hr.token,
      body: { email: 'hr-made@example.com', password: PASS, roles: ['flag-reader'] },
    });
    assert.equal(created.statusCode, 403, created.body);
    assert.equal(created.json().permission, 'roles:update');
    const invited = await t.call('POST', '/v1/invitations', {
      token: hr.token,
      body: { email: 'hr-invited@example.com', roles: ['flag-reader'] },
    });
    assert.equal(invited.statusCode, 403, invited.body);
    assert.equal(invited.json().permission, 'roles:update');
    const users = (await t.call('GET', '/v1/users?limit=500', { token: admin })).json().data as {
      email: string;
    }[];
    assert.ok(!users.some((u) => u.email === 'hr-made@example.com'), 'no user created');
    const plain = await t.call('POST', '/v1/users', {
      token: hr.token,
      body: { email: 'hr-made@example.com', password: PASS },
    });
    assert.equal(plain.statusCode, 201, plain.body);
    const rename = await t.call('PATCH', `/v1/users/${target.id}`, {
      token: hr.token,
      body: { full_name: 'Renamed', roles: ['flag-reader'] },
    });
    assert.equal(rename.statusCode, 200, 'the same roles: no role changes, no roles:* needed');
  });

  test('a refused user creation, invitation, unlock, revocation or sign-up setting is audited as authz refusals are', async () => {
    const byAction = async (action: string): Promise<Ev[]> =>
      (await t.call('GET', `/v1/audit/events?action=${action}&limit=500`, { token: admin })).json().data;
    const cases = [
      [
        'POST',
        '/v1/users',
        { email: 'climber@example.com', password: PASS, roles: ['admin'] },
        'user.created',
      ],
      ['POST', '/v1/invitations', { email: 'guest@example.com', roles: ['admin'] }, 'invitation.created'],
    ] as const;
    for (const [method, url, body, action] of cases) {
      const res = await t.call(method, url, { token: manager.token, body });
      assert.equal(res.statusCode, 403, res.body);
      assert.equal(res.json().code, 'role_escalation');
      const refused = (await byAction(action)).filter((e) => !e.success && e.actor.id === manager.id);
      assert.equal(refused.length, 1, action);
      assert.equal(refused[0]?.details?.reason, 'role_escalation');
      assert.equal(refused[0]?.details?.request?.email, body.email);
    }
    const climber = (await byAction('user.created')).find(
      (e) => e.details?.request?.email === 'climber@example.com',
    );
    assert.deepEqual(climber?.details?.request?.roles, ['admin']);
    // The route's own permission: a manager may not change the org's sign-up settings (org:admin).
    const settings = await t.call('PUT', '/v1/auth/settings', {
      token: manager.token,
      body: { open_signup: true, signup_role: 'admin' },
    });
    assert.equal(settings.statusCode, 403, settings.body);
    // An unlock or an invitation's revocation refused by the route's permission: a viewer's.
    const viewer = await newUser('vera@example.com', ['viewer']);
    for (const [method, url, action] of [
      ['POST', `/v1/users/${manager.id}/unlock`, 'user.unlocked'],
      ['DELETE', '/v1/invitations/inv_01JAAAAAAAAAAAAAAAAAAAAAAA', 'invitation.revoked'],
    ] as const) {
      const res = await t.call(method, url, { token: viewer.token });
      assert.equal(res.statusCode, 403, res.body);
      const refused = (await byAction(action)).filter((e) => !e.success && e.actor.id === viewer.id);
      assert.equal(refused.length, 1, action);
      assert.equal(refused[0]?.details?.reason, 'permission_denied');
    }
    const policy = await byAction('signup.policy_changed');
    assert.equal(policy.length, 1);
    assert.equal(policy[0]?.success, false);
    assert.equal(policy[0]?.details?.reason, 'permission_denied');
  });

  test('PATCH {active:false} needs users:delete, as DELETE does; reactivation needs users:update', async () => {
    // A custom role with users:update (and read) but not users:delete.
    const role = await t.call('POST', '/v1/roles', {
      token: admin,
      body: { name: 'user-editor', permissions: ['users:read', 'users:update'] },
    });
    assert.equal(role.statusCode, 201, role.body);
    const editor = await newUser('eddie@example.com', ['user-editor']);
    const target = await newUser('tess@example.com', []);
    const off = await t.call('PATCH', `/v1/users/${target.id}`, {
      token: editor.token,
      body: { active: false },
    });
    assert.equal(off.statusCode, 403, off.body);
    assert.equal(off.json().code, 'permission_denied');
    assert.equal(off.json().permission, 'users:delete');
    assert.equal((await t.call('GET', `/v1/users/${target.id}`, { token: admin })).json().active, true);
    assert.equal((await t.call('DELETE', `/v1/users/${target.id}`, { token: editor.token })).statusCode, 403);
    // An admin deactivates; the editor may reactivate (users:update; no role comes back).
    assert.equal((await t.call('DELETE', `/v1/users/${target.id}`, { token: admin })).statusCode, 204);
    const on = await t.call('PATCH', `/v1/users/${target.id}`, {
      token: editor.token,
      body: { active: true },
    });
    assert.equal(on.statusCode, 200, on.body);
    assert.equal(on.json().active, true);
    assert.deepEqual(on.json().roles, []);
  });

  test('deactivating twice: 204 both times, one user.deactivated event', async () => {
    const u = await newUser('twice@example.com', ['viewer']);
    // A member of another org too: the account stays active when this membership ends.
    const other = await t.call('POST', '/v1/orgs', {
      token: admin,
      body: { slug: 'elsewhere', name: 'Elsewhere', admin_user_id: u.id },
    });
    assert.equal(other.statusCode, 201, other.body);
    assert.equal((await t.call('DELETE', `/v1/users/${u.id}`, { token: admin })).statusCode, 204);
    assert.equal((await t.call('DELETE', `/v1/users/${u.id}`, { token: admin })).statusCode, 204);
    const patched = await t.call('PATCH', `/v1/users/${u.id}`, { token: admin, body: { active: false } });
    assert.equal(patched.statusCode, 200, patched.body);
    assert.equal(patched.json().active, false);
    const deactivated = (await events(u.id)).filter((e) => e.action === 'user.deactivated');
    assert.equal(deactivated.length, 1);
  });

  test('a PATCH that changes nothing writes nothing: same updated_at, no event', async () => {
    const u = await newUser('noop@example.com', ['viewer']);
    const before = (await t.call('GET', `/v1/users/${u.id}`, { token: admin })).json();
    const count = (await events(u.id)).length;
    t.now.ms += 60_000;
    for (const body of [{}, { roles: ['viewer'] }, { full_name: null, active: true }]) {
      const res = await t.call('PATCH', `/v1/users/${u.id}`, { token: admin, body });
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(res.json(), before);
    }
    assert.equal((await events(u.id)).length, count);
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token; // the clock moved
  });

  test('superusers: an org admin cannot deactivate one (403); the last active one stays (409); bootstrap recovers', async () => {
    const orgAdmin = await newUser('oscar@example.com', ['admin']);
    for (const [method, body] of [
      ['DELETE', undefined],
      ['PATCH', { active: false }],
    ] as const) {
      const res = await t.call(method, `/v1/users/${t.adminId}`, { token: orgAdmin.token, body });
      assert.equal(res.statusCode, 403, res.body);
      assert.equal(res.json().code, 'superuser_protected');
    }
    assert.equal((await t.call('GET', `/v1/users/${t.adminId}`, { token: admin })).json().active, true);

    // A second superuser (made behind the API: no route makes one) may deactivate the first.
    const second = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'super2@example.com', password: PASS, roles: ['admin'] },
    });
    assert.equal(second.statusCode, 201, second.body);
    const secondId: string = second.json().id;
    await t.store.db.db.execute(sql`update users set superuser = true where id = ${secondId}`);
    const super2 = (await t.tokensFor('super2@example.com', PASS)).access_token;
    assert.equal((await t.call('DELETE', `/v1/users/${t.adminId}`, { token: super2 })).statusCode, 204);
    // root's account stays on while it is a member of another org (an earlier test made one):
    // turn it off behind the API. super2 is now the last active superuser: nobody may turn it off.
    await t.store.db.db.execute(sql`update users set active = false where id = ${t.adminId}`);
    const otherSuperuser: Principal = {
      orgId: t.orgId,
      kind: 'user',
      id: 'usr_someoneelse',
      name: 'another superuser',
      roles: [],
      scopes: null,
      superuser: true,
    };
    const refused = await t.app.steward.identity
      .deactivateUser(otherSuperuser, secondId, { ip: '127.0.0.1' })
      .then(
        () => undefined,
        (error: unknown) => error,
      );
    assert.ok(refused instanceof StewardError, String(refused));
    assert.equal(refused.code, 'last_superuser');
    assert.equal(refused.status, 409);
    assert.equal((await t.call('GET', `/v1/users/${secondId}`, { token: super2 })).json().active, true);
    // Every superuser deactivated (behind the API): bootstrap recovers.
    await t.store.db.db.execute(sql`update users set active = false where id = ${secondId}`);
    assert.equal(await t.app.steward.identity.superuserExists(), false);
    const again = await t.app.steward.identity.bootstrap({ email: 'newroot@example.com', password: PASS });
    assert.equal(again.user.superuser, true);
  });
});

describe('GET /v1/orgs: cursor pagination, unknown query fields refused (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;

  before(async () => {
    t = await identityTestApp('pglite');
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    for (const slug of ['acme', 'globex', 'initech']) {
      const res = await t.call('POST', '/v1/orgs', { token: admin, body: { slug, name: slug } });
      assert.equal(res.statusCode, 201, res.body);
    }
  });
  after(() => t.close());

  test('pages of `limit`, following next_cursor, cover every org once', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let i = 0; i < 10; i++) {
      const res = await t.call('GET', `/v1/orgs?limit=3${cursor ? `&cursor=${cursor}` : ''}`, {
        token: admin,
      });
      assert.equal(res.statusCode, 200, res.body);
      const page = res.json();
      assert.ok(page.data.length <= 3);
      seen.push(...page.data.map((o: { slug: string }) => o.slug));
      cursor = page.next_cursor;
      if (cursor === null) break;
    }
    assert.deepEqual([...seen].sort(), ['acme', 'default', 'globex', 'initech']);
    const first = (await t.call('GET', '/v1/orgs?limit=1', { token: admin })).json();
    assert.equal(first.data.length, 1);
    assert.equal(typeof first.next_cursor, 'string');
    assert.equal((await t.call('GET', '/v1/orgs', { token: admin })).json().data.length, 4);
  });

  test('unknown query fields, a bad limit and a forged cursor are refused (400)', async () => {
    for (const q of ['?foo=1', '?limit=0', '?limit=abc', '?cursor=not-a-cursor']) {
      const res = await t.call('GET', `/v1/orgs${q}`, { token: admin });
      assert.equal(res.statusCode, 400, `${q}: ${res.body}`);
    }
  });
});
