import type { InvalidationBus } from '../bus/index.ts';
import type { Principal } from '../http/principal.ts';
import { USER_TOPIC } from '../identity/core.ts';
import { KEYS_TOPIC } from '../keys/verifier.ts';
import type { EventStream } from './stream.ts';

/**
 * A stream is ended after about an hour (±10 %, so clients connected together do not come back
 * together) and the client reconnects: its credential is authenticated again, so a change the
 * events below do not name (the owner's roles, an agent switched off) applies within the hour.
 */
export const STREAM_LIFETIME_MS = 3_600_000;
/**
 * How often streams opened with a user's session look the session up in the revoked-session set
 * (identity's `RevocationList`: in memory, fed by the bus on every instance and re-read from the
 * database). Identity exports no bus topic for revocations, so this cheap sweep stands in for one.
 */
export const SESSION_SWEEP_MS = 1000;

interface Holder {
  orgId: string;
  keyId: string | undefined;
  /** For a key: the user or agent it acts for. */
  ownerId: string | undefined;
  sessionId: string | undefined;
  lifetime: NodeJS.Timeout;
}

export interface StreamGuardDeps {
  bus: InvalidationBus;
  clock: () => Date;
  /** Identity's revoked-session set (`ctx.identity.revocation.isRevoked`); omitted: no sessions. */
  sessionRevoked?: (sessionId: string) => boolean;
  lifetimeMs?: number;
  sweepMs?: number;
}

/**
 * Re-authentication of long-lived streams (server-sent events), shared by `/v1/flags/{env}/stream`
 * and `/api/client/streaming`: a stream is ended — its client reconnects and is authenticated
 * again, or refused — when a `keys` bus message names its key or org (revoked, rolled, expiry or
 * metadata changed…), when its key's owner changes (`identity.users`), when its key expires
 * (Steward's clock), when the session it was opened with is revoked or logged out (a sweep every
 * `sweepMs`), and after about an hour.
 */
export function createStreamGuard({
  bus,
  clock,
  sessionRevoked,
  lifetimeMs = STREAM_LIFETIME_MS,
  sweepMs = SESSION_SWEEP_MS,
}: StreamGuardDeps) {
  const held = new Map<EventStream, Holder>();
  let sessions = 0;
  let sweeper: NodeJS.Timeout | undefined;

  /** Ends the streams `matches` picks (their `onClose` calls `release`). */
  const closeWhere = (matches: (h: Holder) => boolean) => {
    for (const [stream, holder] of [...held]) if (matches(holder)) stream.close();
  };
  // `<instance> key <id>` / `<instance> org <id>`.
  bus.subscribe(KEYS_TOPIC, (message) => {
    const [, kind, id] = message.split(' ');
    if (kind === 'key') closeWhere((h) => h.keyId === id);
    else if (kind === 'org') closeWhere((h) => h.orgId === id);
  });
  // The user a key acts for changed (deactivated, roles). A user's own session streams are ended
  // by the session sweep instead: deactivation revokes sessions, and this topic also carries
  // every login, which must not end the user's other streams.
  bus.subscribe(USER_TOPIC, (userId) => closeWhere((h) => h.keyId !== undefined && h.ownerId === userId));

  function sweep(): void {
    if (sessionRevoked === undefined) return;
    closeWhere((h) => h.sessionId !== undefined && sessionRevoked(h.sessionId));
  }

  function release(stream: EventStream): void {
    const holder = held.get(stream);
    if (holder === undefined) return;
    held.delete(stream);
    clearTimeout(holder.lifetime);
    if (holder.sessionId !== undefined && --sessions === 0) {
      clearInterval(sweeper);
      sweeper = undefined;
    }
  }

  return {
    /**
     * Watches an open stream until it closes; `expiresAt` is its key's expiry (null: none). Call
     * `release` from the stream's `onClose`. A session already revoked ends the stream at once.
     */
    hold(stream: EventStream, principal: Principal, expiresAt: Date | null): void {
      if (stream.closed) return;
      const untilExpiry =
        expiresAt === null ? Number.POSITIVE_INFINITY : expiresAt.getTime() - clock().getTime();
      const ms = Math.max(0, Math.min(lifetimeMs * (0.9 + Math.random() * 0.2), untilExpiry));
      const lifetime = setTimeout(() => stream.close(), ms);
      lifetime.unref();
      // A key's requests carry no session; without a revoked-session set there is nothing to sweep.
      const sessionId =
        principal.keyId === undefined && sessionRevoked !== undefined ? principal.sessionId : undefined;
      held.set(stream, {
        orgId: principal.orgId,
        keyId: principal.keyId,
        ownerId: principal.ownerId,
        sessionId,
        lifetime,
      });
      if (sessionId === undefined || sessionRevoked === undefined) return;
      sessions += 1;
      if (sweeper === undefined) {
        sweeper = setInterval(sweep, sweepMs);
        sweeper.unref();
      }
      // Revoked between authentication and now (the route awaited).
      if (sessionRevoked(sessionId)) stream.close();
    },
    release,
    /** Streams held (tests). */
    size: () => held.size,
  };
}

export type StreamGuard = ReturnType<typeof createStreamGuard>;
