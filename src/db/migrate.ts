import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgliteDatabase } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import type { DbHandle } from './client.ts';

/** Where drizzle-kit writes the generated migrations (committed, only ever appended). */
export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url));

interface Journal {
  entries: { idx: number; when: number; tag: string }[];
}

function journal(): Journal {
  return JSON.parse(readFileSync(`${MIGRATIONS_FOLDER}/meta/_journal.json`, 'utf8')) as Journal;
}

/**
 * Applies pending migrations. Drizzle takes an advisory lock on PostgreSQL, so
 * several instances starting together apply each migration once.
 */
export async function runMigrations(handle: DbHandle): Promise<void> {
  const config = { migrationsFolder: MIGRATIONS_FOLDER };
  if (handle.kind === 'pglite') await migratePglite(handle.db as unknown as PgliteDatabase, config);
  else await migratePg(handle.db as unknown as NodePgDatabase, config);
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
