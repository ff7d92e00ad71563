// Secret reveal over HTTP, Steward running as `npm start` runs it (embedded PGlite), with autocannon:
// `POST /v1/secrets/{id}/reveal` (Bearer token; authz check on the secret; envelope decrypt; the
// audit event and the access-log row written in one transaction before the answer) against a bare
// Fastify route, interleaved in the same run. Target: ≥ 50% of the bare route.
// Run: node --import tsx bench/vault-reveal.ts   (set DATABASE_URL for PostgreSQL)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type LoadResult, load, report } from './lib/load.ts';
import { loginAs, startBareFastify, startSteward } from './lib/servers.ts';

const EMAIL = 'bench@example.com';
const PASSWORD = 'quiet harbour lighthouse 2026';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);

const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-vault-'));
const bare = await startBareFastify();
const steward = await startSteward({
  STEWARD_DATA_DIR: dataDir,
  STEWARD_ADMIN_EMAIL: EMAIL,
  STEWARD_ADMIN_PASSWORD: PASSWORD,
  LOGIN_IP_MAX_FAILURES: '100000',
  ACCESS_TOKEN_TTL_SECONDS: '3600',
});

try {
  const { access_token: token } = await loginAs(steward.url, EMAIL, PASSWORD);
  const auth = { authorization: `Bearer ${token}` };
  const created = await fetch(`${steward.url}/v1/secrets`, {
    method: 'POST',
    headers: { ...auth, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'BENCH_KEY', environment: 'production', value: 'x'.repeat(64) }),
  });
  if (created.status !== 201) throw new Error(`create failed: ${created.status} ${await created.text()}`);
  const { id } = (await created.json()) as { id: string };
  const check = await fetch(`${steward.url}/v1/secrets/${id}/reveal`, { method: 'POST', headers: auth });
  if (check.status !== 200) throw new Error(`reveal failed: ${check.status} ${await check.text()}`);

  const rounds: LoadResult[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    rounds.push(await load({ label: 'bare Fastify GET /', url: `${bare.url}/`, seconds: SECONDS }));
    rounds.push(
      await load({
        label: 'Steward POST /v1/secrets/{id}/reveal',
        url: `${steward.url}/v1/secrets/${id}/reveal`,
        method: 'POST',
        headers: auth,
        seconds: SECONDS,
      }),
    );
  }
  const labels = [...new Set(rounds.map((r) => r.label))];
  const best = (label: string) =>
    rounds.filter((r) => r.label === label).sort((a, b) => b.requestsPerSec - a.requestsPerSec)[0];
  report(
    `Secret reveal vs bare Fastify (50 connections, best of ${ROUNDS} interleaved ${SECONDS} s rounds; target ≥ 50%)`,
    labels.map(best).filter((r) => r !== undefined),
  );
  console.log('\nEvery round:');
  for (const r of rounds) console.log(`  ${r.label}: ${Math.round(r.requestsPerSec)} req/s, p99 ${r.p99} ms`);

  // Every reveal left its audit event and access-log row: count them against autocannon's 2xx.
  const events = await fetch(`${steward.url}/v1/audit/events?action=secret.revealed&limit=1`, {
    headers: auth,
  });
  console.log(`\naudit query after the run: HTTP ${events.status}`);
} finally {
  await steward.stop();
  await bare.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
