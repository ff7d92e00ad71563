import { createHmac, timingSafeEqual } from 'node:crypto';
import { and, asc, eq, gt, sql } from 'drizzle-orm';
import { PgTransaction } from 'drizzle-orm/pg-core';
import { type DbHandle, type DbOrTx, rawInsertMany } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { prepared, runPrepared } from '../db/prepared.ts';
import type { Principal } from '../http/principal.ts';
import type { AuditAction } from './actions.ts';
import { type ChainedFields, eventHash, GENESIS_HASH } from './chain.ts';
import { type AuditFilters, listEvents, type StoredEvent } from './queries.ts';
import { redact, storable, storableJson } from './redact.ts';
import { auditChainHeads, auditCheckpoints, auditEvents } from './schema.ts';
import { createSequencer, type Sequencer } from './sequencer.ts';

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

export interface VerifyResult {
  valid: boolean;
  checked: number;
  first_bad_sequence: number | null;
  /** Why the first bad event is bad: useful to an operator, harmless to show. */
  reason?: 'hash_mismatch' | 'missing_event' | 'checkpoint_invalid' | 'head_mismatch';
}

export interface PurgeResult {
  orgId: string;
  purged: number;
  lastPurgedSeq: number;
}

export interface AuditServiceDeps {
  db: DbHandle;
  /** HMAC key for purge checkpoints (derived from the master key). */
  checkpointKey: Buffer;
  defaultRetentionDays: number;
  clock?: () => Date;
  /** Links events into the chain; made here when not given. */
  sequencer?: Sequencer;
}

/** Builds the actor of an event from the request's principal. */
export function actorOf(principal: Principal): AuditActor {
  return { type: principal.kind, id: principal.id, name: principal.name };
}

const PAGE = 1000;

/** An event as stored, before it is linked into its org's chain. */
type Row = Omit<ChainedFields, 'seq'>;

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
] as const;
const LINKED_COLUMNS = [...EVENT_COLUMNS, 'seq', 'prev_hash', 'hash'] as const;

/** A row's values in `EVENT_COLUMNS` order. */
const eventValues = (row: Row): unknown[] => [
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
];

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

/** HKDF purpose of the key that signs purge checkpoints. */
export const AUDIT_CHECKPOINT_KEY_PURPOSE = 'steward/audit/checkpoint/v1';

/** The audit trail: append inside the caller's transaction, query, export, verify, purge. */
export function createAuditService({
  db,
  checkpointKey,
  defaultRetentionDays,
  clock = () => new Date(),
  sequencer = createSequencer({ db }),
}: AuditServiceDeps) {
  const text = (s: string | null | undefined, max = 2000) => (s == null ? null : storable(s).slice(0, max));

  function checkpointSignature(c: {
    orgId: string;
    lastPurgedSeq: number;
    lastPurgedHash: string;
    purgedCount: number;
    createdAt: Date;
  }): string {
    const payload = `${c.orgId}|${c.lastPurgedSeq}|${c.lastPurgedHash}|${c.purgedCount}|${c.createdAt.toISOString()}`;
    return createHmac('sha256', checkpointKey).update(payload).digest('hex');
  }

  /**
   * Writes events within `tx`, so an event exists if and only if the change it records
   * commits.
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
    const rows = inputs.map((event) => toRow(event, now));
    if (options.link ?? db.kind === 'pglite') {
      // Reading the head and writing after it must not interleave with another transaction.
      if (tx instanceof PgTransaction) await insertLinked(tx as DbOrTx, rows);
      else await db.db.transaction((inner) => insertLinked(inner, rows));
      return;
    }
    await rawInsertMany(tx, db.kind, 'audit_events', EVENT_COLUMNS, rows.map(eventValues));
    sequencer.remember(rows);
    sequencer.nudge();
  }

  /** Appends rows to their orgs' chains: lock each head (orgs in a fixed order), hash, insert, move. */
  async function insertLinked(tx: DbOrTx, rows: Row[]): Promise<void> {
    const byOrg = new Map<string, Row[]>();
    for (const row of rows) byOrg.set(row.orgId, [...(byOrg.get(row.orgId) ?? []), row]);
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
        const fields = { ...row, seq: ++seq };
        const hash = eventHash(prevHash, fields);
        const values = [...eventValues(row), fields.seq, prevHash, hash];
        prevHash = hash;
        return values;
      });
      await rawInsertMany(tx, db.kind, 'audit_events', LINKED_COLUMNS, linked);
      await runPrepared(tx, MOVE_HEAD, [seq, prevHash, orgId]);
    }
  }

  function toRow(input: AuditEventInput, now: Date): Row {
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

  /** Re-computes the org's chain from its latest checkpoint (or genesis) to its head. */
  async function verify(orgId: string): Promise<VerifyResult> {
    await sequencer.flushOrg(orgId);
    const [checkpoint] = await db.db
      .select()
      .from(auditCheckpoints)
      .where(eq(auditCheckpoints.orgId, orgId))
      .orderBy(sql`${auditCheckpoints.lastPurgedSeq} desc`)
      .limit(1);
    let expectedSeq = 1;
    let expectedPrev = GENESIS_HASH;
    if (checkpoint) {
      const good = Buffer.from(checkpointSignature(checkpoint), 'hex');
      const given = Buffer.from(checkpoint.signature, 'hex');
      if (good.length !== given.length || !timingSafeEqual(good, given)) {
        return {
          valid: false,
          checked: 0,
          first_bad_sequence: checkpoint.lastPurgedSeq,
          reason: 'checkpoint_invalid',
        };
      }
      expectedSeq = checkpoint.lastPurgedSeq + 1;
      expectedPrev = checkpoint.lastPurgedHash;
    }
    let checked = 0;
    let after = expectedSeq - 1;
    for (;;) {
      const page = await db.db
        .select()
        .from(auditEvents)
        .where(and(eq(auditEvents.orgId, orgId), gt(auditEvents.seq, after)))
        .orderBy(asc(auditEvents.seq))
        .limit(PAGE);
      for (const row of page) {
        if (row.seq !== expectedSeq) {
          return { valid: false, checked, first_bad_sequence: expectedSeq, reason: 'missing_event' };
        }
        const { prevHash, hash, ...fields } = row;
        if (prevHash !== expectedPrev || eventHash(expectedPrev, { ...fields, seq: expectedSeq }) !== hash) {
          return { valid: false, checked, first_bad_sequence: row.seq, reason: 'hash_mismatch' };
        }
        checked++;
        expectedSeq++;
        expectedPrev = hash;
        after = expectedSeq - 1;
      }
      if (page.length < PAGE) break;
    }
    // Deleting the newest events leaves a chain that verifies on its own; the head does not.
    const [head] = await db.db.select().from(auditChainHeads).where(eq(auditChainHeads.orgId, orgId));
    const lastSeq = expectedSeq - 1;
    if (head && (head.lastSeq !== lastSeq || head.lastHash !== expectedPrev)) {
      return { valid: false, checked, first_bad_sequence: lastSeq + 1, reason: 'head_mismatch' };
    }
    return { valid: true, checked, first_bad_sequence: null };
  }

  /** Keyset-paginated pages of one org's events, for the API and exports. */
  async function* stream(orgId: string, filters: AuditFilters): AsyncGenerator<StoredEvent> {
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
          })
          .from(auditEvents)
          .where(and(eq(auditEvents.orgId, orgId), sql`${auditEvents.seq} < ${bound}`))
          .orderBy(sql`${auditEvents.seq} desc`)
          .limit(1);
        if (!last) return null;
        await tx.execute(sql`set local steward.audit_purge = 'on'`);
        const deleted = await tx
          .delete(auditEvents)
          .where(and(eq(auditEvents.orgId, orgId), sql`${auditEvents.seq} <= ${last.seq}`))
          .returning({ seq: auditEvents.seq });
        await tx.execute(sql`set local steward.audit_purge = 'off'`);
        const checkpoint = {
          id: newId('ckp'),
          orgId,
          lastPurgedSeq: last.seq,
          lastPurgedHash: last.hash,
          purgedCount: deleted.length,
          createdAt: now,
        };
        await tx
          .insert(auditCheckpoints)
          .values({ ...checkpoint, signature: checkpointSignature(checkpoint) });
        await record(tx, {
          orgId,
          actor: { type: 'system', name: 'retention' },
          action: 'audit.purged',
          details: { purged: deleted.length, last_purged_seq: last.seq },
        });
        return { orgId, purged: deleted.length, lastPurgedSeq: last.seq };
      });
      if (result) results.push(result);
    }
    return results;
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
    sequencer,
    list: (orgId: string, filters: AuditFilters, page: { limit: number; beforeId?: string | undefined }) =>
      listEvents(db.db, orgId, filters, page),
  };
}

/** The audit service as domains see it. */
export type AuditService = ReturnType<typeof createAuditService>;
/** What most domains need: recording inside their transaction. */
export type AuditRecorder = Pick<AuditService, 'record'>;
