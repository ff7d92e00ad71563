// Logins: password, then (with 2FA) a TOTP or recovery code; lockout and the per-IP limiter;
// opening the session.
import { and, eq, isNull, lt, or, sql } from 'drizzle-orm';
import { open } from '../crypto/envelope.ts';
import type { DbOrTx } from '../db/client.ts';
import { isId, newId } from '../db/ids.ts';
import { prepared, runPrepared } from '../db/prepared.ts';
import {
  displayName,
  type IdentityCore,
  type LoginResult,
  lockedError,
  type Origin,
  type TokenPair,
  totpAad,
} from './core.ts';
import { identityErrors } from './errors.ts';
import type { AccountSlot, IpReservation } from './limiter.ts';
import { type Attempt, createLockout } from './lockout.ts';
import { hashPassword, verifyDummy, verifyPassword } from './password.ts';
import {
  accountStanding,
  membership,
  type User,
  userByEmail,
  userByEmailWithHomeOrg,
  userById,
} from './queries.ts';
import { matchRecoveryCode } from './recovery-codes.ts';
import { mfaChallenges, users } from './schema.ts';
import { newMfaToken, sha256Hex } from './tokens.ts';
import { verifyTotp } from './totp.ts';

const MFA_MAX_ATTEMPTS = 5;

/**
 * Why the session's transaction opened none (or the password step issued no 2FA challenge): the
 * account is no longer active there, it is locked, or its password changed after the one proved.
 */
type Refusal =
  | { refused: 'inactive'; listed: boolean }
  | { refused: 'locked'; lockedUntil: Date }
  | { refused: 'password_changed' };

// $1 session id, $2 user, $3 org, $4 access jti, $5 refresh hash, $6 ip, $7 user agent,
// $8 device name, $9 now, $10 expiry.
const OPEN_SESSION = prepared(
  'login_open_session',
  'with opened as (insert into sessions (id, user_id, org_id, access_jti, refresh_hash, refresh_generation, ' +
    'ip, user_agent, device_name, created_at, last_activity_at, expires_at) ' +
    'values ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9::timestamptz, $9::timestamptz, $10::timestamptz)) ' +
    'update users set last_login_at = $9::timestamptz, failed_login_count = 0, lock_count = 0, locked_until = null ' +
    'where id = $2',
);

/** Login steps and the session a successful one opens. */
export function createLogin(core: IdentityCore) {
  const { db, keyring, audit, authz, tenancy, clock, settings, refreshTokens } = core;
  const lockout = createLockout(core);

  /** Opens a session inside `tx`: the row, the user's login bookkeeping and the audit event. */
  async function openSession(
    tx: DbOrTx,
    user: User,
    orgId: string,
    origin: Origin,
    method: string,
    deviceName: string | undefined,
    roles: readonly string[],
  ): Promise<TokenPair> {
    const now = clock();
    const sessionId = newId('ses');
    const refresh = refreshTokens.issue(sessionId, 0);
    const access = await core.signFor(user.id, orgId, sessionId, roles);
    // One statement for the session row and the user's login bookkeeping, straight to the driver
    // (inside `tx`): logins are a hot path and Drizzle's builder costs more than the statement.
    await runPrepared(tx, OPEN_SESSION, [
      sessionId,
      user.id,
      orgId,
      access.jti,
      refresh.hash,
      origin.ip,
      origin.userAgent ?? null,
      deviceName ?? null,
      now.toISOString(),
      new Date(now.getTime() + settings.sessionTtlDays * 86_400_000).toISOString(),
    ]);
    await audit.record(tx, {
      orgId,
      actor: { type: 'user', id: user.id, name: displayName(user) },
      action: 'user.login',
      resource: { type: 'session', id: sessionId },
      context: { ...origin, sessionId },
      details: { method, ...(deviceName ? { device_name: deviceName } : {}) },
    });
    return {
      access_token: access.token,
      refresh_token: refresh.token,
      token_type: 'Bearer',
      expires_in: settings.accessTokenTtlSeconds,
    };
  }

  /** The user and the org the login lands in: the named one (if a member), else the oldest active membership. */
  async function resolveLogin(email: string, org: string | undefined) {
    if (org === undefined) {
      const found = await userByEmailWithHomeOrg(db.db, email);
      const homeOrgId = found?.homeOrgId;
      return { user: found?.user, org: null, member: homeOrgId ? { orgId: homeOrgId } : undefined };
    }
    const user = await userByEmail(db.db, email);
    const found = isId('org', org)
      ? await tenancy.getOrg(org).catch(() => null)
      : await tenancy.findOrgBySlug(org);
    if (!found || !user) return { user, org: found, member: undefined };
    const m = await membership(db.db, found.id, user.id);
    return { user, org: found, member: m?.active ? m : undefined, listed: m !== undefined };
  }

  /**
   * Refuses a login to an account that is not, or no longer, active in the org (the user, or their
   * membership): as an unknown email, counted against the IP. Only the org's own users are named in
   * its log (`listed`: they have a membership row, active or not). Someone else's account looks
   * exactly like an unknown email there: the named org's admin reads this log and must not learn
   * who has an account elsewhere. Nothing is recorded for that account's own orgs either: no
   * password was tried against it. Both steps of a login refuse through here.
   */
  function refuseInactive(
    user: User | undefined,
    orgId: string | undefined,
    listed: boolean,
    origin: Origin,
    ip: IpReservation,
  ): never {
    ip.fail();
    if (orgId !== undefined) {
      const known = user !== undefined && listed;
      // Written after the answer, as a wrong password's count is: the same time either way.
      void core.later(
        audit.record(db.db, {
          orgId,
          actor: known
            ? { type: 'user', id: user.id, name: displayName(user) }
            : { type: 'user', name: null },
          action: 'user.login_failed',
          context: origin,
          details: { reason: known ? 'inactive' : 'unknown_user' },
          success: false,
        }),
        'identity: auditing a refused login',
      );
    }
    throw identityErrors.invalid_credentials();
  }

  /**
   * Inside the transaction that opens a session (or issues a 2FA challenge), the account once more,
   * with the user's and the membership's rows held: a deactivation, a lock or a password change
   * committed since the checks before the password (or the code) is seen here, and one still to
   * come waits for this commit and then revokes the session it opens (or ends the challenge). The
   * password must still be the one proved: not changed after `since` — the `password_changed_at`
   * of the row whose hash the password step verified, or the challenge's creation for the code
   * step. A login that read the old hash before a password change committed opened a live
   * session after it. Both steps of a login go through here.
   */
  async function standingRefusal(
    tx: DbOrTx,
    orgId: string,
    userId: string,
    since: Date | null,
  ): Promise<Refusal | undefined> {
    const standing = await accountStanding(tx, orgId, userId, since);
    if (!standing?.active) return { refused: 'inactive', listed: standing !== undefined };
    if (standing.lockedUntil && standing.lockedUntil > clock()) {
      return { refused: 'locked', lockedUntil: standing.lockedUntil };
    }
    if (standing.passwordChanged) return { refused: 'password_changed' };
    return undefined;
  }

  /**
   * Answers a refusal found in the session's transaction as the checks before it answer; a
   * password changed meanwhile as the step answers a stale proof (`passwordChanged`).
   */
  async function refuse(
    refusal: Refusal,
    attempt: Attempt,
    passwordChanged: () => Promise<never>,
  ): Promise<never> {
    const { user, orgId, origin } = attempt;
    if (refusal.refused === 'inactive')
      return refuseInactive(user, orgId, refusal.listed, origin, attempt.ip);
    if (refusal.refused === 'password_changed') return passwordChanged();
    await lockout.assertNotLocked({ ...attempt, user: { ...user, lockedUntil: refusal.lockedUntil } });
    throw lockedError(refusal.lockedUntil);
  }

  /**
   * Step one of a login: password. Unknown user and wrong password answer alike, in the same time.
   * A point of the IP's failure budget is taken first (429 when none is left: nothing about any
   * account is read, so there is nothing to hide and no Argon2 to spend), kept if the login fails.
   */
  function login(
    input: { email: string; password: string; org?: string | undefined; device_name?: string | undefined },
    origin: Origin,
  ): Promise<LoginResult> {
    return lockout.withIpPoint(origin.ip, (ip) =>
      lockout.withAccountSlot(input.email, (slot) => passwordStep(input, origin, ip, slot)),
    );
  }

  async function passwordStep(
    input: { email: string; password: string; org?: string | undefined; device_name?: string | undefined },
    origin: Origin,
    ip: IpReservation,
    slot: AccountSlot,
  ): Promise<LoginResult> {
    // Read after the slot was taken: failures written before it are in the row, later ones are
    // proofs in flight, counted in `slot`.
    const { user, org, member, listed } = await resolveLogin(input.email, input.org);
    if (!user?.active || !member) {
      // As for an account with no failures: the same refusals, whether the email exists or not.
      await lockout.assertRoom(slot, 0);
      await verifyDummy();
      return refuseInactive(user, org?.id, listed === true, origin, ip);
    }
    const now = clock();
    const attempt: Attempt = { user, orgId: member.orgId, origin, ip, slot };
    if (user.lockedUntil && user.lockedUntil > now) {
      await verifyDummy();
      await lockout.assertNotLocked(attempt);
    }
    await lockout.assertRoom(slot, user.failedLoginCount, attempt);
    const check = await verifyPassword(user.passwordHash, input.password);
    // A previous attempt's failure still being written (it answered first): its outcome, not the
    // row read before it, judges this one. Awaited after the Argon2, which hides the wait.
    const prior = lockout.pendingFor(user.id);
    const known = (prior && (await prior)) ?? {
      failed: user.failedLoginCount,
      lockedUntil: user.lockedUntil,
    };
    if (known.lockedUntil && known.lockedUntil > clock()) {
      await lockout.assertNotLocked({ ...attempt, user: { ...user, lockedUntil: known.lockedUntil } });
    }
    // A wrong password, or the right one for a hash replaced since it was read (found where the
    // session opens): the failure that locks answers 423 once its lock is written; any other
    // answers as an unknown email does, in the same time (the count is written after the answer).
    const wrongPassword = async (): Promise<never> => {
      if (known.failed + 1 >= settings.maxFailures) {
        throw await lockout.fail(attempt, 'wrong_password', identityErrors.invalid_credentials());
      }
      lockout.failAfterAnswer(attempt, 'wrong_password');
      throw identityErrors.invalid_credentials();
    };
    if (!check.ok) return wrongPassword();
    // The password proved is the one set at this time: the session (or the challenge) opens only if
    // it has not changed since.
    const since = user.passwordChangedAt;
    if (check.needsRehash) {
      // Over the hash verified only: a password changed meanwhile must not be put back.
      await db.db
        .update(users)
        .set({ passwordHash: await hashPassword(input.password) })
        .where(and(eq(users.id, user.id), eq(users.passwordHash, user.passwordHash)));
    }
    if (user.totpEnabled) {
      const challenge = newMfaToken();
      const refused = await db.db.transaction(async (tx) => {
        const refusal = await standingRefusal(tx, member.orgId, user.id, since);
        if (refusal !== undefined) return refusal;
        await tx.insert(mfaChallenges).values({
          tokenHash: challenge.hash,
          userId: user.id,
          orgId: member.orgId,
          createdAt: now,
          expiresAt: new Date(now.getTime() + settings.mfaTokenTtlSeconds * 1000),
        });
        return undefined;
      });
      if (refused !== undefined) return refuse(refused, attempt, wrongPassword);
      return { mfa_required: true, mfa_token: challenge.token };
    }
    const roles = await authz.rolesOf(member.orgId, user.id);
    const opened = await db.db.transaction(
      async (tx) =>
        (await standingRefusal(tx, member.orgId, user.id, since)) ??
        openSession(tx, user, member.orgId, origin, 'password', input.device_name, roles),
    );
    if ('refused' in opened) return refuse(opened, attempt, wrongPassword);
    await core.userChanged(user.id); // last_login_at, and any lock cleared
    return opened;
  }

  /**
   * Step two: a TOTP code (not replayable) or a recovery code (single use). The account is checked
   * again as step one checks it (user and membership of the challenge's org active, not locked),
   * and refused as step one refuses it: an admin may have deactivated the user or their membership,
   * or failures elsewhere locked the account, since the password was right. These checks come
   * before the challenge's own state: a deactivation also ends the org's pending challenges, and
   * the caller is then told what a fresh login would tell them. The IP's point is taken first, as
   * in step one.
   */
  function loginMfa(
    input: { mfa_token: string; code: string; device_name?: string | undefined },
    origin: Origin,
  ): Promise<TokenPair> {
    return lockout.withIpPoint(origin.ip, (ip) => codeStep(input, origin, ip));
  }

  async function codeStep(
    input: { mfa_token: string; code: string; device_name?: string | undefined },
    origin: Origin,
    ip: IpReservation,
  ): Promise<TokenPair> {
    const tokenHash = sha256Hex(input.mfa_token);
    const [challenge] = await db.db
      .select()
      .from(mfaChallenges)
      .where(eq(mfaChallenges.tokenHash, tokenHash));
    if (!challenge) throw identityErrors.mfa_token_invalid();
    const user = await userById(db.db, challenge.userId);
    const m = user ? await membership(db.db, challenge.orgId, user.id) : undefined;
    if (!user?.active || !m?.active)
      return refuseInactive(user, challenge.orgId, m !== undefined, origin, ip);
    // A place among the account's proofs in flight, and its lock and failures read again: a burst
    // of codes at once is bounded as a burst of passwords is.
    return lockout.withAccountProof({ user, orgId: challenge.orgId, origin, ip }, (attempt) =>
      checkCode(input, origin, tokenHash, challenge, user, attempt),
    );
  }

  async function checkCode(
    input: { mfa_token: string; code: string; device_name?: string | undefined },
    origin: Origin,
    tokenHash: string,
    challenge: typeof mfaChallenges.$inferSelect,
    user: User,
    attempt: Attempt,
  ): Promise<TokenPair> {
    const now = clock();
    if (challenge.usedAt) throw identityErrors.mfa_token_invalid();
    if (challenge.expiresAt <= now) throw identityErrors.mfa_token_expired();
    if (!user.totpEnabled || !user.totpSecret) throw identityErrors.mfa_token_invalid();
    // A challenge issued before the password last changed is void (account.ts also ends pending
    // ones in the change's transaction; the step one transaction refuses to issue one for a
    // password changed since it was read). The same rule is checked again where the session opens.
    if (user.passwordChangedAt && challenge.createdAt < user.passwordChangedAt) {
      throw identityErrors.mfa_token_invalid();
    }

    const code = input.code.trim();
    let method: 'password+totp' | 'password+recovery_code';
    let totpStep: number | undefined;
    let remainingCodes: string[] | undefined;
    if (/^\d{3}[\s-]?\d{3}$/.test(code)) {
      method = 'password+totp';
      const secret = open(keyring, user.totpSecret, totpAad(user.id)).toString('utf8');
      const result = verifyTotp(secret, code, { nowMs: now.getTime(), lastUsedStep: user.totpLastStep });
      if (!result.ok) {
        await spendAttempt(tokenHash);
        throw await lockout.fail(
          attempt,
          result.reason === 'replayed' ? 'totp_replayed' : 'wrong_totp',
          result.reason === 'replayed'
            ? identityErrors.mfa_code_replayed()
            : identityErrors.mfa_code_invalid(),
        );
      }
      totpStep = result.step;
    } else {
      method = 'password+recovery_code';
      const index = matchRecoveryCode(code, user.recoveryCodeHashes);
      if (index < 0) {
        await spendAttempt(tokenHash);
        throw await lockout.fail(attempt, 'wrong_recovery_code', identityErrors.mfa_code_invalid());
      }
      remainingCodes = user.recoveryCodeHashes.filter((_, i) => i !== index);
    }

    const roles = await authz.rolesOf(challenge.orgId, user.id);
    const opened = await db.db.transaction(async (tx) => {
      const refusal = await standingRefusal(tx, challenge.orgId, user.id, challenge.createdAt);
      if (refusal !== undefined) return refusal;
      const used = await tx
        .update(mfaChallenges)
        .set({ usedAt: now })
        .where(and(eq(mfaChallenges.tokenHash, tokenHash), isNull(mfaChallenges.usedAt)))
        .returning({ tokenHash: mfaChallenges.tokenHash });
      if (used.length === 0) throw identityErrors.mfa_token_invalid();
      if (totpStep !== undefined) {
        // Conditional on the step: two requests racing with one code cannot both pass.
        const stepped = await tx
          .update(users)
          .set({ totpLastStep: totpStep })
          .where(and(eq(users.id, user.id), or(isNull(users.totpLastStep), lt(users.totpLastStep, totpStep))))
          .returning({ id: users.id });
        if (stepped.length === 0) throw identityErrors.mfa_code_replayed();
      } else if (remainingCodes !== undefined) {
        const spent = await tx
          .update(users)
          .set({ recoveryCodeHashes: remainingCodes })
          .where(
            and(
              eq(users.id, user.id),
              sql`${users.recoveryCodeHashes} = ${JSON.stringify(user.recoveryCodeHashes)}::jsonb`,
            ),
          )
          .returning({ id: users.id });
        if (spent.length === 0) throw identityErrors.mfa_code_invalid();
        await audit.record(tx, {
          orgId: challenge.orgId,
          actor: { type: 'user', id: user.id, name: displayName(user) },
          action: 'user.recovery_code_used',
          resource: { type: 'user', id: user.id },
          context: origin,
          details: { remaining: remainingCodes.length },
        });
      }
      return openSession(tx, user, challenge.orgId, origin, method, input.device_name, roles);
    });
    if ('refused' in opened) {
      return refuse(opened, attempt, async () => {
        throw identityErrors.mfa_token_invalid();
      });
    }
    await core.userChanged(user.id); // last_login_at, and any lock cleared
    return opened;
  }

  /**
   * Counts a wrong code against the challenge; the fifth uses it up. Never clears `used_at`: a
   * wrong code racing the right one (read before that login committed, written after) set it back
   * to null, and the spent `mfa_token` opened further sessions.
   */
  async function spendAttempt(tokenHash: string): Promise<void> {
    await db.db
      .update(mfaChallenges)
      .set({
        attempts: sql`${mfaChallenges.attempts} + 1`,
        usedAt: sql`case when ${mfaChallenges.attempts} + 1 >= ${MFA_MAX_ATTEMPTS} then coalesce(${mfaChallenges.usedAt}, now()) else ${mfaChallenges.usedAt} end`,
      })
      .where(eq(mfaChallenges.tokenHash, tokenHash));
  }

  return { login, loginMfa };
}
