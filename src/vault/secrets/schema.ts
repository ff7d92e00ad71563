import { sql } from 'drizzle-orm';
import { boolean, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../../db/columns.ts';
import { environments, organizations } from '../../tenancy/schema.ts';

/**
 * A secret's metadata, per org and environment. The value lives in `secret_versions`, sealed.
 * Deleting sets `deleted_at` (the versions and access logs stay for the audit trail); the name is
 * unique among live secrets only, so it can be reused after a delete.
 */
export const secrets = pgTable(
  'secrets',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    environmentId: text('environment_id')
      .notNull()
      .references(() => environments.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    displayName: text('display_name'),
    description: text('description'),
    secretType: text('secret_type').notNull().default('generic'),
    tags: jsonb('tags').$type<string[]>().notNull().default([]),
    metadata: jsonb('metadata').$type<Record<string, unknown>>().notNull().default({}),
    ownerId: text('owner_id'),
    /** A permission a caller must also hold on this secret to reveal it (e.g. `secrets:admin`). */
    requiredPermission: text('required_permission'),
    active: boolean('active').notNull().default(true),
    currentVersion: integer('current_version').notNull().default(1),
    rotationEnabled: boolean('rotation_enabled').notNull().default(false),
    rotationDays: integer('rotation_days'),
    lastRotatedAt: at('last_rotated_at'),
    nextRotationAt: at('next_rotation_at'),
    /** The `next_rotation_at` already announced as `secret.rotation_due` (once per period). */
    rotationNotifiedFor: at('rotation_notified_for'),
    expiresAt: at('expires_at'),
    lastAccessedAt: at('last_accessed_at'),
    createdBy: text('created_by'),
    updatedBy: text('updated_by'),
    deletedAt: at('deleted_at'),
    ...timestamps,
  },
  (t) => [
    uniqueIndex('secrets_org_env_name_live')
      .on(t.orgId, t.environmentId, t.name)
      .where(sql`${t.deletedAt} is null`),
    index('secrets_next_rotation').on(t.nextRotationAt),
  ],
);

/**
 * One row per version, kept forever. `value` is sealed (src/crypto/envelope.ts) with AAD
 * `org/<org>/secret/<id>/v/<version>`; `key_id` is the master key wrapping its data key, so a
 * re-wrap selects what is left with an index. `active` marks the current version.
 */
export const secretVersions = pgTable(
  'secret_versions',
  {
    secretId: text('secret_id')
      .notNull()
      .references(() => secrets.id, { onDelete: 'cascade' }),
    version: integer('version').notNull(),
    orgId: text('org_id').notNull(),
    value: text('value').notNull(),
    keyId: text('key_id').notNull(),
    active: boolean('active').notNull().default(true),
    reason: text('reason'),
    /** For a rollback: the version whose value this one restores. */
    restoredFrom: integer('restored_from'),
    createdBy: text('created_by'),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.secretId, t.version] }), index('secret_versions_key_id').on(t.keyId)],
);

/**
 * Every access to a secret (read, write, delete, reveal), granted or not. `secret_id` has no
 * foreign key: a refused attempt on an id that does not exist is logged too.
 */
export const secretAccessLogs = pgTable(
  'secret_access_logs',
  {
    id: idColumn(),
    orgId: text('org_id').notNull(),
    secretId: text('secret_id'),
    version: integer('version'),
    accessType: text('access_type').notNull(),
    principalType: text('principal_type').notNull(),
    principalId: text('principal_id').notNull(),
    success: boolean('success').notNull(),
    errorCode: text('error_code'),
    ip: text('ip'),
    userAgent: text('user_agent'),
    /** `X-Steward-Tool-Id` when an agent (or an agent's key) asked. */
    toolId: text('tool_id'),
    requestId: text('request_id'),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [index('secret_access_logs_secret').on(t.orgId, t.secretId, t.createdAt)],
);
