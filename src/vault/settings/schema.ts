import { boolean, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../../db/columns.ts';
import { environments, organizations } from '../../tenancy/schema.ts';

/** Validation rules of a setting (see rules.ts). */
export interface SettingRules {
  min?: number;
  max?: number;
  min_length?: number;
  max_length?: number;
  pattern?: string;
  enum?: unknown[];
  json_schema?: Record<string, unknown>;
}

/**
 * A typed runtime setting per org and environment. When `encrypted`, `value` is null and
 * `value_sealed` holds the JSON value sealed with AAD `org/<org>/setting/<id>/v/<version>`.
 * `version` is the optimistic-concurrency token (the ETag).
 */
export const settings = pgTable(
  'settings',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    environmentId: text('environment_id')
      .notNull()
      .references(() => environments.id, { onDelete: 'cascade' }),
    key: text('key').notNull(),
    category: text('category'),
    valueType: text('value_type').notNull(),
    value: jsonb('value'),
    valueSealed: text('value_sealed'),
    keyId: text('key_id'),
    rules: jsonb('rules').$type<SettingRules>().notNull().default({}),
    description: text('description'),
    isSecret: boolean('is_secret').notNull().default(false),
    encrypted: boolean('encrypted').notNull().default(false),
    version: integer('version').notNull().default(1),
    createdBy: text('created_by'),
    updatedBy: text('updated_by'),
    /**
     * Set by a delete: the row stays (its history references it) but is gone from the API. Putting
     * the key again revives it with the next version, so versions never repeat for a key.
     */
    deletedAt: at('deleted_at'),
    ...timestamps,
  },
  (t) => [uniqueIndex('settings_org_env_key').on(t.orgId, t.environmentId, t.key)],
);

/**
 * One row per version of a setting, never updated or deleted by Steward: the value as of that
 * version (sealed like the setting when encrypted), who made it and from where. The API derives
 * `old_value` from the previous row and masks both for secret settings.
 */
export const settingHistory = pgTable(
  'setting_history',
  {
    settingId: text('setting_id')
      .notNull()
      .references(() => settings.id, { onDelete: 'cascade' }),
    version: integer('version').notNull(),
    orgId: text('org_id').notNull(),
    action: text('action').notNull(),
    valueType: text('value_type').notNull(),
    value: jsonb('value'),
    valueSealed: text('value_sealed'),
    keyId: text('key_id'),
    rules: jsonb('rules').$type<SettingRules>().notNull().default({}),
    category: text('category'),
    description: text('description'),
    isSecret: boolean('is_secret').notNull(),
    encrypted: boolean('encrypted').notNull(),
    restoredFrom: integer('restored_from'),
    changedBy: text('changed_by'),
    changedByType: text('changed_by_type'),
    ip: text('ip'),
    userAgent: text('user_agent'),
    requestId: text('request_id'),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.settingId, t.version] }), index('setting_history_key_id').on(t.keyId)],
);
