import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/app.ts';
import { createMemoryBus } from '../../src/bus/index.ts';
import { loadConfig } from '../../src/config.ts';
import { createKeyring } from '../../src/crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../../src/db/client.ts';
import { runMigrations } from '../../src/db/migrate.ts';
import { ADMIN } from '../../src/identity/test-support.ts';
import { createTestDatabase } from './postgres.ts';

export interface TwoInstances {
  /** The instance the administrator was bootstrapped on. */
  readonly a: FastifyInstance;
  readonly b: FastifyInstance;
  /** A's database handle (for reading or writing rows behind the instances' backs). */
  readonly dbA: DbHandle;
  /** The fresh database both use (for a client of the test's own). */
  readonly url: string;
  /** The bootstrapped administrator's access token (valid on both). */
  readonly token: string;
  /** Closes both instances and their pools, then drops the database. */
  close(): Promise<void>;
}

export interface TwoInstancesOptions {
  /** Configuration for both (LOG_LEVEL is silent unless given). */
  readonly env?: Record<string, string | undefined>;
  /**
   * A bus of its own for each instance, so every message between them is lost and only what
   * reads the database (polls, rechecks) can carry a change across. Otherwise the bus is what
   * `env` configures (Redis with REDIS_URL).
   */
  readonly separateBuses?: boolean;
  /** Instance A's clock (B's is the real one). */
  readonly clockA?: () => Date;
}

/**
 * Two full Steward instances on one fresh PostgreSQL database (DATABASE_URL's server), sharing
 * one master key, with the administrator bootstrapped and logged in on A.
 */
export async function twoInstances(options: TwoInstancesOptions = {}): Promise<TwoInstances> {
  const database = await createTestDatabase();
  const dbs: DbHandle[] = [];
  const apps: FastifyInstance[] = [];
  const close = async () => {
    for (const app of apps) await app.close();
    for (const db of dbs) await db.close();
    await database.drop();
  };
  try {
    const keyring = createKeyring(randomBytes(32));
    const config = loadConfig({ LOG_LEVEL: 'silent', ...options.env });
    const open = async () => {
      const db = await openDatabase({ dataDir: 'unused', databaseUrl: database.url, poolSize: 5 });
      dbs.push(db);
      return db;
    };
    const bus = () => (options.separateBuses ? { bus: createMemoryBus() } : {});
    const first = await open();
    await runMigrations(first);
    const a = await buildApp(config, {
      db: first,
      keyring,
      ...bus(),
      ...(options.clockA ? { clock: options.clockA } : {}),
    });
    apps.push(a);
    await a.ready();
    await a.steward.identity.bootstrap(ADMIN);
    const b = await buildApp(config, { db: await open(), keyring, ...bus() });
    apps.push(b);
    await b.ready();
    const login = await a.inject({ method: 'POST', url: '/v1/auth/login', payload: ADMIN });
    if (login.statusCode !== 200) throw new Error(`login on A answered ${login.statusCode}: ${login.body}`);
    return { a, b, dbA: first, url: database.url, token: login.json().access_token, close };
  } catch (err) {
    await close();
    throw err;
  }
}
