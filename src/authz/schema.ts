import { index, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../db/columns.ts';
import { organizations } from '../tenancy/schema.ts';

/**
 * Custom roles of an org. System roles (`admin`, `manager`, `developer`, `viewer`) are built
 * in and have no rows. `permissions` holds catalogue permissions or patterns (`secrets:*`).
 */
export const roles = pgTable(
  'roles',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    description: text('description'),
    permissions: jsonb('permissions').$type<string[]>().notNull().default([]),
    /** A system role whose permissions this role adds to its own. */
    inherits: text('inherits'),
    /** Prefixed id of the creator; null when Steward made it. */
    createdBy: text('created_by'),
    ...timestamps,
  },
  (t) => [uniqueIndex('roles_org_name').on(t.orgId, t.name)],
);

/**
 * A role held by a user or agent in an org. `role_name` is what the index uses (system roles
 * have no row); `role_id` ties an assignment to a custom role so deleting the role removes it.
 * Renaming a custom role rewrites `role_name` in the same transaction.
 */
export const roleAssignments = pgTable(
  'role_assignments',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    principalId: text('principal_id').notNull(),
    roleName: text('role_name').notNull(),
    roleId: text('role_id').references(() => roles.id, { onDelete: 'cascade' }),
    /** Prefixed id of whoever assigned it; null when Steward did (bootstrap). */
    assignedBy: text('assigned_by'),
    assignedAt: at('assigned_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('role_assignments_org_principal_role').on(t.orgId, t.principalId, t.roleName),
    index('role_assignments_role').on(t.roleId),
  ],
);

/**
 * Resource grants: one permission for one principal on a whole resource type (`resource_id`
 * null) or one resource. Expired grants stay as history and count for nothing; revoking deletes.
 */
export const grants = pgTable(
  'grants',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    principalId: text('principal_id').notNull(),
    permission: text('permission').notNull(),
    resourceType: text('resource_type').notNull(),
    resourceId: text('resource_id'),
    effect: text('effect', { enum: ['allow', 'deny'] }).notNull(),
    expiresAt: at('expires_at'),
    createdBy: text('created_by'),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [index('grants_org_principal').on(t.orgId, t.principalId)],
);
