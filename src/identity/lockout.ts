// Failed proofs of an account's secrets count alike wherever they happen: a login's password or
// 2FA code, the current password of a password change, the password or code that turns 2FA off,
// the password that joins an existing account to an org by invitation. Each counts against the
// account (lockout, kept in the database so it holds across instances) and against the client's
// IP (the per-IP limiter): a stolen access token or an invitation is no unlimited password oracle.
import { eq, sql } from 'drizzle-orm';
import type { AuditEventInput } from '../audit/service.ts';
import type { StewardError } from '../http/errors.ts';
import {
  displayName,
  type IdentityCore,
  lockedError,
  type Origin,
  rateLimitedError,
  SYSTEM_ACTOR,
} from './core.ts';
import type { User } from './queries.ts';
import { users } from './schema.ts';

/**
 * The columns a proof that held resets, as a successful login does (login.ts in the statement that
 * opens the session; the others in the transaction of their change).
 */
export const FAILURES_RESET = { failedLoginCount: 0, lockCount: 0, lockedUntil: null } as const;

/** Where a failure happened, recorded as `details.during` (absent for logins). */
export type ProofStep = 'password_change' | 'totp_disable' | 'invitation_accept';

/** What `fail` and `assertNotLocked` record: the user and the org whose audit log gets the event. */
export interface Attempt {
  user: User;
  orgId: string;
  origin: Origin;
  during?: ProofStep | undefined;
}

export function createLockout(core: IdentityCore) {
  const { db, audit, limiter, clock, settings } = core;

  const failed = (a: Attempt, reason: string): AuditEventInput => ({
    orgId: a.orgId,
    actor: { type: 'user', id: a.user.id, name: displayName(a.user) },
    action: 'user.login_failed',
    resource: { type: 'user', id: a.user.id },
    context: a.origin,
    details: { reason, ...(a.during ? { during: a.during } : {}) },
    success: false,
  });

  /** Refuses (429 with retry-after) an IP with too many recent failures. */
  async function assertIpAllowed(ip: string): Promise<void> {
    const wait = await limiter.blockedFor(ip);
    if (wait > 0) throw rateLimitedError(wait);
  }

  /** Refuses (423 with locked_until) a locked account, auditing the attempt. */
  async function assertNotLocked(a: Attempt): Promise<void> {
    const until = a.user.lockedUntil;
    if (!until || until <= clock()) return;
    await audit.record(db.db, failed(a, 'locked'));
    throw lockedError(until);
  }

  /**
   * Counts a failed password or 2FA code against the account and the IP; the Nth in a row locks
   * the account for LOGIN_LOCKOUT_MINUTES × 2^(locks so far). Returns the error to answer with:
   * `error`, or `account_locked` when this failure locked the account.
   */
  async function fail(a: Attempt, reason: string, error: StewardError): Promise<StewardError> {
    const now = clock();
    let lockedUntil: Date | null = null;
    await db.db.transaction(async (tx) => {
      const [row] = await tx
        .update(users)
        .set({ failedLoginCount: sql`${users.failedLoginCount} + 1` })
        .where(eq(users.id, a.user.id))
        .returning({ failed: users.failedLoginCount, lockCount: users.lockCount });
      const events = [failed(a, reason)];
      if (row && row.failed >= settings.maxFailures) {
        const lockCount = row.lockCount + 1;
        const minutes = settings.lockoutMinutes * 2 ** Math.min(lockCount - 1, 16);
        lockedUntil = new Date(now.getTime() + minutes * 60_000);
        await tx
          .update(users)
          .set({ failedLoginCount: 0, lockCount, lockedUntil })
          .where(eq(users.id, a.user.id));
        events.push({
          orgId: a.orgId,
          actor: SYSTEM_ACTOR,
          action: 'user.locked',
          resource: { type: 'user', id: a.user.id },
          context: a.origin,
          details: { locked_until: lockedUntil.toISOString(), lock_count: lockCount, failures: row.failed },
        });
      }
      await audit.record(tx, events);
    });
    await limiter.recordFailure(a.origin.ip);
    if (lockedUntil !== null) {
      await core.userChanged(a.user.id); // /v1/me shows locked_until
      return lockedError(lockedUntil);
    }
    return error;
  }

  return { assertIpAllowed, assertNotLocked, fail };
}

export type Lockout = ReturnType<typeof createLockout>;
