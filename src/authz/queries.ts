import { and, asc, eq, gt, isNull, lte, or, type SQL } from 'drizzle-orm';
import type { DbOrTx } from '../db/client.ts';
import type { OrgSnapshot } from './engine.ts';
import { isSystemRole } from './roles.ts';
import { grants, roleAssignments, roles } from './schema.ts';

export type RoleRow = typeof roles.$inferSelect;
export type AssignmentRow = typeof roleAssignments.$inferSelect;
export type GrantRow = typeof grants.$inferSelect;

/** Everything an org's index is built from; expired grants are left out (they count for nothing). */
export async function loadSnapshot(db: DbOrTx, orgId: string, now: Date): Promise<OrgSnapshot> {
  const [roleRows, assignmentRows, grantRows] = await Promise.all([
    db.select().from(roles).where(eq(roles.orgId, orgId)),
    db
      .select({ principalId: roleAssignments.principalId, roleName: roleAssignments.roleName })
      .from(roleAssignments)
      .where(eq(roleAssignments.orgId, orgId)),
    db
      .select()
      .from(grants)
      .where(and(eq(grants.orgId, orgId), or(isNull(grants.expiresAt), gt(grants.expiresAt, now)))),
  ]);
  return {
    orgId,
    roles: roleRows.map(roleDefOf),
    assignments: assignmentRows,
    grants: grantRows.map(grantDefOf),
  };
}

export function roleDefOf(row: RoleRow) {
  const inherits = row.inherits !== null && isSystemRole(row.inherits) ? row.inherits : null;
  return { id: row.id, name: row.name, permissions: row.permissions, inherits };
}

export function grantDefOf(row: GrantRow) {
  return {
    id: row.id,
    principalId: row.principalId,
    permission: row.permission,
    resourceType: row.resourceType,
    resourceId: row.resourceId,
    effect: row.effect,
    expiresAt: row.expiresAt === null ? null : row.expiresAt.getTime(),
  };
}

export async function findRole(db: DbOrTx, orgId: string, by: { id?: string; name?: string }) {
  const match = by.id !== undefined ? eq(roles.id, by.id) : eq(roles.name, by.name ?? '');
  const [row] = await db
    .select()
    .from(roles)
    .where(and(eq(roles.orgId, orgId), match));
  return row;
}

export function listRoles(db: DbOrTx, orgId: string, page: { limit: number; afterId?: string | undefined }) {
  const where: SQL[] = [eq(roles.orgId, orgId)];
  if (page.afterId !== undefined) where.push(gt(roles.id, page.afterId));
  return db
    .select()
    .from(roles)
    .where(and(...where))
    .orderBy(asc(roles.id))
    .limit(page.limit);
}

export interface AssignmentFilters {
  principalId?: string | undefined;
  roleName?: string | undefined;
}

export function listAssignments(
  db: DbOrTx,
  orgId: string,
  filters: AssignmentFilters,
  page: { limit: number; afterId?: string | undefined },
) {
  const where: SQL[] = [eq(roleAssignments.orgId, orgId)];
  if (filters.principalId !== undefined) where.push(eq(roleAssignments.principalId, filters.principalId));
  if (filters.roleName !== undefined) where.push(eq(roleAssignments.roleName, filters.roleName));
  if (page.afterId !== undefined) where.push(gt(roleAssignments.id, page.afterId));
  return db
    .select()
    .from(roleAssignments)
    .where(and(...where))
    .orderBy(asc(roleAssignments.id))
    .limit(page.limit);
}

export interface GrantFilters {
  principalId?: string | undefined;
  permission?: string | undefined;
  resourceType?: string | undefined;
  resourceId?: string | undefined;
  /** true: unexpired only; false: expired only; undefined: both. */
  active?: boolean | undefined;
}

export function listGrants(
  db: DbOrTx,
  orgId: string,
  filters: GrantFilters,
  now: Date,
  page: { limit: number; afterId?: string | undefined },
) {
  const where: (SQL | undefined)[] = [eq(grants.orgId, orgId)];
  if (filters.principalId !== undefined) where.push(eq(grants.principalId, filters.principalId));
  if (filters.permission !== undefined) where.push(eq(grants.permission, filters.permission));
  if (filters.resourceType !== undefined) where.push(eq(grants.resourceType, filters.resourceType));
  if (filters.resourceId !== undefined) where.push(eq(grants.resourceId, filters.resourceId));
  if (filters.active === true) where.push(or(isNull(grants.expiresAt), gt(grants.expiresAt, now)));
  if (filters.active === false) where.push(lte(grants.expiresAt, now));
  if (page.afterId !== undefined) where.push(gt(grants.id, page.afterId));
  return db
    .select()
    .from(grants)
    .where(and(...where))
    .orderBy(asc(grants.id))
    .limit(page.limit);
}
