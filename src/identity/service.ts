import { randomBytes } from 'node:crypto';
import { and, asc, desc, eq, gt, isNull, lt, or, sql } from 'drizzle-orm';
import type { AuditContext, AuditEventInput, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Authz } from '../authz/contract.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { open, seal } from '../crypto/envelope.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { isId, newId } from '../db/ids.ts';
import { httpErrors, type StewardError } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { organizations } from '../tenancy/schema.ts';
import type { Organization, TenancyService } from '../tenancy/service.ts';
import { identityErrors } from './errors.ts';
import { signAccessToken, TokenError, TokenVerifier } from './jwt.ts';
import type { LoginIpLimiter } from './limiter.ts';
import { checkPasswordPolicy, hashPassword, verifyDummy, verifyPassword } from './password.ts';
import {
  activeMemberships,
  listMembers,
  type Membership,
  memberById,
  membership,
  revokeSessions,
  type Session,
  type User,
  userByEmail,
  userById,
} from './queries.ts';
import { generateRecoveryCodes, matchRecoveryCode } from './recovery-codes.ts';
import { createRevocationList } from './revocation.ts';
import { mfaChallenges, orgMemberships, sessions, users } from './schema.ts';
import { createSigningKeyStore } from './signing-keys.ts';
import { createRefreshTokens, newMfaToken, sha256Hex } from './tokens.ts';
import { generateTotpSecret, otpauthUri, verifyTotp } from './totp.ts';

/** The settings identity reads (a slice of Config). */
export interface IdentitySettings {
  issuer: string;
  accessTokenTtlSeconds: number;
  sessionTtlDays: number;
  signingKeyRotationDays: number;
  maxFailures: number;
  lockoutMinutes: number;
  mfaTokenTtlSeconds: number;
  revocationPollMs: number;
}

export interface IdentityDeps {
  db: DbHandle;
  keyring: Keyring;
  bus: InvalidationBus;
  audit: AuditRecorder;
  authz: Authz;
  tenancy: Pick<TenancyService, 'createOrg' | 'getOrg' | 'findOrgBySlug'>;
  limiter: LoginIpLimiter;
  clock: () => Date;
  settings: IdentitySettings;
}

/** Where a request came from: audit context plus the IP the limiter keys on. */
export interface Origin extends AuditContext {
  ip: string;
}

/** What a successful login or refresh returns. */
export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: 'Bearer';
  expires_in: number;
}

export type LoginResult = TokenPair | { mfa_required: true; mfa_token: string };

const MFA_MAX_ATTEMPTS = 5;
const USER_TOPIC = 'identity.users';
const USER_CACHE_MS = 60_000;
const TOTP_ISSUER = 'Steward';

/** A user as the admin API shows it (never a hash or a seed). */
export interface UserView {
  user: User;
  active: boolean;
  roles: readonly string[];
}

const totpAad = (userId: string) => `user/${userId}/totp`;
const displayName = (u: Pick<User, 'fullName' | 'email'>) => u.fullName ?? u.email;

function policyError(password: string, identity: { email?: string; username?: string | null }): void {
  const refusal = checkPasswordPolicy(password, {
    email: identity.email,
    username: identity.username ?? undefined,
  });
  if (refusal) throw identityErrors[refusal]();
}

/** A strong generated password: 24 base64url characters (144 bits). */
export function generatePassword(): string {
  return randomBytes(18).toString('base64url');
}

/**
 * Users, org memberships, logins with lockout and 2FA, sessions with rotating refresh tokens,
 * the access-token authenticator and signing keys. Owns its transactions; audits every change
 * in the transaction that makes it.
 */
export function createIdentityService(deps: IdentityDeps) {
  const { db, keyring, bus, audit, authz, tenancy, limiter, clock, settings } = deps;
  const keys = createSigningKeyStore({
    db,
    keyring,
    bus,
    clock,
    accessTokenTtlSeconds: settings.accessTokenTtlSeconds,
    rotationDays: settings.signingKeyRotationDays,
  });
  const revocation = createRevocationList({
    db,
    bus,
    clock,
    accessTokenTtlSeconds: settings.accessTokenTtlSeconds,
    pollMs: settings.revocationPollMs,
  });
  const refreshTokens = createRefreshTokens(keyring);
  const verifier = new TokenVerifier({
    issuer: settings.issuer,
    keys: [],
    now: () => clock().getTime(),
  });
  keys.onChange((publicKeys) => verifier.setKeys(publicKeys));

  // Who a token's `sub` is, for the Principal: name and superuser flag. Dropped on change, everywhere.
  const userCache = new Map<string, { name: string; superuser: boolean; active: boolean; until: number }>();
  let keyTimer: NodeJS.Timeout | undefined;

  const system = { type: 'system' as const, name: 'steward' };

  // ---------------------------------------------------------------- lifecycle

  async function start(): Promise<void> {
    await keys.start();
    await revocation.start();
    bus.subscribe(USER_TOPIC, (id) => userCache.delete(id));
    // Rotation and expiry of signing keys; every instance re-reads, one wins a rotation.
    keyTimer = setInterval(() => {
      keys.tick().catch(() => {});
    }, 60_000);
    keyTimer.unref();
  }

  async function stop(): Promise<void> {
    clearInterval(keyTimer);
    revocation.stop();
    await limiter.close();
  }

  async function userChanged(...ids: string[]): Promise<void> {
    for (const id of ids) {
      userCache.delete(id);
      await bus.publish(USER_TOPIC, id);
    }
  }

  // ---------------------------------------------------------------- tokens and sessions

  // Roles are read before any transaction opens: on PGlite (one connection) a read outside the
  // transaction would wait for it forever.
  async function signFor(
    user: Pick<User, 'id'>,
    orgId: string,
    sessionId: string,
    roles: readonly string[],
    jti?: string,
  ) {
    return signAccessToken(
      keys.activeKey(),
      { sub: user.id, org: orgId, sid: sessionId, roles },
      {
        issuer: settings.issuer,
        ttlSeconds: settings.accessTokenTtlSeconds,
        now: clock(),
        ...(jti === undefined ? {} : { jti }),
      },
    );
  }

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
    const access = await signFor(user, orgId, sessionId, roles);
    await tx.insert(sessions).values({
      id: sessionId,
      userId: user.id,
      orgId,
      accessJti: access.jti,
      refreshHash: refresh.hash,
      refreshGeneration: 0,
      ip: origin.ip,
      userAgent: origin.userAgent ?? null,
      deviceName: deviceName ?? null,
      createdAt: now,
      lastActivityAt: now,
      expiresAt: new Date(now.getTime() + settings.sessionTtlDays * 86_400_000),
    });
    await tx
      .update(users)
      .set({ lastLoginAt: now, failedLoginCount: 0, lockCount: 0, lockedUntil: null })
      .where(eq(users.id, user.id));
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

  /**
   * Counts a failed password or 2FA code against the account; the Nth in a row locks it for
   * LOGIN_LOCKOUT_MINUTES × 2^(locks so far). Returns the error to answer with.
   */
  async function failLogin(
    user: User,
    orgId: string,
    origin: Origin,
    reason: string,
    error: StewardError,
  ): Promise<StewardError> {
    const now = clock();
    let lockedUntil: Date | null = null;
    await db.db.transaction(async (tx) => {
      const [row] = await tx
        .update(users)
        .set({ failedLoginCount: sql`${users.failedLoginCount} + 1` })
        .where(eq(users.id, user.id))
        .returning({ failed: users.failedLoginCount, lockCount: users.lockCount });
      const events: AuditEventInput[] = [
        {
          orgId,
          actor: { type: 'user', id: user.id, name: displayName(user) },
          action: 'user.login_failed',
          resource: { type: 'user', id: user.id },
          context: origin,
          details: { reason },
          success: false,
        },
      ];
      if (row && row.failed >= settings.maxFailures) {
        const lockCount = row.lockCount + 1;
        const minutes = settings.lockoutMinutes * 2 ** Math.min(lockCount - 1, 16);
        lockedUntil = new Date(now.getTime() + minutes * 60_000);
        await tx
          .update(users)
          .set({ failedLoginCount: 0, lockCount, lockedUntil })
          .where(eq(users.id, user.id));
        events.push({
          orgId,
          actor: system,
          action: 'user.locked',
          resource: { type: 'user', id: user.id },
          context: origin,
          details: { locked_until: lockedUntil.toISOString(), lock_count: lockCount, failures: row.failed },
        });
      }
      await audit.record(tx, events);
    });
    await limiter.recordFailure(origin.ip);
    if (lockedUntil !== null) return lockedError(lockedUntil);
    return error;
  }

  const lockedError = (until: Date) =>
    identityErrors.account_locked(`Too many failed attempts; try again after ${until.toISOString()}`, {
      locked_until: until.toISOString(),
    });

  async function resolveLoginOrg(user: User | undefined, org: string | undefined) {
    if (org !== undefined) {
      const found = isId('org', org)
        ? await tenancy.getOrg(org).catch(() => null)
        : await tenancy.findOrgBySlug(org);
      if (!found || !user) return { org: found, member: undefined };
      const m = await membership(db.db, found.id, user.id);
      return { org: found, member: m?.active ? m : undefined };
    }
    if (!user) return { org: null, member: undefined };
    const [first] = await activeMemberships(db.db, user.id);
    return { org: null, member: first };
  }

  /** Step one of a login: password. Unknown user and wrong password answer alike, in the same time. */
  async function login(
    input: { email: string; password: string; org?: string | undefined; device_name?: string | undefined },
    origin: Origin,
  ): Promise<LoginResult> {
    const wait = await limiter.blockedFor(origin.ip);
    if (wait > 0) {
      await verifyDummy();
      const seconds = Math.ceil(wait / 1000);
      throw httpErrors.rate_limited(
        'Too many failed logins from this address',
        { retry_after: seconds },
        { 'retry-after': String(seconds) },
      );
    }
    const user = await userByEmail(db.db, input.email);
    const { org, member } = await resolveLoginOrg(user, input.org);
    if (!user?.active || !member) {
      await verifyDummy();
      await limiter.recordFailure(origin.ip);
      if (org) {
        await audit.record(db.db, {
          orgId: org.id,
          actor: user ? { type: 'user', id: user.id, name: displayName(user) } : { type: 'user', name: null },
          action: 'user.login_failed',
          context: origin,
          details: { reason: user ? 'not_a_member' : 'unknown_user' },
          success: false,
        });
      }
      throw identityErrors.invalid_credentials();
    }
    const now = clock();
    if (user.lockedUntil && user.lockedUntil > now) {
      await verifyDummy();
      await audit.record(db.db, {
        orgId: member.orgId,
        actor: { type: 'user', id: user.id, name: displayName(user) },
        action: 'user.login_failed',
        resource: { type: 'user', id: user.id },
        context: origin,
        details: { reason: 'locked' },
        success: false,
      });
      throw lockedError(user.lockedUntil);
    }
    const check = await verifyPassword(user.passwordHash, input.password);
    if (!check.ok) {
      throw await failLogin(
        user,
        member.orgId,
        origin,
        'wrong_password',
        identityErrors.invalid_credentials(),
      );
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
    return db.db.transaction((tx) =>
      openSession(tx, user, member.orgId, origin, 'password', input.device_name, roles),
    );
  }

  /** Step two: a TOTP code (not replayable) or a recovery code (single use). */
  async function loginMfa(
    input: { mfa_token: string; code: string; device_name?: string | undefined },
    origin: Origin,
  ): Promise<TokenPair> {
    const wait = await limiter.blockedFor(origin.ip);
    if (wait > 0) {
      const seconds = Math.ceil(wait / 1000);
      throw httpErrors.rate_limited(
        'Too many failed logins from this address',
        { retry_after: seconds },
        {
          'retry-after': String(seconds),
        },
      );
    }
    const tokenHash = sha256Hex(input.mfa_token);
    const [challenge] = await db.db
      .select()
      .from(mfaChallenges)
      .where(eq(mfaChallenges.tokenHash, tokenHash));
    const now = clock();
    if (!challenge || challenge.usedAt) throw identityErrors.mfa_token_invalid();
    if (challenge.expiresAt <= now) throw identityErrors.mfa_token_expired();
    const user = await userById(db.db, challenge.userId);
    if (!user?.active || !user.totpEnabled || !user.totpSecret) throw identityErrors.mfa_token_invalid();
    if (user.lockedUntil && user.lockedUntil > now) throw lockedError(user.lockedUntil);

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
        throw await failLogin(
          user,
          challenge.orgId,
          origin,
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
        throw await failLogin(
          user,
          challenge.orgId,
          origin,
          'wrong_recovery_code',
          identityErrors.mfa_code_invalid(),
        );
      }
      remainingCodes = user.recoveryCodeHashes.filter((_, i) => i !== index);
    }

    const roles = await authz.rolesOf(challenge.orgId, user.id);
    return db.db.transaction(async (tx) => {
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

  /** Rotates a refresh token. Presenting a rotated one revokes the whole session. */
  async function refresh(refreshToken: string, origin: Origin): Promise<TokenPair> {
    const parsed = refreshTokens.parse(refreshToken);
    if (!parsed) throw identityErrors.refresh_token_invalid();
    const now = clock();
    const next = refreshTokens.issue(parsed.sessionId, parsed.generation + 1);
    const jti = randomBytes(16).toString('base64url');
    // One statement on the hot path: it both checks the presented generation and rotates it.
    const [row] = await db.db
      .update(sessions)
      .set({
        refreshGeneration: parsed.generation + 1,
        refreshHash: next.hash,
        accessJti: jti,
        lastActivityAt: now,
      })
      .where(
        and(
          eq(sessions.id, parsed.sessionId),
          eq(sessions.refreshGeneration, parsed.generation),
          eq(sessions.refreshHash, parsed.hash),
          isNull(sessions.revokedAt),
          gt(sessions.expiresAt, now),
        ),
      )
      .returning({ userId: sessions.userId, orgId: sessions.orgId });
    if (row) {
      const roles = await authz.rolesOf(row.orgId, row.userId);
      const access = await signFor({ id: row.userId }, row.orgId, parsed.sessionId, roles, jti);
      return {
        access_token: access.token,
        refresh_token: next.token,
        token_type: 'Bearer',
        expires_in: settings.accessTokenTtlSeconds,
      };
    }
    const [session] = await db.db.select().from(sessions).where(eq(sessions.id, parsed.sessionId));
    if (!session) throw identityErrors.refresh_token_invalid();
    if (session.revokedAt) throw identityErrors.session_revoked();
    if (parsed.generation < session.refreshGeneration) {
      await revokeForReuse(session, parsed.generation, origin);
      throw identityErrors.refresh_token_reused();
    }
    if (session.expiresAt <= now) throw identityErrors.session_expired();
    throw identityErrors.refresh_token_invalid();
  }

  async function revokeForReuse(session: Session, generation: number, origin: Origin): Promise<void> {
    const now = clock();
    const revoked = await db.db.transaction(async (tx) => {
      const ids = await revokeSessions(tx, { userId: session.userId, id: session.id }, 'refresh_reused', now);
      if (ids.length > 0) {
        await audit.record(tx, [
          {
            orgId: session.orgId,
            actor: system,
            action: 'session.refresh_reused',
            resource: { type: 'session', id: session.id },
            context: { ...origin, sessionId: session.id },
            details: {
              user_id: session.userId,
              presented_generation: generation,
              current: session.refreshGeneration,
            },
            success: false,
          },
          {
            orgId: session.orgId,
            actor: system,
            action: 'session.revoked',
            resource: { type: 'session', id: session.id },
            context: { ...origin, sessionId: session.id },
            details: { user_id: session.userId, reason: 'refresh_reused' },
          },
        ]);
      }
      return ids;
    });
    await revocation.publish(revoked);
  }

  async function listSessions(principal: Principal, page: { limit: number; afterId?: string | undefined }) {
    const user = requireUser(principal);
    const now = clock();
    const rows = await db.db
      .select()
      .from(sessions)
      .where(
        and(
          eq(sessions.userId, user),
          isNull(sessions.revokedAt),
          gt(sessions.expiresAt, now),
          page.afterId ? lt(sessions.id, page.afterId) : undefined,
        ),
      )
      .orderBy(desc(sessions.id))
      .limit(page.limit);
    return rows;
  }

  /** Revokes a session: one's own, or — with users:update — any session in one's org. */
  async function revokeSession(principal: Principal, sessionId: string, origin: AuditContext): Promise<void> {
    if (!isId('ses', sessionId)) throw identityErrors.session_not_found();
    const [session] = await db.db.select().from(sessions).where(eq(sessions.id, sessionId));
    const own = session !== undefined && principal.kind === 'user' && session.userId === principal.id;
    if (!session || (!own && session.orgId !== principal.orgId)) throw identityErrors.session_not_found();
    if (!own) {
      const decision = await authz.check(principal, 'users:update');
      if (!decision.allowed) throw identityErrors.session_not_found();
    }
    await revokeWhere(
      principal,
      { userId: session.userId, id: session.id },
      own ? 'revoked' : 'revoked_by_admin',
      origin,
      session.orgId,
    );
  }

  async function revokeWhere(
    principal: Principal | null,
    filter: Parameters<typeof revokeSessions>[1],
    reason: string,
    origin: AuditContext,
    orgId: string,
  ): Promise<string[]> {
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      const revoked = await revokeSessions(tx, filter, reason, now);
      await audit.record(
        tx,
        revoked.map((id) => ({
          orgId,
          actor: principal ? actorOf(principal) : system,
          action: 'session.revoked' as const,
          resource: { type: 'session', id },
          context: origin,
          details: { user_id: filter.userId, reason },
        })),
      );
      return revoked;
    });
    await revocation.publish(ids);
    return ids;
  }

  async function logout(principal: Principal, origin: AuditContext): Promise<void> {
    const userId = requireUser(principal);
    if (!principal.sessionId) throw identityErrors.not_a_user('Logout ends a session; this caller has none');
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      const revoked = await revokeSessions(tx, { userId, id: principal.sessionId }, 'logout', now);
      if (revoked.length > 0) {
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.logout',
          resource: { type: 'session', id: principal.sessionId },
          context: origin,
        });
      }
      return revoked;
    });
    await revocation.publish(ids);
  }

  function requireUser(principal: Principal): string {
    if (principal.kind !== 'user') throw identityErrors.not_a_user();
    return principal.id;
  }

  async function currentUser(principal: Principal): Promise<User> {
    const user = await userById(db.db, requireUser(principal));
    if (!user) throw identityErrors.user_not_found();
    return user;
  }

  // ---------------------------------------------------------------- password and 2FA

  async function changePassword(
    principal: Principal,
    input: { current_password: string; new_password: string },
    origin: AuditContext,
  ): Promise<{ revoked_sessions: number }> {
    const user = await currentUser(principal);
    const check = await verifyPassword(user.passwordHash, input.current_password);
    if (!check.ok) throw identityErrors.password_incorrect();
    policyError(input.new_password, user);
    const hash = await hashPassword(input.new_password);
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      await tx
        .update(users)
        .set({ passwordHash: hash, passwordChangedAt: now, updatedAt: now })
        .where(eq(users.id, user.id));
      const revoked = await revokeSessions(
        tx,
        { userId: user.id, ...(principal.sessionId ? { exceptId: principal.sessionId } : {}) },
        'password_changed',
        now,
      );
      await audit.record(tx, [
        {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.password_changed',
          resource: { type: 'user', id: user.id },
          context: origin,
          details: { revoked_sessions: revoked.length },
        },
        ...revoked.map((id) => ({
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'session.revoked' as const,
          resource: { type: 'session', id },
          context: origin,
          details: { user_id: user.id, reason: 'password_changed' },
        })),
      ]);
      return revoked;
    });
    await revocation.publish(ids);
    return { revoked_sessions: ids.length };
  }

  async function enrollTotp(principal: Principal, origin: AuditContext) {
    const user = await currentUser(principal);
    if (user.totpEnabled) throw identityErrors.totp_already_enabled();
    const secret = generateTotpSecret();
    await db.db.transaction(async (tx) => {
      await tx
        .update(users)
        .set({ totpSecret: seal(keyring, secret, totpAad(user.id)), totpLastStep: null, updatedAt: clock() })
        .where(and(eq(users.id, user.id), eq(users.totpEnabled, false)));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_enrolled',
        resource: { type: 'user', id: user.id },
        context: origin,
      });
    });
    return { secret, otpauth_uri: otpauthUri({ secret, account: user.email, issuer: TOTP_ISSUER }) };
  }

  async function confirmTotp(principal: Principal, code: string, origin: AuditContext) {
    const user = await currentUser(principal);
    if (user.totpEnabled) throw identityErrors.totp_already_enabled();
    if (!user.totpSecret) throw identityErrors.totp_not_enrolled('Call POST /v1/auth/totp/enroll first');
    const secret = open(keyring, user.totpSecret, totpAad(user.id)).toString('utf8');
    const result = verifyTotp(secret, code, { nowMs: clock().getTime(), lastUsedStep: user.totpLastStep });
    if (!result.ok) throw identityErrors.totp_code_invalid(undefined, { reason: result.reason });
    const recovery = generateRecoveryCodes();
    await db.db.transaction(async (tx) => {
      const done = await tx
        .update(users)
        .set({
          totpEnabled: true,
          totpLastStep: result.step,
          recoveryCodeHashes: recovery.hashes,
          updatedAt: clock(),
        })
        .where(and(eq(users.id, user.id), eq(users.totpEnabled, false)))
        .returning({ id: users.id });
      if (done.length === 0) throw identityErrors.totp_already_enabled();
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_enabled',
        resource: { type: 'user', id: user.id },
        context: origin,
        details: { recovery_codes: recovery.codes.length },
      });
    });
    return { recovery_codes: recovery.codes };
  }

  async function disableTotp(
    principal: Principal,
    input: { password: string; code: string },
    origin: AuditContext,
  ) {
    const user = await currentUser(principal);
    if (!user.totpEnabled || !user.totpSecret) throw identityErrors.totp_not_enabled();
    const check = await verifyPassword(user.passwordHash, input.password);
    if (!check.ok) throw identityErrors.password_incorrect();
    const secret = open(keyring, user.totpSecret, totpAad(user.id)).toString('utf8');
    const result = verifyTotp(secret, input.code, {
      nowMs: clock().getTime(),
      lastUsedStep: user.totpLastStep,
    });
    const recoveryIndex = result.ok ? -1 : matchRecoveryCode(input.code, user.recoveryCodeHashes);
    if (!result.ok && recoveryIndex < 0)
      throw identityErrors.totp_code_invalid(undefined, { reason: result.reason });
    await db.db.transaction(async (tx) => {
      await tx
        .update(users)
        .set({
          totpEnabled: false,
          totpSecret: null,
          totpLastStep: null,
          recoveryCodeHashes: [],
          updatedAt: clock(),
        })
        .where(eq(users.id, user.id));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_disabled',
        resource: { type: 'user', id: user.id },
        context: origin,
        details: { by: 'self' },
      });
    });
  }

  // ---------------------------------------------------------------- users (admin API)

  async function view(orgId: string, user: User, m: Membership): Promise<UserView> {
    return { user, active: user.active && m.active, roles: await authz.rolesOf(orgId, user.id) };
  }

  async function assignRoles(
    tx: DbOrTx,
    orgId: string,
    userId: string,
    roles: readonly string[],
    by: Principal | null,
    context: AuditContext | undefined,
  ): Promise<(() => Promise<void>)[]> {
    const after: (() => Promise<void>)[] = [];
    for (const role of new Set(roles)) {
      const r = await authz.assignRoleInTx(tx, {
        orgId,
        principalId: userId,
        role,
        by,
        ...(context ? { context } : {}),
      });
      after.push(r.afterCommit);
    }
    return after;
  }

  async function createUser(
    principal: Principal,
    input: {
      email: string;
      password: string;
      username?: string | undefined;
      full_name?: string | undefined;
      roles?: string[] | undefined;
    },
    origin: AuditContext,
  ): Promise<UserView> {
    policyError(input.password, { email: input.email, username: input.username ?? null });
    await assertFree(input.email, input.username);
    const hash = await hashPassword(input.password);
    const now = clock();
    const id = newId('usr');
    const { user, after } = await db.db
      .transaction(async (tx) => {
        const [user] = await tx
          .insert(users)
          .values({
            id,
            email: input.email,
            username: input.username ?? null,
            fullName: input.full_name ?? null,
            passwordHash: hash,
            passwordChangedAt: now,
            createdBy: principal.kind === 'user' ? principal.id : (principal.ownerId ?? principal.id),
            createdAt: now,
            updatedAt: now,
          })
          .returning();
        if (!user) throw new Error('user insert returned nothing');
        await tx
          .insert(orgMemberships)
          .values({ orgId: principal.orgId, userId: id, createdBy: principal.id });
        const after = await assignRoles(tx, principal.orgId, id, input.roles ?? [], principal, origin);
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.created',
          resource: { type: 'user', id },
          context: origin,
          changes: {
            after: {
              email: user.email,
              username: user.username,
              full_name: user.fullName,
              roles: input.roles ?? [],
            },
          },
        });
        return { user, after };
      })
      .catch(uniqueViolation);
    for (const run of after) await run();
    return { user, active: true, roles: await authz.rolesOf(principal.orgId, id) };
  }

  async function assertFree(email: string, username: string | undefined | null): Promise<void> {
    if (await userByEmail(db.db, email)) throw identityErrors.email_taken();
    await assertUsernameFree(username);
  }

  async function assertUsernameFree(username: string | undefined | null): Promise<void> {
    if (username) {
      const [clash] = await db.db
        .select({ id: users.id })
        .from(users)
        .where(sql`lower(${users.username}) = lower(${username})`);
      if (clash) throw identityErrors.username_taken();
    }
  }

  // Two requests creating the same email concurrently: the index decides, the loser gets a 409.
  function uniqueViolation(error: unknown): never {
    const text = String(
      (error as { cause?: { message?: string } })?.cause?.message ?? (error as Error)?.message ?? '',
    );
    if (text.includes('users_email_lower')) throw identityErrors.email_taken();
    if (text.includes('users_username_lower')) throw identityErrors.username_taken();
    throw error;
  }

  async function listUsers(principal: Principal, page: { limit: number; afterId?: string | undefined }) {
    const rows = await listMembers(db.db, principal.orgId, {
      limit: page.limit + 1,
      ...(page.afterId ? { afterId: page.afterId } : {}),
    });
    const views = await Promise.all(
      rows.slice(0, page.limit).map((r) => view(principal.orgId, r.user, r.membership)),
    );
    return { views, more: rows.length > page.limit };
  }

  async function getMember(orgId: string, userId: string) {
    const found = isId('usr', userId) ? await memberById(db.db, orgId, userId) : undefined;
    if (!found) throw identityErrors.user_not_found();
    return found;
  }

  async function getUser(principal: Principal, userId: string): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    return view(principal.orgId, user, m);
  }

  async function updateUser(
    principal: Principal,
    userId: string,
    input: {
      full_name?: string | null | undefined;
      username?: string | null | undefined;
      active?: boolean | undefined;
      roles?: string[] | undefined;
    },
    origin: AuditContext,
  ): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    if (input.active === false) {
      await deactivateUser(principal, userId, origin);
      const { user: u, membership: m2 } = await getMember(principal.orgId, userId);
      input = { ...input, active: undefined };
      if (input.full_name === undefined && input.username === undefined && input.roles === undefined) {
        return view(principal.orgId, u, m2);
      }
    }
    if (input.username && input.username.toLowerCase() !== user.username?.toLowerCase()) {
      await assertUsernameFree(input.username);
    }
    const beforeRoles = await authz.rolesOf(principal.orgId, userId);
    const now = clock();
    const after = await db.db
      .transaction(async (tx) => {
        const set: Partial<typeof users.$inferInsert> = { updatedAt: now };
        const before: Record<string, unknown> = {};
        const changed: Record<string, unknown> = {};
        if (input.full_name !== undefined && input.full_name !== user.fullName) {
          set.fullName = input.full_name;
          before.full_name = user.fullName;
          changed.full_name = input.full_name;
        }
        if (input.username !== undefined && input.username !== user.username) {
          set.username = input.username;
          before.username = user.username;
          changed.username = input.username;
        }
        await tx.update(users).set(set).where(eq(users.id, userId));
        if (input.active === true && !(m.active && user.active)) {
          await tx
            .update(orgMemberships)
            .set({ active: true, updatedAt: now })
            .where(and(eq(orgMemberships.orgId, principal.orgId), eq(orgMemberships.userId, userId)));
          await tx.update(users).set({ active: true }).where(eq(users.id, userId));
          before.active = false;
          changed.active = true;
        }
        const runs: (() => Promise<void>)[] = [];
        if (input.roles !== undefined) {
          const next = [...new Set(input.roles)].sort();
          if (next.join(',') !== [...beforeRoles].sort().join(',')) {
            const un = await authz.unassignAllInTx(tx, {
              orgId: principal.orgId,
              principalId: userId,
              by: principal,
              context: origin,
            });
            runs.push(un.afterCommit);
            runs.push(...(await assignRoles(tx, principal.orgId, userId, next, principal, origin)));
            before.roles = beforeRoles;
            changed.roles = next;
          }
        }
        if (Object.keys(changed).length > 0) {
          await audit.record(tx, {
            orgId: principal.orgId,
            actor: actorOf(principal),
            action: 'user.updated',
            resource: { type: 'user', id: userId },
            context: origin,
            changes: { before, after: changed },
          });
        }
        return runs;
      })
      .catch(uniqueViolation);
    for (const run of after) await run();
    await userChanged(userId);
    return getUser(principal, userId);
  }

  /** Deactivates a user in the caller's org: membership off, roles removed, sessions revoked. */
  async function deactivateUser(principal: Principal, userId: string, origin: AuditContext): Promise<void> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    if (principal.kind === 'user' && principal.id === userId) throw identityErrors.cannot_deactivate_self();
    if (!m.active && !user.active) return;
    const now = clock();
    const { runs, revoked } = await db.db.transaction(async (tx) => {
      await tx
        .update(orgMemberships)
        .set({ active: false, updatedAt: now })
        .where(and(eq(orgMemberships.orgId, principal.orgId), eq(orgMemberships.userId, userId)));
      const others = await activeMemberships(tx, userId);
      const global = others.length === 0;
      if (global) await tx.update(users).set({ active: false, updatedAt: now }).where(eq(users.id, userId));
      const un = await authz.unassignAllInTx(tx, {
        orgId: principal.orgId,
        principalId: userId,
        by: principal,
        context: origin,
      });
      const revoked = await revokeSessions(tx, { userId, orgId: principal.orgId }, 'user_deactivated', now);
      await audit.record(tx, [
        {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.deactivated',
          resource: { type: 'user', id: userId },
          context: origin,
          changes: { before: { active: true }, after: { active: false } },
          details: { revoked_sessions: revoked.length, deactivated_everywhere: global },
        },
        ...revoked.map((id) => ({
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'session.revoked' as const,
          resource: { type: 'session', id },
          context: origin,
          details: { user_id: userId, reason: 'user_deactivated' },
        })),
      ]);
      return { runs: [un.afterCommit], revoked };
    });
    for (const run of runs) await run();
    await revocation.publish(revoked);
    await userChanged(userId);
  }

  async function unlockUser(principal: Principal, userId: string, origin: AuditContext): Promise<UserView> {
    const { user } = await getMember(principal.orgId, userId);
    await db.db.transaction(async (tx) => {
      await tx
        .update(users)
        .set({ failedLoginCount: 0, lockCount: 0, lockedUntil: null, updatedAt: clock() })
        .where(eq(users.id, userId));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.unlocked',
        resource: { type: 'user', id: userId },
        context: origin,
        changes: {
          before: { locked_until: user.lockedUntil?.toISOString() ?? null },
          after: { locked_until: null },
        },
      });
    });
    return getUser(principal, userId);
  }

  // ---------------------------------------------------------------- orgs and bootstrap

  /** Orgs the caller belongs to (a superuser sees every org). */
  async function listOrgs(principal: Principal): Promise<Organization[]> {
    if (principal.superuser) {
      return db.db.select().from(organizations).orderBy(asc(organizations.createdAt), asc(organizations.id));
    }
    const userId = principal.kind === 'user' ? principal.id : (principal.ownerId ?? '');
    const rows = await db.db
      .select({ org: organizations })
      .from(organizations)
      .innerJoin(orgMemberships, eq(orgMemberships.orgId, organizations.id))
      .where(and(eq(orgMemberships.userId, userId), eq(orgMemberships.active, true)))
      .orderBy(asc(organizations.createdAt), asc(organizations.id));
    return rows.map((r) => r.org);
  }

  /** Superuser: a new org; the creator (and `admin_user_id`, if given) become its admins. */
  async function createOrg(
    principal: Principal,
    input: { slug: string; name: string; admin_user_id?: string | undefined },
    origin: AuditContext,
  ): Promise<Organization> {
    if (!principal.superuser) throw httpErrors.permission_denied('Only a superuser creates organizations');
    const admins = new Set<string>();
    if (principal.kind === 'user') admins.add(principal.id);
    if (input.admin_user_id) {
      const found = isId('usr', input.admin_user_id) ? await userById(db.db, input.admin_user_id) : undefined;
      if (!found) throw identityErrors.user_not_found();
      admins.add(found.id);
    }
    const org = await tenancy.createOrg(
      { slug: input.slug, name: input.name },
      { principal, context: origin },
    );
    const runs = await db.db.transaction(async (tx) => {
      const all: (() => Promise<void>)[] = [];
      for (const userId of admins) {
        await tx.insert(orgMemberships).values({ orgId: org.id, userId, createdBy: principal.id });
        all.push(...(await assignRoles(tx, org.id, userId, ['admin'], null, origin)));
      }
      return all;
    });
    for (const run of runs) await run();
    return org;
  }

  async function superuserExists(): Promise<boolean> {
    const [row] = await db.db.select({ id: users.id }).from(users).where(eq(users.superuser, true)).limit(1);
    return row !== undefined;
  }

  /**
   * Creates the org `default` (if missing) and the first superuser, admin of it. Refuses when a
   * superuser exists. Returns the generated password when none was given: the caller prints it
   * once; it is never logged or stored in clear.
   */
  async function bootstrap(input: { email: string; password?: string | undefined }): Promise<{
    user: User;
    org: Organization;
    generatedPassword: string | null;
  }> {
    if (await superuserExists()) throw identityErrors.superuser_exists();
    const generatedPassword = input.password === undefined ? generatePassword() : null;
    const password = input.password ?? (generatedPassword as string);
    policyError(password, { email: input.email });
    const hash = await hashPassword(password);
    const org =
      (await tenancy.findOrgBySlug('default')) ??
      (await tenancy.createOrg({ slug: 'default', name: 'Default' }).catch(async (error: unknown) => {
        const again = await tenancy.findOrgBySlug('default'); // another instance won the race
        if (again) return again;
        throw error;
      }));
    const now = clock();
    const id = newId('usr');
    const { user, runs } = await db.db.transaction(async (tx) => {
      // Serialises concurrent bootstraps (several instances on one empty database).
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext('steward:bootstrap'))`);
      const [existing] = await tx
        .select({ id: users.id })
        .from(users)
        .where(eq(users.superuser, true))
        .limit(1);
      if (existing) throw identityErrors.superuser_exists();
      if (await userByEmail(tx, input.email)) throw identityErrors.email_taken();
      const [user] = await tx
        .insert(users)
        .values({
          id,
          email: input.email,
          passwordHash: hash,
          superuser: true,
          verified: true,
          passwordChangedAt: now,
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!user) throw new Error('user insert returned nothing');
      await tx.insert(orgMemberships).values({ orgId: org.id, userId: id });
      const runs = await assignRoles(tx, org.id, id, ['admin'], null, undefined);
      await audit.record(tx, [
        {
          orgId: org.id,
          actor: system,
          action: 'user.created',
          resource: { type: 'user', id },
          changes: { after: { email: user.email, superuser: true, roles: ['admin'] } },
        },
        {
          orgId: org.id,
          actor: system,
          action: 'bootstrap.completed',
          resource: { type: 'user', id },
          details: { org: org.slug, generated_password: generatedPassword !== null },
        },
      ]);
      return { user, runs };
    });
    for (const run of runs) await run();
    return { user, org, generatedPassword };
  }

  /** True when the database has no user at all: the first start. */
  async function isEmpty(): Promise<boolean> {
    const [row] = await db.db.select({ id: users.id }).from(users).limit(1);
    return row === undefined;
  }

  // ---------------------------------------------------------------- authenticator

  async function userInfo(id: string) {
    const now = clock().getTime();
    const cached = userCache.get(id);
    if (cached && cached.until > now) return cached;
    const user = await userById(db.db, id);
    if (!user) return undefined;
    const entry = {
      name: displayName(user),
      superuser: user.superuser,
      active: user.active,
      until: now + USER_CACHE_MS,
    };
    userCache.set(id, entry);
    return entry;
  }

  let lastKeyReload = 0;

  /**
   * Bearer JWT → Principal. Verification is cached (TokenVerifier); the revoked-session check and
   * the roles (from authz's index, not the token) are read on every request.
   */
  async function authenticate(authorization: string | undefined): Promise<Principal | null> {
    if (authorization === undefined || authorization.length < 8) return null;
    if (authorization.slice(0, 7).toLowerCase() !== 'bearer ') return null;
    const token = authorization.slice(7).trim();
    // Not a JWT (an API key `stw_…`, say): another authenticator's business.
    if (!token.startsWith('eyJ') || token.split('.').length !== 3) return null;
    let claims: Awaited<ReturnType<TokenVerifier['verify']>>;
    try {
      claims = await verifier.verify(token);
    } catch (error) {
      if (!(error instanceof TokenError)) throw error;
      if (error.code === 'token_unknown_key' && Date.now() - lastKeyReload > 1000) {
        // Signed by a key another instance just made: re-read the keys once and retry.
        lastKeyReload = Date.now();
        await keys.load();
        return authenticate(authorization);
      }
      throw error.code === 'token_expired' ? identityErrors.token_expired() : identityErrors.token_invalid();
    }
    if (revocation.isRevoked(claims.sid)) throw identityErrors.session_revoked();
    const info = await userInfo(claims.sub);
    if (!info?.active) throw identityErrors.session_revoked();
    const roles = await authz.rolesOf(claims.org, claims.sub);
    return {
      orgId: claims.org,
      kind: 'user',
      id: claims.sub,
      name: info.name,
      roles,
      scopes: null,
      superuser: info.superuser,
      sessionId: claims.sid,
    };
  }

  /** For authz's PrincipalDirectory: a user with an active membership of the org, else null. */
  async function findPrincipal(orgId: string, id: string, tx?: DbOrTx): Promise<Principal | null> {
    if (!isId('usr', id)) return null;
    const found = await memberById(tx ?? db.db, orgId, id);
    if (!found?.membership.active || !found.user.active) return null;
    const roles = tx ? [] : await authz.rolesOf(orgId, id);
    return {
      orgId,
      kind: 'user',
      id,
      name: displayName(found.user),
      roles,
      scopes: null,
      superuser: found.user.superuser,
    };
  }

  return {
    start,
    stop,
    findPrincipal,
    login,
    loginMfa,
    refresh,
    logout,
    listSessions,
    revokeSession,
    changePassword,
    enrollTotp,
    confirmTotp,
    disableTotp,
    currentUser,
    createUser,
    listUsers,
    getUser,
    updateUser,
    deactivateUser,
    unlockUser,
    listOrgs,
    createOrg,
    bootstrap,
    superuserExists,
    isEmpty,
    authenticate,
    jwks: () => keys.jwks(),
    rotateSigningKey: () => keys.rotate(),
    signingKeys: keys,
    revocation,
    verifierStats: () => verifier.stats(),
  };
}

export type IdentityService = ReturnType<typeof createIdentityService>;
