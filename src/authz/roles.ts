import { PERMISSIONS, type Permission } from './catalogue.ts';

/** System roles, lowest first; each inherits every permission of the ones before it. */
export const SYSTEM_ROLES = ['viewer', 'developer', 'manager', 'admin'] as const;

/** A built-in role: cannot be edited or deleted. */
export type SystemRoleName = (typeof SYSTEM_ROLES)[number];

/** A role as the index receives it. System role names are reserved and ignored here. */
export interface RoleDef {
  /** Database id, if any; reported nowhere by the engine but kept in snapshots. */
  readonly id?: string;
  readonly name: string;
  /** Permissions or patterns (`*`, `secrets:*`, `*:read`); unknown entries grant nothing. */
  readonly permissions: readonly string[];
  /** A system role whose permissions this role adds to its own. */
  readonly inherits?: SystemRoleName | null;
}

// Resources whose day-to-day work a developer does; org, users, roles, audit and approvals
// stay with managers and admins.
const DEV_RESOURCES = [
  'agents',
  'api_keys',
  'webhook_keys',
  'secrets',
  'settings',
  'flags',
  'webhooks',
  'tools',
  'knowledge',
  'documents',
  'chats',
] as const;

const OWN_PERMISSIONS: Record<SystemRoleName, readonly string[]> = {
  viewer: ['*:read'],
  developer: [
    ...DEV_RESOURCES.flatMap((r) => [`${r}:create`, `${r}:update`]),
    'executions:create',
    'executions:update',
    'signals:create',
    'tools:execute',
    'webhooks:execute',
    'api_keys:verify',
  ],
  manager: [
    ...DEV_RESOURCES.map((r) => `${r}:delete`),
    'signals:delete',
    'secrets:reveal',
    'approvals:approve',
    'knowledge:approve',
    'roles:update',
    'users:create',
    'users:update',
    'audit:export',
  ],
  admin: ['*'],
};

/**
 * The permissions a pattern stands for: itself if it is in the catalogue, every permission for
 * `*`, every action of a resource for `secrets:*`, one action on every resource for `*:read`.
 * Anything else stands for nothing, so a stale or mistyped entry fails closed.
 */
export function expandPattern(pattern: string): readonly Permission[] {
  if (pattern === '*') return PERMISSIONS.map((p) => p.permission);
  const colon = pattern.indexOf(':');
  if (colon < 0) return [];
  const resource = pattern.slice(0, colon);
  const action = pattern.slice(colon + 1);
  return PERMISSIONS.filter(
    (p) => (resource === '*' || p.resource === resource) && (action === '*' || p.action === action),
  ).map((p) => p.permission);
}

/** Whether a pattern stands for at least one permission (for validating input). */
export function isPermissionPattern(pattern: string): boolean {
  return expandPattern(pattern).length > 0;
}

function expandAll(patterns: readonly string[], into: Set<Permission>): Set<Permission> {
  for (const p of patterns) for (const perm of expandPattern(p)) into.add(perm);
  return into;
}

const SYSTEM_PERMISSIONS: ReadonlyMap<SystemRoleName, ReadonlySet<Permission>> = (() => {
  const out = new Map<SystemRoleName, ReadonlySet<Permission>>();
  let inherited = new Set<Permission>();
  for (const name of SYSTEM_ROLES) {
    inherited = expandAll(OWN_PERMISSIONS[name], new Set(inherited));
    out.set(name, inherited);
  }
  return out;
})();

/** Whether a role name is one of the built-in roles. */
export function isSystemRole(name: string): name is SystemRoleName {
  return (SYSTEM_ROLES as readonly string[]).includes(name);
}

/** Position in the hierarchy (viewer 0 … admin 3), or -1 for a custom role. */
export function systemRoleRank(name: string): number {
  return (SYSTEM_ROLES as readonly string[]).indexOf(name);
}

/** Every permission of a system role, inherited ones included. */
export function systemRolePermissions(name: SystemRoleName): ReadonlySet<Permission> {
  return SYSTEM_PERMISSIONS.get(name)!;
}

/** Every permission of a custom role: its own patterns expanded, plus its inherited system role. */
export function customRolePermissions(role: RoleDef): ReadonlySet<Permission> {
  const base = role.inherits ? systemRolePermissions(role.inherits) : new Set<Permission>();
  return expandAll(role.permissions, new Set(base));
}
