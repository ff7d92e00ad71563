// In-process API key verification on one core: the verifier's hot path (format + checksum, SHA-256,
// cache lookup, checks, usage counting) with no HTTP. Target ≥ 300,000 verifications/s.
// Run: node --import tsx bench/keys-inprocess.ts
import { randomBytes } from 'node:crypto';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { openDatabase } from '../src/db/client.ts';
import { runMigrations } from '../src/db/migrate.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const db = await openDatabase({ dataDir: 'memory://' });
await runMigrations(db);
const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
  db,
  keyring: createKeyring(randomBytes(32)),
});
await app.ready();
const boot = await app.steward.identity.bootstrap({
  email: 'bench@example.com',
  password: 'quiet harbour lighthouse 2026',
});
const caller = (await app.steward.identity.findPrincipal(boot.org.id, boot.user.id))!;
const { service, verifier } = app.steward.keys;
// Burst detection stays on (default threshold): it is audited once per window, never per call.
const plain = await service.create(caller, { name: 'bench', scopes: ['*'], tier: 'enterprise' }, {});
const limited = await service.create(
  caller,
  {
    name: 'bench-rl',
    scopes: ['*'],
    tier: 'enterprise',
    ratelimit: { limit: 1_000_000_000, window_seconds: 60 },
  },
  {},
);
const opts = { ip: '127.0.0.1' };

function runSync(label: string, key: string, extra: Record<string, string> = {}, expect = 'valid'): void {
  const options = { ...opts, ...extra };
  for (let i = 0; i < 50_000; i++) verifier.verify(key, options);
  let n = 0;
  const until = performance.now() + SECONDS * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 1000; i++) {
      const v = verifier.verify(key, options);
      if (v instanceof Promise || v.code !== expect) throw new Error(`unexpected ${label}`);
    }
    n += 1000;
  }
  const rate = n / SECONDS;
  console.log(
    `| ${label} | ${Math.round(rate).toLocaleString('en')} | ${((rate / 300_000) * 100).toFixed(0)}% |`,
  );
}

async function runAsync(label: string, key: string): Promise<void> {
  let n = 0;
  const until = performance.now() + SECONDS * 1000;
  while (performance.now() < until) {
    const batch: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) batch.push(Promise.resolve(verifier.verify(key, opts)));
    await Promise.all(batch);
    n += 1000;
  }
  const rate = n / SECONDS;
  console.log(
    `| ${label} | ${Math.round(rate).toLocaleString('en')} | ${((rate / 300_000) * 100).toFixed(0)}% |`,
  );
}

console.log(`\nIn-process verify (${SECONDS} s each, one core)`);
console.log('| case | verifications/s | of target (300,000/s) |');
console.log('| --- | ---: | ---: |');
runSync('valid key, no rate limit (synchronous path)', plain.key);
runSync('valid key + permission check (authz index warm)', plain.key, { permission: 'secrets:read' });
runSync('malformed key (refused before hashing)', `${plain.key.slice(0, -1)}x`, {}, 'malformed');
await runAsync('valid key with a rate limit (rate-limiter-flexible, memory)', limited.key);
await app.close();
await db.close();
