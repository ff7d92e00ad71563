import type { FastifyPluginAsync } from 'fastify';
import { type AuthzService, defaultPrincipalDirectory } from '../authz/service.ts';
import type { Config } from '../config.ts';
import type { StewardContext } from '../context.ts';
import { isId } from '../db/ids.ts';
import { createLoginIpLimiter } from './limiter.ts';
import { registrationRoutes } from './registration-routes.ts';
import { identityRoutes } from './routes.ts';
import { createIdentityService, type IdentityDeps, type IdentityService } from './service.ts';

/** Identity's settings, read from the configuration. */
export function identitySettings(config: Config): IdentityDeps['settings'] {
  return {
    issuer: config.ACCESS_TOKEN_ISSUER,
    accessTokenTtlSeconds: config.ACCESS_TOKEN_TTL_SECONDS,
    sessionTtlDays: config.SESSION_TTL_DAYS,
    signingKeyRotationDays: config.SIGNING_KEY_ROTATION_DAYS,
    maxFailures: config.LOGIN_MAX_FAILURES,
    lockoutMinutes: config.LOGIN_LOCKOUT_MINUTES,
    mfaTokenTtlSeconds: config.MFA_TOKEN_TTL_SECONDS,
    revocationPollMs: config.SESSION_REVOCATION_POLL_MS,
  };
}

/** Builds the identity service with its per-IP limiter (Redis-backed when REDIS_URL is set). */
export async function openIdentityService(
  deps: Omit<IdentityDeps, 'limiter' | 'settings' | 'authz' | 'rolesOfSync' | 'onError'> & {
    /** The authz service; its index cache, when present, gives roles without a promise. */
    authz: IdentityDeps['authz'] & Partial<Pick<AuthzService, 'cache'>>;
    config: Config;
    onError?: (error: Error) => void;
  },
): Promise<IdentityService> {
  const { config, onError, ...rest } = deps;
  const { authz } = rest;
  const limiter = await createLoginIpLimiter({
    maxFailures: config.LOGIN_IP_MAX_FAILURES,
    windowSeconds: config.LOGIN_IP_WINDOW_SECONDS,
    redisUrl: config.REDIS_URL,
    redisPrefix: config.REDIS_PREFIX,
    ...(onError ? { onError } : {}),
  });
  return createIdentityService({
    ...rest,
    limiter,
    settings: identitySettings(config),
    ...(onError
      ? { onError: (error: unknown, what: string) => onError(new Error(what, { cause: error })) }
      : {}),
    rolesOfSync: authz.cache
      ? (orgId, principalId) => authz.cache?.get(orgId)?.rolesOf(principalId)
      : undefined,
  });
}

/** Loads signing keys and revoked sessions, plugs the access-token authenticator in, adds the routes. */
export const identityPlugin: FastifyPluginAsync<{ ctx: StewardContext }> = async (app, { ctx }) => {
  const { identity } = ctx;
  await identity.start();
  ctx.onShutdown(() => identity.stop());
  // Authz asks who a `usr_…` id is (role assignment, checks for another principal); other kinds
  // keep the default answer until their domain plugs in.
  ctx.authz.usePrincipalDirectory({
    find: (orgId, id, tx) =>
      isId('usr', id) ? identity.findPrincipal(orgId, id, tx) : defaultPrincipalDirectory.find(orgId, id, tx),
  });
  ctx.auth.addAuthenticator({
    name: 'access-token',
    errors: ['token_expired', 'token_invalid', 'session_revoked'],
    // The socket keys the per-connection token memo; none (a detached request): no memo.
    authenticate: (request) =>
      identity.authenticate(request.headers.authorization, request.raw.socket ?? undefined),
  });
  await app.register(identityRoutes, { identity, authz: ctx.authz });
  await app.register(registrationRoutes, { identity, authz: ctx.authz, clock: ctx.clock });
};
