import type { Authz } from '../authz/contract.ts';
import { AUTHZ_TOPIC } from '../authz/service.ts';
import type { InvalidationBus } from '../bus/index.ts';
import type { Principal } from '../http/principal.ts';
import { USER_TOPIC } from '../identity/core.ts';
import { KEYS_TOPIC } from '../keys/verifier.ts';
import type { EventStream } from './stream.ts';

/**
 * A stream is ended after about an hour (±10 %, so clients connected together do not come back
 * together) and the client reconnects: its credential is authenticated again, so a change the
 * events below do not name (an agent switched off) applies within the hour.
 */
export const STREAM_LIFETIME_MS = 3_600_000;
/**
 * How often streams opened with a user's session look the session up in the revoked-session set
 * (identity's `RevocationList`: in memory, fed by the bus on every instance and re-read from the
 * database). Identity exports no bus topic for revocations, so this cheap sweep stands in for one.
 */
export const SESSION_SWEEP_MS = 1000;
/**
 * After an `authz` bus message names an org, its streams' permission is checked at once and again
 * at each sweep for this long: the instance that made the change patched its index before
 * publishing, but another instance rebuilds its index in the background, keeping the old one
 * meanwhile, and says nothing when the new one is in place.
 */
export const AUTHZ_FOLLOW_MS = 10_000;
/**
 * Every held stream's permission is checked this often whatever the bus says: a lost `authz`
 * message (each instance rebuilds its indexes every 30 s anyway) or an allow grant that expired.
 */
export const AUTHZ_RECHECK_ALL_MS = 30_000;

interface Holder {
  orgId: string;
  /** Who opened the stream, and the permission the route asked of them. */
  principal: Principal;
  permission: string;
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
  /** Checks a stream's permission again when roles, assignments or grants change. */
  authz: Pick<Authz, 'check' | 'checkSync'>;
  lifetimeMs?: number;
  sweepMs?: number;
  authzFollowMs?: number;
  recheckAllMs?: number;
  onError?: (error: unknown, what: string) => void;
}

/**
 * Re-authentication of long-lived streams (server-sent events), shared by `/v1/flags/{env}/stream`
 * and `/api/client/streaming`: a stream is ended — its client reconnects and is authenticated
 * again, or refused — when a `keys` bus message names its key or org (revoked, rolled, expiry or
 * metadata changed…), when its key's owner changes (`identity.users`), when its key expires
 * (Steward's clock), when the session it was opened with is revoked or logged out (a sweep every
 * `sweepMs`), when its principal no longer holds the route's permission after an `authz` change
 * (a deny grant, a role unassigned: checked against the authz index at the message and at each
 * sweep for `authzFollowMs`, and every `recheckAllMs` in any case), and after about an hour.
 */
export function createStreamGuard({
  bus,
  clock,
  sessionRevoked,
  authz,
  lifetimeMs = STREAM_LIFETIME_MS,
  sweepMs = SESSION_SWEEP_MS,
  authzFollowMs = AUTHZ_FOLLOW_MS,
  recheckAllMs = AUTHZ_RECHECK_ALL_MS,
  onError = () => {},
}: StreamGuardDeps) {
  const held = new Map<EventStream, Holder>();
  let sessions = 0;
  let sweeper: NodeJS.Timeout | undefined;
  /** Orgs an `authz` message named, until when (real time) their streams are checked each sweep. */
  const following = new Map<string, number>();
  let lastFullCheck = Date.now();

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

  /**
   * Ends the streams (of one org, or all) whose principal no longer holds the route's permission,
   * as the authz index answers now: synchronously when the org's index is warm (one lookup per
   * principal and permission, however many streams share them), else after loading it.
   */
  function recheck(orgId: string | undefined): void {
    const answers = new Map<string, boolean | null>();
    for (const [stream, h] of [...held]) {
      if (orgId !== undefined && h.orgId !== orgId) continue;
      const id = `${h.orgId} ${h.principal.id} ${h.permission}`;
      let allowed = answers.get(id);
      if (allowed === undefined) {
        allowed = authz.checkSync(h.principal, h.permission)?.allowed ?? null;
        answers.set(id, allowed);
      }
      if (allowed === false) stream.close();
      else if (allowed === null) {
        // The org's index is cold here: load it, then decide for this stream.
        authz.check(h.principal, h.permission).then(
          (r) => {
            if (!r.allowed && held.has(stream)) stream.close();
          },
          (error: unknown) => onError(error, 'flag stream permission recheck'),
        );
      }
    }
  }

  // `<instance> <org>`: roles, assignments or grants of the org changed (a deny grant, a role
  // unassigned or redefined). The instance that changed them has patched its index already;
  // others rebuild theirs in the background, so the org is followed for a while (`sweep`).
  bus.subscribe(AUTHZ_TOPIC, (message) => {
    const orgId = message.split(' ')[1];
    if (orgId === undefined || held.size === 0) return;
    following.set(orgId, Date.now() + authzFollowMs);
    recheck(orgId);
  });

  function sweep(): void {
    if (sessionRevoked !== undefined && sessions > 0)
      closeWhere((h) => h.sessionId !== undefined && sessionRevoked(h.sessionId));
    const now = Date.now();
    if (now - lastFullCheck >= recheckAllMs) {
      lastFullCheck = now;
      following.clear();
      recheck(undefined);
      return;
    }
    for (const [orgId, until] of [...following]) {
      if (until < now) following.delete(orgId);
      recheck(orgId);
    }
  }

  function release(stream: EventStream): void {
    const holder = held.get(stream);
    if (holder === undefined) return;
    held.delete(stream);
    clearTimeout(holder.lifetime);
    if (holder.sessionId !== undefined) sessions -= 1;
    if (held.size === 0) {
      clearInterval(sweeper);
      sweeper = undefined;
      following.clear();
    }
  }

  return {
    /**
     * Watches an open stream until it closes; `expiresAt` is its key's expiry (null: none) and
     * `permission` what the route required (checked again on authz changes). Call `release` from
     * the stream's `onClose`. A session already revoked ends the stream at once.
     */
    hold(stream: EventStream, principal: Principal, expiresAt: Date | null, permission = 'flags:read'): void {
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
        principal,
        permission,
        keyId: principal.keyId,
        ownerId: principal.ownerId,
        sessionId,
        lifetime,
      });
      if (sweeper === undefined) {
        lastFullCheck = Date.now();
        sweeper = setInterval(sweep, sweepMs);
        sweeper.unref();
      }
      if (sessionId === undefined || sessionRevoked === undefined) return;
      sessions += 1;
      // Revoked between authentication and now (the route awaited).
      if (sessionRevoked(sessionId)) stream.close();
    },
    release,
    /** Streams held (tests). */
    size: () => held.size,
  };
}

export type StreamGuard = ReturnType<typeof createStreamGuard>;
