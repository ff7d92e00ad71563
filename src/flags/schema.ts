import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  text,
  uniqueIndex,
} from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../db/columns.ts';
import { environments, organizations } from '../tenancy/schema.ts';
import type { Constraint, Feature } from './types.ts';

/**
 * A feature flag per org and environment. `definition` is the flag in Unleash's feature-toggle
 * JSON shape (name, description, enabled, strategies, variants, dependencies, impressionData),
 * exactly what `/api/client/features` serves; `name` and `enabled` are copied out for listing.
 * `version` counts changes (optimistic concurrency with `If-Match`).
 */
export const featureFlags = pgTable(
  'feature_flags',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    environmentId: text('environment_id')
      .notNull()
      .references(() => environments.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    enabled: boolean('enabled').notNull(),
    definition: jsonb('definition').$type<Feature>().notNull(),
    version: integer('version').notNull().default(1),
    createdBy: text('created_by'),
    updatedBy: text('updated_by'),
    ...timestamps,
  },
  (t) => [uniqueIndex('feature_flags_org_env_name').on(t.orgId, t.environmentId, t.name)],
);

/**
 * A segment: a named, reusable list of constraints, per org (shared by every environment, as in
 * Unleash). Strategies reference it by its numeric id, which is why the id is an integer.
 */
export const flagSegments = pgTable(
  'flag_segments',
  {
    id: integer('id').primaryKey().generatedAlwaysAsIdentity(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    description: text('description'),
    constraints: jsonb('constraints').$type<Constraint[]>().notNull(),
    version: integer('version').notNull().default(1),
    createdBy: text('created_by'),
    updatedBy: text('updated_by'),
    ...timestamps,
  },
  (t) => [uniqueIndex('flag_segments_org_name').on(t.orgId, t.name), index('flag_segments_org').on(t.orgId)],
);

/**
 * Evaluation counts reported by Unleash SDKs (`POST /api/client/metrics`), summed per flag per
 * hour (the bucket's start, truncated) per org and environment (the key's). `variants` maps a
 * variant name to its count. Counts for flags the environment does not have are not stored.
 */
export const flagMetrics = pgTable(
  'flag_metrics',
  {
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    environmentId: text('environment_id')
      .notNull()
      .references(() => environments.id, { onDelete: 'cascade' }),
    flagName: text('flag_name').notNull(),
    hour: at('hour').notNull(),
    yes: bigint('yes', { mode: 'number' }).notNull().default(0),
    no: bigint('no', { mode: 'number' }).notNull().default(0),
    variants: jsonb('variants').$type<Record<string, number>>().notNull().default({}),
    updatedAt: at('updated_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.environmentId, t.flagName, t.hour] })],
);

/** SDK instances that registered (`POST /api/client/register`) or sent metrics, per environment. */
export const flagClients = pgTable(
  'flag_clients',
  {
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    environmentId: text('environment_id')
      .notNull()
      .references(() => environments.id, { onDelete: 'cascade' }),
    appName: text('app_name').notNull(),
    instanceId: text('instance_id').notNull(),
    sdkVersion: text('sdk_version'),
    strategies: jsonb('strategies').$type<string[]>().notNull().default([]),
    intervalMs: integer('interval_ms'),
    startedAt: at('started_at'),
    firstSeenAt: at('first_seen_at').notNull().defaultNow(),
    lastSeenAt: at('last_seen_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.orgId, t.environmentId, t.appName, t.instanceId] })],
);
