// In-process authorization checks: Steward's OrgIndex against Casbin's enforce() on the same
// org (1,000 principals, 10,000 grants, roles with a hierarchy) in one run.
// Run: node --import tsx bench/authz-check.ts
//
// Casbin cannot express "most specific grant wins" or expiry, so its policy is the closest
// RBAC-with-domains equivalent: role hierarchy as g(role, role, dom), roles and grants as
// p(sub, dom, obj, act, eft) with keyMatch on `type/id` objects and deny-override; expired
// grants are left out of its policy. The figures compare lookup cost, not identical semantics.
import { performance } from 'node:perf_hooks';
import { newEnforcer, newModelFromString } from 'casbin';
import { PERMISSIONS } from '../src/authz/catalogue.ts';
import { buildOrgIndex, type GrantDef, type ResourceRef } from '../src/authz/engine.ts';
import { customRolePermissions, SYSTEM_ROLES, systemRolePermissions } from '../src/authz/roles.ts';
import type { Principal } from '../src/http/principal.ts';

const ORG = 'org_bench';
const PRINCIPALS = 1_000;
const GRANTS = 10_000;
const IDS_PER_TYPE = 200;
const CASES = Number(process.env.CASES ?? 100_000);
const NOW = 1_750_000_000_000;

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = mulberry32(42);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const userId = (i: number) => `usr_${String(i).padStart(6, '0')}`;
const resId = (type: string, i: number) => `${type.slice(0, 3)}_${String(i).padStart(5, '0')}`;

const supportRole = {
  name: 'support',
  permissions: ['users:read', 'chats:*', 'documents:read'],
  inherits: null,
};
const roleOf = (i: number) =>
  i < 10 ? 'admin' : i < 100 ? 'manager' : i < 500 ? 'developer' : i < 900 ? 'viewer' : 'support';

const grants: GrantDef[] = [];
for (let g = 0; g < GRANTS; g++) {
  const p = pick(PERMISSIONS);
  const typeWide = rand() < 0.3;
  const expiring = rand() < 0.2;
  grants.push({
    id: `grt_${String(g).padStart(6, '0')}`,
    principalId: userId(g % PRINCIPALS),
    permission: p.permission,
    resourceType: p.resource,
    resourceId: typeWide ? null : resId(p.resource, Math.floor(rand() * IDS_PER_TYPE)),
    effect: rand() < 0.2 ? 'deny' : 'allow',
    expiresAt: expiring ? NOW + (rand() < 0.5 ? -60_000 : 60_000) : null,
  });
}
const assignments = Array.from({ length: PRINCIPALS }, (_, i) => ({
  principalId: userId(i),
  roleName: roleOf(i),
}));
const index = buildOrgIndex({ orgId: ORG, roles: [supportRole], assignments, grants });

const user = (i: number, superuser = false, orgId = ORG): Principal => ({
  orgId,
  kind: 'user',
  id: userId(i),
  name: userId(i),
  roles: [roleOf(i)],
  scopes: null,
  superuser,
});
const key = (i: number): Principal => ({
  ...user(i),
  kind: 'key',
  id: `key_${i}`,
  ownerId: userId(i),
  scopes: ['secrets:read', 'tools:*', '*:read', 'documents:create'],
});

// A realistic mix: most checks name a resource id (half of those an id that has grants),
// some ask about the type, some go through keys; a few superusers and foreign principals.
interface Case {
  principal: Principal;
  subject: string;
  permission: string;
  resource: ResourceRef | undefined;
}
const cases: Case[] = [];
for (let c = 0; c < CASES; c++) {
  const i = Math.floor(rand() * PRINCIPALS);
  const r = rand();
  const principal =
    r < 0.1 ? key(i) : r < 0.11 ? user(i, true) : r < 0.12 ? user(i, false, 'org_other') : user(i);
  const hit = rand() < 0.5 ? grants[i + PRINCIPALS * Math.floor(rand() * (GRANTS / PRINCIPALS))] : undefined;
  const p = hit ? { permission: hit.permission, resource: hit.resourceType } : pick(PERMISSIONS);
  const shape = rand();
  const id = hit?.resourceId ?? resId(p.resource, Math.floor(rand() * IDS_PER_TYPE));
  const resource = shape < 0.7 ? { type: p.resource, id } : shape < 0.9 ? { type: p.resource } : undefined;
  cases.push({ principal, subject: userId(i), permission: p.permission, resource });
}

function runEngine(ms: number): { checks: number; seconds: number; allowed: number } {
  let checks = 0;
  let allowed = 0;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < ms) {
    for (let k = 0; k < cases.length; k++) {
      const c = cases[k]!;
      if (index.check(c.principal, c.permission, c.resource, NOW).allowed) allowed++;
    }
    checks += cases.length;
    elapsed = performance.now() - start;
  }
  return { checks, seconds: elapsed / 1000, allowed };
}

async function buildCasbin() {
  const model = newModelFromString(`
[request_definition]
r = sub, dom, obj, act
[policy_definition]
p = sub, dom, obj, act, eft
[role_definition]
g = _, _, _
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch(r.obj, p.obj) && r.act == p.act
`);
  const enforcer = await newEnforcer(model);
  const policies: string[][] = [];
  const colon = (perm: string) => perm.split(':') as [string, string];
  let below: ReadonlySet<string> = new Set();
  for (const role of SYSTEM_ROLES) {
    const perms = systemRolePermissions(role);
    for (const perm of perms) {
      if (below.has(perm)) continue;
      const [type, action] = colon(perm);
      policies.push([role, ORG, `${type}/*`, action, 'allow']);
    }
    below = perms;
  }
  for (const perm of customRolePermissions(supportRole)) {
    const [type, action] = colon(perm);
    policies.push(['support', ORG, `${type}/*`, action, 'allow']);
  }
  for (const g of grants) {
    if (g.expiresAt !== null && g.expiresAt <= NOW) continue;
    const action = colon(g.permission)[1];
    policies.push([g.principalId, ORG, `${g.resourceType}/${g.resourceId ?? '*'}`, action, g.effect]);
  }
  await enforcer.addPolicies(policies);
  const links = [
    ['admin', 'manager', ORG],
    ['manager', 'developer', ORG],
    ['developer', 'viewer', ORG],
    ...assignments.map((a) => [a.principalId, a.roleName, ORG]),
  ];
  await enforcer.addGroupingPolicies(links);
  return { enforcer, policyCount: policies.length + links.length };
}

async function runCasbin(
  enforcer: Awaited<ReturnType<typeof buildCasbin>>['enforcer'],
  ms: number,
): Promise<{ checks: number; seconds: number; allowed: number }> {
  let checks = 0;
  let allowed = 0;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < ms) {
    const c = cases[checks % cases.length]!;
    const [type, action] = c.permission.split(':') as [string, string];
    const obj = `${c.resource?.type ?? type}/${c.resource?.id ?? ''}`;
    if (await enforcer.enforce(c.subject, c.principal.orgId, obj, action)) allowed++;
    checks++;
    if (checks % 16 === 0) elapsed = performance.now() - start;
  }
  return { checks, seconds: (performance.now() - start) / 1000, allowed };
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

runEngine(300); // let the JIT settle before measuring
const engineRuns = [runEngine(1500), runEngine(1500), runEngine(1500)];
const engineRates = engineRuns.map((r) => r.checks / r.seconds).sort((a, b) => a - b);
const engineRate = engineRates[1]!;

const { enforcer, policyCount } = await buildCasbin();
await runCasbin(enforcer, 200);
const casbin = await runCasbin(enforcer, 3000);
const casbinRate = casbin.checks / casbin.seconds;

console.log(`authz check: ${PRINCIPALS} principals, ${GRANTS} grants, ${cases.length} distinct checks`);
console.log(
  `steward OrgIndex.check: ${fmt(engineRate)} checks/s (median of 3; range ${fmt(engineRates[0]!)}–${fmt(engineRates[2]!)}), ${(1e9 / engineRate).toFixed(1)} ns/check, ${((engineRuns[1]!.allowed / engineRuns[1]!.checks) * 100).toFixed(1)}% allowed`,
);
console.log(
  `casbin enforce():       ${fmt(casbinRate)} checks/s, ${(1e9 / casbinRate).toFixed(0)} ns/check (${fmt(policyCount)} policy lines, ${fmt(casbin.checks)} checks)`,
);
console.log(`ratio: ${(engineRate / casbinRate).toFixed(0)}× (target ≥ 20×; target ≥ 1,000,000 checks/s)`);
