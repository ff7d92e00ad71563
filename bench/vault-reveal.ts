// Secret reveal over HTTP, Steward running as `npm start` runs it (embedded PGlite), with autocannon:
// `POST /v1/secrets/{id}/reveal` (Bearer token; authz check on the secret; envelope decrypt; the
// audit event and the access-log row committed in one batched transaction before the answer)
// against a bare Fastify route, interleaved in the same run. Target: ≥ 50% of the bare route.
// With DATABASE_URL set, the same again with Steward on a fresh PostgreSQL database.
// After each run the audit chain is verified and every answered reveal must have its event.
// Run: node --import tsx bench/vault-reveal.ts
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createTestDatabase } from '../test/helpers/postgres.ts';
import { interleaved, report } from './lib/load.ts';
import { loginAs, type RunningServer, startBareFastify, startSteward } from './lib/servers.ts';

const EMAIL = 'bench@example.com';
const PASSWORD = 'quiet harbour lighthouse 2026';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);

async function json(res: Response): Promise<Record<string, unknown>> {
  if (res.status >= 300) throw new Error(`${res.url}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as Record<string, unknown>;
}

/** Events in the org's chain, and whether it verifies. */
async function chain(url: string, auth: Record<string, string>) {
  const out = await json(await fetch(`${url}/v1/audit/verify`, { method: 'POST', headers: auth }));
  return { valid: out.valid === true, checked: Number(out.checked) };
}

async function run(label: string, bare: RunningServer, env: Record<string, string>): Promise<void> {
  const steward = await startSteward({
    STEWARD_ADMIN_EMAIL: EMAIL,
    STEWARD_ADMIN_PASSWORD: PASSWORD,
    LOGIN_IP_MAX_FAILURES: '100000',
    ACCESS_TOKEN_TTL_SECONDS: '3600',
    ...env,
  });
  try {
    const { access_token: token } = await loginAs(steward.url, EMAIL, PASSWORD);
    const auth = { authorization: `Bearer ${token}` };
    const { id } = await json(
      await fetch(`${steward.url}/v1/secrets`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'BENCH_KEY', environment: 'production', value: 'x'.repeat(64) }),
      }),
    );
    const revealUrl = `${steward.url}/v1/secrets/${String(id)}/reveal`;
    await json(await fetch(revealUrl, { method: 'POST', headers: auth }));
    const before = await chain(steward.url, auth);

    const { all: rounds, best } = await interleaved(ROUNDS, [
      { label: 'bare Fastify GET /', url: `${bare.url}/`, seconds: SECONDS, pid: bare.process.pid },
      {
        label: `Steward reveal (${label})`,
        url: revealUrl,
        method: 'POST',
        headers: auth,
        seconds: SECONDS,
        pid: steward.process.pid,
      },
    ]);
    report(
      `Secret reveal vs bare Fastify, ${label} (50 connections, best of ${ROUNDS} interleaved ${SECONDS} s rounds; target ≥ 50%)`,
      best,
    );
    console.log('\nEvery round:');
    for (const r of rounds)
      console.log(`  ${r.label}: ${Math.round(r.requestsPerSec)} req/s, p99 ${r.p99.toFixed(2)} ms`);

    // Every reveal answered 200 left its event: the chain grew by at least the measured answers
    // (autocannon's warm-ups add more) and still verifies.
    const after = await chain(steward.url, auth);
    const answered = rounds
      .filter((r) => r.label.startsWith('Steward'))
      .reduce((n, r) => n + Math.round(r.requestsPerSec * SECONDS) - r.non2xx, 0);
    const recorded = after.checked - before.checked;
    console.log(
      `\naudit after the run: chain valid=${after.valid}, ${recorded} reveal events for ~${answered} measured answers`,
    );
    if (!after.valid || recorded < answered * 0.99) {
      console.error('FAILED: the audit trail does not account for every reveal');
      process.exitCode = 1;
    }
  } finally {
    await steward.stop();
  }
}

const bare = await startBareFastify();
const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-vault-'));
try {
  await run('PGlite', bare, { STEWARD_DATA_DIR: dataDir });
  if (process.env.DATABASE_URL) {
    const postgres = await createTestDatabase();
    try {
      await run('PostgreSQL', bare, {
        DATABASE_URL: postgres.url,
        STEWARD_MASTER_KEY: randomBytes(32).toString('base64'),
      });
    } finally {
      await postgres.drop();
    }
  }
} finally {
  await bare.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
