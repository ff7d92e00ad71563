// What Steward adds, per request, over a bare Fastify route, measured in one process with
// app.inject() (no sockets, no load generator sharing the CPU): CPU µs per request of
// POST /v1/keys/verify (valid key, cache warm) and of the bare route, interleaved rounds, medians.
// inject()'s own cost is in both, so the figure to read is the difference ("added"), and the
// ratio bare / Steward as an estimate of the HTTP throughput ratio when the server is the bottleneck
// (it leaves out socket writes, which are the same for both except a few hundred bytes).
// Unlike autocannon figures it barely moves when other work shares the machine.
// Run: node --import tsx bench/keys-overhead.ts
import { randomBytes } from 'node:crypto';
import Fastify from 'fastify';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { openDatabase } from '../src/db/client.ts';
import { runMigrations } from '../src/db/migrate.ts';

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 20_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const IN_FLIGHT = 50;

const db = await openDatabase({ dataDir: 'memory://' });
await runMigrations(db);
const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
  db,
  keyring: createKeyring(randomBytes(32)),
});
await app.ready();
const email = 'bench@example.com';
const password = 'quiet harbour lighthouse 2026';
const boot = await app.steward.identity.bootstrap({ email, password });
const admin = (await app.steward.identity.findPrincipal(boot.org.id, boot.user.id))!;
const { service } = app.steward.keys;
const target = await service.create(admin, { name: 'bench', scopes: ['*'], tier: 'enterprise' }, {});
const caller = await service.create(
  admin,
  { name: 'verifier', scopes: ['api_keys:verify'], tier: 'enterprise' },
  {},
);
const login = await app.inject({ method: 'POST', url: '/v1/auth/login', payload: { email, password } });
const token = (JSON.parse(login.body) as { access_token: string }).access_token;

const bare = Fastify({ logger: false });
bare.post('/', async () => ({ status: 'ok' }));
await bare.ready();

const payload = JSON.stringify({ key: target.key });
const json = { 'content-type': 'application/json' };
const all = {
  'bare Fastify POST /': () => bare.inject({ method: 'POST', url: '/', headers: json, payload }),
  'Steward verify (caller: X-API-Key)': () =>
    app.inject({
      method: 'POST',
      url: '/v1/keys/verify',
      headers: { ...json, 'x-api-key': caller.key },
      payload,
    }),
  'Steward verify (caller: Bearer JWT)': () =>
    app.inject({
      method: 'POST',
      url: '/v1/keys/verify',
      headers: { ...json, authorization: `Bearer ${token}` },
      payload,
    }),
};

/** BENCH_ONLY=<part of a label>: only those cases (profiling runs). */
const only = process.env.BENCH_ONLY;
const cases = Object.fromEntries(
  Object.entries(all).filter(([label]) => only === undefined || label.includes(only)),
);

async function round(send: () => Promise<{ statusCode: number; body: string }>): Promise<number> {
  const start = process.cpuUsage();
  let sent = 0;
  const worker = async () => {
    while (sent < REQUESTS) {
      sent++;
      const res = await send();
      if (res.statusCode !== 200) throw new Error(`${res.statusCode} ${res.body}`);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  const used = process.cpuUsage(start);
  return (used.user + used.system) / REQUESTS;
}

const samples = new Map<string, number[]>();
for (const send of Object.values(cases)) await round(send); // warm-up: JIT, caches
for (let r = 0; r < ROUNDS; r++) {
  for (const [label, send] of Object.entries(cases)) {
    const list = samples.get(label) ?? [];
    list.push(await round(send));
    samples.set(label, list);
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const bareUs = median(samples.get('bare Fastify POST /') ?? []);
console.log(
  `\nCPU per request through app.inject() (${REQUESTS} requests × ${ROUNDS} interleaved rounds, median; ${IN_FLIGHT} in flight)`,
);
console.log('| case | CPU µs/req | added over bare | bare / this |');
console.log('| --- | ---: | ---: | ---: |');
for (const [label, xs] of samples) {
  const us = median(xs);
  console.log(
    `| ${label} | ${us.toFixed(1)} | ${(us - bareUs).toFixed(1)} | ${((bareUs / us) * 100).toFixed(1)}% |`,
  );
}
await app.close();
await bare.close();
await db.close();
