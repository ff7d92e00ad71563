import { and, asc, eq, gt, isNotNull, isNull, lt, lte, or, sql } from 'drizzle-orm';
import { PgTransaction } from 'drizzle-orm/pg-core';
import type { Keyring } from '../crypto/keyring.ts';
import { type DbHandle, type DbOrTx, rawInsertMany } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { prepared, runPrepared } from '../db/prepared.ts';
import type { Principal } from '../http/principal.ts';
import type { AuditAction } from './actions.ts';
import {
  type CanonicalEvent,
  canonicalEvent,
  contentOf,
  type EventContent,
  GENESIS_HASH,
  linkHash,
} from './chain.ts';
import { type AuditKeys, createAuditKeys } from './mac.ts';
import { loadAuditMacKeys } from './mac-key.ts';
import {
  type AuditFilters,
  linkedThrough,
  listEvents,
  listEventsAfterSeq,
  type StoredEvent,
} from './queries.ts';
import { redact, storable, storableJson } from './redact.ts';
import { auditChainHeads, auditCheckpoints, auditEvents, auditLegacyBoundaries } from './schema.ts';
import { createSequencer, type Sequencer } from './sequencer.ts';

export { AUDIT_CHECKPOINT_KEY_PURPOSE, type AuditKeys } from './mac.ts';

/** Who did it. `system` is Steward itself (bootstrap, purge, schedulers). */
export interface AuditActor {
  type: 'user' | 'agent' | 'key' | 'system';
  id?: string | null;
  /** Kept as it was at the time: later renames do not rewrite history. */
  name?: string | null;
}

/** Where the request came from; every field optional (a CLI has no IP). */
export interface AuditContext {
  ip?: string | null;
  userAgent?: string | null;
  sessionId?: string | null;
  requestId?: string | null;
}

/** One event as a domain describes it. Secrets are masked before anything is stored. */
export interface AuditEventInput {
  orgId: string;
  actor: AuditActor;
  action: AuditAction;
  resource?: { type: string; id?: string | null };
  context?: AuditContext;
  details?: Record<string, unknown>;
  changes?: { before?: unknown; after?: unknown };
  /** Extra field names to mask in details/changes (the common secret names always are). */
  secretFields?: readonly string[];
  success?: boolean;
  errorMessage?: string | null;
  sensitive?: boolean;
  retentionDays?: number;
}

/** Why a chain does not verify: useful to an operator, harmless to show. */
export const VERIFY_REASONS = [
  /** The latest purge checkpoint's signature is wrong (forged), or names a key this process does not hold. */
  'checkpoint_invalid',
  /** A sequence is missing: an event was deleted. */
  'missing_event',
  /** An event's hash or link to its predecessor is wrong: the event or its neighbour was changed. */
  'hash_mismatch',
  /** An event written after MACs existed has none: inserted through SQL. */
  'mac_missing',
  /** An event's MAC does not match its content: inserted or rewritten through SQL. */
  'mac_mismatch',
  /**
   * An event's MAC names an audit MAC key that is not in audit_mac_keys.
   */
  'mac_key_unknown',
  /** The chain head does not point at the last event: the newest events were removed, or the head moved. */
  'head_mismatch',
  /** A row carries a hash but no place in the chain (or one the purge already passed): inserted through SQL. */
  'unchained_event',
] as const;

export interface VerifyResult {
  valid: boolean;
  checked: number;
  first_bad_sequence: number | null;
  /** Id of the first bad event, when there is a row to point at (not for a missing event or a bad head). */
  first_bad_event_id: string | null;
  reason?: (typeof VERIFY_REASONS)[number];
}

export interface PurgeResult {
  orgId: string;
  purged: number;
  lastPurgedSeq: number;
}

export interface AuditServiceDeps {
  db: DbHandle;
  /**
   * What signs and checks: each event's MAC and each purge checkpoint are HMAC-SHA256 under keys
   * derived from the audit MAC key (`loadAuditMacKeys`), loaded once, before the first event.
   */
  keys: AuditKeys;
  defaultRetentionDays: number;
  clock?: () => Date;
  /** Links events into the chain; made here when not given. */
  sequencer?: Sequencer;
}

/** What `openAuditService` needs: the master keys instead of the audit trail's own. */
export type OpenAuditServiceDeps = Omit<AuditServiceDeps, 'keys'> & {
  /**
   * The master keys: they open the audit MAC key (and seal it, on the first start); events and
   * checkpoints signed before it existed verify under the master key they were signed with.
   */
  keyring: Keyring;
};

/**
 * The audit service as Steward starts it: loads the audit MAC key (the first instance to start
 * makes it), builds the service and re-signs the checkpoints older releases signed under a master
 * key (`resignLegacyCheckpoints`). A few queries at start; nothing more per event.
 */
export async function openAuditService({ keyring, ...deps }: OpenAuditServiceDeps): Promise<AuditService> {
  const macKeys = await loadAuditMacKeys({ db: deps.db, keyring, clock: deps.clock });
  const service = createAuditService({ ...deps, keys: createAuditKeys(keyring, macKeys) });
  await service.resignLegacyCheckpoints();
  return service;
}

/** Builds the actor of an event from the request's principal. */
export function actorOf(principal: Principal): AuditActor {
  return { type: principal.kind, id: principal.id, name: principal.name };
}

const PAGE = 1000;

/** An event ready to store: its content, serialised once, and its MAC. */
interface Row {
  content: EventContent;
  event: CanonicalEvent;
  mac: string;
}

const EVENT_COLUMNS = [
  'id',
  'org_id',
  'actor_type',
  'actor_id',
  'actor_name',
  'action',
  'resource_type',
  'resource_id',
  'ip',
  'user_agent',
  'session_id',
  'request_id',
  'details',
  'changes',
  'success',
  'error_message',
  'sensitive',
  'retention_days',
  'created_at',
  'mac',
] as const;
const LINKED_COLUMNS = [...EVENT_COLUMNS, 'seq', 'prev_hash', 'hash'] as const;

/** A row's values in `EVENT_COLUMNS` order. */
const eventValues = ({ content: row, mac }: Row): unknown[] => [
  row.id,
  row.orgId,
  row.actorType,
  row.actorId,
  row.actorName,
  row.action,
  row.resourceType,
  row.resourceId,
  row.ip,
  row.userAgent,
  row.sessionId,
  row.requestId,
  row.details,
  row.changes,
  row.success,
  row.errorMessage,
  row.sensitive,
  row.retentionDays,
  row.createdAt,
  mac,
];

/** The first `max` UTF-16 units of `s`, one fewer when the cut would split a surrogate pair. */
function cut(s: string, max: number): string {
  if (s.length <= max) return s;
  const high = s.charCodeAt(max - 1);
  const low = s.charCodeAt(max);
  const splits = high >= 0xd800 && high <= 0xdbff && low >= 0xdc00 && low <= 0xdfff;
  return s.slice(0, splits ? max - 1 : max);
}

/** Takes the org's chain head (created at genesis on first use) and holds it until commit. */
const LOCK_HEAD = prepared(
  'audit_lock_head',
  'insert into audit_chain_heads (org_id, last_seq, last_hash) values ($1, 0, $2) ' +
    'on conflict (org_id) do update set last_seq = audit_chain_heads.last_seq returning last_seq, last_hash',
);
const MOVE_HEAD = prepared(
  'audit_move_head',
  'update audit_chain_heads set last_seq = $1, last_hash = $2 where org_id = $3',
);

/** The audit trail: append inside the caller's transaction, query, export, verify, purge. */
export function createAuditService({
  db,
  keys,
  defaultRetentionDays,
  clock = () => new Date(),
  sequencer = createSequencer({ db }),
}: AuditServiceDeps) {
  /**
   * Cut to `max` UTF-16 units on a code-point boundary, then made storable. Until session 10 it was
   * made storable first and cut after, which could split a surrogate pair: the lone half was hashed
   * and MACed, stored by the driver as U+FFFD, and verify called the untampered event `hash_mismatch`.
   */
  const text = (s: string | null | undefined, max = 2000) => (s == null ? null : storable(cut(s, max)));

  /** What a checkpoint's signature covers. */
  const checkpointPayload = (c: {
    orgId: string;
    lastPurgedSeq: number;
    lastPurgedHash: string;
    purgedCount: number;
    createdAt: Date;
  }): string =>
    `${c.orgId}|${c.lastPurgedSeq}|${c.lastPurgedHash}|${c.purgedCount}|${c.createdAt.toISOString()}`;

  /**
   * Writes events within `tx`, so an event exists if and only if the change it records
   * commits. Each carries its MAC (one HMAC-SHA256 of its content, serialised once for both the
   * MAC and the hash): what verify checks, so that a row inserted or rewritten through SQL, by
   * someone without the audit MAC key, is found even though the sequencer links it.
   *
   * On PostgreSQL, by default one INSERT and no lock: the sequencer links committed events into
   * the org's chain shortly after (verify and purge link first), so concurrent writers never queue
   * behind the chain head (ADR 0002). On PGlite, by default the events are linked as they are
   * written — lock the head, hash, insert, move the head: PGlite has one connection, so nobody can
   * wait on the head, and a sequencer pass cost 5–8 ms of the thread that serves requests (seven
   * statements) against ~0.3 ms for the two head statements, prepared (ADR 0002, second amendment).
   * `link` overrides the default (tests of both paths).
   */
  async function record(
    tx: DbOrTx,
    input: AuditEventInput | readonly AuditEventInput[],
    options: { link?: boolean } = {},
  ): Promise<void> {
    const inputs: readonly AuditEventInput[] = Array.isArray(input) ? input : [input as AuditEventInput];
    if (inputs.length === 0) return;
    const now = clock();
    const rows = inputs.map((input): Row => {
      const content = toRow(input, now);
      const event = canonicalEvent(content);
      return { content, event, mac: keys.eventMac(event.content) };
    });
    if (options.link ?? db.kind === 'pglite') {
      // Reading the head and writing after it must not interleave with another transaction.
      if (tx instanceof PgTransaction) await insertLinked(tx as DbOrTx, rows);
      else await db.db.transaction((inner) => insertLinked(inner, rows));
      return;
    }
    await rawInsertMany(tx, db.kind, 'audit_events', EVENT_COLUMNS, rows.map(eventValues));
    sequencer.remember(rows.map(({ content, event }) => ({ id: content.id, event })));
    sequencer.nudge();
  }

  /** Appends rows to their orgs' chains: lock each head (orgs in a fixed order), hash, insert, move. */
  async function insertLinked(tx: DbOrTx, rows: Row[]): Promise<void> {
    const byOrg = new Map<string, Row[]>();
    for (const row of rows) byOrg.set(row.content.orgId, [...(byOrg.get(row.content.orgId) ?? []), row]);
    for (const orgId of [...byOrg.keys()].sort()) {
      const events = byOrg.get(orgId) ?? [];
      const [head] = await runPrepared<{ last_seq: string | number; last_hash: string }>(tx, LOCK_HEAD, [
        orgId,
        GENESIS_HASH,
      ]);
      if (!head) throw new Error('audit chain head upsert returned nothing');
      let seq = Number(head.last_seq);
      let prevHash = head.last_hash;
      const linked = events.map((row) => {
        const hash = linkHash(prevHash, row.event, ++seq);
        const values = [...eventValues(row), seq, prevHash, hash];
        prevHash = hash;
        return values;
      });
      await rawInsertMany(tx, db.kind, 'audit_events', LINKED_COLUMNS, linked);
      await runPrepared(tx, MOVE_HEAD, [seq, prevHash, orgId]);
    }
  }

  function toRow(input: AuditEventInput, now: Date): EventContent {
    const secret = input.secretFields ?? [];
    return {
      id: newId('evt'),
      orgId: input.orgId,
      actorType: input.actor.type,
      actorId: text(input.actor.id, 200),
      actorName: text(input.actor.name, 500),
      action: input.action,
      resourceType: text(input.resource?.type, 100),
      resourceId: text(input.resource?.id, 200),
      ip: text(input.context?.ip, 100),
      userAgent: text(input.context?.userAgent, 1000),
      sessionId: text(input.context?.sessionId, 100),
      requestId: text(input.context?.requestId, 200),
      details: input.details
        ? (storableJson(redact(input.details, secret)) as Record<string, unknown>)
        : null,
      changes: input.changes
        ? (storableJson(redact(input.changes, secret)) as { before?: unknown; after?: unknown })
        : null,
      success: input.success ?? true,
      errorMessage: text(input.errorMessage),
      sensitive: input.sensitive ?? false,
      retentionDays: input.retentionDays ?? defaultRetentionDays,
      createdAt: now,
    };
  }

  /**
   * Re-computes the org's chain from its latest checkpoint (or genesis) to its head: each event's
   * place, link, hash and MAC (events up to the org's legacy boundary may have none), then the head,
   * then rows that carry a hash but no place in that chain. Reports the first problem found.
   *
   * The trail keeps growing while it is walked (reveal batches, the sequencer, other instances).
   * The walk goes from the checkpoint to the head as read before it (events and the head that
   * covers them commit together), and rows past that head must be covered by the head read after
   * them. On PostgreSQL it all reads one snapshot (a read-only REPEATABLE READ transaction). PGlite
   * has one connection, which a transaction would hold, and every request with it, for the whole
   * walk: there a walk that a purge overtook (a newer checkpoint) is run again. Before session 10
   * verify read the head after the walk, and a chain verified under load answered `head_mismatch`.
   */
  async function verify(orgId: string): Promise<VerifyResult> {
    await sequencer.flushOrg(orgId);
    if (db.kind === 'postgres') {
      return db.db.transaction((tx) => verifyWalk(tx, orgId).then((walk) => walk.result), {
        isolationLevel: 'repeatable read',
        accessMode: 'read only',
      });
    }
    for (let attempt = 1; ; attempt++) {
      const walk = await verifyWalk(db.db, orgId);
      if (walk.result.valid || attempt === 3) return walk.result;
      const latest = await latestCheckpoint(db.db, orgId);
      if ((latest?.id ?? null) === walk.checkpointId) return walk.result;
    }
  }

  /** The newest checkpoint of the furthest purge (a re-signed copy comes after its original). */
  async function latestCheckpoint(q: DbOrTx, orgId: string) {
    const [checkpoint] = await q
      .select()
      .from(auditCheckpoints)
      .where(eq(auditCheckpoints.orgId, orgId))
      .orderBy(sql`${auditCheckpoints.lastPurgedSeq} desc`, sql`${auditCheckpoints.id} desc`)
      .limit(1);
    return checkpoint;
  }

  /** One walk of `verify`, and the checkpoint it started from. */
  async function verifyWalk(
    q: DbOrTx,
    orgId: string,
  ): Promise<{ result: VerifyResult; checkpointId: string | null }> {
    const checkpoint = await latestCheckpoint(q, orgId);
    const checkpointId = checkpoint?.id ?? null;
    const bad = (
      checked: number,
      sequence: number | null,
      reason: NonNullable<VerifyResult['reason']>,
      eventId: string | null = null,
    ) => ({
      checkpointId,
      result: {
        valid: false,
        checked,
        first_bad_sequence: sequence,
        first_bad_event_id: eventId,
        reason,
      } satisfies VerifyResult,
    });
    let expectedSeq = 1;
    let expectedPrev = GENESIS_HASH;
    if (checkpoint) {
      // A DELETE needs a checkpoint covering the event: one written by anyone but the purge fails here.
      if (!keys.checkCheckpoint(checkpointPayload(checkpoint), checkpoint.signature)) {
        return bad(0, checkpoint.lastPurgedSeq, 'checkpoint_invalid');
      }
      expectedSeq = checkpoint.lastPurgedSeq + 1;
      expectedPrev = checkpoint.lastPurgedHash;
    }
    const firstSeq = expectedSeq;
    const [boundary] = await q
      .select({ seq: auditLegacyBoundaries.legacyThroughSeq })
      .from(auditLegacyBoundaries)
      .where(eq(auditLegacyBoundaries.orgId, orgId));
    const legacyThrough = boundary?.seq ?? 0;
    // The walk ends at the head as it is now: events linked after this read are the next
    // verify's. Events and the head they move commit together, so all of these exist.
    const [head] = await q.select().from(auditChainHeads).where(eq(auditChainHeads.orgId, orgId));
    const within = (after: number) =>
      head
        ? and(eq(auditEvents.orgId, orgId), gt(auditEvents.seq, after), lte(auditEvents.seq, head.lastSeq))
        : and(eq(auditEvents.orgId, orgId), gt(auditEvents.seq, after));
    let checked = 0;
    for (;;) {
      const page = await q
        .select()
        .from(auditEvents)
        .where(within(expectedSeq - 1))
        .orderBy(asc(auditEvents.seq))
        .limit(PAGE);
      for (const row of page) {
        if (row.seq !== expectedSeq) return bad(checked, expectedSeq, 'missing_event');
        const event = canonicalEvent(contentOf(row));
        if (row.prevHash !== expectedPrev || linkHash(expectedPrev, event, expectedSeq) !== row.hash) {
          return bad(checked, expectedSeq, 'hash_mismatch', row.id);
        }
        const mac =
          row.mac !== null
            ? keys.checkEventMac(event.content, row.mac)
            : expectedSeq <= legacyThrough
              ? 'ok'
              : 'mac_missing';
        if (mac !== 'ok') return bad(checked, expectedSeq, mac, row.id);
        checked++;
        expectedSeq++;
        expectedPrev = row.hash;
      }
      if (page.length < PAGE) break;
    }
    const lastSeq = expectedSeq - 1;
    if (head) {
      // Deleting the newest events leaves a chain that verifies on its own; the head does not.
      if (head.lastSeq !== lastSeq || head.lastHash !== expectedPrev) {
        return bad(checked, lastSeq + 1, 'head_mismatch');
      }
      // Rows past the head: events linked since it was read, or rows written around it. Read the
      // head again after them: a row it does not cover was never linked by Steward.
      const [past] = await q
        .select({ seq: sql<number>`max(${auditEvents.seq})`.mapWith(Number) })
        .from(auditEvents)
        .where(and(eq(auditEvents.orgId, orgId), gt(auditEvents.seq, lastSeq)));
      if (past?.seq != null) {
        const [now] = await q
          .select({ lastSeq: auditChainHeads.lastSeq })
          .from(auditChainHeads)
          .where(eq(auditChainHeads.orgId, orgId));
        if (!now || past.seq > now.lastSeq) return bad(checked, lastSeq + 1, 'head_mismatch');
      }
    }
    // Listed, but outside what was just walked: a hash without a sequence (never linked, never
    // checked), or a sequence the latest checkpoint says was purged.
    const [stray] = await q
      .select({ id: auditEvents.id, seq: auditEvents.seq })
      .from(auditEvents)
      .where(
        and(
          eq(auditEvents.orgId, orgId),
          isNotNull(auditEvents.hash),
          or(isNull(auditEvents.seq), lt(auditEvents.seq, firstSeq)),
        ),
      )
      .orderBy(asc(auditEvents.id))
      .limit(1);
    if (stray) return bad(checked, stray.seq, 'unchained_event', stray.id);
    return {
      checkpointId,
      result: { valid: true, checked, first_bad_sequence: null, first_bad_event_id: null },
    };
  }

  /**
   * Linked events after `afterSeq`, in sequence order (`listEventsAfterSeq`), and where the next
   * read starts: the last one returned, or, when the page is not full, the head as read before
   * the page, if that is further. A filtered read that matches nothing thus still moves on, and
   * its next poll scans only what was linked since, not the whole tail again; nothing is
   * skipped, since every event up to that head was committed before the page was read.
   */
  async function listAfterSeq(
    orgId: string,
    filters: AuditFilters,
    page: { limit: number; afterSeq: number },
  ): Promise<{ events: StoredEvent[]; nextAfterSeq: number }> {
    const through = await linkedThrough(db.db, orgId);
    const events = await listEventsAfterSeq(db.db, orgId, filters, page);
    const last = events.at(-1)?.seq ?? page.afterSeq;
    const full = events.length === page.limit;
    return { events, nextAfterSeq: full ? last : Math.max(last, through, page.afterSeq) };
  }

  /**
   * Keyset-paginated pages of one org's events, for the API and exports: newest first by id, or,
   * given `afterSeq`, the linked events after it in sequence order (what a forwarder reads).
   */
  async function* stream(
    orgId: string,
    filters: AuditFilters,
    options: { afterSeq?: number | undefined } = {},
  ): AsyncGenerator<StoredEvent> {
    if (options.afterSeq !== undefined) {
      let afterSeq = options.afterSeq;
      for (;;) {
        const page = await listEventsAfterSeq(db.db, orgId, filters, { limit: PAGE, afterSeq });
        yield* page;
        const last = page.at(-1);
        if (page.length < PAGE || last?.seq == null) return;
        afterSeq = last.seq;
      }
    }
    let cursor: string | undefined;
    for (;;) {
      const page = await listEvents(db.db, orgId, filters, { limit: PAGE, beforeId: cursor });
      yield* page;
      const last = page.at(-1);
      if (page.length < PAGE || !last) return;
      cursor = last.id;
    }
  }

  /**
   * Deletes each org's oldest events whose retention has passed — always a prefix of
   * the chain, so what remains still links — and leaves a signed checkpoint of the
   * last purged event, plus an `audit.purged` event, in the same transaction.
   */
  async function purge(): Promise<PurgeResult[]> {
    const now = clock();
    const orgs = await db.db.select({ orgId: auditChainHeads.orgId }).from(auditChainHeads);
    const results: PurgeResult[] = [];
    for (const { orgId } of orgs) {
      await sequencer.flushOrg(orgId);
      const result = await db.db.transaction(async (tx) => {
        // The head lock makes a second instance's concurrent purge wait, then find nothing left to do.
        await tx.execute(sql`select 1 from audit_chain_heads where org_id = ${orgId} for update`);
        // The first event still within its retention bounds the purgeable prefix.
        const [keep] = await tx
          .select({ seq: sql<number>`min(${auditEvents.seq})`.mapWith(Number) })
          .from(auditEvents)
          .where(
            and(
              eq(auditEvents.orgId, orgId),
              sql`${auditEvents.createdAt} + make_interval(days => ${auditEvents.retentionDays}) > ${now.toISOString()}::timestamptz`,
            ),
          );
        const bound = keep?.seq ?? Number.MAX_SAFE_INTEGER;
        const [last] = await tx
          .select({
            seq: sql<number>`${auditEvents.seq}`.mapWith(Number),
            hash: sql<string>`${auditEvents.hash}`,
            // Every row of the prefix, counted before LIMIT: the checkpoint, signed before the
            // delete, records how many it covers.
            count: sql<number>`count(*) over ()`.mapWith(Number),
          })
          .from(auditEvents)
          .where(and(eq(auditEvents.orgId, orgId), sql`${auditEvents.seq} < ${bound}`))
          .orderBy(sql`${auditEvents.seq} desc`)
          .limit(1);
        if (!last) return null;
        const checkpoint = {
          id: newId('ckp'),
          orgId,
          lastPurgedSeq: last.seq,
          lastPurgedHash: last.hash,
          purgedCount: last.count,
          createdAt: now,
        };
        // The checkpoint first: the trigger deletes an event only when a checkpoint of its org covers
        // it (the transaction-local flag alone, which any session may set, is not enough).
        await tx
          .insert(auditCheckpoints)
          .values({ ...checkpoint, signature: keys.signCheckpoint(checkpointPayload(checkpoint)) });
        await tx.execute(sql`set local steward.audit_purge = 'on'`);
        const deleted = await tx
          .delete(auditEvents)
          .where(and(eq(auditEvents.orgId, orgId), sql`${auditEvents.seq} <= ${last.seq}`))
          .returning({ seq: auditEvents.seq });
        await tx.execute(sql`set local steward.audit_purge = 'off'`);
        // The head lock keeps linking out; a different count would make the signed one a lie.
        if (deleted.length !== last.count)
          throw new Error('audit purge: the purged prefix changed under the lock');
        await record(tx, {
          orgId,
          actor: { type: 'system', name: 'retention' },
          action: 'audit.purged',
          details: { purged: deleted.length, last_purged_seq: last.seq },
        });
        return { orgId, purged: deleted.length, lastPurgedSeq: last.seq };
      });
      if (result) {
        results.push(result);
        // Its audit.purged event, written unlinked on PostgreSQL: linked before purge returns, since
        // `steward audit purge` has no running sequencer to do it (it was left unlinked until session 10).
        await sequencer.flushOrg(orgId);
      }
    }
    return results;
  }

  /**
   * Purge checkpoints signed before the audit MAC key existed (hex: every release before session 8)
   * verify only under the master key they were signed with, so a master-key rotation would leave
   * them `checkpoint_invalid`. At start, each org's latest one that still verifies (its master key
   * is held: before a rotation, or during one, as the previous key) gets a copy signed under the
   * audit MAC key — the same fields, only the signature new; the table is append-only, so the
   * original stays. A forged or unverifiable checkpoint is never re-signed: verify keeps reporting it.
   * Returns how many were re-signed.
   */
  async function resignLegacyCheckpoints(): Promise<number> {
    const orgs = await db.db
      .selectDistinct({ orgId: auditCheckpoints.orgId })
      .from(auditCheckpoints)
      .where(sql`${auditCheckpoints.signature} not like 'mac%'`);
    let resigned = 0;
    for (const { orgId } of orgs) {
      const [latest] = await db.db
        .select()
        .from(auditCheckpoints)
        .where(eq(auditCheckpoints.orgId, orgId))
        .orderBy(sql`${auditCheckpoints.lastPurgedSeq} desc`, sql`${auditCheckpoints.id} desc`)
        .limit(1);
      if (!latest || latest.signature.startsWith('mac')) continue;
      const payload = checkpointPayload(latest);
      if (!keys.checkCheckpoint(payload, latest.signature)) continue;
      await db.db
        .insert(auditCheckpoints)
        .values({ ...latest, id: newId('ckp'), signature: keys.signCheckpoint(payload) });
      resigned++;
    }
    return resigned;
  }

  /** Orgs with a chain (for `steward audit verify` without --org). */
  async function orgsWithEvents(): Promise<string[]> {
    await sequencer.flushAll(); // an org whose events are all still unlinked has no head yet
    const rows = await db.db.select({ orgId: auditChainHeads.orgId }).from(auditChainHeads);
    return rows.map((r) => r.orgId);
  }

  return {
    record,
    verify,
    purge,
    stream,
    orgsWithEvents,
    resignLegacyCheckpoints,
    sequencer,
    list: (orgId: string, filters: AuditFilters, page: { limit: number; beforeId?: string | undefined }) =>
      listEvents(db.db, orgId, filters, page),
    listAfterSeq,
  };
}

/** The audit service as domains see it. */
export type AuditService = ReturnType<typeof createAuditService>;
/** What most domains need: recording inside their transaction. */
export type AuditRecorder = Pick<AuditService, 'record'>;
