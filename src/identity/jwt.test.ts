import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import type { JWK } from 'jose';
import {
  base64url,
  compactVerify,
  createLocalJWKSet,
  decodeProtectedHeader,
  importJWK,
  jwtVerify,
  SignJWT,
} from 'jose';
import {
  generateSigningKey,
  type SigningKey,
  signAccessToken,
  signingKeyFromPrivateJwk,
  TokenError,
  type TokenErrorCode,
  TokenVerifier,
  toJwks,
} from './jwt.ts';

const testdata = new URL('../../../shared/testdata/', import.meta.url);
const load = (path: string): unknown => JSON.parse(readFileSync(new URL(path, testdata), 'utf8'));
const issuer = 'https://steward.test';
const claims = { sub: 'usr_1', org: 'org_1', sid: 'ses_1', roles: ['admin'] };
const refused = (code: TokenErrorCode) => (e: unknown) => e instanceof TokenError && e.code === code;

class Clock {
  constructor(public ms: number) {}
  now = () => this.ms;
}

const keyA = await generateSigningKey(new Date('2026-01-01T00:00:00Z'));
const keyB = await generateSigningKey(new Date('2026-02-01T00:00:00Z'));
const t0 = Date.parse('2026-03-01T12:00:00Z');

function verifier(
  keys: SigningKey[],
  clock = new Clock(t0),
  extra: { cacheTtlSeconds?: number; cacheSize?: number } = {},
) {
  return new TokenVerifier({ issuer, keys: keys.map((k) => k.publicJwk), now: clock.now, ...extra });
}
const sign = (key: SigningKey, at = t0, ttlSeconds = 900) =>
  signAccessToken(key, claims, { issuer, ttlSeconds, now: new Date(at) });

describe('signing keys and JWKS', () => {
  it('generates Ed25519 keys with a thumbprint kid and a public-only JWKS', () => {
    assert.equal(keyA.publicJwk.kty, 'OKP');
    assert.equal(keyA.publicJwk.crv, 'Ed25519');
    assert.equal(keyA.publicJwk.kid, keyA.kid);
    assert.equal(keyA.publicJwk.d, undefined);
    assert.notEqual(keyA.kid, keyB.kid);
    const jwks = toJwks([keyA, { kid: keyB.kid, publicJwk: keyB.privateJwk }]);
    assert.equal(jwks.keys.length, 2);
    assert.ok(!JSON.stringify(jwks).includes(String(keyB.privateJwk.d)), 'JWKS must never carry d');
    assert.deepEqual(
      jwks.keys.map((k) => [k.kid, k.alg, k.use]),
      [
        [keyA.kid, 'EdDSA', 'sig'],
        [keyB.kid, 'EdDSA', 'sig'],
      ],
    );
  });

  it('derives the RFC 8037 A.3 thumbprint and signature for the RFC 8037 key', async () => {
    const example = load('jose-cookbook-rfc7520/curve25519/jws.json') as {
      input: { key: JWK };
      output: { compact: string };
    };
    const key = await signingKeyFromPrivateJwk(example.input.key, new Date());
    assert.equal(key.kid, 'kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k');
    // The public half we derive verifies the RFC's own signature.
    const { payload } = await compactVerify(example.output.compact, await importJWK(key.publicJwk, 'EdDSA'));
    assert.equal(new TextDecoder().decode(payload), 'Example of Ed25519 signing');
    // …but that JWS is no access token: no kid, no JWT claims.
    const v = new TokenVerifier({ issuer, keys: [key.publicJwk] });
    await assert.rejects(v.verify(example.output.compact), refused('token_invalid'));
  });
});

describe('signAccessToken', () => {
  it('puts kid and typ in the header and sub, org, sid, roles, jti, iat, exp, iss in the claims', async () => {
    const { token, jti, expiresAt } = await sign(keyA);
    assert.deepEqual(decodeProtectedHeader(token), { alg: 'EdDSA', kid: keyA.kid, typ: 'at+jwt' });
    assert.equal(expiresAt.getTime(), t0 + 900_000);
    const got = await verifier([keyA]).verify(token);
    assert.deepEqual({ ...got }, { ...claims, jti, iss: issuer, iat: t0 / 1000, exp: t0 / 1000 + 900 });
    assert.notEqual((await sign(keyA)).jti, jti);
  });

  it('never lets extra claims override registered ones', async () => {
    const { token } = await signAccessToken(
      keyA,
      { ...claims, exp: 9_999_999_999, iss: 'evil', scope: 'x' },
      {
        issuer,
        now: new Date(t0),
      },
    );
    const got = await verifier([keyA]).verify(token);
    assert.equal(got.exp, t0 / 1000 + 900);
    assert.equal(got.iss, issuer);
    assert.equal(got.scope, 'x');
  });

  it('is verifiable by a separate client holding only the JWKS', async () => {
    const { token } = await signAccessToken(keyA, claims, { issuer });
    const jwks = createLocalJWKSet(JSON.parse(JSON.stringify(toJwks([keyA, keyB]))));
    const { payload } = await jwtVerify(token, jwks, { issuer, algorithms: ['EdDSA'] });
    assert.equal(payload.sub, 'usr_1');
  });
});

describe('TokenVerifier refusals', () => {
  it('refuses the RFC 7519 / 7515 examples: HS256, tampered, alg none', async () => {
    const file = load('jwt-rfc-examples/jwt-vectors.json') as { cases: { name: string; token: string }[] };
    assert.equal(file.cases.length, 4);
    const v = new TokenVerifier({ issuer: 'joe', keys: [keyA.publicJwk], now: () => 1_300_000_000_000 });
    for (const c of file.cases) await assert.rejects(v.verify(c.token), refused('token_invalid'), c.name);
  });

  it('refuses alg none and HS256 made with the public key as secret, even with our kid', async () => {
    const v = verifier([keyA]);
    const payload = { ...claims, iss: issuer, jti: 'j', iat: t0 / 1000, exp: t0 / 1000 + 900 };
    const b64 = (o: object) => base64url.encode(JSON.stringify(o));
    const none = `${b64({ alg: 'none', kid: keyA.kid, typ: 'at+jwt' })}.${b64(payload)}.`;
    await assert.rejects(v.verify(none), refused('token_invalid'));
    const secret = new TextEncoder().encode(JSON.stringify(keyA.publicJwk));
    for (const s of [secret, base64url.decode(String(keyA.publicJwk.x))]) {
      const hs = await new SignJWT(payload)
        .setProtectedHeader({ alg: 'HS256', kid: keyA.kid, typ: 'at+jwt' })
        .sign(s);
      await assert.rejects(v.verify(hs), refused('token_invalid'));
    }
  });

  it('refuses tampered payloads and signatures', async () => {
    const { token } = await sign(keyA);
    const [h, p, s] = token.split('.');
    const forged = base64url.encode(
      JSON.stringify({ ...claims, roles: ['superuser'], exp: t0 / 1000 + 900 }),
    );
    const v = verifier([keyA]);
    await assert.rejects(v.verify(`${h}.${forged}.${s}`), refused('token_invalid'));
    const sig = base64url.decode(s ?? '');
    sig[0] = (sig[0] ?? 0) ^ 1;
    await assert.rejects(v.verify(`${h}.${p}.${base64url.encode(sig)}`), refused('token_invalid'));
    await assert.rejects(v.verify('not.a.jwt'), refused('token_invalid'));
    await assert.rejects(v.verify(''), refused('token_invalid'));
  });

  it('refuses a wrong issuer, a wrong typ and a missing kid', async () => {
    const v = verifier([keyA]);
    const other = await signAccessToken(keyA, claims, { issuer: 'https://elsewhere', now: new Date(t0) });
    await assert.rejects(v.verify(other.token), refused('token_invalid'));
    const priv = await importJWK(keyA.privateJwk, 'EdDSA');
    const base = () =>
      new SignJWT({ ...claims, jti: 'j' })
        .setIssuer(issuer)
        .setIssuedAt(t0 / 1000)
        .setExpirationTime(t0 / 1000 + 60);
    const good = await base().setProtectedHeader({ alg: 'EdDSA', kid: keyA.kid, typ: 'at+jwt' }).sign(priv);
    assert.equal((await v.verify(good)).sub, 'usr_1');
    const idToken = await base().setProtectedHeader({ alg: 'EdDSA', kid: keyA.kid, typ: 'JWT' }).sign(priv);
    await assert.rejects(v.verify(idToken), refused('token_invalid'));
    const noKid = await base().setProtectedHeader({ alg: 'EdDSA', typ: 'at+jwt' }).sign(priv);
    await assert.rejects(v.verify(noKid), refused('token_invalid'));
  });

  it('refuses expired tokens and unknown kids', async () => {
    const clock = new Clock(t0);
    const v = verifier([keyA], clock);
    const { token } = await sign(keyA);
    clock.ms = t0 + 900_000;
    await assert.rejects(v.verify(token), refused('token_expired'));
    await assert.rejects(verifier([keyB]).verify((await sign(keyA)).token), refused('token_unknown_key'));
  });
});

describe('TokenVerifier rotation and cache', () => {
  it('accepts the retired key until it is withdrawn, cached or not', async () => {
    const oldToken = (await sign(keyA)).token;
    const newToken = (await sign(keyB)).token;
    const v = verifier([keyB, keyA]);
    assert.equal((await v.verify(oldToken)).sub, 'usr_1');
    assert.equal((await v.verify(newToken)).sub, 'usr_1');
    v.setKeys([keyB.publicJwk]);
    await assert.rejects(v.verify(oldToken), refused('token_unknown_key'));
    assert.equal((await v.verify(newToken)).sub, 'usr_1');
  });

  it('refuses a private key or a key without kid as a verification key', () => {
    assert.throws(() => verifier([]).setKeys([keyA.privateJwk]), TypeError);
    assert.throws(() => verifier([]).setKeys([{ ...keyA.publicJwk, kid: undefined }]), TypeError);
  });

  it('serves a verified token from memory until min(exp, cache TTL)', async () => {
    const clock = new Clock(t0);
    const v = verifier([keyA], clock, { cacheTtlSeconds: 60 });
    const { token } = await sign(keyA, t0, 90);
    const first = await v.verify(token);
    assert.equal(await v.verify(token), first);
    assert.deepEqual(v.stats(), { hits: 1, misses: 1, size: 1 });
    clock.ms = t0 + 61_000; // past the cache TTL: the signature is checked again
    assert.equal((await v.verify(token)).sub, 'usr_1');
    assert.deepEqual(v.stats(), { hits: 1, misses: 2, size: 1 });
    clock.ms = t0 + 89_999;
    await v.verify(token);
    assert.equal(v.stats().hits, 2);
    clock.ms = t0 + 90_000; // exp reached: a cached entry must not outlive the token
    await assert.rejects(v.verify(token), refused('token_expired'));
    assert.equal(v.stats().size, 0);
  });

  it('cached(): only what verify() accepted, only until min(exp, cache TTL), forgotten on key change', async () => {
    const clock = new Clock(t0);
    const v = verifier([keyA], clock, { cacheTtlSeconds: 60 });
    const { token } = await sign(keyA, t0, 30);
    assert.equal(v.cached(token), undefined, 'never verified: not vouched for');
    const claims = await v.verify(token);
    assert.equal(v.cached(token), claims);
    clock.ms = t0 + 30_000; // exp
    assert.equal(v.cached(token), undefined);
    clock.ms = t0;
    await v.verify(token);
    v.setKeys([keyB.publicJwk]);
    assert.equal(v.cached(token), undefined, 'a key change empties the cache');
  });

  it('recall(): per connection, only the header cached() vouched for, only until its expiry, forgotten on key change', async () => {
    const clock = new Clock(t0);
    const v = verifier([keyA], clock, { cacheTtlSeconds: 60 });
    const { token } = await sign(keyA, t0, 30);
    const { token: other } = await sign(keyA, t0, 30);
    const socket = {};
    const header = `Bearer ${token}`;
    assert.equal(v.recall(socket, header), undefined, 'nothing remembered yet');
    const claims = await v.verify(token);
    assert.equal(v.recall(socket, header), undefined, 'verify() alone remembers no connection');
    assert.equal(v.cached(token, { connection: socket, header }), claims);
    assert.equal(v.recall(socket, header), claims);
    assert.equal(v.recall({}, header), undefined, 'another connection');
    assert.equal(v.recall(socket, `Bearer ${other}`), undefined, 'another header on the same connection');
    assert.equal(v.recall(socket, `bearer ${token}`), undefined, 'compared exactly, as sent');
    clock.ms = t0 + 30_000; // exp
    assert.equal(v.recall(socket, header), undefined);
    clock.ms = t0;
    assert.equal(v.recall(socket, header), undefined, 'an expired memo is dropped, not revived');
    await v.verify(token);
    assert.equal(v.cached(token, { connection: socket, header }), claims);
    v.setKeys([keyB.publicJwk]);
    assert.equal(v.recall(socket, header), undefined, 'a key change forgets every connection');
  });

  it('evicts the least recently used token once full (recency kept to within a second)', async () => {
    const clock = new Clock(t0);
    const v = verifier([keyA], clock, { cacheSize: 2 });
    const [a, b, c] = await Promise.all([sign(keyA, t0, 600), sign(keyA, t0, 600), sign(keyA, t0, 600)]);
    await v.verify(a.token);
    await v.verify(b.token);
    clock.ms = t0 + 1_000;
    assert.ok(v.cached(a.token), 'a is used again: b is now the oldest');
    await v.verify(c.token);
    assert.ok(v.cached(a.token));
    assert.equal(v.cached(b.token), undefined, 'b was evicted');
    assert.ok(v.cached(c.token));
  });

  it('never caches a refused token and hands out frozen claims', async () => {
    const v = verifier([keyA]);
    const { token } = await sign(keyA);
    const tampered = `${token.slice(0, -2)}${token.endsWith('AA') ? 'BA' : 'AA'}`;
    await assert.rejects(v.verify(tampered));
    await assert.rejects(v.verify(tampered));
    assert.deepEqual(v.stats(), { hits: 0, misses: 2, size: 0 });
    const got = await v.verify(token);
    assert.ok(Object.isFrozen(got) && Object.isFrozen(got.roles));
  });

  it('stays within its size bound, evicting the least recently used token', async () => {
    const v = verifier([keyA], new Clock(t0), { cacheSize: 3 });
    const tokens = await Promise.all([0, 1, 2, 3].map((i) => sign(keyA, t0 + i * 1000).then((r) => r.token)));
    const [t1, t2, t3, t4] = tokens as [string, string, string, string];
    await v.verify(t1);
    await v.verify(t2);
    await v.verify(t3);
    await v.verify(t1); // t1 becomes most recent; t2 is now the oldest
    await v.verify(t4);
    assert.equal(v.stats().size, 3);
    const before = v.stats().misses;
    await v.verify(t1);
    await v.verify(t3);
    await v.verify(t4);
    assert.equal(v.stats().misses, before);
    await v.verify(t2);
    assert.equal(v.stats().misses, before + 1);
  });

  it('with cacheSize 0, verifies every time', async () => {
    const v = verifier([keyA], new Clock(t0), { cacheSize: 0 });
    const { token } = await sign(keyA);
    await v.verify(token);
    await v.verify(token);
    assert.deepEqual(v.stats(), { hits: 0, misses: 2, size: 0 });
  });
});
