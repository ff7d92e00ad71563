import {
  createPrivateKey,
  sign as cryptoSign,
  type JsonWebKey,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { calculateJwkThumbprint, errors, exportJWK, generateKeyPair, importJWK, jwtVerify } from 'jose';

const ALG = 'EdDSA';
// RFC 9068's media type: a verifier that checks it cannot be handed an ID token or another JWT kind.
const TYP = 'at+jwt';
export const ACCESS_TOKEN_TTL_SECONDS = 900;

/**
 * An Ed25519 signing key. `privateJwk` is a secret: persist it sealed (src/crypto/envelope.ts),
 * never log it. `kid` is the RFC 7638 thumbprint of the public key.
 */
export interface SigningKey {
  readonly kid: string;
  readonly privateJwk: JWK;
  readonly publicJwk: JWK;
  readonly createdAt: Date;
}

function publicPart(jwk: JWK, kid: string): JWK {
  // Picked field by field so that a private JWK passed by mistake never publishes `d`.
  return { kty: jwk.kty, crv: jwk.crv, x: jwk.x, kid, alg: ALG, use: 'sig' };
}

function assertEd25519(jwk: JWK): void {
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') {
    throw new TypeError('expected an Ed25519 (OKP) JWK');
  }
}

/** Rebuilds a SigningKey from a stored private JWK (e.g. after unsealing it at boot). */
export async function signingKeyFromPrivateJwk(privateJwk: JWK, createdAt: Date): Promise<SigningKey> {
  assertEd25519(privateJwk);
  if (typeof privateJwk.d !== 'string') throw new TypeError('expected a private JWK');
  const kid = await calculateJwkThumbprint({ kty: 'OKP', crv: 'Ed25519', x: privateJwk.x });
  return {
    kid,
    privateJwk: { kty: 'OKP', crv: 'Ed25519', x: privateJwk.x, d: privateJwk.d, kid, alg: ALG },
    publicJwk: publicPart(privateJwk, kid),
    createdAt,
  };
}

/** A fresh Ed25519 key pair for access tokens. */
export async function generateSigningKey(now: Date = new Date()): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  return signingKeyFromPrivateJwk(await exportJWK(privateKey), now);
}

/** The document served at `/.well-known/jwks.json`: public keys only. */
export function toJwks(keys: readonly Pick<SigningKey, 'kid' | 'publicJwk'>[]): { keys: JWK[] } {
  return { keys: keys.map((k) => publicPart(k.publicJwk, k.kid)) };
}

/** What Steward puts in an access token besides the registered claims. */
export interface AccessTokenInput {
  sub: string;
  org: string;
  sid: string;
  roles: readonly string[];
  [claim: string]: unknown;
}

/** Verified access-token claims. */
export interface AccessTokenClaims extends JWTPayload {
  sub: string;
  org: string;
  sid: string;
  roles: string[];
  jti: string;
  iat: number;
  exp: number;
}

// Importing a JWK costs tens of microseconds; a long-lived SigningKey pays it once.
const importedPrivate = new WeakMap<SigningKey, { key: KeyObject; header: string }>();
function privateKeyOf(key: SigningKey): { key: KeyObject; header: string } {
  let imported = importedPrivate.get(key);
  if (imported === undefined) {
    imported = {
      key: createPrivateKey({ key: key.privateJwk as JsonWebKey, format: 'jwk' }),
      header: b64url(JSON.stringify({ alg: ALG, kid: key.kid, typ: TYP })),
    };
    importedPrivate.set(key, imported);
  }
  return imported;
}

const b64url = (text: string) => Buffer.from(text, 'utf8').toString('base64url');

/**
 * Signs an access token; returns its `jti` and expiry for the session row. A JWS compact
 * serialisation made with node:crypto's one-shot Ed25519 sign (about 2× cheaper than jose's
 * WebCrypto path, which hops through a promise job per signature); verifiers, jose included,
 * see a standard `EdDSA` JWT.
 */
export async function signAccessToken(
  key: SigningKey,
  input: AccessTokenInput,
  options: { issuer: string; audience?: string; ttlSeconds?: number; now?: Date; jti?: string },
): Promise<{ token: string; jti: string; expiresAt: Date }> {
  const { sub, org, sid, roles, ...extra } = input;
  for (const [name, value] of Object.entries({ sub, org, sid })) {
    if (typeof value !== 'string' || value === '')
      throw new TypeError(`access token needs a non-empty ${name}`);
  }
  if (!roles.every((r) => typeof r === 'string')) throw new TypeError('access token roles must be strings');
  const iat = Math.floor((options.now ?? new Date()).getTime() / 1000);
  const exp = iat + (options.ttlSeconds ?? ACCESS_TOKEN_TTL_SECONDS);
  // A caller may pick the jti to record it with the session in the same statement that rotates it.
  const jti = options.jti ?? randomBytes(16).toString('base64url');
  // Registered claims are set last so that `extra` can never override them.
  const payload: Record<string, unknown> = {
    ...extra,
    org,
    sid,
    roles: [...roles],
    sub,
    iss: options.issuer,
    iat,
    exp,
    jti,
  };
  if (options.audience !== undefined) payload.aud = options.audience;
  const signer = privateKeyOf(key);
  const signingInput = `${signer.header}.${b64url(JSON.stringify(payload))}`;
  const signature = cryptoSign(null, Buffer.from(signingInput, 'ascii'), signer.key).toString('base64url');
  return { token: `${signingInput}.${signature}`, jti, expiresAt: new Date(exp * 1000) };
}

/** Why a token was refused. */
export type TokenErrorCode = 'token_invalid' | 'token_expired' | 'token_unknown_key';

/** Thrown by TokenVerifier; the message is safe to log and never contains the token. */
export class TokenError extends Error {
  override readonly name = 'TokenError';
  constructor(
    readonly code: TokenErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export interface TokenVerifierOptions {
  issuer: string;
  audience?: string;
  /** Public JWKs accepted: the current key and any retired key whose tokens may still be live. */
  keys: readonly JWK[];
  /** Most tokens kept verified in memory (default 10,000; 0 disables the cache). */
  cacheSize?: number;
  /** Longest a verified token is served from memory before its signature is checked again (default 60 s). */
  cacheTtlSeconds?: number;
  clockToleranceSeconds?: number;
  now?: () => number;
}

interface CacheEntry {
  claims: AccessTokenClaims;
  untilMs: number;
  /** When the entry last moved to the young end of the cache (see RECENCY_MS). */
  touchedMs: number;
}

/** The last Authorization header a connection sent, and the cache entry its token had. */
interface ConnectionMemo {
  header: string;
  entry: CacheEntry;
}

/**
 * A hit moves its entry to the young end of the LRU at most this often: moving means a delete
 * and a re-insert in the Map, which measured ~2 µs of a ~35 µs authenticated request when done
 * on every hit. Eviction order only needs to be right to within a second.
 */
const RECENCY_MS = 1000;

/**
 * Verifies Steward access tokens offline, and remembers verified tokens so a hot path pays for
 * Ed25519 once per token. The cache only vouches for the signature and expiry: it stores claims,
 * not a session's liveness. Callers must check `sid` against their revoked-session set on EVERY
 * request (cached or not); that is how a revoke applies within a second while tokens live 15 min.
 */
export class TokenVerifier {
  readonly #issuer: string;
  readonly #audience: string | undefined;
  readonly #maxEntries: number;
  readonly #ttlMs: number;
  readonly #tolerance: number;
  readonly #now: () => number;
  readonly #cache = new Map<string, CacheEntry>();
  /** Per connection (socket): replaced, so emptied, whenever the keys change. */
  #memos = new WeakMap<object, ConnectionMemo>();
  #keys = new Map<string, { jwk: JWK; imported?: Promise<CryptoKey> }>();
  #hits = 0;
  #misses = 0;

  constructor(options: TokenVerifierOptions) {
    this.#issuer = options.issuer;
    this.#audience = options.audience;
    this.#maxEntries = options.cacheSize ?? 10_000;
    this.#ttlMs = (options.cacheTtlSeconds ?? 60) * 1000;
    this.#tolerance = options.clockToleranceSeconds ?? 0;
    this.#now = options.now ?? Date.now;
    this.setKeys(options.keys);
  }

  /** Replaces the accepted keys and forgets every cached token, so a withdrawn key stops working at once. */
  setKeys(keys: readonly JWK[]): void {
    const next = new Map<string, { jwk: JWK }>();
    for (const jwk of keys) {
      assertEd25519(jwk);
      if (typeof jwk.kid !== 'string' || jwk.kid === '')
        throw new TypeError('every verification key needs a kid');
      if (jwk.d !== undefined) throw new TypeError('verification keys must be public JWKs');
      next.set(jwk.kid, { jwk: publicPart(jwk, jwk.kid) });
    }
    this.#keys = next;
    this.#cache.clear();
    this.#memos = new WeakMap();
  }

  /** Counters for /metrics. */
  stats(): { hits: number; misses: number; size: number } {
    return { hits: this.#hits, misses: this.#misses, size: this.#cache.size };
  }

  /**
   * The claims of a token verified within the cache lifetime, or undefined (call `verify`).
   * Synchronous: the hot path of an authenticated request. With `memo`, a hit is also remembered
   * for that connection (see `recall`).
   */
  cached(token: string, memo?: { connection: object; header: string }): AccessTokenClaims | undefined {
    const entry = this.#cache.get(token);
    if (entry === undefined) return undefined;
    const now = this.#now();
    if (now >= entry.untilMs) return undefined;
    if (now - entry.touchedMs >= RECENCY_MS) {
      entry.touchedMs = now;
      this.#cache.delete(token);
      this.#cache.set(token, entry); // re-insert: the Map's order doubles as recency
    }
    if (memo !== undefined) this.#memos.set(memo.connection, { header: memo.header, entry });
    this.#hits++;
    return entry.claims;
  }

  /**
   * What `cached` answered for this connection's previous request, if it sends the very same
   * Authorization header again (a keep-alive client re-sends its token on every request).
   * Comparing the header with the remembered one costs far less than hashing a ~400-character
   * token into the cache. The answer is the cache's own: the same entry, the same expiry, and
   * nothing once the keys change. A connection that carries several callers (a proxy) only
   * misses here and falls back to `cached`.
   */
  recall(connection: object, header: string): AccessTokenClaims | undefined {
    const memo = this.#memos.get(connection);
    if (memo === undefined || memo.header !== header) return undefined;
    if (this.#now() >= memo.entry.untilMs) {
      this.#memos.delete(connection);
      return undefined;
    }
    this.#hits++;
    return memo.entry.claims;
  }

  /** Returns the token's claims or throws TokenError. */
  async verify(token: string): Promise<AccessTokenClaims> {
    const now = this.#now();
    const cached = this.#cache.get(token);
    if (cached !== undefined) {
      this.#cache.delete(token);
      if (now < cached.untilMs) {
        this.#cache.set(token, cached); // re-insert: the Map's order doubles as recency
        this.#hits++;
        return cached.claims;
      }
    }
    this.#misses++;
    const claims = await this.#verifySignature(token, now);
    if (this.#maxEntries > 0) {
      const untilMs = Math.min(claims.exp * 1000, now + this.#ttlMs);
      this.#cache.set(token, { claims, untilMs, touchedMs: now });
      if (this.#cache.size > this.#maxEntries) {
        const oldest = this.#cache.keys().next().value;
        if (oldest !== undefined) this.#cache.delete(oldest);
      }
    }
    return claims;
  }

  async #verifySignature(token: string, now: number): Promise<AccessTokenClaims> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, (header) => this.#keyFor(header.kid), {
        algorithms: [ALG],
        typ: TYP,
        issuer: this.#issuer,
        ...(this.#audience === undefined ? {} : { audience: this.#audience }),
        requiredClaims: ['sub', 'jti', 'iat', 'exp'],
        clockTolerance: this.#tolerance,
        currentDate: new Date(now),
      }));
    } catch (err) {
      if (err instanceof TokenError) throw err;
      if (err instanceof errors.JWTExpired) throw new TokenError('token_expired', 'access token expired');
      throw new TokenError('token_invalid', 'access token invalid');
    }
    const { org, sid, roles } = payload;
    if (
      typeof org !== 'string' ||
      typeof sid !== 'string' ||
      !Array.isArray(roles) ||
      !roles.every((r) => typeof r === 'string')
    ) {
      throw new TokenError('token_invalid', 'access token lacks org, sid or roles');
    }
    // Frozen because the same object is handed to every request that presents this token.
    Object.freeze(roles);
    return Object.freeze(payload) as AccessTokenClaims;
  }

  #keyFor(kid: string | undefined): Promise<CryptoKey> {
    if (kid === undefined) throw new TokenError('token_invalid', 'access token has no kid');
    const entry = this.#keys.get(kid);
    if (entry === undefined)
      throw new TokenError('token_unknown_key', 'access token signed by an unknown key');
    entry.imported ??= importJWK(entry.jwk, ALG) as Promise<CryptoKey>;
    return entry.imported;
  }
}
