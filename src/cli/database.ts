import type { Config } from '../config.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';

/** Opens the configured database for a CLI command and always closes it. */
export async function withDatabase<T>(config: Config, run: (db: DbHandle) => Promise<T>): Promise<T> {
  const db = await openDatabase({
    databaseUrl: config.DATABASE_URL,
    dataDir: config.STEWARD_DATA_DIR,
    poolSize: 2,
  });
  try {
    return await run(db);
  } finally {
    await db.close();
  }
}
