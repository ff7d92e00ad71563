import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { installTestPrincipals } from '../../test/helpers/app.ts';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { newId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import { buildOrgIndex } from './engine.ts';

type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';

// The delegation rules of the README: a permission denied on any one resource is not held for
// handing on, what is held only through an expiring grant is handed on only until then (never
// into a role), and editing a role others hold is assigning it. Refusals are audited.
for (const { kind, skip } of STORES) {
  describe(`authz delegation on ${kind}`, { skip }, () => {
    let store: TestStore;
    let app: FastifyInstance;
    let nowMs = Date.parse('2030-01-01T00:00:00Z');
    const p: Record<string, Principal> = {};
    const user = (orgId: string, name: string, extra: Partial<Principal> = {}): Principal => ({
      orgId,
      kind: 'user',
      id: newId('usr'),
      name,
      roles: [],
      scopes: null,
      superuser: false,
      ...extra,
    });

    before(async () => {
      store = await openTestStore(kind);
      app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
        db: store.db,
        keyring: createKeyring(randomBytes(32)),
        clock: () => new Date(nowMs),
      });
      const org = (await app.steward.tenancy.createOrg({ slug: 'acme', name: 'Acme' })).id;
      for (const name of ['admin', 'manager', 'manager2', 'smith', 'temp', 'dev', 'viewer']) {
        p[name] = user(org, name);
      }
      for (let i = 0; i < 12; i++) p[`u${i}`] = user(org, `u${i}`);
      p.root = user(org, 'root', { superuser: true });
      installTestPrincipals(app, p);
      await app.ready();
      app.steward.authz.usePrincipalDirectory({
        find: async (orgId, id) => Object.values(p).find((x) => x.id === id && x.orgId === orgId) ?? null,
      });
      const { authz, db } = app.steward;
      for (const [who, role] of [
        ['admin', 'admin'],
        ['manager', 'manager'],
        ['manager2', 'manager'],
        ['temp', 'developer'],
        ['dev', 'developer'],
        ['viewer', 'viewer'],
      ] as const) {
        const { afterCommit } = await db.db.transaction((tx) =>
          authz.assignRoleInTx(tx, { orgId: org, principalId: p[who]!.id, role, by: null }),
        );
        await afterCommit();
      }
    });
    after(async () => {
      await app.close();
      await store.dispose();
    });

    const as = (who: string, method: Method, url: string, payload?: unknown) =>
      app.inject({
        method,
        url,
        headers: { 'x-test-principal': who },
        ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }),
      });
    const ok = async (who: string, method: Method, url: string, payload?: unknown) => {
      const res = await as(who, method, url, payload);
      assert.ok(res.statusCode < 300, `${who} ${method} ${url}: ${res.statusCode} ${res.body}`);
      return res.statusCode === 204 ? null : res.json();
    };
    const refused = async (who: string, method: Method, url: string, payload: unknown, code: string) => {
      const res = await as(who, method, url, payload);
      assert.equal(res.statusCode, 403, `${who} ${method} ${url}: ${res.body}`);
      assert.equal(res.json().code, code, res.body);
      return res.json();
    };
    const allowed = async (who: string, permission: string, resourceId?: string) =>
      (
        await ok('root', 'POST', '/v1/authz/check', {
          principal: p[who]!.id,
          permission,
          ...(resourceId ? { resource_id: resourceId } : {}),
        })
      ).allowed as boolean;
    const grant = (who: string, body: Record<string, unknown>) => as(who, 'POST', '/v1/authz/grants', body);
    const iso = (ms: number) => new Date(ms).toISOString();

    test('a permission denied on one resource is not held for delegation', async () => {
      // The manager is denied secrets:reveal on one secret; a role carrying it is beyond it.
      await ok('admin', 'POST', '/v1/authz/grants', {
        principal: p.manager!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_x',
        effect: 'deny',
      });
      const revealer = await ok('admin', 'POST', '/v1/roles', {
        name: 'revealer',
        permissions: ['secrets:read', 'secrets:reveal'],
      });
      const assign = await refused(
        'manager',
        'POST',
        '/v1/role-assignments',
        { principal: p.u0!.id, role: 'revealer' },
        'role_escalation',
      );
      assert.deepEqual(assign.missing_permissions, ['secrets:reveal']);
      assert.equal(await allowed('u0', 'secrets:reveal', 'sec_x'), false);
      // Roles without it are still the manager's to hand on.
      await ok('manager', 'POST', '/v1/role-assignments', { principal: p.u1!.id, role: 'developer' });
      // Nor can it edit a role to carry it (an unassigned one, so only the holding rule applies).
      const reader = await ok('admin', 'POST', '/v1/roles', {
        name: 'reader',
        permissions: ['secrets:read'],
      });
      await refused(
        'manager',
        'PATCH',
        `/v1/roles/${reader.id}`,
        { permissions: ['secrets:read', 'secrets:reveal'] },
        'role_escalation',
      );

      // A role maker (roles:*, secrets:*) denied on one secret: no role carrying it, no type-wide grant.
      await ok('admin', 'POST', '/v1/roles', { name: 'smith', permissions: ['roles:*', 'secrets:*'] });
      await ok('admin', 'POST', '/v1/role-assignments', { principal: p.smith!.id, role: 'smith' });
      await ok('admin', 'POST', '/v1/authz/grants', {
        principal: p.smith!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_x',
        effect: 'deny',
      });
      await refused(
        'smith',
        'POST',
        '/v1/roles',
        { name: 'leak', permissions: ['secrets:reveal'] },
        'role_escalation',
      );
      const typeWide = { principal: p.u2!.id, permission: 'secrets:reveal', resource_type: 'secrets' };
      const wide = await grant('smith', { ...typeWide, effect: 'allow' });
      assert.equal(wide.statusCode, 403, wide.body);
      assert.equal(wide.json().code, 'grant_escalation');
      assert.match(wide.json().detail, /denied it on some/);
      assert.equal(await allowed('u2', 'secrets:reveal', 'sec_x'), false);
      // A grant on one resource needs the permission on that resource only.
      const onX = await grant('smith', { ...typeWide, resource_id: 'sec_x', effect: 'allow' });
      assert.equal(onX.json().code, 'grant_escalation');
      assert.equal(
        (await grant('smith', { ...typeWide, resource_id: 'sec_y', effect: 'allow' })).statusCode,
        201,
      );
      // Nor may it delete a role carrying the permission it is denied somewhere.
      await refused('smith', 'DELETE', `/v1/roles/${revealer.id}`, undefined, 'role_escalation');

      // Once the deny is gone, the same assignment passes.
      const denies = (await ok('admin', 'GET', `/v1/authz/grants?principal=${p.manager!.id}`)).data;
      await ok('admin', 'DELETE', `/v1/authz/grants/${denies[0].id}`);
      await ok('manager', 'POST', '/v1/role-assignments', { principal: p.u0!.id, role: 'revealer' });
      assert.equal(await allowed('u0', 'secrets:reveal', 'sec_x'), true);
    });

    test('rights held only through an expiring grant are handed on only until they end, never into a role', async () => {
      const ends = nowMs + 60_000;
      await ok('admin', 'POST', '/v1/authz/grants', {
        principal: p.manager2!.id,
        permission: 'roles:admin',
        resource_type: 'roles',
        effect: 'allow',
        expires_at: iso(ends),
      });
      const body = {
        principal: p.viewer!.id,
        permission: 'roles:admin',
        resource_type: 'roles',
        effect: 'allow',
      };
      const forever = await grant('manager2', body);
      assert.equal(forever.statusCode, 403, forever.body);
      assert.equal(forever.json().code, 'grant_outlives_delegator');
      assert.equal(forever.json().held_until, iso(ends));
      const longer = await grant('manager2', { ...body, expires_at: iso(ends + 1) });
      assert.equal(longer.json().code, 'grant_outlives_delegator');
      // Assignments do not expire: the equal role roles:admin would allow is refused.
      const peer = await refused(
        'manager2',
        'POST',
        '/v1/role-assignments',
        { principal: p.viewer!.id, role: 'manager' },
        'role_outlives_delegator',
      );
      assert.deepEqual(peer.permissions, ['roles:admin']);
      // Until its own end it may hand it on.
      const same = await grant('manager2', { ...body, expires_at: iso(ends) });
      assert.equal(same.statusCode, 201, same.body);
      // What it holds for good through its role it still hands on as before.
      const lasting = await grant('manager2', {
        ...body,
        permission: 'secrets:read',
        resource_type: 'secrets',
      });
      assert.equal(lasting.statusCode, 201, lasting.body);

      // A permission held for a while goes into no role: create, edit or assign.
      await ok('admin', 'POST', '/v1/roles', { name: 'keeper', permissions: ['roles:*', 'flags:read'] });
      await ok('admin', 'POST', '/v1/role-assignments', { principal: p.temp!.id, role: 'keeper' });
      await ok('admin', 'POST', '/v1/authz/grants', {
        principal: p.temp!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        effect: 'allow',
        expires_at: iso(ends),
      });
      await refused(
        'temp',
        'POST',
        '/v1/roles',
        { name: 'lasting', permissions: ['secrets:reveal'] },
        'role_outlives_delegator',
      );
      const quiet = await ok('admin', 'POST', '/v1/roles', { name: 'quiet', permissions: ['flags:read'] });
      await refused(
        'temp',
        'PATCH',
        `/v1/roles/${quiet.id}`,
        { permissions: ['flags:read', 'secrets:reveal'] },
        'role_outlives_delegator',
      );
      await ok('admin', 'POST', '/v1/roles', { name: 'peeker', permissions: ['secrets:reveal'] });
      await refused(
        'temp',
        'POST',
        '/v1/role-assignments',
        { principal: p.u3!.id, role: 'peeker' },
        'role_outlives_delegator',
      );
      // One secret, or a deny: fine within the window; revoking a deny gives access for good.
      const reveal = { principal: p.u3!.id, permission: 'secrets:reveal', resource_type: 'secrets' };
      const one = await grant('temp', { ...reveal, resource_id: 'sec_1', effect: 'allow' });
      assert.equal(one.json().code, 'grant_outlives_delegator');
      const oneShort = await grant('temp', {
        ...reveal,
        resource_id: 'sec_1',
        effect: 'allow',
        expires_at: iso(ends),
      });
      assert.equal(oneShort.statusCode, 201, oneShort.body);
      assert.equal(
        (await grant('temp', { ...reveal, resource_id: 'sec_2', effect: 'deny' })).statusCode,
        201,
      );
      const adminDeny = await ok('admin', 'POST', '/v1/authz/grants', {
        ...reveal,
        resource_id: 'sec_3',
        effect: 'deny',
      });
      await refused(
        'temp',
        'DELETE',
        `/v1/authz/grants/${adminDeny.id}`,
        undefined,
        'grant_outlives_delegator',
      );

      // After the end, manager2 holds no roles:admin; what it handed on ended with it.
      nowMs = ends;
      assert.equal(await allowed('manager2', 'roles:admin'), false);
      assert.equal(await allowed('viewer', 'roles:admin'), false);
      assert.equal(await allowed('u3', 'secrets:reveal', 'sec_1'), false);
    });

    test('until when a grant gives a permission, across levels (engine)', () => {
      const t0 = 1_000;
      const index = buildOrgIndex({
        orgId: 'org_1',
        roles: [],
        assignments: [{ principalId: 'usr_r', roleName: 'manager' }],
        grants: [
          // An id allow over a type deny: held on the id until the first of the two ends.
          {
            id: 'g1',
            principalId: 'usr_a',
            permission: 'secrets:read',
            resourceType: 'secrets',
            resourceId: 's1',
            effect: 'allow',
            expiresAt: 5_000,
          },
          {
            id: 'g2',
            principalId: 'usr_a',
            permission: 'secrets:read',
            resourceType: 'secrets',
            resourceId: null,
            effect: 'deny',
            expiresAt: 9_000,
          },
          // Two type allows, one for good.
          {
            id: 'g3',
            principalId: 'usr_b',
            permission: 'flags:read',
            resourceType: 'flags',
            resourceId: null,
            effect: 'allow',
            expiresAt: 2_000,
          },
          {
            id: 'g4',
            principalId: 'usr_b',
            permission: 'flags:read',
            resourceType: 'flags',
            resourceId: null,
            effect: 'allow',
            expiresAt: null,
          },
          // A role gives it for good; an expiring deny on one id makes it not held until then.
          {
            id: 'g5',
            principalId: 'usr_r',
            permission: 'secrets:reveal',
            resourceType: 'secrets',
            resourceId: 's9',
            effect: 'deny',
            expiresAt: 3_000,
          },
          // A deny on another type counts too.
          {
            id: 'g6',
            principalId: 'usr_r',
            permission: 'documents:read',
            resourceType: 'knowledge',
            resourceId: 'k1',
            effect: 'deny',
            expiresAt: null,
          },
        ],
      });
      assert.equal(index.holdsUntil('usr_a', 'secrets:read', t0, { type: 'secrets', id: 's1' }), 5_000);
      assert.equal(index.holdsUntil('usr_a', 'secrets:read', t0), undefined);
      assert.equal(index.holdsUntil('usr_a', 'secrets:read', 9_000), undefined);
      assert.equal(index.holdsUntil('usr_b', 'flags:read', t0), null);
      assert.equal(index.holdsUntil('usr_r', 'secrets:reveal', t0), undefined);
      assert.equal(index.holdsUntil('usr_r', 'secrets:reveal', t0, { type: 'secrets', id: 's8' }), null);
      assert.equal(index.holdsUntil('usr_r', 'secrets:reveal', 3_000), null);
      assert.equal(index.holdsUntil('usr_r', 'documents:read', t0), undefined);
      assert.equal(index.holdsUntil('usr_r', 'secrets:read', t0), null);
      assert.equal(index.holdsUntil('usr_r', 'nope:read', t0), undefined);
    });

    test('editing a role others hold is assigning it: a strict subset without roles:admin', async () => {
      const tiny = await ok('admin', 'POST', '/v1/roles', { name: 'tiny', permissions: ['flags:read'] });
      await ok('manager2', 'POST', '/v1/role-assignments', { principal: p.u4!.id, role: 'tiny' });
      const up = await refused(
        'manager2',
        'PATCH',
        `/v1/roles/${tiny.id}`,
        { inherits: 'manager' },
        'role_escalation',
      );
      assert.deepEqual(up.missing_permissions, ['roles:admin']);
      assert.equal(await allowed('u4', 'secrets:reveal'), false);
      assert.equal((await ok('admin', 'GET', `/v1/roles/${tiny.id}`)).inherits, null);
      // Below its own rights is fine, and so is anything on a role nobody else holds.
      await ok('manager2', 'PATCH', `/v1/roles/${tiny.id}`, { inherits: 'developer' });
      assert.equal(await allowed('u4', 'secrets:update'), true);
      const spare = await ok('admin', 'POST', '/v1/roles', { name: 'spare', permissions: ['flags:read'] });
      await ok('manager2', 'PATCH', `/v1/roles/${spare.id}`, { inherits: 'manager' });
      // The admin (roles:admin) may raise a held role to its own level.
      await ok('admin', 'PATCH', `/v1/roles/${tiny.id}`, { inherits: 'manager' });
      assert.equal(await allowed('u4', 'secrets:reveal'), true);
    });

    test('an edit and an assignment of one role racing cannot together make a peer', async () => {
      // Without serialisation the edit sees no holder and the assignment sees the small role.
      const rounds = 6;
      const results = await Promise.all(
        Array.from({ length: rounds }, async (_, i) => {
          const role = await ok('admin', 'POST', '/v1/roles', {
            name: `race-${i}`,
            permissions: ['flags:read'],
          });
          const [edit, assign] = await Promise.all([
            as('manager', 'PATCH', `/v1/roles/${role.id}`, { inherits: 'manager' }),
            as('manager', 'POST', '/v1/role-assignments', { principal: p[`u${5 + i}`]!.id, role: role.id }),
          ]);
          return [edit.statusCode, assign.statusCode];
        }),
      );
      for (const [edit, assign] of results) {
        assert.ok(!(edit === 200 && assign === 201), JSON.stringify(results));
      }
      for (let i = 0; i < rounds; i++) assert.equal(await allowed(`u${5 + i}`, 'users:create'), false);
    });

    test('refused role and grant changes are audited (success false, the code), the answer unchanged', async () => {
      nowMs += 1000; // apart from the refusals of the tests above
      const since = iso(nowMs);
      const role = await ok('admin', 'POST', '/v1/roles', { name: 'audited', permissions: ['flags:read'] });
      // The route's own permission (dev has neither roles:admin nor roles:delete).
      const g = await refused(
        'dev',
        'POST',
        '/v1/authz/grants',
        {
          principal: p.u0!.id,
          permission: 'flags:read',
          resource_type: 'flags',
          effect: 'allow',
          junk: 'x'.repeat(5000),
        },
        'permission_denied',
      );
      assert.equal(g.permission, 'roles:admin');
      await refused('dev', 'DELETE', `/v1/roles/${role.id}`, undefined, 'permission_denied');
      // The service's delegation rules.
      await refused(
        'manager',
        'POST',
        '/v1/role-assignments',
        { principal: p.u0!.id, role: 'admin' },
        'role_escalation',
      );
      await refused(
        'manager',
        'POST',
        '/v1/role-assignments',
        { principal: p.manager!.id, role: 'viewer' },
        'self_modification',
      );

      const res = await ok('root', 'GET', `/v1/audit/events?success=false&since=${since}&limit=100`);
      const seen = res.data.map(
        (e: {
          action: string;
          actor: { id: string };
          resource: { type: string; id: string | null };
          details: Record<string, unknown>;
          error_message: string;
          success: boolean;
        }) => [e.action, e.actor.id, e.resource.type, e.resource.id, e.details.reason, e.success],
      );
      assert.deepEqual(seen.reverse(), [
        ['grant.created', p.dev!.id, 'grant', null, 'permission_denied', false],
        ['role.deleted', p.dev!.id, 'role', role.id, 'permission_denied', false],
        ['role.assigned', p.manager!.id, 'role_assignment', null, 'role_escalation', false],
        ['role.assigned', p.manager!.id, 'role_assignment', null, 'self_modification', false],
      ]);
      const [escalation] = res.data.filter(
        (e: { details: { reason: string } }) => e.details.reason === 'role_escalation',
      );
      assert.deepEqual(escalation.details.request, { principal: p.u0!.id, role: 'admin' });
      assert.ok(escalation.details.permissions.includes('roles:admin'));
      assert.match(escalation.error_message, /carries permissions you do not hold/);
      const [denied] = res.data.filter((e: { action: string }) => e.action === 'grant.created');
      // Refused before its body is read: the event names the permission missing, not the body.
      assert.deepEqual(denied.details, { reason: 'permission_denied', permissions: ['roles:admin'] });
      assert.match(denied.error_message, /needs roles:admin/);
      // Other failures (a 404, a 400) are not refusals of a privileged action.
      assert.equal((await as('admin', 'DELETE', '/v1/roles/rol_missing')).statusCode, 404);
      assert.equal((await as('admin', 'POST', '/v1/role-assignments', { principal: 1 })).statusCode, 400);
      const after = await ok('root', 'GET', `/v1/audit/events?success=false&since=${since}&limit=100`);
      assert.equal(after.data.length, 4);
      assert.equal((await ok('root', 'POST', '/v1/audit/verify')).valid, true);
    });
  });
}
