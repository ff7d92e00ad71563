import { and, gte, isNotNull } from 'drizzle-orm';
import type { InvalidationBus } from '../bus/index.ts';
import type { DbHandle } from '../db/client.ts';
import { sessions } from './schema.ts';

const TOPIC = 'identity.sessions-revoked';

export interface RevocationDeps {
  db: DbHandle;
  bus: InvalidationBus;
  clock: () => Date;
  /** A revoked session is remembered this long: past it, every access token it had has expired. */
  accessTokenTtlSeconds: number;
  /** How often to re-read revoked sessions; 0: only at start (one process owns the database). */
  pollMs: number;
}

/**
 * The set of revoked session ids every instance checks on every authenticated request. Fed by
 * the bus as soon as a session is revoked anywhere, and re-read from the database every `pollMs`
 * so a lost message delays a revoke by at most one poll. Verified tokens may be cached; this
 * check is not, so a revoke applies within max(bus latency, pollMs) < 1 s.
 */
export function createRevocationList(deps: RevocationDeps) {
  const { db, bus, clock } = deps;
  const revoked = new Map<string, number>(); // sid → when it may be forgotten (ms)
  const keepMs = (deps.accessTokenTtlSeconds + 120) * 1000;
  let since: Date | undefined;
  let timer: NodeJS.Timeout | undefined;
  let polling: Promise<void> | undefined;

  function add(sid: string, atMs: number): void {
    revoked.set(sid, atMs + keepMs);
  }

  async function poll(): Promise<void> {
    const now = clock();
    // Overlap the previous read by a few seconds: a revoke committed late with an earlier
    // timestamp (clock skew between instances, long transaction) is still caught.
    const from = since ? new Date(since.getTime() - 5_000) : new Date(now.getTime() - keepMs);
    const rows = await db.db
      .select({ id: sessions.id, revokedAt: sessions.revokedAt })
      .from(sessions)
      .where(and(isNotNull(sessions.revokedAt), gte(sessions.revokedAt, from)));
    for (const row of rows) if (row.revokedAt) add(row.id, row.revokedAt.getTime());
    since = now;
    const nowMs = now.getTime();
    for (const [sid, until] of revoked) if (until < nowMs) revoked.delete(sid);
  }

  function pollSafely(): Promise<void> {
    polling ??= poll().finally(() => {
      polling = undefined;
    });
    return polling;
  }

  return {
    async start(): Promise<void> {
      bus.subscribe(TOPIC, (message) => {
        for (const sid of message.split(',')) if (sid) add(sid, clock().getTime());
      });
      await pollSafely(); // revokes committed before this start (another run, the CLI)
      if (deps.pollMs <= 0) return;
      timer = setInterval(() => {
        pollSafely().catch(() => {});
      }, deps.pollMs);
      timer.unref();
    },
    stop(): void {
      clearInterval(timer);
    },
    /** Marks sessions revoked here and tells every other instance. Call after the commit. */
    async publish(sids: readonly string[]): Promise<void> {
      if (sids.length === 0) return;
      const nowMs = clock().getTime();
      for (const sid of sids) add(sid, nowMs);
      await bus.publish(TOPIC, sids.join(','));
    },
    isRevoked: (sid: string) => revoked.has(sid),
    poll: pollSafely,
    size: () => revoked.size,
  };
}

export type RevocationList = ReturnType<typeof createRevocationList>;
