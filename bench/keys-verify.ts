// POST /v1/keys/verify over HTTP (valid key, cache warm), Steward running as `npm start` runs it
// (child process, embedded PGlite), against a bare Fastify POST route in the same run.
// Targets: ≥ 75% of bare Fastify's throughput, p99 ≤ 3 ms at 50 connections.
// The ≥ 10× comparison with better-auth's api-key plugin is bench/keys-better-auth.ts.
// Run: node --import tsx bench/keys-verify.ts
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type LoadResult, load, printRoundRatios, report } from './lib/load.ts';
import { loginAs, startBareFastify, startSteward } from './lib/servers.ts';

const EMAIL = 'bench@example.com';
const PASSWORD = 'quiet harbour lighthouse 2026';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
/** BENCH_ONLY=api-key: only the bare baseline and the X-API-Key caller (profiling runs). */
const ONLY = process.env.BENCH_ONLY;

const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-keys-'));
const bare = await startBareFastify();
const steward = await startSteward({
  STEWARD_DATA_DIR: dataDir,
  STEWARD_ADMIN_EMAIL: EMAIL,
  STEWARD_ADMIN_PASSWORD: PASSWORD,
  ACCESS_TOKEN_TTL_SECONDS: '3600',
});

try {
  const { access_token: token } = await loginAs(steward.url, EMAIL, PASSWORD);
  const json = { 'content-type': 'application/json' };
  const created = await fetch(`${steward.url}/v1/keys`, {
    method: 'POST',
    headers: { ...json, authorization: `Bearer ${token}` },
    body: JSON.stringify({ name: 'bench', scopes: ['*'], tier: 'enterprise' }),
  });
  if (created.status !== 201)
    throw new Error(`key creation failed: ${created.status} ${await created.text()}`);
  const { key } = (await created.json()) as { key: string };
  // The caller authenticates with a key of its own holding api_keys:verify (the usual service setup).
  const callerRes = await fetch(`${steward.url}/v1/keys`, {
    method: 'POST',
    headers: { ...json, authorization: `Bearer ${token}` },
    body: JSON.stringify({ name: 'verifier', scopes: ['api_keys:verify'], tier: 'enterprise' }),
  });
  const callerKey = ((await callerRes.json()) as { key: string }).key;
  const body = JSON.stringify({ key });

  const rounds: LoadResult[] = [];
  const bareRun = { url: `${bare.url}/`, pid: bare.process.pid };
  const stewardRun = { url: `${steward.url}/v1/keys/verify`, pid: steward.process.pid };
  for (let i = 0; i < ROUNDS; i++) {
    rounds.push(
      await load({
        label: 'bare Fastify POST /',
        ...bareRun,
        method: 'POST',
        headers: json,
        body,
        seconds: SECONDS,
      }),
    );
    if (ONLY === undefined) {
      rounds.push(
        await load({
          label: 'Steward POST /v1/keys/verify (caller: Bearer JWT)',
          ...stewardRun,
          method: 'POST',
          headers: { ...json, authorization: `Bearer ${token}` },
          body,
          seconds: SECONDS,
        }),
      );
    }
    rounds.push(
      await load({
        label: 'Steward POST /v1/keys/verify (caller: X-API-Key)',
        ...stewardRun,
        method: 'POST',
        headers: { ...json, 'x-api-key': callerKey },
        body,
        seconds: SECONDS,
      }),
    );
  }
  const best = (label: string) =>
    rounds.filter((r) => r.label === label).sort((a, b) => b.requestsPerSec - a.requestsPerSec)[0];
  const labels = [...new Set(rounds.map((r) => r.label))];
  report(
    `POST /v1/keys/verify vs bare Fastify (50 connections, best of ${ROUNDS} interleaved ${SECONDS} s rounds; targets ≥ 75%, p99 ≤ 3 ms)`,
    labels.map(best).filter((r) => r !== undefined),
  );
  for (const label of labels.slice(1)) printRoundRatios(rounds, labels[0] as string, label);
} finally {
  await steward.stop();
  await bare.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
