// Access-token verification cost: a cold Ed25519 verify (cache disabled, jose + WebCrypto) against
// a TokenVerifier cache hit, plus signing and envelope seal/open for reference.
// Run: node --import tsx bench/identity-jwt.ts
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { open, seal } from '../src/crypto/envelope.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { generateSigningKey, signAccessToken, TokenVerifier } from '../src/identity/jwt.ts';

const N = Number(process.env.N ?? 20_000);
const issuer = 'https://steward.bench';
const claims = { sub: 'usr_01J000', org: 'org_01J000', sid: 'ses_01J000', roles: ['developer'] };

async function measure(label: string, n: number, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < Math.min(n, 2_000); i++) await fn(i); // warm-up
  const t = performance.now();
  for (let i = 0; i < n; i++) await fn(i);
  const ns = ((performance.now() - t) * 1e6) / n;
  console.log(
    `${label.padEnd(36)} ${ns.toFixed(0).padStart(8)} ns/op  ${(1e9 / ns).toFixed(0).padStart(9)} ops/s`,
  );
  return ns;
}

const key = await generateSigningKey();
const tokens = await Promise.all(
  Array.from({ length: 1_000 }, () => signAccessToken(key, claims, { issuer }).then((r) => r.token)),
);
const cold = new TokenVerifier({ issuer, keys: [key.publicJwk], cacheSize: 0 });
const warm = new TokenVerifier({ issuer, keys: [key.publicJwk] });
for (const t of tokens) await warm.verify(t);

await measure('sign access token', N / 4, () => signAccessToken(key, claims, { issuer }));
const coldNs = await measure('verify, cold (Ed25519 every time)', N, (i) =>
  cold.verify(tokens[i % tokens.length]!),
);
const warmNs = await measure('verify, cached', N * 10, (i) => warm.verify(tokens[i % tokens.length]!));
console.log(`cache speed-up: ${(coldNs / warmNs).toFixed(0)}x`);

const ring = createKeyring(randomBytes(32));
const secret = randomBytes(64);
const sealed = seal(ring, secret, 'org/o/secret/s/v/1');
await measure('envelope seal (64 B)', N, () => seal(ring, secret, 'org/o/secret/s/v/1'));
await measure('envelope open (64 B)', N, () => open(ring, sealed, 'org/o/secret/s/v/1'));
