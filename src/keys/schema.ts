import { boolean, index, integer, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../db/columns.ts';
import { users } from '../identity/schema.ts';
import { organizations } from '../tenancy/schema.ts';

/**
 * API keys (SPEC section 2). The key itself is never stored: `hash` is its SHA-256 (hex) and
 * `prefix` its first characters for display. Revocation is a soft delete (`revoked_at`).
 * `request_count` counts the billing period starting at `period_start` (batched writes: up to
 * one flush interval behind). `updated_at` moves on every change other than usage, which the
 * invalidation poll relies on.
 */
export const apiKeys = pgTable(
  'api_keys',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    /** `usr_…` or `agt_…`: the key acts for it, never with more rights. */
    ownerId: text('owner_id').notNull(),
    name: text('name').notNull(),
    prefix: text('prefix').notNull(),
    hash: text('hash').notNull(),
    environment: text('environment').notNull(),
    /** Permissions or patterns the key is limited to (intersected with the owner's rights). */
    scopes: jsonb('scopes').$type<string[]>().notNull(),
    tier: text('tier').notNull(),
    /** Per-key rate limit; null: the tier's. */
    ratelimitLimit: integer('ratelimit_limit'),
    ratelimitWindowSeconds: integer('ratelimit_window_seconds'),
    requestCount: integer('request_count').notNull().default(0),
    periodStart: at('period_start').notNull(),
    periodDays: integer('period_days').notNull().default(30),
    allowedIps: jsonb('allowed_ips').$type<string[]>().notNull().default([]),
    expiresAt: at('expires_at'),
    revokedAt: at('revoked_at'),
    revokedReason: text('revoked_reason'),
    active: boolean('active').notNull().default(true),
    /** Why the key is inactive (`burst_detected`, or an admin's words). */
    disabledReason: text('disabled_reason'),
    lastUsedAt: at('last_used_at'),
    /** The key that replaced this one in a roll. */
    rolledTo: text('rolled_to'),
    createdBy: text('created_by').notNull(),
    metadata: jsonb('metadata').$type<Record<string, unknown>>().notNull().default({}),
    ...timestamps,
  },
  (t) => [
    uniqueIndex('api_keys_hash').on(t.hash),
    index('api_keys_org_id').on(t.orgId, t.id),
    index('api_keys_updated_at').on(t.updatedAt),
  ],
);

/**
 * Per-org settings of the keys domain (one row per org, absent = defaults): burst detection
 * thresholds, and whether a burst suspends the key (off by default).
 */
export const apiKeySettings = pgTable('api_key_settings', {
  orgId: text('org_id')
    .primaryKey()
    .references(() => organizations.id, { onDelete: 'cascade' }),
  burstThreshold: integer('burst_threshold').notNull().default(50),
  burstWindowSeconds: integer('burst_window_seconds').notNull().default(60),
  suspendOnBurst: boolean('suspend_on_burst').notNull().default(false),
  updatedBy: text('updated_by'),
  ...timestamps,
});

/**
 * Keys of external systems that push events into Steward (`POST /v1/ingest`). The API key is
 * stored hashed; the HMAC secret sealed with the keyring (AAD `webhook-key/<id>/secret`).
 */
export const webhookKeys = pgTable(
  'webhook_keys',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    prefix: text('prefix').notNull(),
    keyHash: text('key_hash').notNull(),
    secretSealed: text('secret_sealed').notNull(),
    active: boolean('active').notNull().default(true),
    lastUsedAt: at('last_used_at'),
    createdBy: text('created_by').references(() => users.id, { onDelete: 'set null' }),
    ...timestamps,
  },
  (t) => [
    uniqueIndex('webhook_keys_key_hash').on(t.keyHash),
    uniqueIndex('webhook_keys_org_name').on(t.orgId, t.name),
  ],
);

/**
 * Events pushed in through `POST /v1/ingest`. `(source_key_id, message_id)` is unique: a
 * replayed `webhook-id` is refused by the database, on every instance alike.
 */
export const signals = pgTable(
  'signals',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    sourceKeyId: text('source_key_id').notNull(),
    sourceKeyName: text('source_key_name').notNull(),
    messageId: text('message_id').notNull(),
    eventType: text('event_type'),
    payload: jsonb('payload').notNull(),
    receivedAt: at('received_at').notNull(),
  },
  (t) => [
    uniqueIndex('signals_source_message').on(t.sourceKeyId, t.messageId),
    index('signals_org_id').on(t.orgId, t.id),
  ],
);
