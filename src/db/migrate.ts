import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { drizzle as drizzlePg, type NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgliteDatabase } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import type pg from 'pg';
import type { DbHandle } from './client.ts';

/** Where drizzle-kit writes the generated migrations (committed, only ever appended). */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url));

interface Journal {
  entries: { idx: number; when: number; tag: string }[];
}

function journal(): Journal {
  return JSON.parse(readFileSync(`${MIGRATIONS_FOLDER}/meta/_journal.json`, 'utf8')) as Journal;
}

/** The advisory lock every Steward instance takes around its migrations (any fixed 64-bit key). */
const MIGRATION_LOCK = 7_391_620_455_143_010n;

/**
 * Applies pending migrations. On PostgreSQL, under a session advisory lock on one connection of
 * the pool: Drizzle's migrator takes none, so instances starting together on an empty database
 * raced to create the same tables and all but one died on a duplicate key (a tester started
 * three: two exited). Now the others wait for the first, then find nothing left to apply.
 * PGlite is one process's own database (its folder is locked).
 */
export async function runMigrations(handle: DbHandle): Promise<void> {
  const config = { migrationsFolder: MIGRATIONS_FOLDER };
  if (handle.kind === 'pglite') {
    await migratePglite(handle.db as unknown as PgliteDatabase, config);
    return;
  }
  const pool = (handle.db as unknown as { $client: pg.Pool }).$client;
  const client = await pool.connect();
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK.toString()]);
    try {
      await migratePg(drizzlePg({ client }) as unknown as NodePgDatabase, config);
    } finally {
      await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK.toString()]);
    }
  } finally {
    client.release();
  }
}

/** How the database compares with the migrations this build ships. */
export interface MigrationStatus {
  current: boolean;
  applied: number;
  expected: number;
}

export async function migrationStatus(handle: DbHandle): Promise<MigrationStatus> {
  const expected = journal().entries;
  const last = expected.at(-1);
  let rows: { created_at: string | number }[] = [];
  try {
    rows = await handle.query<{ created_at: string | number }>(
      'select created_at from drizzle.__drizzle_migrations order by created_at desc limit 1',
    );
  } catch {
    // No migrations table yet: nothing applied.
  }
  const appliedAt = rows[0] ? Number(rows[0].created_at) : undefined;
  const applied = appliedAt === undefined ? 0 : expected.filter((e) => e.when <= appliedAt).length;
  return { current: last === undefined || appliedAt === last.when, applied, expected: expected.length };
}
