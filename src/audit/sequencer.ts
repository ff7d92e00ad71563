import { eq, inArray, isNull, sql } from 'drizzle-orm';
import type { DbHandle } from '../db/client.ts';
import { prepared, runPrepared } from '../db/prepared.ts';
import { type CanonicalEvent, canonicalEvent, contentOf, GENESIS_HASH, linkHash } from './chain.ts';
import { auditChainHeads, auditEvents } from './schema.ts';

/** An event as its writer serialised it, before the sequencer gives it a place in the chain. */
export interface WrittenEvent {
  id: string;
  event: CanonicalEvent;
}

const PENDING_IDS = prepared(
  'audit_pending_ids',
  'select id from audit_events where org_id = $1 and hash is null order by id limit $2',
);

/** Rows remembered for the sequencer at most (beyond that, it reads them back). */
const REMEMBER_MAX = 50_000;
/** A remembered row not linked after this long was rolled back (or its org's pass keeps failing). */
const REMEMBER_MS = 5 * 60_000;

export interface SequencerOptions {
  db: DbHandle;
  /** Events linked per transaction. */
  batchSize?: number;
  /**
   * How often to sweep for committed, unlinked events that no nudge linked (a transaction
   * that committed after its nudge's pass, an instance that died before linking). Each
   * sweep is a query: on PGlite that is main-thread time, so not more often than needed.
   */
  intervalMs?: number;
  /**
   * How long a nudge waits before its pass, so that a burst of writes is linked in one pass.
   * Default: 5 ms on PostgreSQL; 50 ms on PGlite, where a pass is about seven statements on the
   * thread that serves requests (at 8 concurrent logins, a 5 ms wait made 0.55 passes per login).
   */
  nudgeDelayMs?: number;
  onError?: (error: unknown) => void;
}

/**
 * Links committed audit events into each org's hash chain.
 *
 * Writers insert events unlinked, inside the transaction of their change, taking no
 * lock: an org's business transactions never queue behind each other's commit. The
 * sequencer then, per org and under a lock on the org's chain-head row, reads the
 * committed unlinked events in id (time) order, assigns consecutive sequences and
 * hashes, and writes them in one statement. The head lock makes two sequencers (two
 * Steward instances) take turns; the trigger lets an event be linked only once.
 */
export function createSequencer({
  db,
  batchSize = 1000,
  // On PGlite every event is linked as written or nudges a pass (one process writes the folder):
  // the timer only sweeps up what a crash left, and each idle pass held the thread that serves
  // requests for a query.
  intervalMs = db.kind === 'pglite' ? 60_000 : 1000,
  nudgeDelayMs = db.kind === 'pglite' ? 50 : 5,
  onError = () => {},
}: SequencerOptions) {
  let timer: NodeJS.Timeout | undefined;
  let soon: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let again = false;

  /**
   * Events this process wrote unlinked, by id, serialised as it wrote them (for their MAC): a pass
   * hashes these instead of reading every column back (on PostgreSQL, batches of 30 linked by a
   * pass cost 236–252 µs of this process's CPU per event that way, 217 µs this way). Only
   * committed rows are ever linked — the pass finds them by id in the table — and a row's hash is
   * of the values as stored (`toRow` stores exactly these), so verify, which reads the table, agrees.
   * A row someone else inserted is linked like any other (refusing it would stall the org's chain
   * behind it); its MAC, which only a writer holding the key can make, is what verify checks.
   */
  const written = new Map<string, { event: CanonicalEvent; at: number }>();

  function remember(events: readonly WrittenEvent[]): void {
    if (written.size + events.length > REMEMBER_MAX) return; // read back instead
    const at = Date.now();
    for (const { id, event } of events) written.set(id, { event, at });
  }

  function forgetStale(): void {
    const before = Date.now() - REMEMBER_MS;
    for (const [id, entry] of written) if (entry.at < before) written.delete(id);
  }

  /** Links up to one batch of an org's pending events; returns the ids it linked. */
  async function linkBatch(orgId: string): Promise<string[]> {
    return db.db.transaction(async (tx) => {
      const [head] = await tx
        .insert(auditChainHeads)
        .values({ orgId, lastSeq: 0, lastHash: GENESIS_HASH })
        .onConflictDoUpdate({
          target: auditChainHeads.orgId,
          set: { lastSeq: sql`${auditChainHeads.lastSeq}` },
        })
        .returning({ lastSeq: auditChainHeads.lastSeq, lastHash: auditChainHeads.lastHash });
      if (!head) throw new Error('audit chain head upsert returned nothing');
      const pending = await runPrepared<{ id: string }>(tx, PENDING_IDS, [orgId, batchSize]);
      if (pending.length === 0) return [];
      const unknown = pending.filter(({ id }) => !written.has(id)).map(({ id }) => id);
      const readBack = new Map<string, CanonicalEvent>();
      if (unknown.length > 0) {
        // Written by another instance, before a restart, or past REMEMBER_MAX.
        for (const row of await tx.select().from(auditEvents).where(inArray(auditEvents.id, unknown))) {
          readBack.set(row.id, canonicalEvent(contentOf(row)));
        }
      }
      let { lastSeq, lastHash } = head;
      const links: { id: string; seq: number; prev_hash: string; hash: string }[] = [];
      for (const { id } of pending) {
        const event = written.get(id)?.event ?? readBack.get(id);
        if (!event) throw new Error(`audit event ${id} vanished while being linked`);
        const seq = ++lastSeq;
        const hash = linkHash(lastHash, event, seq);
        links.push({ id, seq, prev_hash: lastHash, hash });
        lastHash = hash;
      }
      // The whole batch in one statement, passed as a single JSON parameter.
      await tx.execute(sql`
        update audit_events as e
           set seq = v.seq, prev_hash = v.prev_hash, hash = v.hash
          from jsonb_to_recordset(${JSON.stringify(links)}::jsonb) as v(id text, seq bigint, prev_hash text, hash text)
         where e.id = v.id and e.hash is null`);
      await tx.update(auditChainHeads).set({ lastSeq, lastHash }).where(eq(auditChainHeads.orgId, orgId));
      return links.map((link) => link.id);
    });
  }

  /** Links everything committed so far in one org. */
  async function flushOrg(orgId: string): Promise<void> {
    for (;;) {
      const linked = await linkBatch(orgId);
      for (const id of linked) written.delete(id); // committed: no longer needed
      if (linked.length < batchSize) return; // else a full batch: there may be more behind it
    }
  }

  /** Links everything committed so far, in every org. */
  async function flushAll(): Promise<void> {
    forgetStale();
    const orgs = await db.db
      .selectDistinct({ orgId: auditEvents.orgId })
      .from(auditEvents)
      .where(isNull(auditEvents.hash));
    for (const { orgId } of orgs) await flushOrg(orgId);
  }

  /** One pass at a time; a request during a pass earns exactly one more pass. Rejects on failure. */
  function run(): Promise<void> {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await flushAll();
        } while (again);
      } finally {
        running = undefined;
      }
    })();
    return running;
  }

  /** Timer-driven passes report failures instead of rejecting into the void; the next pass retries. */
  const background = () => {
    run().catch(onError);
  };

  return {
    flushOrg,
    /** Keeps events just written unlinked (in a transaction not yet committed) for the next pass. */
    remember,
    flushAll: () => run(),
    /** Called after a write: link it shortly, coalescing bursts into one pass. */
    nudge(): void {
      if (soon || !timer) return;
      soon = setTimeout(() => {
        soon = undefined;
        background();
      }, nudgeDelayMs);
      soon.unref();
    },
    start(): void {
      if (timer) return;
      timer = setInterval(background, intervalMs);
      timer.unref();
    },
    /** Stops the timers and links what is left, so nothing stays unlinked at shutdown. */
    async stop(): Promise<void> {
      clearInterval(timer);
      clearTimeout(soon);
      timer = undefined;
      soon = undefined;
      await running?.catch(() => {}); // its failure was reported; the final flush retries
      await flushAll();
    },
  };
}

export type Sequencer = ReturnType<typeof createSequencer>;
