import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { AuditRecorder } from '../audit/service.ts';
import type { AuthzService } from '../authz/service.ts';
import type { InvalidationBus } from '../bus/index.ts';
import type { Config } from '../config.ts';
import type { StewardContext } from '../context.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle } from '../db/client.ts';
import { isId } from '../db/ids.ts';
import { renderCounter } from '../http/metrics.ts';
import type { Principal } from '../http/principal.ts';
import type { IdentityService } from '../identity/service.ts';
import { keyErrors } from './errors.ts';
import { createKeyRateLimiters } from './limits.ts';
import * as q from './queries.ts';
import { keysRoutes } from './routes.ts';
import { createKeysService, type KeysService } from './service.ts';
import { resolveTiers } from './tiers.ts';
import { createVerifier, type KeyOwner, keyIsSuperuser, type Verification } from './verifier.ts';
import { webhookKeyRoutes } from './webhook-routes.ts';

function rateHeaders(v: Verification): Record<string, string> {
  const resetS = Math.ceil(v.resetMs / 1000);
  return {
    'ratelimit-limit': String(v.limit),
    'ratelimit-remaining': String(Math.max(0, v.remaining)),
    'ratelimit-reset': String(resetS),
    ...(v.code === 'rate_limited' ? { 'retry-after': String(Math.max(1, resetS)) } : {}),
  };
}

/**
 * Turns a verification into the request's principal, or the error the caller sees. A refusal
 * after the rate limiter took its point (quota exceeded, suspended for a burst) carries the
 * `RateLimit-*` headers too: a key with a rate limit sees them on every counted response.
 */
function principalOf(request: FastifyRequest, v: Verification): Principal {
  const key = v.key;
  if (v.code === 'valid' && key !== null) {
    if (v.limit >= 0) request.authHeaders = rateHeaders(v);
    return key.principal;
  }
  const extra = { reason: v.code };
  const headers = v.limit >= 0 ? rateHeaders(v) : undefined;
  switch (v.code) {
    case 'malformed':
      throw keyErrors.key_malformed('The API key is not in the stw_<env>_<random>_<checksum> form', extra);
    case 'not_found':
      throw keyErrors.key_not_found(undefined, extra);
    case 'revoked':
      throw keyErrors.key_revoked(undefined, extra);
    case 'expired':
      throw keyErrors.key_expired(undefined, extra);
    case 'disabled':
      throw keyErrors.key_disabled(undefined, extra, headers);
    case 'ip_not_allowed':
      throw keyErrors.key_ip_not_allowed(`${request.ip} is not in the key's allowlist`, extra);
    case 'rate_limited':
      throw keyErrors.rate_limited('The key’s rate limit is used up', extra, headers);
    case 'quota_exceeded': {
      const endMs = key === null ? v.nowMs : Date.parse(key.usage.periodEndIso);
      throw keyErrors.quota_exceeded(
        `The quota resets at ${key?.usage.periodEndIso ?? 'period end'}`,
        extra,
        {
          ...headers,
          'retry-after': String(Math.max(1, Math.ceil((endMs - v.nowMs) / 1000))),
        },
      );
    }
    default:
      throw keyErrors.key_not_found(undefined, extra);
  }
}

/**
 * Whether a request carries an API key and no other credential: `X-API-Key` without an
 * `Authorization` header, or `Authorization: Bearer stw_…`. With an access token in
 * Authorization as well, the chain decides (the token first, as before this shortcut).
 */
function carriesApiKey(request: FastifyRequest): boolean {
  const authorization = request.headers.authorization;
  if (authorization === undefined) return request.headers['x-api-key'] !== undefined;
  return isApiKeyBearer(authorization);
}

function isApiKeyBearer(authorization: string): boolean {
  return (
    authorization.length >= 12 &&
    authorization.startsWith('stw_', 7) &&
    authorization.slice(0, 7).toLowerCase() === 'bearer '
  );
}

/** What openKeys needs: the foundation's services. */
export interface KeysDeps {
  config: Config;
  db: DbHandle;
  bus: InvalidationBus;
  audit: AuditRecorder;
  authz: Pick<AuthzService, 'check' | 'checkSync' | 'rolesOf' | 'usePrincipalKind'>;
  identity: Pick<IdentityService, 'findPrincipal'>;
  keyring: Keyring;
  clock: () => Date;
  onError(error: unknown, what: string): void;
  onWarn?(details: Record<string, unknown>, message: string): void;
}

/**
 * The keys domain's services: the verifier (cache, limits, batched usage, invalidation) and the
 * keys service. Made in buildApp (like identity) so `ctx.keys` reaches tests, benchmarks and CLI.
 */
export async function openKeys(deps: KeysDeps) {
  const { config, db, bus, authz, identity, audit, keyring, clock, onError } = deps;
  const tiers = resolveTiers(config.API_KEY_TIERS);
  const limiters = await createKeyRateLimiters({
    redisUrl: config.REDIS_URL,
    redisPrefix: config.REDIS_PREFIX,
    onError: (error) => onError(error, 'api key rate limiter redis'),
  });
  let service: KeysService | undefined;
  async function findOwner(orgId: string, ownerId: string): Promise<KeyOwner | null> {
    if (isId('usr', ownerId)) {
      const user = await identity.findPrincipal(orgId, ownerId);
      return user === null ? null : { name: user.name, roles: user.roles, superuser: user.superuser };
    }
    if (isId('agt', ownerId)) {
      return { name: ownerId, roles: await authz.rolesOf(orgId, ownerId), superuser: false };
    }
    return null;
  }
  // Authz asks the keys domain who a `key_…` id is ("what can this key do?"): a live key of
  // the org, acting with its owner's rights narrowed to its scopes. Whatever verification refuses
  // before its limits is nobody: revoked, expired, disabled (switched off or suspended for a
  // burst: `active` false) or an inactive owner — the key's `disabled` answer.
  authz.usePrincipalKind('key', {
    async find(orgId, id, tx) {
      const row = await q.keyById(tx ?? db.db, orgId, id);
      if (!row || row.revokedAt !== null || !row.active) return null;
      if (row.expiresAt !== null && row.expiresAt <= clock()) return null;
      const owner = await findOwner(orgId, row.ownerId);
      if (owner === null) return null;
      return {
        orgId,
        kind: 'key',
        id: row.id,
        name: row.name,
        roles: owner.roles,
        scopes: row.scopes,
        superuser: keyIsSuperuser(owner.superuser, row.scopes),
        keyId: row.id,
        ownerId: row.ownerId,
      };
    },
  });
  const verifier = createVerifier({
    db,
    bus,
    authz,
    limiters,
    tiers,
    clock,
    flushMs: config.API_KEY_FLUSH_MS,
    pollMs: config.API_KEY_POLL_MS,
    onError,
    findOwner,
    onBurst(key, count) {
      deps.onWarn?.({ keyId: key.id, orgId: key.orgId, count }, 'security.burst_detected');
      service?.reportBurst(key, count).catch((error: unknown) => onError(error, 'burst report'));
    },
  });
  service = createKeysService({
    db,
    audit,
    authz,
    keyring,
    verifier,
    tiers,
    defaultEnvironment: config.API_KEY_ENVIRONMENT,
    clock,
    findUser: (orgId, id) => identity.findPrincipal(orgId, id),
    onError,
  });
  return {
    service,
    verifier,
    /** Writes pending usage and closes the limiter's Redis connection. */
    async stop() {
      await verifier.stop();
      await limiters.close();
    },
  };
}

/** The keys domain as ctx carries it. */
export type KeysDomain = Awaited<ReturnType<typeof openKeys>>;

/** The `Bearer stw_…` / `X-API-Key` authenticator for every Steward route, and the routes. */
export const keysPlugin: FastifyPluginAsync<{ ctx: StewardContext }> = async (app, { ctx }) => {
  const { service, verifier } = ctx.keys;
  ctx.onShutdown(() => ctx.keys.stop());
  // Verifications are counted, not audited: plain numbers in the verifier, rendered when scraped.
  app.stewardMetrics.addSeries(() =>
    renderCounter(
      'steward_api_key_verifications_total',
      'API key verifications (every route and POST /v1/keys/verify) by result code',
      'code',
      verifier.counts(),
    ),
  );

  ctx.auth.addAuthenticator({
    name: 'api-key',
    recognizes: carriesApiKey,
    // What `principalOf` throws (rate_limited is the HTTP layer's code, shared anyway).
    errors: [
      'key_malformed',
      'key_not_found',
      'key_revoked',
      'key_expired',
      'key_disabled',
      'key_ip_not_allowed',
      'quota_exceeded',
    ],
    authenticate(request) {
      let key = request.headers['x-api-key'];
      if (key === undefined) {
        const authorization = request.headers.authorization;
        if (authorization === undefined || !isApiKeyBearer(authorization)) return null;
        key = authorization.slice(7).trim();
      }
      if (typeof key !== 'string') {
        throw keyErrors.key_malformed('Send one X-API-Key header', { reason: 'malformed' });
      }
      // The socket keys the per-connection hash memo; none (a detached request): no memo.
      const result = verifier.verify(key, { ip: request.ip, connection: request.raw.socket ?? undefined });
      return result instanceof Promise
        ? result.then((v) => principalOf(request, v))
        : principalOf(request, result);
    },
  });

  await app.register(keysRoutes, { keys: service, verifier });
  await app.register(webhookKeyRoutes, { keys: service });
};
