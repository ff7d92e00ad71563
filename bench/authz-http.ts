// POST /v1/authz/check over HTTP against a bare Fastify JSON route, in one run.
// Run: node --import tsx bench/authz-http.ts   (DURATION=5 CONNECTIONS=50 to change the load)
//
// Steward runs in process on embedded PGlite, listening on 127.0.0.1:0, with the whole plumbing
// (request ids, security headers, metrics, zod validation and serialization, access control).
// The caller is authenticated by a header lookup registered here (identity's tokens are measured
// by bench/identity-jwt.ts), so the figure is the cost of the check route itself. The bare route
// is a plain Fastify instance that parses the same body and answers the same JSON.
import { randomBytes } from 'node:crypto';
import autocannon from 'autocannon';
import Fastify from 'fastify';
import { buildApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { openDatabase } from '../src/db/client.ts';
import { newId } from '../src/db/ids.ts';
import { runMigrations } from '../src/db/migrate.ts';
import type { Principal } from '../src/http/principal.ts';

const DURATION = Number(process.env.DURATION ?? 5);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 50);
const GRANTS = 1_000;

const db = await openDatabase({ dataDir: 'memory://' });
await runMigrations(db);
const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
  db,
  keyring: createKeyring(randomBytes(32)),
});
const org = await app.steward.tenancy.createOrg({ slug: 'bench', name: 'Bench' });
const caller: Principal = {
  orgId: org.id,
  kind: 'user',
  id: newId('usr'),
  name: 'bench',
  roles: [],
  scopes: null,
  superuser: false,
};
app.steward.auth.addAuthenticator({
  name: 'bench',
  errors: [],
  authenticate: (request) => (request.headers['x-bench-principal'] === 'caller' ? caller : null),
});
// The same plumbing with no authentication and no check: the ceiling any Steward route has here.
app.post('/bench/plumbing', { config: { access: 'public' } }, async () => ({
  allowed: true,
  decision: { by: 'role', role: 'developer' },
}));
await app.listen({ host: '127.0.0.1', port: 0 });

// Give the org some weight: the caller is a developer, with a thousand grants around it.
const { authz } = app.steward;
// Bench principals are not identity rows: answer for any id of the org.
authz.usePrincipalDirectory({
  find: async (orgId, id) => (orgId === org.id ? { ...caller, id, name: id } : null),
});
const assigned = await db.db.transaction((tx) =>
  authz.assignRoleInTx(tx, { orgId: org.id, principalId: caller.id, role: 'developer', by: null }),
);
await assigned.afterCommit();
const others = Array.from({ length: 100 }, () => newId('usr'));
const root: Principal = { ...caller, id: newId('usr'), name: 'root', superuser: true };
for (let i = 0; i < GRANTS; i++) {
  await authz.createGrant(
    root,
    {
      principal: i % 10 === 0 ? caller.id : others[i % others.length]!,
      permission: 'secrets:reveal',
      resourceType: 'secrets',
      resourceId: `sec_${i}`,
      effect: i % 7 === 0 ? 'deny' : 'allow',
    },
    {},
  );
}

const bare = Fastify({ logger: false });
bare.post('/bare', async () => ({ allowed: true, decision: { by: 'role', role: 'developer' } }));
await bare.listen({ host: '127.0.0.1', port: 0 });

const body = JSON.stringify({
  permission: 'secrets:reveal',
  resource_type: 'secrets',
  resource_id: 'sec_10',
});
const stewardUrl = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1/authz/check`;
const plumbingUrl = stewardUrl.replace('/v1/authz/check', '/bench/plumbing');
const bareUrl = `http://127.0.0.1:${(bare.server.address() as { port: number }).port}/bare`;

// Sanity: the check answers what it should before it is loaded.
const probe = await fetch(stewardUrl, {
  method: 'POST',
  headers: { 'content-type': 'application/json', 'x-bench-principal': 'caller' },
  body,
});
const answer = (await probe.json()) as { allowed: boolean; decision: { by: string } };
if (probe.status !== 200 || !answer.allowed || answer.decision.by !== 'resource_grant') {
  throw new Error(`unexpected check answer ${probe.status} ${JSON.stringify(answer)}`);
}

interface Figures {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

async function load(url: string, duration: number): Promise<Figures> {
  const r = await autocannon({
    url,
    method: 'POST',
    connections: CONNECTIONS,
    duration,
    headers: { 'content-type': 'application/json', 'x-bench-principal': 'caller' },
    body,
  });
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    errors: r.errors + r.non2xx,
  };
}

const show = (label: string, f: Figures) =>
  console.log(
    `${label.padEnd(28)} ${f.rps.toFixed(0).padStart(8)} req/s  p50 ${String(f.p50).padStart(3)} ms  p99 ${String(f.p99).padStart(3)} ms  errors ${f.errors}`,
  );

await load(bareUrl, 1); // warm-up
await load(stewardUrl, 1);
const bareFigures = await load(bareUrl, DURATION);
const checkFigures = await load(stewardUrl, DURATION);
const plumbingFigures = await load(plumbingUrl, DURATION);
console.log(`${CONNECTIONS} connections, ${DURATION} s each, Node ${process.version}`);
show('bare Fastify POST', bareFigures);
show('Steward no-op route', plumbingFigures);
show('POST /v1/authz/check', checkFigures);
console.log(
  `ratio: ${((100 * checkFigures.rps) / bareFigures.rps).toFixed(1)}% of the bare route (target ≥ 70%)`,
);

await bare.close();
await app.close();
await db.close();
