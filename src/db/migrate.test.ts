// Migrations on PostgreSQL when several instances start at once on an empty database.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createTestDatabase, postgresSkip } from '../../test/helpers/postgres.ts';
import { openDatabase } from './client.ts';
import { migrationStatus, runMigrations } from './migrate.ts';

describe('migrations on PostgreSQL', { skip: postgresSkip }, () => {
  test('four instances migrating one empty database at once: all succeed, each migration applied once', async () => {
    const { url, drop } = await createTestDatabase();
    const handles = await Promise.all(
      Array.from({ length: 4 }, () => openDatabase({ dataDir: 'unused', databaseUrl: url, poolSize: 2 })),
    );
    try {
      // Without the advisory lock, all but one died on a duplicate key creating the same table.
      const outcomes = await Promise.allSettled(handles.map((h) => runMigrations(h)));
      assert.deepEqual(
        outcomes.map((o) => (o.status === 'fulfilled' ? 'ok' : String(o.reason?.cause?.message ?? o.reason))),
        ['ok', 'ok', 'ok', 'ok'],
      );
      const [first] = handles;
      assert.ok(first);
      const status = await migrationStatus(first);
      assert.equal(status.current, true);
      const rows = await first.query<{ n: string }>('select count(*) as n from drizzle.__drizzle_migrations');
      assert.equal(Number(rows[0]?.n), status.expected, 'each migration recorded once');
      // The lock is released: a later start runs (and finds nothing to do).
      await runMigrations(first);
    } finally {
      await Promise.all(handles.map((h) => h.close()));
      await drop();
    }
  });
});
