// Steward's API key verification against better-auth's api-key plugin (@better-auth/api-key), in
// the same run: better-auth on its memory adapter and on PGlite (its Kysely adapter over a pg-style
// pool wrapping PGlite), Steward in-process (verifier, PGlite) and over HTTP (POST /v1/keys/verify
// on a Steward child process, 50 connections). Every verification is of a valid key, rate limits off
// on both sides. better-auth writes the key's row on every verification (request count, last
// request); Steward batches usage and writes once a second. Target: Steward ≥ 10× better-auth.
// Run: node --import tsx bench/keys-better-auth.ts
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiKey } from '@better-auth/api-key';
import { PGlite } from '@electric-sql/pglite';
import { betterAuth } from 'better-auth';
import { memoryAdapter } from 'better-auth/adapters/memory';
import { getMigrations } from 'better-auth/db/migration';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { openDatabase } from '../src/db/client.ts';
import { runMigrations } from '../src/db/migrate.ts';
import { load } from './lib/load.ts';
import { loginAs, startSteward } from './lib/servers.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const EMAIL = 'bench@example.com';
const PASSWORD = 'quiet harbour lighthouse 2026';

/** Sequential verifications for SECONDS (after a short warm-up): verifications per second. */
async function rate(verify: () => Promise<boolean>): Promise<number> {
  for (let i = 0; i < 200; i++) if (!(await verify())) throw new Error('warm-up verification failed');
  let n = 0;
  const start = performance.now();
  const until = start + SECONDS * 1000;
  while (performance.now() < until) {
    for (let i = 0; i < 50; i++) if (!(await verify())) throw new Error('verification failed');
    n += 50;
  }
  return n / ((performance.now() - start) / 1000);
}

/** A pg Pool look-alike over PGlite: what better-auth's Kysely adapter takes for PostgreSQL. */
function pgliteAsPool(pg: PGlite) {
  const client = {
    async query(sql: string, params: unknown[] = []) {
      const result = await pg.query<Record<string, unknown>>(sql, params);
      const command = sql.trimStart().split(/\s/, 1)[0]?.toUpperCase() ?? '';
      return { command, rowCount: result.affectedRows ?? result.rows.length, rows: result.rows };
    },
    release() {},
  };
  return { connect: async () => client, end: async () => {} };
}

async function betterAuthRate(
  database: Parameters<typeof betterAuth>[0]['database'],
  migrate: boolean,
): Promise<number> {
  const auth = betterAuth({
    database,
    secret: randomBytes(32).toString('hex'),
    baseURL: 'http://127.0.0.1',
    emailAndPassword: { enabled: true },
    plugins: [apiKey({ rateLimit: { enabled: false } })],
    telemetry: { enabled: false },
    logger: { disabled: true },
  });
  // Its own tables (user, session, account, verification, apikey), created by its migrator.
  if (migrate) await (await getMigrations(auth.options)).runMigrations();
  const { user } = await auth.api.signUpEmail({ body: { email: EMAIL, password: PASSWORD, name: 'Bench' } });
  const created = await auth.api.createApiKey({ body: { userId: user.id, name: 'bench' } });
  const key = created.key;
  return rate(async () => (await auth.api.verifyApiKey({ body: { key } })).valid);
}

const results: { label: string; perSecond: number }[] = [];
const memoryDb = { user: [], session: [], account: [], verification: [], apikey: [] };
results.push({
  label: 'better-auth api-key, memory adapter',
  perSecond: await betterAuthRate(memoryAdapter(memoryDb), false),
});
const pg = new PGlite();
results.push({
  label: 'better-auth api-key, PGlite (Kysely)',
  perSecond: await betterAuthRate(pgliteAsPool(pg), true),
});
await pg.close();

// Steward in-process: the verifier the middleware and the verify route call, on PGlite.
{
  const db = await openDatabase({ dataDir: 'memory://' });
  await runMigrations(db);
  const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
    db,
    keyring: createKeyring(randomBytes(32)),
  });
  await app.ready();
  const boot = await app.steward.identity.bootstrap({ email: EMAIL, password: PASSWORD });
  const caller = (await app.steward.identity.findPrincipal(boot.org.id, boot.user.id))!;
  const { service, verifier } = app.steward.keys;
  const { key } = await service.create(caller, { name: 'bench', scopes: ['*'], tier: 'enterprise' }, {});
  const options = { ip: '127.0.0.1', orgId: boot.org.id };
  results.push({
    label: 'Steward verifier, in-process (PGlite)',
    perSecond: await rate(async () => (await verifier.verify(key, options)).code === 'valid'),
  });
  await app.close();
  await db.close();
}

// Steward over HTTP, as `npm start` runs it.
{
  const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-ba-'));
  const steward = await startSteward({
    STEWARD_DATA_DIR: dataDir,
    STEWARD_ADMIN_EMAIL: EMAIL,
    STEWARD_ADMIN_PASSWORD: PASSWORD,
  });
  try {
    const { access_token: token } = await loginAs(steward.url, EMAIL, PASSWORD);
    const make = async (name: string, scopes: string[]) => {
      const res = await fetch(`${steward.url}/v1/keys`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ name, scopes, tier: 'enterprise' }),
      });
      if (res.status !== 201) throw new Error(`key creation failed: ${res.status} ${await res.text()}`);
      return ((await res.json()) as { key: string }).key;
    };
    const key = await make('bench', ['*']);
    const callerKey = await make('verifier', ['api_keys:verify']);
    const request = {
      url: `${steward.url}/v1/keys/verify`,
      method: 'POST' as const,
      headers: { 'content-type': 'application/json', 'x-api-key': callerKey },
      body: JSON.stringify({ key }),
    };
    // "Cache warm" as the target says, and a JIT-compiled server: a fresh process measured at once
    // spends its first seconds compiling (one cold round measured ~25 % below a warm one).
    await load({ label: 'warm-up', ...request, seconds: 2 });
    const http = await load({
      label: 'Steward POST /v1/keys/verify over HTTP (50 connections)',
      ...request,
      seconds: SECONDS,
    });
    if (http.non2xx + http.errors > 0) throw new Error(`${http.non2xx + http.errors} failed requests`);
    results.push({ label: http.label, perSecond: http.requestsPerSec });
  } finally {
    await steward.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

const [memory, pglite] = results;
console.log(`\nAPI key verification, valid key (${SECONDS} s each; target: Steward ≥ 10× better-auth)`);
console.log('| implementation | verifications/s | µs each | × better-auth memory | × better-auth PGlite |');
console.log('| --- | ---: | ---: | ---: | ---: |');
for (const r of results) {
  const times = (base: typeof memory) => (base ? `${(r.perSecond / base.perSecond).toFixed(1)}×` : '—');
  console.log(
    `| ${r.label} | ${Math.round(r.perSecond).toLocaleString('en')} | ${(1e6 / r.perSecond).toFixed(1)} | ${times(memory)} | ${times(pglite)} |`,
  );
}
