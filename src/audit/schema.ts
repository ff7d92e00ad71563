import { sql } from 'drizzle-orm';
import { bigint, boolean, index, integer, jsonb, pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at } from '../db/columns.ts';

/**
 * The tamper-evident trail. Rows are written unchained (seq, prev_hash, hash null) in
 * the transaction of the change they record, each with its MAC; the sequencer then links
 * committed rows in order: hash = SHA-256(prev_hash ‖ canonical JSON of the event). A
 * trigger refuses every UPDATE but that one-time linking, and every DELETE but the
 * retention purge's (which leaves a checkpoint first). No foreign key to organizations:
 * the trail must outlive what it describes.
 */
export const auditEvents = pgTable(
  'audit_events',
  {
    id: text('id').primaryKey(),
    orgId: text('org_id').notNull(),
    /** Position in the org's chain; null until the sequencer links the event. */
    seq: bigint('seq', { mode: 'number' }),
    actorType: text('actor_type').notNull(),
    actorId: text('actor_id'),
    actorName: text('actor_name'),
    action: text('action').notNull(),
    resourceType: text('resource_type'),
    resourceId: text('resource_id'),
    ip: text('ip'),
    userAgent: text('user_agent'),
    sessionId: text('session_id'),
    requestId: text('request_id'),
    details: jsonb('details').$type<Record<string, unknown>>(),
    changes: jsonb('changes').$type<{ before?: unknown; after?: unknown }>(),
    success: boolean('success').notNull(),
    errorMessage: text('error_message'),
    sensitive: boolean('sensitive').notNull().default(false),
    retentionDays: integer('retention_days').notNull(),
    createdAt: at('created_at').notNull(),
    prevHash: text('prev_hash'),
    hash: text('hash'),
    /**
     * `mac2.<audit MAC key id>.<base64url HMAC-SHA256>` of the event's content (everything the hash
     * covers but seq), written with the event under a key only Steward holds (`auditMacKeys`): a row
     * inserted or rewritten through SQL cannot carry a valid one. Null only for events from before
     * MACs existed (see `auditLegacyBoundaries`).
     */
    mac: text('mac'),
  },
  (t) => [
    uniqueIndex('audit_events_org_seq').on(t.orgId, t.seq),
    index('audit_events_pending').on(t.orgId, t.id).where(sql`${t.hash} is null`),
    index('audit_events_org_id').on(t.orgId, t.id),
    index('audit_events_org_action').on(t.orgId, t.action, t.id),
    index('audit_events_org_actor').on(t.orgId, t.actorId, t.id),
    index('audit_events_org_resource').on(t.orgId, t.resourceType, t.resourceId, t.id),
    index('audit_events_org_time').on(t.orgId, t.createdAt),
  ],
);

/**
 * The end of each org's chain. The sequencer locks this row while linking, so two
 * sequencers (two Steward instances) can never fork the chain.
 */
export const auditChainHeads = pgTable('audit_chain_heads', {
  orgId: text('org_id').primaryKey(),
  lastSeq: bigint('last_seq', { mode: 'number' }).notNull(),
  lastHash: text('last_hash').notNull(),
});

/**
 * Left by the retention purge: the last purged event's sequence and hash, signed
 * (`mac2.<audit MAC key id>.…`, HMAC-SHA256 under the audit MAC key; older ones: hex, under a key
 * derived from the master key), so the rest still verifies.
 */
export const auditCheckpoints = pgTable(
  'audit_checkpoints',
  {
    id: text('id').primaryKey(),
    orgId: text('org_id').notNull(),
    lastPurgedSeq: bigint('last_purged_seq', { mode: 'number' }).notNull(),
    lastPurgedHash: text('last_purged_hash').notNull(),
    purgedCount: integer('purged_count').notNull(),
    createdAt: at('created_at').notNull(),
    signature: text('signature').notNull(),
  },
  (t) => [index('audit_checkpoints_org_seq').on(t.orgId, t.lastPurgedSeq)],
);

/**
 * Per org, the last sequence that may lack a MAC: the events that existed when migration 0011
 * added MACs (linked ones, plus those committed but not yet linked, which the sequencer links
 * next). Filled by that migration only; a trigger refuses every later INSERT, UPDATE, DELETE and
 * TRUNCATE, so nobody can widen it. An org with no row has no legacy events.
 */
export const auditLegacyBoundaries = pgTable('audit_legacy_boundaries', {
  orgId: text('org_id').primaryKey(),
  legacyThroughSeq: bigint('legacy_through_seq', { mode: 'number' }).notNull(),
  recordedAt: at('recorded_at').notNull().defaultNow(),
});

/**
 * The audit trail's own secret: 32 random bytes, made once per deployment by the first instance
 * to start, sealed under the master key (AAD `audit-mac-key/<id>`). Event MACs and checkpoint
 * signatures use keys derived from it, not from the master key, so a master-key rotation only
 * re-wraps this row (`steward vault rewrap`) and changes nothing that was signed. The id is a
 * keyed hash of the key, named in every MAC. A trigger refuses every UPDATE but the re-wrap of
 * `key_sealed` (to another master key), every DELETE and TRUNCATE: the key cannot be replaced.
 */
export const auditMacKeys = pgTable('audit_mac_keys', {
  id: text('id').primaryKey(),
  /**
   * 1 for the first key. Instances starting together all insert generation 1 (ON CONFLICT DO
   * NOTHING) and read back the one that won. Replacing the key is not built; a later key would be
   * generation 2, a row added beside the first, which keeps verifying what it signed.
   */
  generation: integer('generation').notNull().unique('audit_mac_keys_generation'),
  /** The key, sealed under the master key (`v1.<master key id>.…`). */
  keySealed: text('key_sealed').notNull(),
  createdAt: at('created_at').notNull(),
});
