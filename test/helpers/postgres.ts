import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** Why Postgres tests are skipped here, or false when they run. */
export const postgresSkip: string | false = process.env.DATABASE_URL
  ? false
  : 'DATABASE_URL is not set: PostgreSQL tests skipped (CI always sets it)';

/**
 * A fresh, empty database on the server in DATABASE_URL for one test file, dropped
 * afterwards, so files never see each other's rows.
 */
export async function createTestDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) throw new Error('DATABASE_URL is not set');
  const name = `steward_t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`drop database if exists ${name} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
}
