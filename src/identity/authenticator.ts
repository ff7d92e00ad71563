// Bearer access token → Principal, on every request; and authz's directory of `usr_…` principals.
import type { DbOrTx } from '../db/client.ts';
import { isId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import { type CachedUser, displayName, type IdentityCore } from './core.ts';
import { identityErrors } from './errors.ts';
import { type AccessTokenClaims, TokenError, TokenVerifier } from './jwt.ts';
import { memberById, userById } from './queries.ts';

const USER_CACHE_MS = 60_000;

export function createAuthenticator(core: IdentityCore) {
  const { db, authz, clock, settings, keys, revocation, userCache } = core;
  const verifier = new TokenVerifier({
    issuer: settings.issuer,
    keys: [],
    now: () => clock().getTime(),
  });
  keys.onChange((publicKeys) => verifier.setKeys(publicKeys));

  async function userInfo(id: string): Promise<CachedUser | undefined> {
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

  /** The token of a `Bearer <JWT>` header; null for anything else (an API key is another authenticator's). */
  function bearerJwt(authorization: string | undefined): string | null {
    if (authorization === undefined || authorization.length < 8) return null;
    if (authorization.slice(0, 7).toLowerCase() !== 'bearer ') return null;
    const token = authorization.slice(7).trim();
    if (!token.startsWith('eyJ') || token.split('.').length !== 3) return null;
    return token;
  }

  function principalOf(claims: AccessTokenClaims, info: CachedUser, roles: readonly string[]): Principal {
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

  /**
   * Bearer JWT → Principal. Verification is cached (TokenVerifier); the revoked-session check and
   * the roles (from authz's index, not the token) are read on every request. Synchronous when
   * everything is warm (a token seen in the last minute, its user cached, its org's index
   * loaded): the hot path allocates no promise.
   */
  function authenticate(authorization: string | undefined): Principal | null | Promise<Principal | null> {
    const token = bearerJwt(authorization);
    if (token === null) return null;
    const claims = verifier.cached(token);
    if (claims === undefined) return authenticateSlowly(token);
    if (revocation.isRevoked(claims.sid)) throw identityErrors.session_revoked();
    const cached = userCache.get(claims.sub);
    const roles = core.rolesOfSync?.(claims.org, claims.sub);
    if (cached === undefined || cached.until <= clock().getTime() || roles === undefined) {
      return withUser(claims);
    }
    if (!cached.active) throw identityErrors.session_revoked();
    return principalOf(claims, cached, roles);
  }

  async function authenticateSlowly(token: string): Promise<Principal | null> {
    let claims: AccessTokenClaims;
    try {
      claims = await verifier.verify(token);
    } catch (error) {
      if (!(error instanceof TokenError)) throw error;
      if (error.code === 'token_unknown_key' && Date.now() - lastKeyReload > 1000) {
        // Signed by a key another instance just made: re-read the keys once and retry.
        lastKeyReload = Date.now();
        await keys.load();
        return authenticateSlowly(token);
      }
      throw error.code === 'token_expired' ? identityErrors.token_expired() : identityErrors.token_invalid();
    }
    if (revocation.isRevoked(claims.sid)) throw identityErrors.session_revoked();
    return withUser(claims);
  }

  async function withUser(claims: AccessTokenClaims): Promise<Principal> {
    const info = await userInfo(claims.sub);
    if (!info?.active) throw identityErrors.session_revoked();
    // Read after the await: a revoke that arrived meanwhile still counts.
    if (revocation.isRevoked(claims.sid)) throw identityErrors.session_revoked();
    return principalOf(claims, info, await authz.rolesOf(claims.org, claims.sub));
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

  return { authenticate, findPrincipal, verifierStats: () => verifier.stats() };
}
