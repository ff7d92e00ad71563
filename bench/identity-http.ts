// Identity over HTTP, Steward running as `npm start` runs it, with autocannon:
//   1. an authenticated route (Bearer access token: Ed25519 JWT, cached verification, revoked-session
//      check, roles from the authz index) against a bare Fastify route, in the same run;
//   2. password logins per second (Argon2id, OWASP parameters, on the libuv pool);
//   3. refreshes per second (each connection rotates its own refresh token, response after response).
// Run: node --import tsx bench/identity-http.ts   (embedded PGlite; with DATABASE_URL, a fresh
// database on that PostgreSQL server, dropped afterwards)
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { createTestDatabase } from '../test/helpers/postgres.ts';
import { cpuUs, interleaved, load, printRoundRatios, report } from './lib/load.ts';
import { loginAs, startBareFastify, startSteward } from './lib/servers.ts';

const EMAIL = 'bench@example.com';
const PASSWORD = 'quiet harbour lighthouse 2026';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
/** BENCH_PARTS=whoami,login,refresh: only those parts (default all). */
const PARTS = new Set((process.env.BENCH_PARTS ?? 'whoami,login,refresh').split(','));

/**
 * Server CPU µs over `run`, from /proc (undefined off Linux): the whole process, and its main
 * thread alone (HTTP, JavaScript and PGlite; Argon2 runs on libuv's pool, the GC partly on helpers).
 */
async function serverCpu<T>(
  pid: number | undefined,
  run: () => Promise<T>,
): Promise<[T, { all: number; main: number } | undefined]> {
  const before = [cpuUs(pid), cpuUs(pid, pid)];
  const result = await run();
  const after = [cpuUs(pid), cpuUs(pid, pid)];
  const [a0, m0] = before;
  const [a1, m1] = after;
  if (a0 === undefined || m0 === undefined || a1 === undefined || m1 === undefined)
    return [result, undefined];
  return [result, { all: a1 - a0, main: m1 - m0 }];
}
const perOp = (us: { all: number; main: number } | undefined, ops: number) =>
  us === undefined || ops === 0
    ? ''
    : `, server CPU ${(us.all / ops).toFixed(0)} µs each, ${(us.main / ops).toFixed(0)} µs of it on the main thread`;

const dataDir = mkdtempSync(join(tmpdir(), 'steward-bench-identity-'));
const postgres = process.env.DATABASE_URL ? await createTestDatabase() : null;
console.log(`Store: ${postgres ? 'PostgreSQL (DATABASE_URL)' : 'embedded PGlite'}`);
const bare = await startBareFastify();
const steward = await startSteward({
  STEWARD_DATA_DIR: dataDir,
  ...(postgres ? { DATABASE_URL: postgres.url, STEWARD_MASTER_KEY: randomBytes(32).toString('base64') } : {}),
  STEWARD_ADMIN_EMAIL: EMAIL,
  STEWARD_ADMIN_PASSWORD: PASSWORD,
  LOGIN_IP_MAX_FAILURES: '100000',
});

try {
  const { access_token } = await loginAs(steward.url, EMAIL, PASSWORD);
  const auth = { authorization: `Bearer ${access_token}` };

  // 1. Authenticated route vs bare Fastify, interleaved so drift hits both alike.
  if (PARTS.has('whoami')) {
    const bareLabel = 'bare Fastify GET /';
    const whoamiLabel = 'Steward GET /v1/auth/whoami (Bearer)';
    const { all, best } = await interleaved(ROUNDS, [
      { label: bareLabel, url: `${bare.url}/`, seconds: SECONDS, pid: bare.process.pid },
      {
        label: whoamiLabel,
        url: `${steward.url}/v1/auth/whoami`,
        headers: auth,
        seconds: SECONDS,
        pid: steward.process.pid,
      },
      // The same plumbing without a credential: what authentication itself adds.
      {
        label: 'Steward GET /healthz (public)',
        url: `${steward.url}/healthz`,
        seconds: SECONDS,
        pid: steward.process.pid,
      },
    ]);
    const once = [
      await load({
        label: 'Steward GET /v1/me (Bearer, profile cached per user)',
        url: `${steward.url}/v1/me`,
        headers: auth,
        seconds: SECONDS,
        pid: steward.process.pid,
      }),
    ];
    report(
      `Authenticated request vs bare Fastify (50 connections, best of ${ROUNDS} interleaved ${SECONDS} s rounds; target ≥ 70%)`,
      [...best, ...once],
    );
    printRoundRatios(all, bareLabel, whoamiLabel);
  }

  // 2. Password logins.
  if (PARTS.has('login')) {
    // One account per connection: more than LOGIN_MAX_FAILURES proofs of one account in flight
    // are refused unchecked (429, src/identity/lockout.ts), which a real user never runs into.
    const connections = 8;
    const emails: string[] = [];
    for (let i = 0; i < connections; i++) {
      const email = `bench-login-${i}@example.com`;
      const res = await fetch(`${steward.url}/v1/users`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ email, password: PASSWORD }),
      });
      if (res.status !== 201) throw new Error(`creating ${email}: HTTP ${res.status} ${await res.text()}`);
      emails.push(email);
    }
    let next = 0;
    const [logins, cpu] = await serverCpu(steward.process.pid, () =>
      autocannon({
        url: `${steward.url}/v1/auth/login`,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ email: EMAIL, password: PASSWORD }),
        setupClient: (client) => {
          client.setBody(JSON.stringify({ email: emails[next++ % connections], password: PASSWORD }));
        },
        connections,
        duration: SECONDS,
      }),
    );
    const loginRate = logins.requests.average;
    console.log(
      `\nPassword logins: ${loginRate.toFixed(0)}/s (p50 ${logins.latency.p50} ms, p99 ${logins.latency.p99} ms, non-2xx ${logins.non2xx}${perOp(cpu, logins.requests.total)}); target ≥ 100/s → ${((loginRate / 100) * 100).toFixed(0)}% of target`,
    );
  }

  // 3. Refreshes. Each worker owns a session and sends its next refresh only once the previous
  // answer (and its new token) is back; autocannon builds requests ahead, which would present
  // rotated tokens and trip reuse detection. node:http with keep-alive, not fetch: fetch cost the
  // client several times the server's CPU per request, and the client shares the machine.
  if (PARTS.has('refresh')) {
    const workers = 32;
    const tokens: string[] = [];
    for (let i = 0; i < workers; i++)
      tokens.push((await loginAs(steward.url, EMAIL, PASSWORD)).refresh_token);
    const agent = new Agent({ keepAlive: true, maxSockets: workers });
    const { port } = new URL(steward.url);
    const refresh = (token: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const body = JSON.stringify({ refresh_token: token });
        const req = request(
          {
            agent,
            host: '127.0.0.1',
            port,
            method: 'POST',
            path: '/v1/auth/refresh',
            headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
          },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => {
              text += chunk;
            });
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    let ok = 0;
    let failed = 0;
    const latencies: number[] = [];
    const until = performance.now() + SECONDS * 1000;
    const [, cpu] = await serverCpu(steward.process.pid, () =>
      Promise.all(
        tokens.map(async (first) => {
          let token = first;
          while (performance.now() < until) {
            const t0 = performance.now();
            const res = await refresh(token);
            latencies.push(performance.now() - t0);
            const next =
              res.status === 200
                ? (JSON.parse(res.body) as { refresh_token?: string }).refresh_token
                : undefined;
            if (next) {
              token = next;
              ok++;
            } else {
              failed++;
              token = (await loginAs(steward.url, EMAIL, PASSWORD)).refresh_token;
            }
          }
        }),
      ),
    );
    agent.destroy();
    latencies.sort((a, b) => a - b);
    const pct = (p: number) => (latencies[Math.floor((latencies.length - 1) * p)] ?? 0).toFixed(1);
    const refreshRate = ok / SECONDS;
    console.log(
      `Refreshes: ${refreshRate.toFixed(0)}/s over ${workers} sessions (p50 ${pct(0.5)} ms, p99 ${pct(0.99)} ms, failed ${failed}${perOp(cpu, ok + failed)}); target ≥ 2,000/s → ${((refreshRate / 2000) * 100).toFixed(0)}% of target`,
    );
  }
} finally {
  await steward.stop();
  await bare.stop();
  await postgres?.drop();
  rmSync(dataDir, { recursive: true, force: true });
}
