import { randomUUID } from 'node:crypto';
import { and, eq, gt, inArray, isNotNull, isNull, or, sql } from 'drizzle-orm';
import type { AuditAction } from '../audit/actions.ts';
import type { AuditActor, AuditContext, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { millisecondsOf } from '../clock.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { isUniqueViolation } from '../db/errors.ts';
import { type IdPrefix, isId, newId, prefixOf } from '../db/ids.ts';
import type { Authorizer } from '../http/auth.ts';
import { httpErrors, type StewardError } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { IndexCache } from './cache.ts';
import { isPermission, isResourceType, PERMISSIONS, type Permission, permissionInfo } from './catalogue.ts';
import type { Authz } from './contract.ts';
import {
  buildOrgIndex,
  type CheckResult,
  type EffectivePermission,
  type OrgIndex,
  type ResourceAccess,
  type ResourceRef,
} from './engine.ts';
import { authzErrors } from './errors.ts';
import * as q from './queries.ts';
import {
  customRolePermissions,
  isPermissionPattern,
  isSystemRole,
  SYSTEM_ROLES,
  type SystemRoleName,
  systemRolePermissions,
} from './roles.ts';
import { grants, roleAssignments, roles } from './schema.ts';

/** Bus topic on which instances announce that an org's roles, assignments or grants changed. */
export const AUTHZ_TOPIC = 'authz';

/**
 * How authz learns whether a principal id exists in an org, and its kind, flags and scopes.
 * Identity and keys own principals; until they plug one in, well-formed `usr_`/`agt_` ids are
 * taken as plain (non-superuser) members of the asking org and `key_` ids are unknown.
 */
export interface PrincipalDirectory {
  /**
   * The principal with this id in this org, or null (unknown, or another org's). Runs on `tx`
   * when given: called inside a transaction, it must not wait for another connection.
   */
  find(orgId: string, id: string, tx?: DbOrTx): Promise<Principal | null>;
}

export const defaultPrincipalDirectory: PrincipalDirectory = {
  async find(orgId, id) {
    const kind = isId('usr', id) ? 'user' : isId('agt', id) ? 'agent' : null;
    if (kind === null) return null;
    return { orgId, kind, id, name: id, roles: [], scopes: null, superuser: false };
  },
};

export interface AuthzServiceDeps {
  db: DbHandle;
  audit: AuditRecorder;
  bus: InvalidationBus;
  clock: () => Date;
  /** Period of the safety rebuild of warm indexes (a lost bus message costs at most this). */
  refreshMs?: number;
  onError?: (error: unknown, context: string) => void;
}

/** A system or custom role as the API shows it. */
export interface RoleInfo {
  /** `rol_…` for a custom role, the role's name for a system role. */
  id: string;
  name: string;
  description: string | null;
  system: boolean;
  /** As given (patterns kept); for a system role, its expanded permissions. */
  permissions: readonly string[];
  /** Every catalogue permission the role carries, inherited ones included. */
  effectivePermissions: readonly Permission[];
  inherits: string | null;
  createdBy: string | null;
  createdAt: Date | null;
  updatedAt: Date | null;
}

export interface RoleInput {
  name: string;
  description?: string | null | undefined;
  permissions: readonly string[];
  inherits?: SystemRoleName | null | undefined;
}

export interface GrantInput {
  principal: string;
  permission: string;
  resourceType: string;
  resourceId?: string | null | undefined;
  effect: 'allow' | 'deny';
  expiresAt?: Date | null | undefined;
}

export interface CheckInput {
  principal?: string | undefined;
  permission: string;
  resourceType?: string | undefined;
  resourceId?: string | undefined;
}

/** A principal's rights: type-wide permissions with the rule behind each, plus id-level grants. */
export interface PrincipalPermissions {
  principalId: string;
  kind: Principal['kind'];
  superuser: boolean;
  roles: readonly string[];
  permissions: readonly EffectivePermission[];
  resourceGrants: readonly q.GrantRow[];
}

const SYSTEM_DESCRIPTIONS: Record<SystemRoleName, string> = {
  viewer: 'Read everything in the organization',
  developer: 'Viewer, plus day-to-day work on agents, keys, secrets, settings, flags, tools and content',
  manager: 'Developer, plus deletes, reveals, approvals, user management and audit export',
  admin: 'Every permission in the organization',
};

const inCatalogueOrder = (set: ReadonlySet<Permission>): Permission[] =>
  PERMISSIONS.filter((p) => set.has(p.permission)).map((p) => p.permission);

const SYSTEM_ROLE_INFO: readonly RoleInfo[] = [...SYSTEM_ROLES].reverse().map((name) => {
  const effective = inCatalogueOrder(systemRolePermissions(name));
  const below = SYSTEM_ROLES[SYSTEM_ROLES.indexOf(name) - 1];
  return Object.freeze({
    id: name,
    name,
    description: SYSTEM_DESCRIPTIONS[name],
    system: true,
    permissions: effective,
    effectivePermissions: effective,
    inherits: below ?? null,
    createdBy: null,
    createdAt: null,
    updatedAt: null,
  });
});

function roleInfoOf(row: q.RoleRow): RoleInfo {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    system: false,
    permissions: row.permissions,
    effectivePermissions: inCatalogueOrder(customRolePermissions(q.roleDefOf(row))),
    inherits: row.inherits,
    createdBy: row.createdBy,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
  };
}

/** What a caller may hand on: permission → until when it holds it (null: without end). */
type Held = ReadonlyMap<Permission, number | null>;

const actor = (by: Principal | null): AuditActor => (by ? actorOf(by) : { type: 'system', name: 'steward' });

// Caller acting on itself (a key acts for its owner). Superusers administer and may.
const isSelf = (caller: Principal, principalId: string) =>
  !caller.superuser && (principalId === caller.id || principalId === caller.ownerId);

const roleAudit = (r: RoleInfo) => ({
  name: r.name,
  description: r.description,
  permissions: r.permissions,
  inherits: r.inherits,
});

const grantAudit = (g: q.GrantRow) => ({
  principal: g.principalId,
  permission: g.permission,
  resource_type: g.resourceType,
  resource_id: g.resourceId,
  effect: g.effect,
  expires_at: g.expiresAt?.toISOString() ?? null,
});

/**
 * Authorization: the `Authz` contract other domains use, the route-level `Authorizer`, and the
 * management API (roles, assignments, grants, checks). Every check is answered from the org's
 * in-memory index; changes patch the local index after commit and tell other instances.
 */
export function createAuthzService({
  db,
  audit,
  bus,
  clock,
  refreshMs = 30_000,
  onError = () => {},
}: AuthzServiceDeps) {
  const instanceId = randomUUID();
  const cache = new IndexCache({
    load: (orgId) => q.loadSnapshot(db.db, orgId, clock()),
    onError: (error, orgId) => onError(error, `authz index of ${orgId}`),
  });
  let directory: PrincipalDirectory = defaultPrincipalDirectory;
  // Domains that own one kind of principal (`key_…` → keys) answer for their ids first.
  const byKind = new Map<IdPrefix, PrincipalDirectory>();
  const findPrincipal = (orgId: string, id: string, tx?: DbOrTx) =>
    (byKind.get(prefixOf(id) ?? 'usr') ?? directory).find(orgId, id, tx);
  let stopped = false;

  bus.subscribe(AUTHZ_TOPIC, (message) => {
    const [from, orgId] = message.split(' ');
    if (stopped || from === instanceId || orgId === undefined) return;
    cache.invalidate(orgId);
  });
  const timer = setInterval(() => {
    void cache.refresh();
  }, refreshMs);
  timer.unref();

  const now = millisecondsOf(clock);

  /** Local index patched at once; other instances rebuild theirs on the message. */
  async function changed(orgId: string, patch: ((index: OrgIndex) => void) | 'reload'): Promise<void> {
    if (patch === 'reload') await cache.reload(orgId);
    else cache.patch(orgId, patch);
    try {
      await bus.publish(AUTHZ_TOPIC, `${instanceId} ${orgId}`);
    } catch (error) {
      // Committed already: other instances catch up at their next periodic refresh.
      onError(error, 'authz invalidation publish');
    }
  }

  // ---- checks ---------------------------------------------------------------------------

  async function check(principal: Principal, permission: string, resource?: ResourceRef) {
    const index = cache.get(principal.orgId) ?? (await cache.load(principal.orgId));
    return index.check(principal, permission, resource, now());
  }

  function checkSync(principal: Principal, permission: string, resource?: ResourceRef): CheckResult | null {
    return cache.get(principal.orgId)?.check(principal, permission, resource, now()) ?? null;
  }

  /** Route-level checks: synchronous on a warm index, `prepare` warms it first. */
  const authorizer: Authorizer = {
    can(principal, permission) {
      const index = cache.get(principal.orgId);
      // Cold here means prepare() was skipped: fail closed.
      return index ? index.check(principal, permission, undefined, now()).allowed : false;
    },
    prepare(principal) {
      const pending = cache.warm(principal.orgId);
      return pending === undefined ? undefined : pending.then(() => undefined);
    },
  };

  async function rolesOf(orgId: string, principalId: string): Promise<readonly string[]> {
    return (await cache.load(orgId)).rolesOf(principalId);
  }

  async function principalFor(caller: Principal, id: string): Promise<Principal> {
    if (id === caller.id) return caller;
    const found = await findPrincipal(caller.orgId, id);
    if (found === null || found.orgId !== caller.orgId) {
      throw authzErrors.principal_not_found(`No principal ${id} in this organization`);
    }
    return found;
  }

  // Asking about someone else's rights is reading the org's authorization data.
  function assertMayInspect(index: OrgIndex, caller: Principal): void {
    if (!index.check(caller, 'roles:read', undefined, now()).allowed) {
      throw httpErrors.permission_denied('Asking about another principal needs roles:read', {
        permission: 'roles:read',
      });
    }
  }

  /** One answer per check, in order. Without `principal` a check is about the caller. */
  async function checkMany(caller: Principal, inputs: readonly CheckInput[]): Promise<CheckResult[]> {
    const index = cache.get(caller.orgId) ?? (await cache.load(caller.orgId));
    const at = now();
    const others = new Map<string, Principal>();
    const out: CheckResult[] = [];
    for (const input of inputs) {
      let principal = caller;
      if (input.principal !== undefined && input.principal !== caller.id) {
        let found = others.get(input.principal);
        if (found === undefined) {
          if (others.size === 0) assertMayInspect(index, caller);
          found = await principalFor(caller, input.principal);
          others.set(input.principal, found);
        }
        principal = found;
      }
      let resource: ResourceRef | undefined;
      if (input.resourceType !== undefined || input.resourceId !== undefined) {
        const type = input.resourceType ?? permissionInfo(input.permission)?.resource ?? '';
        resource = { type, id: input.resourceId ?? null };
      }
      out.push(index.check(principal, input.permission, resource, at));
    }
    return out;
  }

  async function permissionsOf(caller: Principal, principalId?: string): Promise<PrincipalPermissions> {
    const index = await cache.load(caller.orgId);
    if (principalId !== undefined && principalId !== caller.id) assertMayInspect(index, caller);
    const principal = principalId === undefined ? caller : await principalFor(caller, principalId);
    const subjectId = principal.kind === 'key' ? (principal.ownerId ?? principal.id) : principal.id;
    const at = clock();
    const resourceGrants = await db.db
      .select()
      .from(grants)
      .where(
        and(
          eq(grants.orgId, caller.orgId),
          eq(grants.principalId, subjectId),
          isNotNull(grants.resourceId),
          or(isNull(grants.expiresAt), gt(grants.expiresAt, at)),
        ),
      )
      .orderBy(grants.id)
      .limit(1000);
    return {
      principalId: principal.id,
      kind: principal.kind,
      superuser: principal.superuser,
      roles: index.rolesOf(subjectId),
      permissions: index.effectivePermissions(principal, at.getTime()),
      resourceGrants,
    };
  }

  async function resourcesFor(
    caller: Principal,
    principalId: string,
    permission: string,
    resourceType?: string,
  ): Promise<ResourceAccess> {
    if (!isPermission(permission)) throw authzErrors.unknown_permission(`${permission} is not a permission`);
    if (resourceType !== undefined && !isResourceType(resourceType)) {
      throw authzErrors.unknown_resource_type(`${resourceType} is not a resource type`);
    }
    const index = await cache.load(caller.orgId);
    if (principalId !== caller.id) assertMayInspect(index, caller);
    const principal = await principalFor(caller, principalId);
    return index.resourcesFor(principal, permission, now(), resourceType);
  }

  // ---- delegation rules -----------------------------------------------------------------

  /**
   * What `caller` may hand on (README "Delegation"): each permission it holds on every resource
   * of its type — one it is denied on any single resource does not count — mapped to until when
   * it holds it: null without end, or the instant the expiring grants that give it run out.
   */
  function delegable(index: OrgIndex, caller: Principal): Held {
    const at = now();
    const held = new Map<Permission, number | null>();
    for (const { permission } of PERMISSIONS) {
      const until = index.holdsUntil(caller, permission, at);
      if (until !== undefined) held.set(permission, until);
    }
    return held;
  }

  // Inside a transaction nothing may wait on another connection (PGlite has one): a cold org
  // is read through `tx` into a throw-away index, never installed (the transaction may roll back).
  async function indexIn(tx: DbOrTx, orgId: string): Promise<OrgIndex> {
    return cache.get(orgId) ?? buildOrgIndex(await q.loadSnapshot(tx, orgId, clock()));
  }

  function assertHoldsAll(held: Held, perms: Iterable<Permission>, what: string): void {
    const missing = [...perms].filter((p) => !held.has(p));
    if (missing.length > 0) {
      throw authzErrors.role_escalation(
        `${what} carries permissions you do not hold on every resource of their type`,
        { missing_permissions: missing },
      );
    }
  }

  /**
   * Putting permissions into a role (create, edit, assign) hands them on for good: roles and
   * assignments do not expire, so each must be held everywhere and without end.
   */
  function assertMayGive(held: Held, perms: Iterable<Permission>, what: string): void {
    const list = [...perms];
    assertHoldsAll(held, list, what);
    const temporary = list.filter((p) => held.get(p) != null);
    if (temporary.length > 0) throw outlivesDelegator(held, temporary, what);
  }

  function outlivesDelegator(held: Held, temporary: readonly Permission[], what: string): StewardError {
    const until = Math.min(...temporary.map((p) => held.get(p) ?? Number.POSITIVE_INFINITY));
    return authzErrors.role_outlives_delegator(
      `${what} would give for good permissions you hold only until ${new Date(until).toISOString()} (roles and assignments do not expire)`,
      { permissions: temporary, held_until: new Date(until).toISOString() },
    );
  }

  /**
   * Without roles:admin (held for good), only a role strictly below one's own lasting rights: a
   * strict subset, as the catalogue describes roles:update. `perms` already passed assertMayGive.
   */
  function assertBelowCaller(held: Held, perms: ReadonlySet<Permission>, what: string): void {
    if (held.get('roles:admin') === null) return;
    let lasting = 0;
    for (const until of held.values()) if (until === null) lasting++;
    if (perms.size < lasting) return;
    const adminUntil = held.get('roles:admin');
    if (adminUntil != null) {
      throw authzErrors.role_outlives_delegator(
        `${what} needs roles:admin for good; you hold it only until ${new Date(adminUntil).toISOString()}`,
        { permissions: ['roles:admin'], held_until: new Date(adminUntil).toISOString() },
      );
    }
    throw authzErrors.role_escalation(`${what} needs roles:admin`, { missing_permissions: ['roles:admin'] });
  }

  /**
   * Serialises, until the transaction ends, the changes that decide what a custom role gives whom:
   * editing it and assigning it. Otherwise an edit that saw no holder and an assignment that saw the
   * role before the edit could both pass. On PGlite (one connection) the lock is taken at once.
   */
  async function lockRoles(tx: DbOrTx, orgId: string): Promise<void> {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`authz roles ${orgId}`}, 0))`);
  }

  async function assertTarget(orgId: string, principalId: string, tx?: DbOrTx): Promise<void> {
    if (!isId('usr', principalId) && !isId('agt', principalId)) {
      throw authzErrors.invalid_principal(
        'Roles and grants go to users (usr_…) and agents (agt_…); a key takes its rights from its owner',
      );
    }
    const found = await findPrincipal(orgId, principalId, tx);
    if (found === null || found.orgId !== orgId) {
      throw authzErrors.principal_not_found(`No principal ${principalId} in this organization`);
    }
  }

  // ---- roles ----------------------------------------------------------------------------

  function validatePermissions(patterns: readonly string[]): void {
    const bad = patterns.filter((p) => !isPermissionPattern(p));
    if (bad.length > 0) {
      throw authzErrors.unknown_permission(`Not permissions or patterns: ${bad.join(', ')}`, {
        unknown: bad,
      });
    }
  }

  const permsOfInput = (input: RoleInput) =>
    customRolePermissions({
      name: input.name,
      permissions: input.permissions,
      inherits: input.inherits ?? null,
    });

  async function listRoles(
    orgId: string,
    page: { limit: number; after?: string | undefined },
  ): Promise<RoleInfo[]> {
    const after = page.after;
    const systemStart = after === undefined ? 0 : SYSTEM_ROLE_INFO.findIndex((r) => r.id === after) + 1;
    const out: RoleInfo[] =
      after === undefined || isSystemRole(after)
        ? SYSTEM_ROLE_INFO.slice(systemStart, systemStart + page.limit)
        : [];
    if (out.length < page.limit) {
      const rows = await q.listRoles(db.db, orgId, {
        limit: page.limit - out.length,
        afterId: after === undefined || isSystemRole(after) ? undefined : after,
      });
      out.push(...rows.map(roleInfoOf));
    }
    return out;
  }

  async function getRole(orgId: string, id: string): Promise<RoleInfo> {
    const system = SYSTEM_ROLE_INFO.find((r) => r.id === id);
    if (system) return system;
    const row = isId('rol', id) ? await q.findRole(db.db, orgId, { id }) : undefined;
    if (!row) throw authzErrors.role_not_found(`No role ${id}`);
    return roleInfoOf(row);
  }

  async function createRole(caller: Principal, input: RoleInput, context: AuditContext): Promise<RoleInfo> {
    if (isSystemRole(input.name)) throw authzErrors.role_name_reserved(`${input.name} is a system role`);
    validatePermissions(input.permissions);
    assertMayGive(
      delegable(await cache.load(caller.orgId), caller),
      permsOfInput(input),
      `Role ${input.name}`,
    );
    const orgId = caller.orgId;
    const info = await db.db
      .transaction(async (tx) => {
        if (await q.findRole(tx, orgId, { name: input.name })) {
          throw authzErrors.role_exists(`A role named ${input.name} exists`);
        }
        const [row] = await tx
          .insert(roles)
          .values({
            id: newId('rol'),
            orgId,
            name: input.name,
            description: input.description ?? null,
            permissions: [...input.permissions],
            inherits: input.inherits ?? null,
            createdBy: caller.id,
          })
          .returning();
        if (!row) throw new Error('role insert returned nothing');
        const created = roleInfoOf(row);
        await audit.record(tx, {
          orgId,
          actor: actorOf(caller),
          action: 'role.created',
          resource: { type: 'role', id: row.id },
          context,
          changes: { after: roleAudit(created) },
        });
        return { created, row };
      })
      .catch((error: unknown) => {
        throw isUniqueViolation(error) ? authzErrors.role_exists(`A role named ${input.name} exists`) : error;
      });
    await changed(orgId, (index) => index.upsertRole(q.roleDefOf(info.row)));
    return info.created;
  }

  async function updateRole(
    caller: Principal,
    id: string,
    patch: Partial<RoleInput>,
    context: AuditContext,
  ): Promise<RoleInfo> {
    const orgId = caller.orgId;
    if (isSystemRole(id)) throw authzErrors.system_role_immutable(`${id} is a system role`);
    if (patch.name !== undefined && isSystemRole(patch.name)) {
      throw authzErrors.role_name_reserved(`${patch.name} is a system role`);
    }
    if (patch.permissions !== undefined) validatePermissions(patch.permissions);
    const held = delegable(await cache.load(orgId), caller);
    const result = await db.db
      .transaction(async (tx) => {
        await lockRoles(tx, orgId);
        const row = isId('rol', id) ? await q.findRole(tx, orgId, { id }) : undefined;
        if (!row) throw authzErrors.role_not_found(`No role ${id}`);
        const before = roleInfoOf(row);
        const next: RoleInput = {
          name: patch.name ?? row.name,
          description: patch.description === undefined ? row.description : patch.description,
          permissions: patch.permissions ?? row.permissions,
          inherits:
            patch.inherits === undefined ? (q.roleDefOf(row).inherits ?? null) : (patch.inherits ?? null),
        };
        // Both what the role gave and what it will give must be within the caller's rights.
        assertHoldsAll(held, before.effectivePermissions, `Role ${row.name}`);
        const nextPerms = permsOfInput(next);
        assertMayGive(held, nextPerms, `Role ${next.name}`);
        // Editing a role others hold assigns its new rights to them: the rule of assignment.
        const holders = await tx
          .select({ principalId: roleAssignments.principalId })
          .from(roleAssignments)
          .where(and(eq(roleAssignments.orgId, orgId), eq(roleAssignments.roleId, row.id)));
        if (holders.some((h) => !isSelf(caller, h.principalId))) {
          assertBelowCaller(held, nextPerms, `Changing ${row.name}, which others hold,`);
        }
        const renamed = next.name !== row.name;
        if (renamed && (await q.findRole(tx, orgId, { name: next.name }))) {
          throw authzErrors.role_exists(`A role named ${next.name} exists`);
        }
        const [updated] = await tx
          .update(roles)
          .set({
            name: next.name,
            description: next.description ?? null,
            permissions: [...next.permissions],
            inherits: next.inherits ?? null,
            updatedAt: clock(),
          })
          .where(eq(roles.id, row.id))
          .returning();
        if (!updated) throw new Error('role update returned nothing');
        if (renamed) {
          await tx
            .update(roleAssignments)
            .set({ roleName: next.name })
            .where(and(eq(roleAssignments.orgId, orgId), eq(roleAssignments.roleId, row.id)));
        }
        const after = roleInfoOf(updated);
        await audit.record(tx, {
          orgId,
          actor: actorOf(caller),
          action: 'role.updated',
          resource: { type: 'role', id: row.id },
          context,
          changes: { before: roleAudit(before), after: roleAudit(after) },
        });
        return { after, updated, renamed };
      })
      .catch((error: unknown) => {
        throw isUniqueViolation(error) ? authzErrors.role_exists(`A role named ${patch.name} exists`) : error;
      });
    await changed(
      orgId,
      result.renamed ? 'reload' : (index) => index.upsertRole(q.roleDefOf(result.updated)),
    );
    return result.after;
  }

  async function deleteRole(caller: Principal, id: string, context: AuditContext): Promise<void> {
    const orgId = caller.orgId;
    if (isSystemRole(id)) throw authzErrors.system_role_immutable(`${id} is a system role`);
    const held = delegable(await cache.load(orgId), caller);
    const name = await db.db.transaction(async (tx) => {
      const row = isId('rol', id) ? await q.findRole(tx, orgId, { id }) : undefined;
      if (!row) throw authzErrors.role_not_found(`No role ${id}`);
      const before = roleInfoOf(row);
      assertHoldsAll(held, before.effectivePermissions, `Role ${row.name}`);
      const holders = await tx
        .select({ principalId: roleAssignments.principalId })
        .from(roleAssignments)
        .where(and(eq(roleAssignments.orgId, orgId), eq(roleAssignments.roleId, row.id)));
      await tx.delete(roles).where(eq(roles.id, row.id)); // assignments go with it (cascade)
      await audit.record(tx, {
        orgId,
        actor: actorOf(caller),
        action: 'role.deleted',
        resource: { type: 'role', id: row.id },
        context,
        details: { unassigned: holders.map((h) => h.principalId) },
        changes: { before: roleAudit(before) },
      });
      return row.name;
    });
    await changed(orgId, (index) => index.removeRole(name));
  }

  // ---- assignments ----------------------------------------------------------------------

  async function resolveRole(tx: DbOrTx, orgId: string, role: string) {
    if (isSystemRole(role)) return { id: null, name: role, perms: systemRolePermissions(role) };
    const row = await q.findRole(tx, orgId, isId('rol', role) ? { id: role } : { name: role });
    if (!row) throw authzErrors.role_not_found(`No role ${role}`);
    return { id: row.id, name: row.name, perms: customRolePermissions(q.roleDefOf(row)) };
  }

  async function assignInTx(
    tx: DbOrTx,
    input: { orgId: string; principalId: string; role: string; by: Principal | null; context?: AuditContext },
    ifExists: 'return' | 'conflict',
  ): Promise<{ row: q.AssignmentRow; afterCommit: () => Promise<void> }> {
    const { orgId, principalId, by } = input;
    await assertTarget(orgId, principalId, tx);
    if (!isSystemRole(input.role)) await lockRoles(tx, orgId);
    const role = await resolveRole(tx, orgId, input.role);
    if (by !== null) {
      if (isSelf(by, principalId)) throw authzErrors.self_modification('You cannot change your own roles');
      const held = delegable(await indexIn(tx, orgId), by);
      assertMayGive(held, role.perms, `Role ${role.name}`);
      assertBelowCaller(held, role.perms, `Assigning ${role.name}`);
    }
    const [existing] = await tx
      .select()
      .from(roleAssignments)
      .where(
        and(
          eq(roleAssignments.orgId, orgId),
          eq(roleAssignments.principalId, principalId),
          eq(roleAssignments.roleName, role.name),
        ),
      );
    if (existing) {
      if (ifExists === 'conflict') {
        throw authzErrors.assignment_exists(`${principalId} already holds ${role.name}`, {
          assignment_id: existing.id,
        });
      }
      return { row: existing, afterCommit: async () => {} };
    }
    const [row] = await tx
      .insert(roleAssignments)
      .values({
        id: newId('ras'),
        orgId,
        principalId,
        roleName: role.name,
        roleId: role.id,
        assignedBy: by?.id ?? null,
        assignedAt: clock(),
      })
      .returning();
    if (!row) throw new Error('assignment insert returned nothing');
    await audit.record(tx, {
      orgId,
      actor: actor(by),
      action: 'role.assigned',
      resource: { type: 'role_assignment', id: row.id },
      context: input.context,
      changes: { after: { principal: principalId, role: role.name, role_id: role.id } },
    });
    return {
      row,
      afterCommit: () => changed(orgId, (index) => index.assign(principalId, role.name)),
    };
  }

  async function assignRole(
    caller: Principal,
    input: { principal: string; role: string },
    context: AuditContext,
  ): Promise<q.AssignmentRow> {
    const { row, afterCommit } = await db.db
      .transaction((tx) =>
        assignInTx(
          tx,
          { orgId: caller.orgId, principalId: input.principal, role: input.role, by: caller, context },
          'conflict',
        ),
      )
      .catch((error: unknown) => {
        throw isUniqueViolation(error)
          ? authzErrors.assignment_exists(`${input.principal} already holds ${input.role}`)
          : error;
      });
    await afterCommit();
    return row;
  }

  async function unassign(caller: Principal, id: string, context: AuditContext): Promise<void> {
    const orgId = caller.orgId;
    const index = await cache.load(orgId);
    const row = await db.db.transaction(async (tx) => {
      const [found] = isId('ras', id)
        ? await tx
            .select()
            .from(roleAssignments)
            .where(and(eq(roleAssignments.orgId, orgId), eq(roleAssignments.id, id)))
        : [];
      if (!found) throw authzErrors.assignment_not_found(`No role assignment ${id}`);
      if (isSelf(caller, found.principalId)) {
        throw authzErrors.self_modification('You cannot change your own roles');
      }
      const rolePerms = index.rolePermissions(found.roleName) ?? [];
      assertHoldsAll(delegable(index, caller), rolePerms, `Role ${found.roleName}`);
      await tx.delete(roleAssignments).where(eq(roleAssignments.id, found.id));
      await audit.record(tx, {
        orgId,
        actor: actorOf(caller),
        action: 'role.unassigned',
        resource: { type: 'role_assignment', id: found.id },
        context,
        changes: {
          before: {
            principal: found.principalId,
            role: found.roleName,
            role_id: found.roleId,
            assigned_by: found.assignedBy,
            assigned_at: found.assignedAt.toISOString(),
          },
        },
      });
      return found;
    });
    await changed(orgId, (index) => index.unassign(row.principalId, row.roleName));
  }

  /**
   * Removes a principal's assignments (all, or those of `roles`) inside the caller's transaction.
   * With a caller (`by`), the unassign route's rules apply to each removed role: not one's own
   * (`self_modification`), only roles whose permissions one holds (`role_escalation`); a refusal
   * throws, and the caller's transaction rolls back with nothing removed.
   */
  async function unassignAllInTx(
    tx: DbOrTx,
    input: {
      orgId: string;
      principalId: string;
      by: Principal | null;
      context?: AuditContext;
      roles?: readonly string[];
    },
  ): Promise<{ afterCommit: () => Promise<void> }> {
    const { orgId, principalId, by } = input;
    if (input.roles !== undefined && input.roles.length === 0) return { afterCommit: async () => {} };
    const removed = await tx
      .delete(roleAssignments)
      .where(
        and(
          eq(roleAssignments.orgId, orgId),
          eq(roleAssignments.principalId, principalId),
          input.roles === undefined ? undefined : inArray(roleAssignments.roleName, [...input.roles]),
        ),
      )
      .returning();
    if (by !== null && removed.length > 0) {
      if (isSelf(by, principalId)) throw authzErrors.self_modification('You cannot change your own roles');
      const index = await indexIn(tx, orgId);
      const held = delegable(index, by);
      for (const r of removed) {
        assertHoldsAll(held, index.rolePermissions(r.roleName) ?? [], `Role ${r.roleName}`);
      }
    }
    await audit.record(
      tx,
      removed.map((r) => ({
        orgId,
        actor: actor(by),
        action: 'role.unassigned' as const,
        resource: { type: 'role_assignment', id: r.id },
        context: input.context,
        changes: { before: { principal: r.principalId, role: r.roleName, role_id: r.roleId } },
      })),
    );
    return {
      afterCommit: async () => {
        if (removed.length === 0) return;
        await changed(orgId, (index) => {
          for (const r of removed) index.unassign(r.principalId, r.roleName);
        });
      },
    };
  }

  // ---- grants ---------------------------------------------------------------------------

  /**
   * A grant, allow or deny, and its revocation need the permission held where the grant applies:
   * on that resource id, or — for a grant on a whole type — on every resource (a deny on any one
   * means not held). `handsOn` is the end of the access the change gives: an allow's expiry, null
   * for revoking a deny (for good), undefined when it gives none. What the caller holds only until
   * some instant it may hand on only until then (`grant_outlives_delegator`).
   */
  function assertMayGrant(
    index: OrgIndex,
    caller: Principal,
    permission: string,
    resource: ResourceRef,
    handsOn: Date | null | undefined,
  ): void {
    const at = now();
    const until = index.holdsUntil(caller, permission, at, resource);
    if (until === undefined) {
      const where =
        resource.id == null && index.check(caller, permission, resource, at).allowed
          ? 'on every resource of this type (you are denied it on some)'
          : 'on this resource';
      throw authzErrors.grant_escalation(`You do not hold ${permission} ${where}`, {
        missing_permissions: [permission],
      });
    }
    if (handsOn === undefined || until === null) return;
    if (handsOn === null || handsOn.getTime() > until) {
      const end = new Date(until).toISOString();
      throw authzErrors.grant_outlives_delegator(
        `You hold ${permission} here only until ${end}: what you hand on must expire by then`,
        { permission, held_until: end },
      );
    }
  }

  /**
   * Serialises, until the transaction ends, the grant writes for one principal: the twin check
   * and the insert would otherwise let concurrent identical requests all pass (grants have no
   * unique index; expiry makes one awkward). On PGlite (one connection) the lock is taken at once.
   */
  async function lockGrantsOf(tx: DbOrTx, orgId: string, principalId: string): Promise<void> {
    await tx.execute(
      sql`select pg_advisory_xact_lock(hashtextextended(${`authz grants ${orgId} ${principalId}`}, 0))`,
    );
  }

  async function createGrant(
    caller: Principal,
    input: GrantInput,
    context: AuditContext,
  ): Promise<q.GrantRow> {
    const orgId = caller.orgId;
    if (!isPermission(input.permission)) {
      throw authzErrors.unknown_permission(
        `${input.permission} is not a permission (patterns are not granted)`,
      );
    }
    if (!isResourceType(input.resourceType)) {
      throw authzErrors.unknown_resource_type(`${input.resourceType} is not a resource type`);
    }
    if (input.expiresAt != null && input.expiresAt.getTime() <= now()) {
      throw authzErrors.expiry_in_past('expires_at must be in the future');
    }
    await assertTarget(orgId, input.principal);
    if (isSelf(caller, input.principal)) throw authzErrors.self_modification('You cannot grant to yourself');
    const resourceId = input.resourceId ?? null;
    assertMayGrant(
      await cache.load(orgId),
      caller,
      input.permission,
      { type: input.resourceType, id: resourceId },
      input.effect === 'allow' ? (input.expiresAt ?? null) : undefined,
    );
    const row = await db.db.transaction(async (tx) => {
      await lockGrantsOf(tx, orgId, input.principal);
      const at = clock();
      const [twin] = await tx
        .select({ id: grants.id })
        .from(grants)
        .where(
          and(
            eq(grants.orgId, orgId),
            eq(grants.principalId, input.principal),
            eq(grants.permission, input.permission),
            eq(grants.resourceType, input.resourceType),
            resourceId === null ? isNull(grants.resourceId) : eq(grants.resourceId, resourceId),
            eq(grants.effect, input.effect),
            or(isNull(grants.expiresAt), gt(grants.expiresAt, at)),
          ),
        )
        .limit(1);
      if (twin) throw authzErrors.grant_exists('An identical active grant exists', { grant_id: twin.id });
      const [created] = await tx
        .insert(grants)
        .values({
          id: newId('grt'),
          orgId,
          principalId: input.principal,
          permission: input.permission,
          resourceType: input.resourceType,
          resourceId,
          effect: input.effect,
          expiresAt: input.expiresAt ?? null,
          createdBy: caller.id,
          createdAt: at,
        })
        .returning();
      if (!created) throw new Error('grant insert returned nothing');
      await audit.record(tx, {
        orgId,
        actor: actorOf(caller),
        action: 'grant.created',
        resource: { type: 'grant', id: created.id },
        context,
        changes: { after: grantAudit(created) },
      });
      return created;
    });
    await changed(orgId, (index) => index.addGrant(q.grantDefOf(row)));
    return row;
  }

  async function revokeGrant(caller: Principal, id: string, context: AuditContext): Promise<void> {
    const orgId = caller.orgId;
    const index = await cache.load(orgId);
    const row = await db.db.transaction(async (tx) => {
      const [found] = isId('grt', id)
        ? await tx
            .select()
            .from(grants)
            .where(and(eq(grants.orgId, orgId), eq(grants.id, id)))
        : [];
      if (!found) throw authzErrors.grant_not_found(`No grant ${id}`);
      if (isSelf(caller, found.principalId)) {
        throw authzErrors.self_modification('You cannot revoke your own grants');
      }
      // Revoking a deny gives access back, for good: the same rule as granting without expiry.
      assertMayGrant(
        index,
        caller,
        found.permission,
        { type: found.resourceType, id: found.resourceId },
        found.effect === 'deny' ? null : undefined,
      );
      await tx.delete(grants).where(eq(grants.id, found.id));
      await audit.record(tx, {
        orgId,
        actor: actorOf(caller),
        action: 'grant.revoked',
        resource: { type: 'grant', id: found.id },
        context,
        changes: { before: grantAudit(found) },
      });
      return found;
    });
    await changed(orgId, (index) => index.removeGrant(row.id));
  }

  // ---- refusals ------------------------------------------------------------------------

  /**
   * Records a refused role or grant change: the event of the change it would have been, with
   * `success: false`, the error code as `details.reason` and what was asked. Called once the
   * refused transaction has rolled back, in a transaction of its own; best effort — a failed
   * record goes to `onError` and never changes the refusal the caller gets.
   */
  async function recordRefusal(
    caller: Principal,
    refusal: {
      action: AuditAction;
      resource: { type: string; id?: string | null | undefined };
      error: StewardError;
      request?: Record<string, unknown> | undefined;
    },
    context: AuditContext,
  ): Promise<void> {
    const { error } = refusal;
    const { missing_permissions, permissions, permission } = error.extra;
    const missing =
      missing_permissions ?? permissions ?? (permission === undefined ? undefined : [permission]);
    try {
      await db.db.transaction((tx) =>
        audit.record(tx, {
          orgId: caller.orgId,
          actor: actorOf(caller),
          action: refusal.action,
          resource: { type: refusal.resource.type, id: refusal.resource.id ?? null },
          context,
          details: {
            reason: error.code,
            ...(Array.isArray(missing) ? { permissions: missing } : {}),
            ...(refusal.request ? { request: refusal.request } : {}),
          },
          success: false,
          errorMessage: error.detail,
        }),
      );
    } catch (failure) {
      onError(failure, `audit of a refused ${refusal.action}`);
    }
  }

  function listGrants(
    orgId: string,
    filters: q.GrantFilters,
    page: { limit: number; afterId?: string | undefined },
  ) {
    return q.listGrants(db.db, orgId, filters, clock(), page);
  }

  function listAssignments(
    orgId: string,
    filters: q.AssignmentFilters,
    page: { limit: number; afterId?: string | undefined },
  ) {
    return q.listAssignments(db.db, orgId, filters, page);
  }

  const authz: Authz = {
    check,
    checkSync,
    rolesOf,
    async assignRoleInTx(tx, input) {
      const { row, afterCommit } = await assignInTx(tx, input, 'return');
      return { assignmentId: row.id, afterCommit };
    },
    unassignAllInTx,
  };

  return {
    ...authz,
    authorizer,
    /** Lets identity and keys tell authz which principals exist (see PrincipalDirectory). */
    usePrincipalDirectory(next: PrincipalDirectory): void {
      directory = next;
    },
    /** The directory for one id prefix, consulted before the general one (keys: `key`). */
    usePrincipalKind(prefix: IdPrefix, next: PrincipalDirectory): void {
      byKind.set(prefix, next);
    },
    checkMany,
    permissionsOf,
    resourcesFor,
    listRoles,
    getRole,
    createRole,
    updateRole,
    deleteRole,
    assignRole,
    unassign,
    listAssignments,
    createGrant,
    revokeGrant,
    listGrants,
    recordRefusal,
    /** The in-memory indexes (tests and metrics). */
    cache,
    async stop(): Promise<void> {
      stopped = true;
      clearInterval(timer);
    },
  };
}

export type AuthzService = ReturnType<typeof createAuthzService>;
