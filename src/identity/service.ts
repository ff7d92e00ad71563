import { createAccount } from './account.ts';
import { createAuthenticator } from './authenticator.ts';
import { createIdentityCore, type IdentityDeps } from './core.ts';
import { createInvitations } from './invitations.ts';
import { createLogin } from './login.ts';
import { createOrgs } from './orgs.ts';
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

  async function start(): Promise<void> {
    await keys.start();
    await revocation.start();
    core.startUserCache();
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
    signingKeys: keys,
    revocation,
  };
}

export type IdentityService = ReturnType<typeof createIdentityService>;
