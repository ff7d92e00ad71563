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
import { PERMISSIONS } from './catalogue.ts';

type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE';

for (const { kind, skip } of STORES) {
  describe(`authz routes on ${kind}`, { skip }, () => {
    let store: TestStore;
    let app: FastifyInstance;
    let nowMs = Date.parse('2030-01-01T00:00:00Z');
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
    const p: Record<string, Principal> = {};
    let orgA = '';
    let orgB = '';

    before(async () => {
      store = await openTestStore(kind);
      app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
        db: store.db,
        keyring: createKeyring(randomBytes(32)),
        clock: () => new Date(nowMs),
      });
      orgA = (await app.steward.tenancy.createOrg({ slug: 'acme', name: 'Acme' })).id;
      orgB = (await app.steward.tenancy.createOrg({ slug: 'globex', name: 'Globex' })).id;
      p.root = user(orgA, 'Root', { superuser: true });
      p.admin = user(orgA, 'Admin');
      p.manager = user(orgA, 'Manager');
      p.dev = user(orgA, 'Dev');
      p.dev2 = user(orgA, 'Dev2');
      p.nobody = user(orgA, 'Nobody');
      p.grantor = user(orgA, 'Grantor');
      p.stranger = user(orgA, 'Stranger'); // never given anything
      p.bob = user(orgB, 'Bob');
      p.key = {
        orgId: orgA,
        kind: 'key',
        id: newId('key'),
        name: 'ci key',
        roles: [],
        scopes: ['roles:read', 'secrets:read'],
        superuser: false,
        ownerId: p.admin.id,
        keyId: 'key_x',
      };
      installTestPrincipals(app, p);
      await app.ready();
      // Stands in for identity's directory: the test principals are not rows in its tables.
      app.steward.authz.usePrincipalDirectory({
        find: async (orgId, id) =>
          Object.values(p).find((x) => x.id === id && x.orgId === orgId && x.kind !== 'key') ?? null,
      });
      const { authz, db } = app.steward;
      const bootstrap: [Principal, string][] = [
        [p.admin, 'admin'],
        [p.manager, 'manager'],
        [p.dev, 'developer'],
        [p.dev2, 'developer'],
        [p.bob, 'admin'],
      ];
      for (const [who, role] of bootstrap) {
        const { afterCommit } = await db.db.transaction((tx) =>
          authz.assignRoleInTx(tx, { orgId: who.orgId, principalId: who.id, role, by: null }),
        );
        await afterCommit();
      }
    });
    after(async () => {
      await app.close();
      await store.dispose();
    });

    const as = (who: string, method: Method, url: string, payload?: unknown) => {
      if (process.env.DEBUG_T) console.log('as', who, method, url, JSON.stringify(payload)?.slice(0, 100));
      return asRaw(who, method, url, payload);
    };
    const asRaw = (who: string, method: Method, url: string, payload?: unknown) =>
      app.inject({
        method,
        url,
        headers: { 'x-test-principal': who },
        ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }),
      });
    const check = async (who: string, body: Record<string, unknown>) => {
      if (process.env.DEBUG_T) console.log('check', who, body);
      const res = await as(who, 'POST', '/v1/authz/check', body);
      assert.equal(res.statusCode, 200, res.body);
      return res.json() as { allowed: boolean; decision: { by: string; rule_id?: string; role?: string } };
    };
    const events = async (action: string) =>
      (await as('root', 'GET', `/v1/audit/events?action=${action}&limit=500`)).json().data as {
        resource: { id: string };
        changes: { before?: Record<string, unknown>; after?: Record<string, unknown> };
      }[];

    test('the catalogue lists 40+ permissions; anonymous callers get 401', async () => {
      const res = await as('nobody', 'GET', '/v1/authz/permissions?limit=500');
      assert.equal(res.statusCode, 200);
      assert.equal(res.json().data.length, PERMISSIONS.length);
      assert.ok(PERMISSIONS.length >= 40);
      assert.deepEqual(res.json().data[0], { ...PERMISSIONS[0] });
      assert.equal((await app.inject({ method: 'GET', url: '/v1/authz/permissions' })).statusCode, 401);
    });

    test('system roles are listed first and cannot be changed or deleted', async () => {
      const list = await as('dev', 'GET', '/v1/roles');
      assert.equal(list.statusCode, 200);
      const names = list.json().data.map((r: { name: string }) => r.name);
      assert.deepEqual(names.slice(0, 4), ['admin', 'manager', 'developer', 'viewer']);
      const admin = (await as('dev', 'GET', '/v1/roles/admin')).json();
      assert.equal(admin.system, true);
      assert.equal(admin.effective_permissions.length, PERMISSIONS.length);
      assert.equal(admin.inherits, 'manager');
      for (const [method, payload] of [
        ['PATCH', { description: 'x' }],
        ['DELETE', undefined],
      ] as const) {
        const res = await as('admin', method, '/v1/roles/admin', payload);
        assert.equal(res.statusCode, 409);
        assert.equal(res.json().code, 'system_role_immutable');
      }
      const reserved = await as('admin', 'POST', '/v1/roles', { name: 'viewer', permissions: [] });
      assert.equal(reserved.json().code, 'role_name_reserved');
    });

    test('custom role CRUD with validation, audit before/after, and 404 across orgs', async () => {
      const created = await as('admin', 'POST', '/v1/roles', {
        name: 'support',
        description: 'Helps customers',
        permissions: ['users:read', 'chats:*'],
        inherits: 'viewer',
      });
      assert.equal(created.statusCode, 201, created.body);
      const role = created.json();
      assert.match(role.id, /^rol_/);
      assert.ok(role.effective_permissions.includes('chats:delete'));
      assert.ok(role.effective_permissions.includes('audit:read')); // from viewer
      assert.equal(role.created_by, p.admin!.id);

      const dup = await as('admin', 'POST', '/v1/roles', { name: 'support', permissions: [] });
      assert.equal(dup.statusCode, 409);
      assert.equal(dup.json().code, 'role_exists');

      const unknown = await as('admin', 'POST', '/v1/roles', {
        name: 'x',
        permissions: ['nope:read', 'chats:*'],
      });
      assert.equal(unknown.statusCode, 400);
      assert.equal(unknown.json().code, 'unknown_permission');
      assert.deepEqual(unknown.json().unknown, ['nope:read']);

      const bad = await as('admin', 'POST', '/v1/roles', { name: 'Bad Name', permissions: 'x', extra: 1 });
      assert.equal(bad.statusCode, 400);
      assert.deepEqual(
        bad
          .json()
          .errors.map((e: { path: string }) => e.path)
          .sort(),
        ['body.extra', 'body.name', 'body.permissions'],
      );
      const badInherit = await as('admin', 'POST', '/v1/roles', {
        name: 'y',
        permissions: [],
        inherits: 'boss',
      });
      assert.equal(badInherit.statusCode, 400);

      const forbidden = await as('dev', 'POST', '/v1/roles', { name: 'z', permissions: [] });
      assert.equal(forbidden.statusCode, 403);
      assert.equal(forbidden.json().code, 'permission_denied');

      const patched = await as('admin', 'PATCH', `/v1/roles/${role.id}`, {
        name: 'helpdesk',
        permissions: ['users:read', 'chats:read'],
      });
      assert.equal(patched.statusCode, 200, patched.body);
      assert.equal(patched.json().name, 'helpdesk');
      assert.ok(!patched.json().effective_permissions.includes('chats:delete'));
      assert.equal((await as('admin', 'PATCH', `/v1/roles/${role.id}`, {})).statusCode, 400);
      assert.equal((await as('admin', 'PATCH', `/v1/roles/${role.id}`, { name: 7 })).statusCode, 400);

      const [updated] = await events('role.updated');
      assert.equal(updated?.resource.id, role.id);
      assert.equal(updated?.changes.before?.name, 'support');
      assert.equal(updated?.changes.after?.name, 'helpdesk');
      assert.deepEqual(updated?.changes.after?.permissions, ['users:read', 'chats:read']);

      // Another org's role id answers 404 for every verb, never 403.
      for (const [method, payload] of [
        ['GET', undefined],
        ['PATCH', { description: 'mine now' }],
        ['DELETE', undefined],
      ] as const) {
        const res = await as('bob', method, `/v1/roles/${role.id}`, payload);
        assert.equal(res.statusCode, 404, `${method} ${res.body}`);
        assert.equal(res.json().code, 'role_not_found');
      }
      assert.equal((await as('bob', 'GET', '/v1/roles/rol_nonsense')).statusCode, 404);
      const bobRoles = (await as('bob', 'GET', '/v1/roles')).json().data;
      assert.ok(!bobRoles.some((r: { id: string }) => r.id === role.id));

      // A renamed role keeps its holders.
      const assigned = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.nobody!.id,
        role: role.id,
      });
      assert.equal(assigned.statusCode, 201, assigned.body);
      assert.equal(assigned.json().role, 'helpdesk');
      await as('admin', 'PATCH', `/v1/roles/${role.id}`, { name: 'frontline' });
      const c = await check('nobody', { permission: 'chats:read' });
      assert.deepEqual(c, { allowed: true, decision: { by: 'role', role: 'frontline' } });

      const del = await as('admin', 'DELETE', `/v1/roles/${role.id}`);
      assert.equal(del.statusCode, 204);
      assert.equal((await check('nobody', { permission: 'chats:read' })).allowed, false);
      assert.equal((await as('admin', 'GET', `/v1/roles/${role.id}`)).statusCode, 404);
      const [deleted] = await events('role.deleted');
      assert.equal(deleted?.changes.before?.name, 'frontline');
    });

    test('assignments: assign, list with cursor, conflict, unassign, 404 across orgs', async () => {
      const res = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.nobody!.id,
        role: 'viewer',
      });
      assert.equal(res.statusCode, 201, res.body);
      const a = res.json();
      assert.match(a.id, /^ras_/);
      assert.equal(a.assigned_by, p.admin!.id);
      assert.deepEqual(await check('nobody', { permission: 'secrets:read' }), {
        allowed: true,
        decision: { by: 'role', role: 'viewer' },
      });
      const again = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.nobody!.id,
        role: 'viewer',
      });
      assert.equal(again.statusCode, 409);
      assert.equal(again.json().code, 'assignment_exists');

      const seen: string[] = [];
      let cursor: string | null = null;
      do {
        const url: string = `/v1/role-assignments?limit=2${cursor ? `&cursor=${cursor}` : ''}`;
        const page = (await as('admin', 'GET', url)).json();
        seen.push(...page.data.map((x: { id: string }) => x.id));
        cursor = page.next_cursor;
      } while (cursor);
      assert.ok(seen.length >= 5);
      assert.equal(new Set(seen).size, seen.length);
      const mine = (await as('admin', 'GET', `/v1/role-assignments?principal=${p.nobody!.id}`)).json().data;
      assert.deepEqual(
        mine.map((x: { role: string }) => x.role),
        ['viewer'],
      );
      assert.equal(
        (await as('admin', 'GET', '/v1/role-assignments?cursor=zzz')).json().code,
        'invalid_cursor',
      );

      assert.equal((await as('bob', 'DELETE', `/v1/role-assignments/${a.id}`)).statusCode, 404);
      const unknownRole = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.nobody!.id,
        role: 'boss',
      });
      assert.equal(unknownRole.statusCode, 404);
      assert.equal(unknownRole.json().code, 'role_not_found');
      const keyTarget = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.key!.id,
        role: 'viewer',
      });
      assert.equal(keyTarget.json().code, 'invalid_principal');
      const typed = await as('admin', 'POST', '/v1/role-assignments', { principal: 42, role: ['viewer'] });
      assert.equal(typed.statusCode, 400);

      const removed = await as('admin', 'DELETE', `/v1/role-assignments/${a.id}`);
      assert.equal(removed.statusCode, 204);
      assert.equal((await check('nobody', { permission: 'secrets:read' })).allowed, false);
      assert.equal((await as('admin', 'DELETE', `/v1/role-assignments/${a.id}`)).statusCode, 404);
      const [unassigned] = await events('role.unassigned');
      assert.equal(unassigned?.changes.before?.role, 'viewer');
      assert.equal(unassigned?.changes.before?.principal, p.nobody!.id);
    });

    test('no escalation through roles: own roles, higher roles, roles:admin needed for equals', async () => {
      const self = await as('admin', 'POST', '/v1/role-assignments', {
        principal: p.admin!.id,
        role: 'viewer',
      });
      assert.equal(self.statusCode, 403);
      assert.equal(self.json().code, 'self_modification');
      const up = await as('manager', 'POST', '/v1/role-assignments', { principal: p.dev!.id, role: 'admin' });
      assert.equal(up.statusCode, 403);
      assert.equal(up.json().code, 'role_escalation');
      assert.ok(up.json().missing_permissions.includes('roles:admin'));
      const peer = await as('manager', 'POST', '/v1/role-assignments', {
        principal: p.dev!.id,
        role: 'manager',
      });
      assert.equal(peer.json().code, 'role_escalation');
      const below = await as('manager', 'POST', '/v1/role-assignments', {
        principal: p.nobody!.id,
        role: 'developer',
      });
      assert.equal(below.statusCode, 201, below.body);
      // A manager cannot create or widen a role beyond its own rights either.
      const wide = await as('admin', 'POST', '/v1/roles', { name: 'ops', permissions: ['secrets:read'] });
      assert.equal(wide.statusCode, 201);
      const widen = await as('manager', 'PATCH', `/v1/roles/${wide.json().id}`, { permissions: ['*'] });
      assert.equal(widen.statusCode, 403);
      assert.equal(widen.json().code, 'role_escalation');
      // Removing an admin's role is beyond a developer (no roles:delete) and refused by the route.
      const adminRas = (await as('admin', 'GET', `/v1/role-assignments?principal=${p.admin!.id}`)).json()
        .data[0];
      assert.equal((await as('dev', 'DELETE', `/v1/role-assignments/${adminRas.id}`)).statusCode, 403);
      const selfRemove = await as('admin', 'DELETE', `/v1/role-assignments/${adminRas.id}`);
      assert.equal(selfRemove.json().code, 'self_modification');
    });

    test('grants: type and resource level, deny wins, expiry, audit, 404 across orgs', async () => {
      const target = p.dev2!.id;
      const grant = async (body: Record<string, unknown>, who = 'admin') =>
        as(who, 'POST', '/v1/authz/grants', { principal: target, ...body });
      const allow = await grant({
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_1',
        effect: 'allow',
      });
      assert.equal(allow.statusCode, 201, allow.body);
      const g = allow.json();
      assert.match(g.id, /^grt_/);
      assert.equal(g.active, true);
      assert.deepEqual(
        await check('admin', { principal: target, permission: 'secrets:reveal', resource_id: 'sec_1' }),
        { allowed: true, decision: { by: 'resource_grant', rule_id: g.id } },
      );
      assert.equal(
        (await check('admin', { principal: target, permission: 'secrets:reveal' })).allowed,
        false,
      );
      const twin = await grant({
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_1',
        effect: 'allow',
      });
      assert.equal(twin.json().code, 'grant_exists');

      // A type-wide deny loses to the id-level allow, but beats the role elsewhere.
      const deny = await grant({ permission: 'secrets:update', resource_type: 'secrets', effect: 'deny' });
      assert.equal(deny.statusCode, 201);
      const denied = await check('admin', {
        principal: target,
        permission: 'secrets:update',
        resource_id: 'sec_9',
      });
      assert.deepEqual(denied, { allowed: false, decision: { by: 'type_grant', rule_id: deny.json().id } });

      // Expiry: counts until the instant it expires, then for nothing.
      const soon = new Date(nowMs + 60_000).toISOString();
      const temp = await grant({
        permission: 'audit:export',
        resource_type: 'audit',
        effect: 'allow',
        expires_at: soon,
      });
      assert.equal(temp.statusCode, 201, temp.body);
      assert.equal(
        (await check('admin', { principal: target, permission: 'audit:export' })).decision.by,
        'type_grant',
      );
      nowMs += 60_000;
      assert.deepEqual(await check('admin', { principal: target, permission: 'audit:export' }), {
        allowed: false,
        decision: { by: 'default_deny', reason: 'no_rule' },
      });
      const expired = (await as('admin', 'GET', `/v1/authz/grants?principal=${target}&active=false`)).json()
        .data;
      assert.deepEqual(
        expired.map((x: { id: string; active: boolean }) => [x.id, x.active]),
        [[temp.json().id, false]],
      );
      const past = await grant({
        permission: 'audit:export',
        resource_type: 'audit',
        effect: 'allow',
        expires_at: soon,
      });
      assert.equal(past.json().code, 'expiry_in_past');

      for (const [body, code] of [
        [{ permission: 'secrets:*', resource_type: 'secrets', effect: 'allow' }, 'unknown_permission'],
        [{ permission: 'secrets:read', resource_type: 'vaults', effect: 'allow' }, 'unknown_resource_type'],
        [{ permission: 'secrets:read', resource_type: 'secrets', effect: 'maybe' }, 'validation_failed'],
        [
          { permission: 'secrets:read', resource_type: 'secrets', effect: 'allow', when: 1 },
          'validation_failed',
        ],
        [
          { permission: 'secrets:read', resource_type: 'secrets', effect: 'allow', expires_at: 'soon' },
          'validation_failed',
        ],
        [
          { permission: 'secrets:read', resource_type: 'secrets', effect: 'allow', principal: 'usr_x' },
          'invalid_principal',
        ],
      ] as const) {
        const res = await grant(body);
        assert.equal(res.json().code, code, JSON.stringify(body));
        assert.equal(
          res.statusCode,
          code.startsWith('unknown') || code !== 'validation_failed' ? res.statusCode : 400,
        );
      }

      // Another org cannot see or revoke it, and learns nothing (404, not 403).
      const bobDelete = await as('bob', 'DELETE', `/v1/authz/grants/${g.id}`);
      assert.equal(bobDelete.statusCode, 404);
      assert.equal(bobDelete.json().code, 'grant_not_found');
      assert.deepEqual((await as('bob', 'GET', '/v1/authz/grants')).json().data, []);

      const revoked = await as('admin', 'DELETE', `/v1/authz/grants/${g.id}`);
      assert.equal(revoked.statusCode, 204);
      assert.equal(
        (await check('admin', { principal: target, permission: 'secrets:reveal', resource_id: 'sec_1' }))
          .allowed,
        false,
      );
      const [created] = (await events('grant.created')).filter((e) => e.resource.id === g.id);
      assert.deepEqual(created?.changes.after, {
        principal: target,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_1',
        effect: 'allow',
        expires_at: null,
      });
      const [revokedEvent] = await events('grant.revoked');
      assert.equal(revokedEvent?.changes.before?.permission, 'secrets:reveal');
    });

    test('no escalation through grants: only what you hold, never to yourself', async () => {
      const role = await as('admin', 'POST', '/v1/roles', {
        name: 'grantor',
        permissions: ['roles:admin', 'secrets:read'],
      });
      assert.equal(role.statusCode, 201, role.body);
      await as('admin', 'POST', '/v1/role-assignments', { principal: p.grantor!.id, role: 'grantor' });
      const body = { principal: p.nobody!.id, resource_type: 'secrets', effect: 'allow' };
      const over = await as('grantor', 'POST', '/v1/authz/grants', { ...body, permission: 'secrets:reveal' });
      assert.equal(over.statusCode, 403);
      assert.equal(over.json().code, 'grant_escalation');
      const ok = await as('grantor', 'POST', '/v1/authz/grants', { ...body, permission: 'secrets:read' });
      assert.equal(ok.statusCode, 201, ok.body);
      const self = await as('grantor', 'POST', '/v1/authz/grants', {
        ...body,
        principal: p.grantor!.id,
        permission: 'secrets:read',
      });
      assert.equal(self.json().code, 'self_modification');
      const noRoute = await as('manager', 'POST', '/v1/authz/grants', {
        ...body,
        permission: 'secrets:read',
      });
      assert.equal(noRoute.json().code, 'permission_denied');
      // Revoking a grant on a permission one does not hold is refused too.
      const adminGrant = await as('admin', 'POST', '/v1/authz/grants', {
        ...body,
        permission: 'secrets:reveal',
        effect: 'deny',
      });
      const revoke = await as('grantor', 'DELETE', `/v1/authz/grants/${adminGrant.json().id}`);
      assert.equal(revoke.json().code, 'grant_escalation');
    });

    test('check: one or many, explanations, other principals need roles:read, keys are scoped', async () => {
      assert.deepEqual(await check('admin', { permission: 'org:admin' }), {
        allowed: true,
        decision: { by: 'role', role: 'admin' },
      });
      assert.deepEqual(await check('root', { permission: 'org:admin' }), {
        allowed: true,
        decision: { by: 'superuser' },
      });
      assert.deepEqual(await check('dev', { permission: 'nope:read' }), {
        allowed: false,
        decision: { by: 'default_deny', reason: 'unknown_permission' },
      });
      // A key: its scopes ∩ its owner's rights.
      assert.equal((await check('key', { permission: 'secrets:read' })).allowed, true);
      assert.deepEqual(await check('key', { permission: 'secrets:reveal' }), {
        allowed: false,
        decision: { by: 'default_deny', reason: 'out_of_scope' },
      });
      const many = await as('dev', 'POST', '/v1/authz/check', {
        checks: [
          { permission: 'secrets:create' },
          { permission: 'roles:admin' },
          { principal: p.admin!.id, permission: 'roles:admin' },
        ],
      });
      assert.equal(many.statusCode, 200, many.body);
      assert.deepEqual(
        many.json().results.map((r: { allowed: boolean }) => r.allowed),
        [true, false, true],
      );
      const tooMany = await as('dev', 'POST', '/v1/authz/check', {
        checks: Array.from({ length: 101 }, () => ({ permission: 'secrets:read' })),
      });
      assert.equal(tooMany.statusCode, 400);
      assert.equal((await as('dev', 'POST', '/v1/authz/check', { checks: [] })).statusCode, 400);
      assert.equal((await as('dev', 'POST', '/v1/authz/check', { permission: 'a:b', x: 1 })).statusCode, 400);
      assert.equal((await as('dev', 'POST', '/v1/authz/check', { permission: 5 })).statusCode, 400);
      const snoop = await as('stranger', 'POST', '/v1/authz/check', {
        principal: p.admin!.id,
        permission: 'org:read',
      });
      assert.equal(snoop.statusCode, 403);
      const ghost = await as('admin', 'POST', '/v1/authz/check', {
        principal: 'key_unknown',
        permission: 'org:read',
      });
      assert.equal(ghost.statusCode, 404);
      assert.equal(ghost.json().code, 'principal_not_found');
    });

    test('my permissions, a principal’s permissions, and what it can access', async () => {
      const me = (await as('dev', 'GET', '/v1/authz/me')).json();
      assert.equal(me.principal, p.dev!.id);
      assert.deepEqual(me.roles, ['developer']);
      assert.ok(me.permissions.some((e: { permission: string }) => e.permission === 'secrets:create'));
      assert.ok(!me.permissions.some((e: { permission: string }) => e.permission === 'secrets:delete'));
      const grantor = (await as('grantor', 'GET', '/v1/authz/me')).json();
      assert.deepEqual(grantor.roles, ['grantor']);
      assert.ok(grantor.permissions.length < me.permissions.length);

      await as('admin', 'POST', '/v1/authz/grants', {
        principal: p.dev!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_b',
        effect: 'allow',
      });
      await as('admin', 'POST', '/v1/authz/grants', {
        principal: p.dev!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: 'sec_a',
        effect: 'allow',
      });
      const theirs = await as('admin', 'GET', `/v1/authz/principals/${p.dev!.id}/permissions`);
      assert.equal(theirs.statusCode, 200);
      assert.deepEqual(
        theirs.json().resource_grants.map((g: { resource_id: string }) => g.resource_id),
        ['sec_b', 'sec_a'],
      );
      const res = await as(
        'admin',
        'GET',
        `/v1/authz/principals/${p.dev!.id}/resources?permission=secrets:reveal`,
      );
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(res.json(), {
        principal: p.dev!.id,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        type_wide: false,
        decision: { by: 'default_deny', reason: 'no_rule' },
        allowed_ids: ['sec_a', 'sec_b'],
        denied_ids: [],
      });
      const bad = await as(
        'admin',
        'GET',
        `/v1/authz/principals/${p.dev!.id}/resources?permission=secrets:*`,
      );
      assert.equal(bad.json().code, 'unknown_permission');
      assert.equal((await as('admin', 'GET', `/v1/authz/principals/${p.dev!.id}/resources`)).statusCode, 400);
      assert.equal(
        (await as('stranger', 'GET', `/v1/authz/principals/${p.dev!.id}/permissions`)).statusCode,
        403,
      );
    });

    test('every authz route declares its access', async () => {
      const routes = app.printRoutes({ commonPrefix: false });
      for (const path of ['/v1/roles', '/v1/role-assignments', '/v1/authz/check', '/v1/authz/grants']) {
        assert.ok(routes.includes(path), path);
      }
      assert.equal(orgB.length > 0, true);
    });
  });
}
