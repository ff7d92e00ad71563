// Failed proofs of an account's secrets count alike wherever they happen: a login's password or
// 2FA code, the current password of a password change, the password or code that turns 2FA off,
// the password that joins an existing account to an org by invitation. Each counts against the
// account (lockout, kept in the database so it holds across instances) and against the client's
// IP (the per-IP limiter): a stolen access token or an invitation is no unlimited password oracle.
import { createHash } from 'node:crypto';
import { and, eq, isNull, or, sql } from 'drizzle-orm';
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
import { type AccountSlot, BUSY_RETRY_MS, type IpReservation } from './limiter.ts';
import type { User } from './queries.ts';
import { users } from './schema.ts';

/**
 * The columns a proof that held resets, as a successful login does (login.ts in the statement that
 * opens the session; the others in the transaction of their change).
 */
export const FAILURES_RESET = { failedLoginCount: 0, lockCount: 0, lockedUntil: null } as const;

/**
 * The longest a lock lasts, however many came before it (Keycloak's `maxFailureWaitSeconds`): the
 * doubling would otherwise reach years (15 min × 2^16). A constant: config.ts belongs to no domain.
 */
export const MAX_LOCK_MINUTES = 24 * 60;

/** An account's failure count and lock, as its latest recorded failure left them. */
export interface LockState {
  failed: number;
  lockedUntil: Date | null;
}

/** Where a failure happened, recorded as `details.during` (absent for logins). */
export type ProofStep = 'password_change' | 'totp_enroll' | 'totp_disable' | 'invitation_accept';

/**
 * What `fail` and `assertNotLocked` record: the user and the org whose audit log gets the event;
 * `ip`, the attempt's point of its IP's budget (`withIpPoint`), kept when it fails.
 */
export interface Attempt {
  user: User;
  orgId: string;
  origin: Origin;
  ip: IpReservation;
  during?: ProofStep | undefined;
  /** The attempt's place among the account's proofs in flight (`withAccountSlot`). */
  slot?: AccountSlot | undefined;
}

/** The key an account's proofs in flight are counted under: its email, hashed (it goes to Redis). */
const accountKey = (email: string) =>
  createHash('sha256').update(email.trim().toLowerCase()).digest('base64url').slice(0, 32);

/** 429 for an account whose failure budget is taken by proofs still in flight. */
function accountBusyError() {
  return rateLimitedError(BUSY_RETRY_MS, true, 'account');
}

export function createLockout(core: IdentityCore) {
  const { db, audit, limiter, clock, settings } = core;

  const failedEvent = (a: Attempt, reason: string, extra: Record<string, unknown> = {}): AuditEventInput => ({
    orgId: a.orgId,
    actor: { type: 'user', id: a.user.id, name: displayName(a.user) },
    action: 'user.login_failed',
    resource: { type: 'user', id: a.user.id },
    context: a.origin,
    details: { reason, ...(a.during ? { during: a.during } : {}), ...extra },
    success: false,
  });

  /**
   * Runs a proof (a password or a code checked) holding one point of its IP's failure budget,
   * taken before anything is checked — 429 with retry-after when none is left — and given back
   * when the proof ends unless it failed (`ip.fail()`, by `fail`, `failAfterAnswer` or the
   * caller). Checking the budget first and counting the failure after the Argon2 let every
   * request already in flight through: 200 at once from one IP made 190 guesses for a limit of 10.
   */
  async function withIpPoint<T>(ip: string, proof: (point: IpReservation) => Promise<T>): Promise<T> {
    const point = await limiter.reserve(ip);
    if ('waitMs' in point) throw rateLimitedError(point.waitMs, point.busy);
    try {
      return await proof(point);
    } finally {
      await point.release();
    }
  }

  /**
   * Runs a proof of the account known by `email` holding a place among its proofs in flight (on
   * every instance, with Redis), left when the proof ends — or, for a failure written after its
   * answer, once written (`failAfterAnswer`). The proof calls `assertRoom` once it has read the
   * account: it may check a secret only while the recorded failures plus the proofs in flight,
   * itself included, stay within LOGIN_MAX_FAILURES. Before session 10 only the IP was held:
   * 40 logins at once checked 40 passwords against a limit of 5, and on PGlite, once the lock
   * landed, only the right password answered 423 while the wrong ones answered 401.
   */
  async function withAccountSlot<T>(email: string, proof: (slot: AccountSlot) => Promise<T>): Promise<T> {
    const slot = await limiter.enterAccount(accountKey(email));
    try {
      return await proof(slot);
    } finally {
      await slot.leave();
    }
  }

  /**
   * Refuses (429, retry in a moment, audited when the account exists) a proof that would take
   * the account past its failure budget, counting the proofs in flight as failures to come.
   * `failed`: the account's recorded failures, read after the slot was taken.
   */
  async function assertRoom(slot: AccountSlot, failed: number, a?: Attempt): Promise<void> {
    if (failed + slot.count <= settings.maxFailures) return;
    if (a) await audit.record(db.db, failedEvent(a, 'attempts_in_flight', { counted: false }));
    throw accountBusyError();
  }

  /**
   * A proof of an account already read (a password change, turning 2FA off, joining by
   * invitation, a login's second step): a place among its proofs in flight, then its lock and
   * failures read again, then `proof`.
   */
  async function withAccountProof<T>(a: Attempt, proof: (a: Attempt) => Promise<T>): Promise<T> {
    return withAccountSlot(a.user.email, async (slot) => {
      const [now] = await db.db
        .select({ failed: users.failedLoginCount, lockedUntil: users.lockedUntil })
        .from(users)
        .where(eq(users.id, a.user.id));
      const attempt = { ...a, slot, user: { ...a.user, lockedUntil: now?.lockedUntil ?? null } };
      await assertNotLocked(attempt);
      await assertRoom(slot, now?.failed ?? 0, attempt);
      return proof(attempt);
    });
  }

  /** Refuses (423 with locked_until) a locked account, auditing the attempt. */
  async function assertNotLocked(a: Attempt): Promise<void> {
    const until = a.user.lockedUntil;
    if (!until || until <= clock()) return;
    await audit.record(db.db, failedEvent(a, 'locked'));
    throw lockedError(until);
  }

  /**
   * Counts one failure against the account, in one conditional statement: a failure counts only
   * while no lock is in force (`locked_until` null or past), and the one that brings the count to
   * LOGIN_MAX_FAILURES locks in that same statement, for LOGIN_LOCKOUT_MINUTES × 2^(locks so far),
   * at most MAX_LOCK_MINUTES. Concurrent failures queue on the row and each sees the last one's
   * outcome, so N failures at once lock once; those that arrive during the lock (their Argon2 ran
   * on a row read before it) are audited but escalate nothing. Returns the account's state after.
   */
  async function record(a: Attempt, reason: string): Promise<LockState> {
    const now = clock();
    const at = sql`${now.toISOString()}::timestamptz`;
    const reaches = sql`${users.failedLoginCount} + 1 >= ${settings.maxFailures}::int`;
    const minutes = sql`least(${settings.lockoutMinutes}::int * (1 << least(${users.lockCount}, 16)), ${MAX_LOCK_MINUTES}::int)`;
    const { state, locked } = await db.db.transaction(async (tx) => {
      const [row] = await tx
        .update(users)
        .set({
          failedLoginCount: sql`case when ${reaches} then 0 else ${users.failedLoginCount} + 1 end`,
          lockCount: sql`case when ${reaches} then ${users.lockCount} + 1 else ${users.lockCount} end`,
          lockedUntil: sql`case when ${reaches} then ${at} + ${minutes} * interval '1 minute' else ${users.lockedUntil} end`,
        })
        .where(
          and(eq(users.id, a.user.id), or(isNull(users.lockedUntil), sql`${users.lockedUntil} <= ${at}`)),
        )
        .returning({
          failed: users.failedLoginCount,
          lockCount: users.lockCount,
          lockedUntil: users.lockedUntil,
        });
      if (!row) {
        // Locked since this attempt read the account: recorded, not counted.
        const [current] = await tx
          .select({ failed: users.failedLoginCount, lockedUntil: users.lockedUntil })
          .from(users)
          .where(eq(users.id, a.user.id));
        await audit.record(tx, failedEvent(a, reason, { counted: false }));
        return { state: current ?? { failed: 0, lockedUntil: null }, locked: false };
      }
      const events = [failedEvent(a, reason)];
      // The WHERE let through only a row with no lock in force: one in force now is this statement's.
      const locked = row.lockedUntil !== null && row.lockedUntil > now;
      if (locked && row.lockedUntil) {
        events.push({
          orgId: a.orgId,
          actor: SYSTEM_ACTOR,
          action: 'user.locked',
          resource: { type: 'user', id: a.user.id },
          context: a.origin,
          details: {
            locked_until: row.lockedUntil.toISOString(),
            lock_count: row.lockCount,
            failures: settings.maxFailures,
          },
        });
      }
      await audit.record(tx, events);
      return { state: { failed: row.failed, lockedUntil: row.lockedUntil }, locked };
    });
    if (locked) await core.userChanged(a.user.id); // /v1/me shows locked_until
    return state;
  }

  /** The error a failure answers with: `error`, or `account_locked` while a lock is in force. */
  function answer(state: LockState | undefined, error: StewardError): StewardError {
    return state?.lockedUntil && state.lockedUntil > clock() ? lockedError(state.lockedUntil) : error;
  }

  /**
   * Counts a failed password or 2FA code against the account (`record`) and the IP. Returns the
   * error to answer with: `error`, or `account_locked` when the account is now locked.
   */
  async function fail(a: Attempt, reason: string, error: StewardError): Promise<StewardError> {
    a.ip.fail();
    return answer(await record(a, reason), error);
  }

  // Logins' failures being written after their answer, by user: the next attempt on this instance
  // reads the outcome from here (after its own Argon2, which hides the wait) instead of its stale row.
  const pending = new Map<string, Promise<LockState | undefined>>();

  /**
   * A login's wrong password that will not lock (by the account's state as the attempt knows it):
   * counted against the IP (its point kept), against the account after the answer (`record`, tracked by
   * `core.later`), so that it answers in the time an unknown email does. The count and the lock
   * are decided by `record`'s statement whatever the order; `pendingFor` lets the next attempt
   * see them.
   */
  function failAfterAnswer(a: Attempt, reason: string): void {
    a.ip.fail();
    const userId = a.user.id;
    const work = core.later(record(a, reason), 'identity: recording a failed login');
    // Its place among the account's proofs in flight is left once the failure is written.
    a.slot?.holdUntil(work);
    pending.set(userId, work);
    void work.then(() => {
      if (pending.get(userId) === work) pending.delete(userId);
    });
  }

  /** The account's state after its latest failure still being written on this instance, if any. */
  function pendingFor(userId: string): Promise<LockState | undefined> | undefined {
    return pending.get(userId);
  }

  return {
    withIpPoint,
    withAccountSlot,
    assertRoom,
    withAccountProof,
    assertNotLocked,
    fail,
    failAfterAnswer,
    pendingFor,
  };
}

export type Lockout = ReturnType<typeof createLockout>;
