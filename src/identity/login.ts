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
  rateLimitedError,
  type TokenPair,
  totpAad,
} from './core.ts';
import { identityErrors } from './errors.ts';
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

/** Why the session's transaction opened none: the account is no longer active there, or locked. */
type Refusal = { refused: 'inactive'; listed: boolean } | { refused: 'locked'; lockedUntil: Date };

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
  const { db, keyring, audit, authz, tenancy, limiter, clock, settings, refreshTokens } = core;
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
  async function refuseInactive(
    user: User | undefined,
    orgId: string | undefined,
    listed: boolean,
    origin: Origin,
  ): Promise<never> {
    await limiter.recordFailure(origin.ip);
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
   * Inside the transaction that opens a session, the account once more, with the user's and the
   * membership's rows held: a deactivation or a lock committed since the checks before the
   * password (or the code) is seen here, and one still to come waits for this commit and then
   * revokes the session it opens. Both steps of a login go through here.
   */
  async function standingRefusal(tx: DbOrTx, orgId: string, userId: string): Promise<Refusal | undefined> {
    const standing = await accountStanding(tx, orgId, userId);
    if (!standing?.active) return { refused: 'inactive', listed: standing !== undefined };
    if (standing.lockedUntil && standing.lockedUntil > clock()) {
      return { refused: 'locked', lockedUntil: standing.lockedUntil };
    }
    return undefined;
  }

  /** Answers a refusal found in the session's transaction as the checks before it answer. */
  async function refuse(refusal: Refusal, attempt: Attempt): Promise<never> {
    const { user, orgId, origin } = attempt;
    if (refusal.refused === 'inactive') return refuseInactive(user, orgId, refusal.listed, origin);
    await lockout.assertNotLocked({ ...attempt, user: { ...user, lockedUntil: refusal.lockedUntil } });
    throw lockedError(refusal.lockedUntil);
  }

  /** Step one of a login: password. Unknown user and wrong password answer alike, in the same time. */
  async function login(
    input: { email: string; password: string; org?: string | undefined; device_name?: string | undefined },
    origin: Origin,
  ): Promise<LoginResult> {
    const wait = await limiter.blockedFor(origin.ip);
    if (wait > 0) {
      await verifyDummy();
      throw rateLimitedError(wait);
    }
    const { user, org, member, listed } = await resolveLogin(input.email, input.org);
    if (!user?.active || !member) {
      await verifyDummy();
      return refuseInactive(user, org?.id, listed === true, origin);
    }
    const now = clock();
    const attempt = { user, orgId: member.orgId, origin };
    if (user.lockedUntil && user.lockedUntil > now) {
      await verifyDummy();
      await lockout.assertNotLocked(attempt);
    }
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
    if (!check.ok) {
      // The failure that locks answers 423 once its lock is written; any other answers as an
      // unknown email does, in the same time (the count is written after the answer).
      if (known.failed + 1 >= settings.maxFailures) {
        throw await lockout.fail(attempt, 'wrong_password', identityErrors.invalid_credentials());
      }
      await lockout.failAfterAnswer(attempt, 'wrong_password');
      throw identityErrors.invalid_credentials();
    }
    if (check.needsRehash) {
      await db.db
        .update(users)
        .set({ passwordHash: await hashPassword(input.password) })
        .where(eq(users.id, user.id));
    }
    if (user.totpEnabled) {
      const challenge = newMfaToken();
      await db.db.insert(mfaChallenges).values({
        tokenHash: challenge.hash,
        userId: user.id,
        orgId: member.orgId,
        createdAt: now,
        expiresAt: new Date(now.getTime() + settings.mfaTokenTtlSeconds * 1000),
      });
      return { mfa_required: true, mfa_token: challenge.token };
    }
    const roles = await authz.rolesOf(member.orgId, user.id);
    const opened = await db.db.transaction(
      async (tx) =>
        (await standingRefusal(tx, member.orgId, user.id)) ??
        openSession(tx, user, member.orgId, origin, 'password', input.device_name, roles),
    );
    if ('refused' in opened) return refuse(opened, attempt);
    await core.userChanged(user.id); // last_login_at, and any lock cleared
    return opened;
  }

  /**
   * Step two: a TOTP code (not replayable) or a recovery code (single use). The account is checked
   * again as step one checks it (user and membership of the challenge's org active, not locked),
   * and refused as step one refuses it: an admin may have deactivated the user or their membership,
   * or failures elsewhere locked the account, since the password was right. These checks come
   * before the challenge's own state: a deactivation also ends the org's pending challenges, and
   * the caller is then told what a fresh login would tell them.
   */
  async function loginMfa(
    input: { mfa_token: string; code: string; device_name?: string | undefined },
    origin: Origin,
  ): Promise<TokenPair> {
    const wait = await limiter.blockedFor(origin.ip);
    if (wait > 0) throw rateLimitedError(wait);
    const tokenHash = sha256Hex(input.mfa_token);
    const [challenge] = await db.db
      .select()
      .from(mfaChallenges)
      .where(eq(mfaChallenges.tokenHash, tokenHash));
    if (!challenge) throw identityErrors.mfa_token_invalid();
    const user = await userById(db.db, challenge.userId);
    const m = user ? await membership(db.db, challenge.orgId, user.id) : undefined;
    if (!user?.active || !m?.active) return refuseInactive(user, challenge.orgId, m !== undefined, origin);
    const attempt = { user, orgId: challenge.orgId, origin };
    await lockout.assertNotLocked(attempt);
    const now = clock();
    if (challenge.usedAt) throw identityErrors.mfa_token_invalid();
    if (challenge.expiresAt <= now) throw identityErrors.mfa_token_expired();
    if (!user.totpEnabled || !user.totpSecret) throw identityErrors.mfa_token_invalid();
    // A challenge issued before the password last changed is void (account.ts also ends pending
    // ones in the change's transaction; this covers a login that raced the change).
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
      const refusal = await standingRefusal(tx, challenge.orgId, user.id);
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
    if ('refused' in opened) return refuse(opened, attempt);
    await core.userChanged(user.id); // last_login_at, and any lock cleared
    return opened;
  }

  async function spendAttempt(tokenHash: string): Promise<void> {
    await db.db
      .update(mfaChallenges)
      .set({
        attempts: sql`${mfaChallenges.attempts} + 1`,
        usedAt: sql`case when ${mfaChallenges.attempts} + 1 >= ${MFA_MAX_ATTEMPTS} then now() else null end`,
      })
      .where(eq(mfaChallenges.tokenHash, tokenHash));
  }

  return { login, loginMfa };
}
