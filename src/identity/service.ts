import { createAccount } from './account.ts';
import { createAuthenticator } from './authenticator.ts';
import { createIdentityCore, type IdentityDeps } from './core.ts';
import { createInvitations } from './invitations.ts';
import { createLogin } from './login.ts';
import { createOrgs } from './orgs.ts';
import { purgeMfaChallenges } from './queries.ts';
import { createSessions } from './sessions.ts';
import { createTwoFactor } from './two-factor.ts';
import { createUsers } from './users.ts';

export type {
  IdentityDeps,
  IdentitySettings,
  LoginResult,
  Origin,
  TokenPair,
  UserView,
} from './core.ts';
export { generatePassword } from './core.ts';

/**
 * Users, org memberships, registration (invitations, open sign-up), logins with lockout and 2FA,
 * sessions with rotating refresh tokens, the access-token authenticator and signing keys. Owns
 * its transactions; audits every change in the transaction that makes it. Each part lives in its
 * own file and shares one IdentityCore (core.ts).
 */
export function createIdentityService(deps: IdentityDeps) {
  const core = createIdentityCore(deps);
  const { keys, revocation, limiter } = core;
  const authenticator = createAuthenticator(core);
  let keyTimer: NodeJS.Timeout | undefined;
  let purgeTimer: NodeJS.Timeout | undefined;
  // An expired challenge answers `mfa_token_expired` for an hour before it goes (then: invalid).
  const purgeChallenges = () => purgeMfaChallenges(deps.db.db, new Date(deps.clock().getTime() - 3_600_000));

  async function start(): Promise<void> {
    await keys.start();
    await revocation.start();
    core.startUserCache();
    // Rotation and expiry of signing keys; every instance re-reads, one wins a rotation.
    keyTimer = setInterval(() => {
      keys.tick().catch(() => {});
    }, 60_000);
    keyTimer.unref();
    // Expired 2FA challenges would otherwise pile up, one per password login of a 2FA user.
    purgeTimer = setInterval(() => {
      purgeChallenges().catch(() => {});
    }, 3_600_000);
    purgeTimer.unref();
  }

  async function stop(): Promise<void> {
    clearInterval(keyTimer);
    clearInterval(purgeTimer);
    revocation.stop();
    await core.settled(); // failed logins' bookkeeping, before the database closes
    await limiter.close();
  }

  return {
    start,
    stop,
    ...createLogin(core),
    ...createSessions(core),
    ...createAccount(core),
    ...createTwoFactor(core),
    ...createUsers(core),
    ...createOrgs(core),
    ...createInvitations(core),
    ...authenticator,
    jwks: () => keys.jwks(),
    rotateSigningKey: () => keys.rotate(),
    /** Deletes expired 2FA challenges (hourly on its own; tests call it). */
    purgeChallenges,
    /** Resolves once the bookkeeping of answered failed logins is written (tests; stop() waits too). */
    settled: () => core.settled(),
    signingKeys: keys,
    revocation,
  };
}

export type IdentityService = ReturnType<typeof createIdentityService>;
