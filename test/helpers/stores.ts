import { type DbHandle, openDatabase } from '../../src/db/client.ts';
import { runMigrations } from '../../src/db/migrate.ts';
import { createTestDatabase, postgresSkip } from './postgres.ts';

/** One store under test: a migrated database and how to dispose of it. */
export interface TestStore {
  db: DbHandle;
  url?: string;
  dispose(): Promise<void>;
}

export type StoreKind = 'pglite' | 'postgres';

/** The stores every conformance suite runs over; Postgres only where DATABASE_URL is set. */
export const STORES: { kind: StoreKind; skip: string | false }[] = [
  { kind: 'pglite', skip: false },
  { kind: 'postgres', skip: postgresSkip },
];

/** A migrated, empty store: in-memory PGlite, or a fresh database on the Postgres server. */
export async function openTestStore(kind: StoreKind): Promise<TestStore> {
  if (kind === 'pglite') {
    const db = await openDatabase({ dataDir: 'memory://' });
    await runMigrations(db);
    return { db, dispose: () => db.close() };
  }
  const { url, drop } = await createTestDatabase();
  const db = await openDatabase({ dataDir: 'unused', databaseUrl: url, poolSize: 20 });
  await runMigrations(db);
  return {
    db,
    url,
    dispose: async () => {
      await db.close();
      await drop();
    },
  };
}
