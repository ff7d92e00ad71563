import type { Principal } from '../http/principal.ts';
import { isResourceType, PERMISSIONS, type Permission } from './catalogue.ts';
import { type CheckResult, DENY, type Decision, result, SUPERUSER } from './decision.ts';
import { decide, type GrantDef, GrantTable } from './grants.ts';
import { META, PERMISSION_COUNT, type PermMeta } from './meta.ts';
import {
  customRolePermissions,
  isSystemRole,
  type RoleDef,
  SYSTEM_ROLES,
  systemRolePermissions,
} from './roles.ts';

export type { CheckResult, Decision, DecisionBy, DenyReason } from './decision.ts';
export type { GrantDef } from './grants.ts';
export type { RoleDef, SystemRoleName } from './roles.ts';

/** A role held by a user or agent in the org. */
export interface Assignment {
  readonly principalId: string;
  readonly roleName: string;
}

/** Everything the index is built from: one org's custom roles, assignments and grants. */
export interface OrgSnapshot {
  readonly orgId: string;
  /** Custom roles only; system roles are built in and entries using their names are ignored. */
  readonly roles: readonly RoleDef[];
  readonly assignments: readonly Assignment[];
  readonly grants: readonly GrantDef[];
}

/** What a check is about; without it a check asks about the permission's own resource type. */
export interface ResourceRef {
  readonly type: string;
  readonly id?: string | null;
}

/** One permission a principal holds type-wide, with the rule that gives it. */
export interface EffectivePermission {
  readonly permission: Permission;
  readonly decision: Decision;
}

/** The answer to "what can X access": type-wide access plus the ids that differ from it. */
export interface ResourceAccess {
  readonly permission: string;
  readonly resourceType: string;
  /** Whether X may act on every resource of the type not listed in `deniedIds`. */
  readonly typeWide: boolean;
  /** The decision for the type as a whole. */
  readonly decision: Decision;
  /** Ids with an active allow grant and no active deny at the same level. */
  readonly allowedIds: readonly string[];
  /** Ids with an active deny grant; they are refused even when `typeWide` is true. */
  readonly deniedIds: readonly string[];
}

// Role results are indexed by permission position and shared by principals with the same roles.
type RoleResults = readonly (CheckResult | undefined)[];

interface Subject {
  readonly roles: Set<string>;
  rolePerms: RoleResults;
  grants: GrantTable | null;
}

const NO_ROLE_PERMS: RoleResults = new Array<undefined>(PERMISSION_COUNT).fill(undefined);

function inScope(scopes: readonly string[], meta: PermMeta): boolean {
  for (let i = 0; i < scopes.length; i++) {
    const s = scopes[i];
    if (s === meta.info.permission || s === meta.resourceWildcard || s === meta.actionWildcard || s === '*') {
      return true;
    }
  }
  return false;
}

/**
 * Whether a key scope covers at least one catalogue permission under the check's own scope rule
 * (for validating input: `*:*` or `nope:*` would be stored and then match nothing).
 */
export function isMatchableScope(scope: string): boolean {
  const one = [scope];
  for (const meta of META.values()) if (inScope(one, meta)) return true;
  return false;
}

/**
 * The authorization index of one org, answering checks from memory. Patch methods keep it in
 * step with the database one change at a time; `buildOrgIndex` rebuilds it from a snapshot.
 * JavaScript runs one task at a time, so a patch is never seen half-applied by a check.
 */
export class OrgIndex {
  readonly orgId: string;
  /** Bumped by every patch that changes something; lets a cache tell fresh from stale. */
  version = 0;
  private readonly customRoles = new Map<string, RoleDef>();
  private readonly rolePerms = new Map<string, ReadonlySet<Permission>>();
  private readonly subjects = new Map<string, Subject>();
  private readonly grantsById = new Map<string, GrantDef>();
  // Principals with the same roles share one permission → result map.
  private roleSetCache = new Map<string, RoleResults>();

  constructor(snapshot: OrgSnapshot) {
    this.orgId = snapshot.orgId;
    for (const name of SYSTEM_ROLES) this.rolePerms.set(name, systemRolePermissions(name));
    for (const role of snapshot.roles) this.putRole(role);
    for (const a of snapshot.assignments) this.subject(a.principalId).roles.add(a.roleName);
    for (const g of snapshot.grants) this.putGrant(g);
    for (const s of this.subjects.values()) s.rolePerms = this.rolePermsFor(s.roles);
  }

  /**
   * Whether `principal` may do `permission` on `resource` at `nowMs`. Order: another org →
   * deny; unknown permission or resource type → deny; a key outside its scopes → deny; superuser → allow; then
   * the principal's (a key's owner's) grant on the id, grant on the type, roles, deny.
   */
  check(
    principal: Principal,
    permission: string,
    resource: ResourceRef | undefined,
    nowMs: number,
  ): CheckResult {
    const meta = META.get(permission);
    if (meta === undefined) return principal.orgId === this.orgId ? DENY.unknownPermission : DENY.crossOrg;
    let type = meta.info.resource as string;
    if (resource !== undefined) {
      type = resource.type;
      if (!isResourceType(type))
        return principal.orgId === this.orgId ? DENY.unknownResourceType : DENY.crossOrg;
    }
    const gate = this.gate(principal, meta);
    if (typeof gate !== 'string') return gate;
    return this.resolve(gate, meta, type, resource?.id ?? null, nowMs);
  }

  /** Every permission `who` holds type-wide at `nowMs`, in catalogue order. */
  effectivePermissions(who: Principal | string, nowMs: number): EffectivePermission[] {
    const principal = this.principalOf(who);
    const out: EffectivePermission[] = [];
    for (const { permission } of PERMISSIONS) {
      const r = this.check(principal, permission, undefined, nowMs);
      if (r.allowed) out.push({ permission, decision: r.decision });
    }
    return out;
  }

  /**
   * Which resources of `resourceType` (default: the permission's own) `who` may act on with
   * `permission`: for any id, `check` allows exactly when the id is in `allowedIds`, or
   * `typeWide` is true and the id is not in `deniedIds`.
   */
  resourcesFor(
    who: Principal | string,
    permission: string,
    nowMs: number,
    resourceType?: string,
  ): ResourceAccess {
    const principal = this.principalOf(who);
    const meta = META.get(permission);
    const type = resourceType ?? meta?.info.resource ?? '';
    const whole = this.check(principal, permission, { type }, nowMs);
    const allowedIds: string[] = [];
    const deniedIds: string[] = [];
    const gate = meta ? this.gate(principal, meta) : DENY.unknownPermission;
    const grants = typeof gate === 'string' ? this.subjects.get(gate)?.grants : undefined;
    const bucket = meta && grants ? grants.bucket(meta, type) : undefined;
    if (bucket && isResourceType(type)) {
      for (const [id, rule] of bucket.ids) {
        const r = decide(rule, nowMs);
        if (r) (r.allowed ? allowedIds : deniedIds).push(id);
      }
    }
    return {
      permission,
      resourceType: type,
      typeWide: whole.allowed,
      decision: whole.decision,
      allowedIds: allowedIds.sort(),
      deniedIds: deniedIds.sort(),
    };
  }

  /**
   * Until when `who` holds `permission`, for handing it on (delegation): on one resource when
   * `resource` names an id, otherwise on every resource of the type (default: the permission's
   * own) — and then an active deny of the permission on any single resource means it is not held.
   * `null`: without end (a role, a grant that never expires, superuser); a number: the first
   * instant at which expiring grants stop giving it; `undefined`: not held now.
   */
  holdsUntil(
    who: Principal | string,
    permission: string,
    nowMs: number,
    resource?: ResourceRef,
  ): number | null | undefined {
    const principal = this.principalOf(who);
    const meta = META.get(permission);
    if (meta === undefined) return undefined;
    const at: ResourceRef = { type: resource?.type ?? meta.info.resource, id: resource?.id ?? null };
    if (!this.check(principal, permission, at, nowMs).allowed) return undefined;
    const gate = this.gate(principal, meta);
    if (typeof gate !== 'string') return null; // superuser: refusals returned above
    const grants = this.subjects.get(gate)?.grants;
    if (!grants) return null; // roles only
    if (at.id === null && grants.deniesAnywhere(meta, nowMs)) return undefined;
    // Grants only expire as time passes, so the decision can change only at those instants.
    for (const t of grants.expiries(meta, at.type, at.id ?? null, nowMs)) {
      if (!this.check(principal, permission, at, t).allowed) return t;
    }
    return null;
  }

  /** The role names assigned to a user or agent, sorted. */
  rolesOf(principalId: string): string[] {
    return [...(this.subjects.get(principalId)?.roles ?? [])].sort();
  }

  /** Every permission of a role (system or custom), or undefined if the org has no such role. */
  rolePermissions(name: string): ReadonlySet<Permission> | undefined {
    return this.rolePerms.get(name);
  }

  /** Adds a grant, replacing any grant with the same id. */
  addGrant(grant: GrantDef): void {
    this.removeGrant(grant.id);
    this.putGrant(grant);
    this.version++;
  }

  removeGrant(id: string): boolean {
    const def = this.grantsById.get(id);
    if (!def) return false;
    this.grantsById.delete(id);
    const meta = META.get(def.permission);
    const grants = this.subjects.get(def.principalId)?.grants;
    if (meta && grants) grants.delete(meta, def);
    this.version++;
    return true;
  }

  /** Assigns a role; a role the org does not (yet) have grants nothing until it is created. */
  assign(principalId: string, roleName: string): boolean {
    const s = this.subject(principalId);
    if (s.roles.has(roleName)) return false;
    s.roles.add(roleName);
    s.rolePerms = this.rolePermsFor(s.roles);
    this.version++;
    return true;
  }

  unassign(principalId: string, roleName: string): boolean {
    const s = this.subjects.get(principalId);
    if (!s?.roles.delete(roleName)) return false;
    s.rolePerms = this.rolePermsFor(s.roles);
    this.version++;
    return true;
  }

  /** Creates or replaces a custom role. System roles cannot be changed. */
  upsertRole(role: RoleDef): void {
    if (isSystemRole(role.name)) throw new Error(`system role ${role.name} cannot be changed`);
    this.putRole(role);
    this.refreshRolePerms();
  }

  /** Deletes a custom role and, as the database does, every assignment of it. */
  removeRole(name: string): boolean {
    if (isSystemRole(name)) throw new Error(`system role ${name} cannot be removed`);
    if (!this.customRoles.delete(name)) return false;
    this.rolePerms.delete(name);
    for (const s of this.subjects.values()) s.roles.delete(name);
    this.refreshRolePerms();
    return true;
  }

  /** The index's current content, in the shape it is built from. */
  snapshot(): OrgSnapshot {
    const assignments: Assignment[] = [];
    for (const [principalId, s] of this.subjects) {
      for (const roleName of s.roles) assignments.push({ principalId, roleName });
    }
    return {
      orgId: this.orgId,
      roles: [...this.customRoles.values()],
      assignments,
      grants: [...this.grantsById.values()],
    };
  }

  // Either the id whose rights decide (a key's owner) or a decision reached before any lookup.
  private gate(principal: Principal, meta: PermMeta): string | CheckResult {
    if (principal.orgId !== this.orgId) return DENY.crossOrg;
    let subjectId = principal.id;
    if (principal.kind === 'key') {
      if (principal.scopes !== null && !inScope(principal.scopes, meta)) return DENY.outOfScope;
      if (!principal.ownerId) return DENY.noOwner;
      subjectId = principal.ownerId;
    }
    if (principal.superuser) return SUPERUSER;
    return subjectId;
  }

  private resolve(subjectId: string, meta: PermMeta, type: string, id: string | null, nowMs: number) {
    const s = this.subjects.get(subjectId);
    if (s === undefined) return DENY.noRule;
    const bucket = s.grants === null ? undefined : s.grants.bucket(meta, type);
    if (bucket !== undefined) {
      if (id !== null) {
        const rule = bucket.ids.get(id);
        const r = rule && decide(rule, nowMs);
        if (r) return r;
      }
      const r = bucket.type && decide(bucket.type, nowMs);
      if (r) return r;
    }
    return s.rolePerms[meta.index] ?? DENY.noRule;
  }

  private principalOf(who: Principal | string): Principal {
    if (typeof who !== 'string') return who;
    const kind = who.startsWith('agt_') ? 'agent' : 'user';
    return { orgId: this.orgId, kind, id: who, name: who, roles: [], scopes: null, superuser: false };
  }

  private subject(id: string): Subject {
    const found = this.subjects.get(id);
    if (found) return found;
    const s: Subject = { roles: new Set(), rolePerms: NO_ROLE_PERMS, grants: null };
    this.subjects.set(id, s);
    return s;
  }

  private putRole(role: RoleDef): void {
    if (isSystemRole(role.name)) return;
    this.customRoles.set(role.name, role);
    this.rolePerms.set(role.name, customRolePermissions(role));
  }

  private putGrant(def: GrantDef): void {
    this.grantsById.set(def.id, def);
    // Kept for snapshots, but an entry no check can name stays out of the lookup tables.
    const meta = META.get(def.permission);
    if (!meta || !isResourceType(def.resourceType)) return;
    const s = this.subject(def.principalId);
    s.grants ??= new GrantTable();
    s.grants.insert(meta, def);
  }

  private refreshRolePerms(): void {
    this.roleSetCache = new Map();
    for (const s of this.subjects.values()) s.rolePerms = this.rolePermsFor(s.roles);
    this.version++;
  }

  // The role named in a decision is the first assigned role, in name order, that carries it.
  private rolePermsFor(roles: ReadonlySet<string>): RoleResults {
    if (roles.size === 0) return NO_ROLE_PERMS;
    const names = [...roles].sort();
    const key = names.join('\n');
    const cached = this.roleSetCache.get(key);
    if (cached) return cached;
    const results: (CheckResult | undefined)[] = [...NO_ROLE_PERMS];
    for (const name of names) {
      for (const p of this.rolePerms.get(name) ?? []) {
        const at = META.get(p)!.index;
        results[at] ??= result(true, { by: 'role', role: name });
      }
    }
    this.roleSetCache.set(key, results);
    return results;
  }
}

/** Builds the index of one org from its snapshot. */
export function buildOrgIndex(snapshot: OrgSnapshot): OrgIndex {
  return new OrgIndex(snapshot);
}
