import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { z } from 'zod';
import type { Principal } from '../http/principal.ts';
import { isPermission, PERMISSIONS, type Permission, RESOURCE_TYPES } from './catalogue.ts';
import { buildOrgIndex, type Decision, type GrantDef, type OrgIndex, type OrgSnapshot } from './engine.ts';
import { expandPattern, SYSTEM_ROLES, systemRolePermissions } from './roles.ts';

const NOW = 1_000_000;

const Grant = z.object({
  id: z.string(),
  principalId: z.string(),
  permission: z.string(),
  resourceType: z.string(),
  resourceId: z.string().nullable(),
  effect: z.enum(['allow', 'deny']),
  expiresAt: z.number().nullable(),
});
const PrincipalSpec = z.object({
  id: z.string(),
  orgId: z.string().optional(),
  ownerId: z.string().optional(),
  superuser: z.boolean().optional(),
  scopes: z.array(z.string()).nullable().optional(),
});
const Case = z.object({
  name: z.string().optional(),
  principal: z.string(),
  permission: z.string(),
  resource: z.object({ type: z.string(), id: z.string().optional() }).optional(),
  now: z.number().optional(),
  allowed: z.boolean(),
  by: z.enum(['resource_grant', 'type_grant', 'role', 'superuser', 'default_deny']),
  rule_id: z.string().optional(),
  role: z.string().optional(),
  reason: z.string().optional(),
});
const Suite = z.object({
  name: z.string(),
  orgId: z.string(),
  roles: z.array(
    z.object({
      name: z.string(),
      permissions: z.array(z.string()),
      inherits: z.enum(SYSTEM_ROLES).nullable().optional(),
    }),
  ),
  assignments: z.array(z.object({ principalId: z.string(), roleName: z.string() })),
  grants: z.array(Grant),
  principals: z.record(z.string(), PrincipalSpec).optional(),
  cases: z.array(Case),
});
const Matrix = z.object({ now: z.number(), suites: z.array(Suite) });
type Suite = z.infer<typeof Suite>;

const matrix = Matrix.parse(
  JSON.parse(readFileSync(new URL('./testdata/matrix.json', import.meta.url), 'utf8')) as unknown,
);

function principalFor(suite: Suite, ref: string): Principal {
  const spec = suite.principals?.[ref] ?? { id: ref };
  const kind = spec.id.startsWith('key_') ? 'key' : spec.id.startsWith('agt_') ? 'agent' : 'user';
  return {
    orgId: spec.orgId ?? suite.orgId,
    kind,
    id: spec.id,
    name: spec.id,
    roles: [],
    scopes: spec.scopes ?? null,
    superuser: spec.superuser ?? false,
    ...(spec.ownerId === undefined ? {} : { ownerId: spec.ownerId }),
  };
}

function snapshotOf(suite: Suite): OrgSnapshot {
  return { orgId: suite.orgId, roles: suite.roles, assignments: suite.assignments, grants: suite.grants };
}

// The same content applied one patch at a time, grants and assignments in reverse order, so a
// patched index must reach the decisions of a built one.
function patchedIndexOf(suite: Suite): OrgIndex {
  const index = buildOrgIndex({ orgId: suite.orgId, roles: [], assignments: [], grants: [] });
  for (const g of [...suite.grants].reverse()) index.addGrant(g);
  for (const a of [...suite.assignments].reverse()) index.assign(a.principalId, a.roleName);
  for (const r of suite.roles) {
    if (!SYSTEM_ROLES.some((s) => s === r.name)) index.upsertRole(r);
  }
  return index;
}

function expectedDecision(c: z.infer<typeof Case>): Decision {
  const d: { by: string; rule_id?: string; role?: string; reason?: string } = { by: c.by };
  if (c.rule_id !== undefined) d.rule_id = c.rule_id;
  if (c.role !== undefined) d.role = c.role;
  if (c.reason !== undefined) d.reason = c.reason;
  return d as Decision;
}

describe('decision matrix', () => {
  for (const suite of matrix.suites) {
    const built = buildOrgIndex(snapshotOf(suite));
    const patched = patchedIndexOf(suite);
    describe(suite.name, () => {
      for (const c of suite.cases) {
        const where = c.resource ? ` on ${c.resource.type}/${c.resource.id ?? '*'}` : '';
        test(c.name ?? `${c.principal} ${c.permission}${where} @${c.now ?? matrix.now}`, () => {
          const principal = principalFor(suite, c.principal);
          const now = c.now ?? matrix.now;
          const expected = { allowed: c.allowed, decision: expectedDecision(c) };
          assert.deepEqual(built.check(principal, c.permission, c.resource, now), expected);
          assert.deepEqual(
            patched.check(principal, c.permission, c.resource, now),
            expected,
            'patched index',
          );
        });
      }
    });
  }

  test('has 100+ cases and reaches every decision and deny reason', () => {
    const cases = matrix.suites.flatMap((s) => s.cases);
    assert.ok(cases.length >= 100, `${cases.length} cases`);
    const seen = new Set(cases.map((c) => c.reason ?? c.by));
    for (const want of [
      'resource_grant',
      'type_grant',
      'role',
      'superuser',
      'no_rule',
      'cross_org',
      'unknown_permission',
      'unknown_resource_type',
      'out_of_scope',
      'no_owner',
    ]) {
      assert.ok(seen.has(want), `no case decided by ${want}`);
    }
  });
});

describe('catalogue', () => {
  test('40+ unique permissions over every SPEC resource type, each described', () => {
    assert.ok(PERMISSIONS.length >= 40);
    assert.equal(new Set(PERMISSIONS.map((p) => p.permission)).size, PERMISSIONS.length);
    const spec =
      'org users roles agents api_keys webhook_keys secrets settings flags webhooks audit tools executions approvals knowledge documents chats signals';
    assert.deepEqual([...RESOURCE_TYPES].sort(), spec.split(' ').sort());
    for (const p of PERMISSIONS) {
      assert.equal(p.permission, `${p.resource}:${p.action}`);
      assert.ok(p.description.length > 10, p.permission);
    }
  });

  test('names the permissions routes depend on and nothing else', () => {
    for (const p of [
      'api_keys:verify',
      'audit:export',
      'approvals:approve',
      'tools:execute',
      'secrets:reveal',
    ]) {
      assert.ok(isPermission(p), p);
    }
    for (const p of ['secrets:*', '*', 'secrets', 'secrets:read ', 'audit:delete', 'toString', '__proto__']) {
      assert.equal(isPermission(p), false, p);
    }
  });

  test('patterns expand against the catalogue', () => {
    assert.equal(expandPattern('*').length, PERMISSIONS.length);
    assert.deepEqual(expandPattern('audit:*'), ['audit:read', 'audit:export']);
    assert.equal(expandPattern('*:read').length, RESOURCE_TYPES.length, 'every resource type can be read');
    assert.deepEqual(expandPattern('*:approve'), ['approvals:approve', 'knowledge:approve']);
    for (const p of ['nope:*', 'secrets:nope', 'secrets', '', '**', ':'])
      assert.deepEqual(expandPattern(p), [], p);
  });
});

describe('system roles', () => {
  test('each role strictly contains the one below; admin holds everything', () => {
    for (let i = 1; i < SYSTEM_ROLES.length; i++) {
      const lower = systemRolePermissions(SYSTEM_ROLES[i - 1]!);
      const upper = systemRolePermissions(SYSTEM_ROLES[i]!);
      for (const p of lower) assert.ok(upper.has(p), `${SYSTEM_ROLES[i]} lacks ${p}`);
      assert.ok(upper.size > lower.size, `${SYSTEM_ROLES[i]} adds nothing`);
    }
    assert.equal(systemRolePermissions('admin').size, PERMISSIONS.length);
  });

  test('viewer reads and only reads', () => {
    for (const p of systemRolePermissions('viewer')) assert.match(p, /:read$/);
  });

  test('system roles cannot be changed or removed', () => {
    const index = buildOrgIndex({ orgId: 'org_a', roles: [], assignments: [], grants: [] });
    assert.throws(() => index.upsertRole({ name: 'viewer', permissions: ['*'] }));
    assert.throws(() => index.removeRole('admin'));
    assert.equal(index.rolePermissions('viewer'), systemRolePermissions('viewer'));
  });
});

const user = (id: string, extra: Partial<Principal> = {}): Principal => ({
  orgId: 'org_a',
  kind: id.startsWith('agt_') ? 'agent' : 'user',
  id,
  name: id,
  roles: [],
  scopes: null,
  superuser: false,
  ...extra,
});
const key = (ownerId: string, scopes: string[] | null): Principal => ({
  ...user('key_1'),
  kind: 'key',
  ownerId,
  scopes,
});
const grant = (id: string, over: Partial<GrantDef>): GrantDef => ({
  id,
  principalId: 'usr_1',
  permission: 'secrets:read',
  resourceType: 'secrets',
  resourceId: null,
  effect: 'allow',
  expiresAt: null,
  ...over,
});
const permsOf = (index: OrgIndex, who: Principal | string, now = NOW) =>
  index.effectivePermissions(who, now).map((e) => e.permission);

describe('effectivePermissions', () => {
  const index = buildOrgIndex({
    orgId: 'org_a',
    roles: [],
    assignments: [{ principalId: 'usr_1', roleName: 'viewer' }],
    grants: [
      grant('g1', { permission: 'secrets:read', effect: 'deny' }),
      grant('g2', { permission: 'tools:execute', resourceType: 'tools', expiresAt: NOW + 10 }),
      grant('g3', { permission: 'tools:delete', resourceType: 'tools', resourceId: 'tol_1' }),
    ],
  });

  test('roles plus type grants, minus type denies, ignoring id grants and expired grants', () => {
    const reads = PERMISSIONS.filter((p) => p.action === 'read').map((p) => p.permission);
    const expected = [...reads.filter((p) => p !== 'secrets:read'), 'tools:execute'];
    assert.deepEqual(permsOf(index, 'usr_1').sort(), expected.sort());
    assert.deepEqual(
      index.effectivePermissions('usr_1', NOW).find((e) => e.permission === 'tools:execute')?.decision,
      { by: 'type_grant', rule_id: 'g2' },
    );
    assert.ok(!permsOf(index, 'usr_1', NOW + 10).includes('tools:execute'));
  });

  test('a key holds the intersection of its scopes and its owner', () => {
    assert.deepEqual(permsOf(index, key('usr_1', ['secrets:*', 'tools:execute', 'users:delete'])), [
      'tools:execute',
    ]);
    assert.deepEqual(permsOf(index, key('usr_1', null)), permsOf(index, 'usr_1'));
  });

  test('superuser holds everything; another org and unknown principals nothing', () => {
    assert.equal(permsOf(index, user('usr_9', { superuser: true })).length, PERMISSIONS.length);
    assert.deepEqual(permsOf(index, user('usr_1', { orgId: 'org_b' })), []);
    assert.deepEqual(permsOf(index, 'usr_unknown'), []);
  });
});

describe('resourcesFor', () => {
  test('lists allowed and denied ids next to type-wide access', () => {
    const index = buildOrgIndex({
      orgId: 'org_a',
      roles: [],
      assignments: [{ principalId: 'usr_1', roleName: 'viewer' }],
      grants: [
        grant('g1', { resourceId: 'sec_b', effect: 'deny' }),
        grant('g2', { resourceId: 'sec_a' }),
        grant('g3', { resourceId: 'sec_c', expiresAt: NOW }),
        grant('g4', { permission: 'secrets:update', resourceId: 'sec_a' }),
        grant('g5', { permission: 'secrets:update', resourceId: 'sec_d', effect: 'deny' }),
        grant('g6', { permission: 'secrets:update', resourceId: 'sec_d' }),
      ],
    });
    assert.deepEqual(index.resourcesFor('usr_1', 'secrets:read', NOW), {
      permission: 'secrets:read',
      resourceType: 'secrets',
      typeWide: true,
      decision: { by: 'role', role: 'viewer' },
      allowedIds: ['sec_a'],
      deniedIds: ['sec_b'],
    });
    const update = index.resourcesFor('usr_1', 'secrets:update', NOW);
    assert.equal(update.typeWide, false);
    assert.deepEqual([update.allowedIds, update.deniedIds], [['sec_a'], ['sec_d']]);
    assert.deepEqual(index.resourcesFor('usr_1', 'secrets:read', NOW - 1).allowedIds, ['sec_a', 'sec_c']);
  });

  test('keys, superusers, other orgs and unknown permissions', () => {
    const index = buildOrgIndex({
      orgId: 'org_a',
      roles: [],
      assignments: [],
      grants: [grant('g1', { resourceId: 'sec_a' }), grant('g2', { resourceId: 'sec_b', effect: 'deny' })],
    });
    const su = index.resourcesFor(user('usr_1', { superuser: true }), 'secrets:read', NOW);
    assert.deepEqual([su.typeWide, su.allowedIds, su.deniedIds], [true, [], []]);
    const inScope = index.resourcesFor(key('usr_1', ['secrets:read']), 'secrets:read', NOW);
    assert.deepEqual([inScope.typeWide, inScope.allowedIds], [false, ['sec_a']]);
    const outOfScope = index.resourcesFor(key('usr_1', ['tools:read']), 'secrets:read', NOW);
    assert.deepEqual([outOfScope.allowedIds, outOfScope.decision.reason], [[], 'out_of_scope']);
    const foreign = index.resourcesFor(user('usr_1', { orgId: 'org_b' }), 'secrets:read', NOW);
    assert.deepEqual([foreign.allowedIds, foreign.decision.reason], [[], 'cross_org']);
    assert.deepEqual(index.resourcesFor('usr_1', 'secrets:nope', NOW).allowedIds, []);
  });

  test('agrees with check for every id, over random grants', () => {
    let seed = 7;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const perms: Permission[] = ['secrets:read', 'secrets:update', 'tools:execute'];
    const ids = Array.from({ length: 12 }, (_, i) => `res_${i}`);
    const principals = ['usr_1', 'usr_2', 'agt_3'];
    const grants = Array.from({ length: 300 }, (_, i) => {
      const permission = perms[Math.floor(rand() * perms.length)]!;
      return grant(`g${i}`, {
        principalId: principals[Math.floor(rand() * principals.length)]!,
        permission,
        resourceType: permission.split(':')[0]!,
        resourceId: rand() < 0.25 ? null : ids[Math.floor(rand() * ids.length)]!,
        effect: rand() < 0.4 ? 'deny' : 'allow',
        expiresAt: rand() < 0.3 ? NOW + Math.floor(rand() * 5) - 2 : null,
      });
    });
    const index = buildOrgIndex({
      orgId: 'org_a',
      roles: [],
      assignments: [
        { principalId: 'usr_1', roleName: 'developer' },
        { principalId: 'agt_3', roleName: 'viewer' },
      ],
      grants,
    });
    let compared = 0;
    for (const who of [...principals, key('usr_1', ['secrets:read'])]) {
      for (const permission of perms) {
        const type = permission.split(':')[0]!;
        const access = index.resourcesFor(who, permission, NOW);
        for (const id of ids) {
          const expected =
            access.allowedIds.includes(id) || (access.typeWide && !access.deniedIds.includes(id));
          const p = typeof who === 'string' ? user(who) : who;
          assert.equal(
            index.check(p, permission, { type, id }, NOW).allowed,
            expected,
            `${p.id} ${permission} ${id}`,
          );
          compared++;
        }
      }
    }
    assert.equal(compared, 4 * perms.length * ids.length);
  });
});

describe('patching', () => {
  const fresh = () =>
    buildOrgIndex({
      orgId: 'org_a',
      roles: [{ name: 'support', permissions: ['chats:*'] }],
      assignments: [{ principalId: 'usr_1', roleName: 'support' }],
      grants: [],
    });
  const allowed = (index: OrgIndex, permission: string, id?: string) =>
    index.check(user('usr_1'), permission, id ? { type: permission.split(':')[0]!, id } : undefined, NOW)
      .allowed;

  test('grants: add, replace by id, remove', () => {
    const index = fresh();
    index.addGrant(grant('g1', { resourceId: 'sec_1' }));
    assert.equal(allowed(index, 'secrets:read', 'sec_1'), true);
    assert.equal(allowed(index, 'secrets:read', 'sec_2'), false);
    index.addGrant(grant('g1', { resourceId: 'sec_2' }));
    assert.equal(allowed(index, 'secrets:read', 'sec_1'), false, 'the replaced grant is gone');
    assert.equal(allowed(index, 'secrets:read', 'sec_2'), true);
    assert.equal(index.removeGrant('g1'), true);
    assert.equal(index.removeGrant('g1'), false);
    assert.equal(allowed(index, 'secrets:read', 'sec_2'), false);
    assert.deepEqual(index.resourcesFor('usr_1', 'secrets:read', NOW).allowedIds, []);
  });

  test('removing one of two grants at one level keeps the other', () => {
    const index = fresh();
    index.addGrant(grant('g1', { effect: 'deny' }));
    index.addGrant(grant('g2', {}));
    assert.equal(allowed(index, 'secrets:read'), false);
    index.removeGrant('g1');
    assert.deepEqual(index.check(user('usr_1'), 'secrets:read', undefined, NOW).decision, {
      by: 'type_grant',
      rule_id: 'g2',
    });
  });

  test('assign and unassign', () => {
    const index = fresh();
    assert.equal(index.assign('usr_1', 'manager'), true);
    assert.equal(index.assign('usr_1', 'manager'), false);
    assert.deepEqual(index.rolesOf('usr_1'), ['manager', 'support']);
    assert.equal(allowed(index, 'approvals:approve'), true);
    assert.equal(index.unassign('usr_1', 'manager'), true);
    assert.equal(index.unassign('usr_1', 'manager'), false);
    assert.equal(allowed(index, 'approvals:approve'), false);
    assert.equal(allowed(index, 'chats:delete'), true);
  });

  test('changing a role reaches every holder; removing it drops its assignments', () => {
    const index = fresh();
    index.assign('usr_2', 'support');
    index.upsertRole({ name: 'support', permissions: ['users:read'] });
    assert.equal(allowed(index, 'chats:delete'), false);
    assert.equal(allowed(index, 'users:read'), true);
    assert.equal(index.check(user('usr_2'), 'users:read', undefined, NOW).allowed, true);
    assert.equal(index.removeRole('support'), true);
    assert.equal(index.removeRole('support'), false);
    assert.equal(allowed(index, 'users:read'), false);
    assert.deepEqual(index.rolesOf('usr_1'), []);
    index.upsertRole({ name: 'support', permissions: ['users:read'] });
    assert.equal(allowed(index, 'users:read'), false, 'a recreated role is not re-assigned');
  });

  test('an assignment made before its role exists takes effect when the role is created', () => {
    const index = fresh();
    index.assign('usr_1', 'release');
    assert.equal(allowed(index, 'flags:delete'), false);
    index.upsertRole({ name: 'release', permissions: ['flags:delete'] });
    assert.equal(allowed(index, 'flags:delete'), true);
  });

  test('version moves on every change and not on a no-op', () => {
    const index = fresh();
    const v0 = index.version;
    index.assign('usr_1', 'support');
    index.removeGrant('nope');
    index.unassign('usr_9', 'viewer');
    assert.equal(index.version, v0);
    index.addGrant(grant('g1', {}));
    index.assign('usr_1', 'viewer');
    index.upsertRole({ name: 'x', permissions: [] });
    assert.equal(index.version, v0 + 3);
  });

  test('a snapshot rebuilds an index that decides the same', () => {
    const index = fresh();
    index.addGrant(grant('g1', { resourceId: 'sec_1', effect: 'deny', expiresAt: NOW + 5 }));
    index.addGrant(grant('g2', { permission: 'tools:execute', resourceType: 'tools' }));
    index.assign('agt_1', 'developer');
    const rebuilt = buildOrgIndex(structuredClone(index.snapshot()));
    for (const who of ['usr_1', 'agt_1']) {
      for (const { permission, resource } of PERMISSIONS) {
        for (const id of [undefined, 'sec_1', 'tol_1']) {
          const ref = id === undefined ? undefined : { type: resource, id };
          assert.deepEqual(
            rebuilt.check(user(who), permission, ref, NOW),
            index.check(user(who), permission, ref, NOW),
          );
        }
      }
    }
    assert.deepEqual(rebuilt.snapshot(), index.snapshot());
  });
});
