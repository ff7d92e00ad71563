// Bearer access token → Principal, on every request; and authz's directory of `usr_…` principals.
import { millisecondsOf } from '../clock.ts';
import type { DbOrTx } from '../db/client.ts';
import { isId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import { type CachedUser, displayName, type IdentityCore } from './core.ts';
import { identityErrors } from './errors.ts';
import { type AccessTokenClaims, TokenError, TokenVerifier } from './jwt.ts';
import { memberById, userById } from './queries.ts';

const USER_CACHE_MS = 60_000;
// RFC 9110: the scheme is case-insensitive.
const BEARER = /^bearer /i;

export function createAuthenticator(core: IdentityCore) {
  const { db, authz, clock, settings, keys, revocation, userCache } = core;
  const nowMs = millisecondsOf(clock);
  const verifier = new TokenVerifier({ issuer: settings.issuer, keys: [], now: nowMs });
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
  function bearerJwt(authorization: string): string | null {
    if (authorization.length < 8 || !BEARER.test(authorization)) return null;
    const token = authorization.slice(7).trim();
    if (!token.startsWith('eyJ')) return null;
    // Exactly two dots (header.payload.signature), found without splitting the token.
    const first = token.indexOf('.');
    const second = first < 0 ? -1 : token.indexOf('.', first + 1);
    if (second < 0 || token.indexOf('.', second + 1) >= 0) return null;
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
   * Bearer JWT → Principal. Verification is cached (TokenVerifier), and remembered per connection
   * (`connection`: the request's socket) so a keep-alive client's next request with the same header
   * skips the token cache's lookup. The revoked-session check and
   * the roles (from authz's index, not the token) are read on every request. Synchronous when
   * everything is warm (a token seen in the last minute, its user cached, its org's index
   * loaded): the hot path allocates no promise.
   */
  function authenticate(
    authorization: string | undefined,
    connection?: object,
  ): Principal | null | Promise<Principal | null> {
    if (authorization === undefined) return null;
    let claims = connection === undefined ? undefined : verifier.recall(connection, authorization);
    if (claims === undefined) {
      const token = bearerJwt(authorization);
      if (token === null) return null;
      claims = verifier.cached(
        token,
        connection === undefined ? undefined : { connection, header: authorization },
      );
      if (claims === undefined) return authenticateSlowly(token);
    }
    if (revocation.isRevoked(claims.sid)) throw identityErrors.session_revoked();
    const cached = userCache.get(claims.sub);
    const roles = core.rolesOfSync?.(claims.org, claims.sub);
    if (cached === undefined || cached.until <= nowMs() || roles === undefined) {
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
