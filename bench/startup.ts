// `npm start` to ready on an existing data folder, and idle RSS, on PGlite.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, startSteward, waitFor } from './lib/servers.ts';

const dataDir = mkdtempSync(join(tmpdir(), 'steward-start-'));
try {
  const first = await startSteward({ STEWARD_DATA_DIR: dataDir });
  console.log(`first start (creates the database): ready in ${Math.round(first.readyMs)} ms`);
  await first.stop();

  const times: number[] = [];
  let rssMb = 0;
  for (let i = 0; i < 3; i++) {
    const run = await startSteward({ STEWARD_DATA_DIR: dataDir });
    times.push(run.readyMs);
    if (i === 2) {
      await new Promise((r) => setTimeout(r, 3000));
      const status = readFileSync(`/proc/${run.process.pid}/status`, 'utf8');
      rssMb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
    }
    await run.stop();
  }
  console.log(
    `restart on an existing data folder (node bin/steward.js serve): ready in ${times.map(Math.round).join(', ')} ms`,
  );
  console.log(`idle RSS after 3 s: ${rssMb.toFixed(0)} MB`);

  // The literal README command, npm included.
  const port = await freePort();
  const started = performance.now();
  const npm = spawn('npm', ['start', '--silent'], {
    // Embedded, as the README's command runs on a fresh machine: a DATABASE_URL in the shell must not leak in.
    env: {
      ...process.env,
      DATABASE_URL: '',
      STEWARD_DATA_DIR: dataDir,
      PORT: String(port),
      LOG_LEVEL: 'warn',
    },
    stdio: 'ignore',
    detached: true,
  });
  await waitFor(`http://127.0.0.1:${port}/readyz`, 60000);
  console.log(`npm start → /readyz 200: ${Math.round(performance.now() - started)} ms`);
  process.kill(-(npm.pid ?? 0), 'SIGTERM');
  await new Promise((r) => npm.once('exit', r));
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
