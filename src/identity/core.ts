// What the parts of the identity service share: their dependencies, the signing keys, the
// revoked-session list, refresh tokens, the user cache, and small helpers. Each part (login.ts,
// sessions.ts, account.ts, two-factor.ts, users.ts, orgs.ts, invitations.ts, authenticator.ts)
// is made from one IdentityCore; service.ts assembles them.
import { randomBytes } from 'node:crypto';
import type { AuditContext, AuditEventInput, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Authz } from '../authz/contract.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { millisecondsOf } from '../clock.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { httpErrors, type StewardError } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import type { TenancyService } from '../tenancy/service.ts';
import { identityErrors } from './errors.ts';
import { signAccessToken } from './jwt.ts';
import type { LoginIpLimiter } from './limiter.ts';
import { checkPasswordPolicy } from './password.ts';
import { ProfileCache } from './profile-cache.ts';
import { revokeSessions, type User, userById } from './queries.ts';
import { createRevocationList, type RevocationList } from './revocation.ts';
import { createSigningKeyStore, type SigningKeyStore } from './signing-keys.ts';
import { createRefreshTokens } from './tokens.ts';

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
  /**
   * Roles from authz's index when the org's index is warm, else undefined: lets a warm
   * authenticated request answer without a promise. Optional; `authz.rolesOf` is the authority.
   */
  rolesOfSync?: ((orgId: string, principalId: string) => readonly string[] | undefined) | undefined;
  /** Where work finished after the answer (`later`) reports its failures; default: dropped. */
  onError?: ((error: unknown, what: string) => void) | undefined;
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

/** A user as the admin API shows it (never a hash or a seed). */
export interface UserView {
  user: User;
  active: boolean;
  roles: readonly string[];
  /**
   * Who added the user to the org shown (the membership's `created_by`: an admin, an API key, the
   * inviter; null for sign-up and bootstrap). Absent: the account's own `created_by`.
   */
  createdBy?: string | null;
}

/** What a token's `sub` is for the Principal; dropped on change, on every instance. */
export interface CachedUser {
  name: string;
  superuser: boolean;
  active: boolean;
  until: number;
}

/** Runs after a transaction commits (authz index updates). */
export type AfterCommit = () => Promise<void>;

/**
 * Bus topic: a user changed (id as the message); caches keyed by user drop their entry (the
 * authenticator's user cache, the /v1/me profiles).
 */
export const USER_TOPIC = 'identity.users';

/** /v1/me profiles: how many are kept, and for how long at most (should a bus message be lost). */
export const PROFILE_CACHE_MAX = 10_000;
export const PROFILE_CACHE_TTL_MS = 30_000;

export const SYSTEM_ACTOR = { type: 'system' as const, name: 'steward' };

export const totpAad = (userId: string) => `user/${userId}/totp`;
export const displayName = (u: Pick<User, 'fullName' | 'email'>) => u.fullName ?? u.email;

/** Throws the policy's refusal of a new password, if any. */
export function assertPasswordPolicy(
  password: string,
  identity: { email?: string; username?: string | null },
): void {
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

/** The user id of a user principal; anything else (an API key) is refused. */
export function requireUser(principal: Principal): string {
  if (principal.kind !== 'user') throw identityErrors.not_a_user();
  return principal.id;
}

export const lockedError = (until: Date): StewardError =>
  identityErrors.account_locked(`Too many failed attempts; try again after ${until.toISOString()}`, {
    locked_until: until.toISOString(),
  });

export function rateLimitedError(
  waitMs: number,
  busy = false,
  of: 'address' | 'account' = 'address',
): StewardError {
  const seconds = Math.ceil(waitMs / 1000);
  return httpErrors.rate_limited(
    busy
      ? `Too many logins in progress ${of === 'account' ? 'for this account' : 'from this address'}: retry in a moment`
      : 'Too many failed logins from this address',
    { retry_after: seconds },
    { 'retry-after': String(seconds) },
  );
}

/** Two requests creating the same email concurrently: the index decides, the loser gets a 409. */
export function uniqueViolation(error: unknown): never {
  const text = String(
    (error as { cause?: { message?: string } })?.cause?.message ?? (error as Error)?.message ?? '',
  );
  if (text.includes('users_email_lower')) throw identityErrors.email_taken();
  if (text.includes('users_username_lower')) throw identityErrors.username_taken();
  throw error;
}

/** One `session.revoked` event per revoked session, for the transaction that revoked them. */
export function sessionRevokedEvents(
  ids: readonly string[],
  by: { orgId: string; principal: Principal | null; origin: AuditContext },
  userId: string,
  reason: string,
): AuditEventInput[] {
  return ids.map((id) => ({
    orgId: by.orgId,
    actor: by.principal ? actorOf(by.principal) : SYSTEM_ACTOR,
    action: 'session.revoked' as const,
    resource: { type: 'session', id },
    context: by.origin,
    details: { user_id: userId, reason },
  }));
}

/** Builds the shared state of the identity service. */
export function createIdentityCore(deps: IdentityDeps) {
  const { db, keyring, bus, audit, clock, settings } = deps;
  const keys: SigningKeyStore = createSigningKeyStore({
    db,
    keyring,
    bus,
    clock,
    accessTokenTtlSeconds: settings.accessTokenTtlSeconds,
    rotationDays: settings.signingKeyRotationDays,
  });
  const revocation: RevocationList = createRevocationList({
    db,
    bus,
    clock,
    accessTokenTtlSeconds: settings.accessTokenTtlSeconds,
    // Embedded mode is one process per data folder, and every revoke in it goes through this
    // process's `publish`: there is nobody else's revoke to poll for (as for API keys), and each
    // poll held the thread that serves requests (~1 ms, twice a second).
    pollMs: db.kind === 'pglite' ? 0 : settings.revocationPollMs,
  });
  const refreshTokens = createRefreshTokens(keyring);
  const userCache = new Map<string, CachedUser>();
  const profiles = new ProfileCache({
    max: PROFILE_CACHE_MAX,
    ttlMs: PROFILE_CACHE_TTL_MS,
    now: millisecondsOf(clock),
  });
  const dropUser = (id: string) => {
    userCache.delete(id);
    profiles.drop(id);
  };

  /** Subscribes the user caches to changes made by other instances. */
  function startUserCache(): void {
    bus.subscribe(USER_TOPIC, dropUser);
  }

  /**
   * After the commit of any change to what the user caches hold (name, username, email, active,
   * superuser, 2FA state, lock, last login, password change, updated_at): drops the entries here,
   * at once, and on every other instance over the bus.
   */
  async function userChanged(...ids: string[]): Promise<void> {
    for (const id of ids) {
      dropUser(id);
      await bus.publish(USER_TOPIC, id);
    }
  }

  // Roles are read before any transaction opens: on PGlite (one connection) a read outside the
  // transaction would wait for it forever.
  function signFor(userId: string, orgId: string, sessionId: string, roles: readonly string[], jti?: string) {
    return signAccessToken(
      keys.activeKey(),
      { sub: userId, org: orgId, sid: sessionId, roles },
      {
        issuer: settings.issuer,
        ttlSeconds: settings.accessTokenTtlSeconds,
        now: clock(),
        ...(jti === undefined ? {} : { jti }),
      },
    );
  }

  // Work a request started and answered before it finished (a failed login's bookkeeping, so that
  // the answer takes the same time whatever the account): tracked, so that `settled` (tests, and
  // stop() before the database closes) can wait for it; failures go to onError.
  const inFlight = new Set<Promise<unknown>>();
  function later<T>(work: Promise<T>, what: string): Promise<T | undefined> {
    const tracked = work.catch((error: unknown) => {
      deps.onError?.(error, what);
      return undefined;
    });
    inFlight.add(tracked);
    void tracked.finally(() => inFlight.delete(tracked));
    return tracked;
  }

  /** Resolves once the work started with `later` so far has finished. */
  async function settled(): Promise<void> {
    while (inFlight.size > 0) await Promise.all(inFlight);
  }

  /** Revokes sessions matching `filter` with a `session.revoked` event each, then tells every instance. */
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
        sessionRevokedEvents(revoked, { orgId, principal, origin }, filter.userId, reason),
      );
      return revoked;
    });
    await revocation.publish(ids);
    return ids;
  }

  /** The signed-in user behind a principal. */
  async function currentUser(principal: Principal, tx: DbOrTx = db.db): Promise<User> {
    const user = await userById(tx, requireUser(principal));
    if (!user) throw identityErrors.user_not_found();
    return user;
  }

  return {
    ...deps,
    keys,
    revocation,
    refreshTokens,
    userCache,
    profiles,
    startUserCache,
    userChanged,
    signFor,
    revokeWhere,
    currentUser,
    later,
    settled,
  };
}

export type IdentityCore = ReturnType<typeof createIdentityCore>;
