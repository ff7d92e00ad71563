// Audit append throughput with the hash chain intact: each event in its own
// transaction (as a domain change records it), from concurrent writers in ONE org
// (the worst case for a per-org chain), then linked by the sequencer and verified.
import { randomBytes } from 'node:crypto';
import { openAuditService } from '../src/audit/service.ts';
import { createKeyring } from '../src/crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../src/db/client.ts';
import { newId } from '../src/db/ids.ts';
import { runMigrations } from '../src/db/migrate.ts';
import { createTestDatabase } from '../test/helpers/postgres.ts';

async function measure(label: string, db: DbHandle, writers: number, total: number) {
  const audit = await openAuditService({
    db,
    keyring: createKeyring(randomBytes(32)),
    defaultRetentionDays: 365,
  });
  audit.sequencer.start(); // linking runs alongside the writers, as in the server
  const orgId = newId('org');
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async () => {
      while (next < total) {
        const i = next++;
        await db.db.transaction((tx) =>
          audit.record(tx, {
            orgId,
            actor: { type: 'user', id: 'usr_bench', name: 'Bench' },
            action: 'key.created',
            resource: { type: 'api_keys', id: `key_${i}` },
            context: { ip: '127.0.0.1', userAgent: 'bench', requestId: `r${i}` },
            details: { i },
            changes: { after: { name: `k${i}`, scopes: ['secrets:read'] } },
          }),
        );
      }
    }),
  );
  const written = performance.now() - started;
  await audit.sequencer.stop();
  const linked = performance.now() - started;
  const verifyStart = performance.now();
  const result = await audit.verify(orgId);
  const verifyMs = performance.now() - verifyStart;
  console.log(
    `${label}: ${total} events, ${writers} writers — committed ${Math.round(total / (written / 1000))}/s, ` +
      `committed and linked ${Math.round(total / (linked / 1000))}/s; verify ${Math.round(total / (verifyMs / 1000))} events/s ` +
      `(valid=${result.valid}, checked=${result.checked})`,
  );
  if (!result.valid || result.checked !== total) process.exitCode = 1;
}

const pglite = await openDatabase({ dataDir: 'memory://' });
await runMigrations(pglite);
await measure('PGlite (in memory)', pglite, 1, 5000);
await pglite.close();

if (process.env.DATABASE_URL) {
  const postgres = await createTestDatabase();
  const db = await openDatabase({ dataDir: 'unused', databaseUrl: postgres.url, poolSize: 40 });
  try {
    await runMigrations(db);
    await measure('PostgreSQL (1 writer)', db, 1, 2000);
    await measure('PostgreSQL (32 writers)', db, 32, 20000);
  } finally {
    await db.close();
    await postgres.drop();
  }
} else {
  console.log('PostgreSQL: skipped (DATABASE_URL is not set)');
}
