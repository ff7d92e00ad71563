import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        address && typeof address === 'object' ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

/** Polls a URL until it answers 200, or fails after `timeoutMs`. Returns the elapsed ms. */
export async function waitFor(url: string, timeoutMs = 30000): Promise<number> {
  const start = performance.now();
  while (performance.now() - start < timeoutMs) {
    try {
      const res = await fetch(url);
      if (res.status === 200) return performance.now() - start;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${url} did not become ready in ${timeoutMs} ms`);
}

/**
 * BENCH_CPU_PROF=<dir>: servers write a V8 CPU profile there when they stop (summarise one with
 * `node --import tsx bench/lib/profile.ts <file> [top] [window-ms]`). BENCH_CPU_PROF_INTERVAL_US
 * sets the sampling interval (V8's default is 1000 µs).
 */
function profileFlags(): string[] {
  const dir = process.env.BENCH_CPU_PROF;
  const interval = process.env.BENCH_CPU_PROF_INTERVAL_US;
  if (!dir) return [];
  return ['--cpu-prof', '--cpu-prof-dir', dir, ...(interval ? ['--cpu-prof-interval', interval] : [])];
}

/**
 * BENCH_PIN=1: every server runs on CPU 1 and the load generator (this process, all its threads)
 * on CPU 0, so the two never take turns on one core. Unpinned, the scheduler shares both cores
 * between them run by run, and the same code has measured ±20 % from one process to the next.
 * Pinned figures say what one core of server buys; unpinned ones what the machine as a whole does.
 */
const PIN = process.env.BENCH_PIN === '1';
if (PIN) execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });

/** `node <args>`, on CPU 1 when pinned. */
function spawnNode(args: string[], options: Parameters<typeof spawn>[2]): ChildProcess {
  return PIN
    ? spawn('taskset', ['-c', '1', process.execPath, ...args], options)
    : spawn(process.execPath, args, options);
}

export interface RunningServer {
  url: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
}

/** The baseline: a bare Fastify JSON route in its own process, like the servers under test. */
export async function startBareFastify(): Promise<RunningServer> {
  const port = await freePort();
  const child = spawnNode([...profileFlags(), '--import', 'tsx', 'bench/lib/bare-server.ts', String(port)], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(`${url}/`);
  return { url, process: child, stop: stopper(child) };
}

/** Steward itself, as `npm start` runs it, on its own port and data folder. */
export async function startSteward(
  env: Record<string, string>,
): Promise<RunningServer & { readyMs: number }> {
  const port = await freePort();
  const started = performance.now();
  const child = spawnNode([...profileFlags(), 'bin/steward.js', 'serve'], {
    cwd: ROOT,
    // Embedded unless the caller says otherwise: a DATABASE_URL in the shell must not leak in.
    env: {
      ...process.env,
      DATABASE_URL: '',
      LOG_LEVEL: 'warn',
      ...env,
      PORT: String(port),
      HOST: '127.0.0.1',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(`${url}/readyz`, 60000);
  return { url, process: child, stop: stopper(child), readyMs: performance.now() - started };
}

/**
 * Logs in to a Steward started with STEWARD_ADMIN_EMAIL/PASSWORD. The first start
 * bootstraps just after it starts listening, so early attempts may fail: retry a while.
 */
export async function loginAs(
  url: string,
  email: string,
  password: string,
): Promise<{ access_token: string; refresh_token: string }> {
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`${url}/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    if (res.status === 200) return (await res.json()) as { access_token: string; refresh_token: string };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('login never succeeded');
}
