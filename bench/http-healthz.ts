// /healthz through every Steward plugin (request id, security headers, metrics,
// access control, problem handler) against a bare Fastify route, in the same run.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { load, report } from './lib/load.ts';
import { startBareFastify, startSteward } from './lib/servers.ts';

const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-'));
const bare = await startBareFastify();
const steward = await startSteward({ STEWARD_DATA_DIR: dataDir });
try {
  // Interleave the runs so drift on a shared machine hits both alike.
  const rounds: Awaited<ReturnType<typeof load>>[] = [];
  for (let i = 0; i < 2; i++) {
    rounds.push(await load({ label: 'bare Fastify GET /', url: `${bare.url}/` }));
    rounds.push(await load({ label: 'Steward GET /healthz', url: `${steward.url}/healthz` }));
  }
  const best = (label: string) =>
    rounds.filter((r) => r.label === label).sort((a, b) => b.requestsPerSec - a.requestsPerSec)[0];
  const results = [best('bare Fastify GET /'), best('Steward GET /healthz')].filter((r) => r !== undefined);
  report('/healthz vs bare Fastify (50 connections, best of 2 interleaved 5 s rounds)', results);
} finally {
  await steward.stop();
  await bare.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
