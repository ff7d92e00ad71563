import { PGlite } from '@electric-sql/pglite';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite';
import pg from 'pg';
import { lockDataDir } from './lock.ts';
import { type PreparedStatement, prepared, runPrepared, trackTransactions } from './prepared.ts';

/**
 * The one database type every query function takes. A transaction is a PgDatabase
 * too, so `DbOrTx` accepts both: services own transactions, queries don't care.
 */
export type DbOrTx = PgDatabase<PgQueryResultHKT>;

/** An open database plus what the process needs to know about it. */
export interface DbHandle {
  readonly db: DbOrTx;
  readonly kind: 'pglite' | 'postgres';
  /** Raw SQL returning rows, for the few places Drizzle's builder does not reach. */
  query<Row = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<Row[]>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** Server mode when set. */
  databaseUrl?: string | undefined;
  /** Embedded mode folder; `memory://` gives a throwaway in-memory database (tests). */
  dataDir: string;
  poolSize?: number;
}

/** Opens PGlite (embedded) or a node-postgres pool (server), per configuration. */
export async function openDatabase(options: OpenDatabaseOptions): Promise<DbHandle> {
  return options.databaseUrl
    ? openPostgres(options.databaseUrl, options.poolSize ?? 10)
    : openPglite(options.dataDir);
}

async function openPglite(dataDir: string): Promise<DbHandle> {
  const inMemory = dataDir === 'memory://';
  const release = inMemory ? () => {} : lockDataDir(dataDir);
  try {
    const client = await PGlite.create(inMemory ? undefined : dataDir);
    trackTransactions(client);
    const db = drizzlePglite({ client }) as unknown as DbOrTx;
    return {
      db,
      kind: 'pglite',
      async query<Row>(sql: string, params: unknown[] = []) {
        return (await client.query<Row>(sql, params)).rows;
      },
      async close() {
        try {
          await client.close();
        } finally {
          release();
        }
      },
    };
  } catch (error) {
    release();
    throw error;
  }
}

async function openPostgres(url: string, poolSize: number): Promise<DbHandle> {
  // Sessions in UTC whatever the server's TimeZone: timestamps come back as text that drizzle hands
  // to `new Date()`, which cannot read the local-mean-time offsets a zone gives old instants
  // (`1800-01-01 00:09:21+00:09:21` in Europe/Paris is an Invalid Date).
  const pool = new pg.Pool({ connectionString: url, max: poolSize, options: '-c TimeZone=UTC' });
  // An idle client's connection dying (server restart) must not crash the process;
  // the pool replaces it, and the next query reports any lasting problem.
  pool.on('error', () => {});
  const db = drizzlePg({ client: pool }) as unknown as DbOrTx;
  const handle: DbHandle = {
    db,
    kind: 'postgres',
    async query<Row>(sql: string, params: unknown[] = []) {
      return (await pool.query(sql, params)).rows as Row[];
    },
    close: () => pool.end(),
  };
  await handle.query('select 1'); // fail at boot, not at the first request
  return handle;
}

type DriverClient = {
  query(text: string, params: unknown[], options?: { blob?: Blob }): Promise<{ rows?: unknown[] }>;
};

/**
 * The driver client under `db` — inside a transaction, the transaction's own connection, so
 * atomicity is unchanged. Fails loudly if a Drizzle upgrade moves the client, rather than
 * silently writing outside the transaction.
 */
export function driverClient(db: DbOrTx, caller: string): DriverClient {
  const client = (db as unknown as { _?: { session?: { client?: Partial<DriverClient> } } })._?.session
    ?.client;
  if (typeof client?.query !== 'function')
    throw new Error(`${caller}: no driver client under this database handle`);
  return client as DriverClient;
}

/**
 * A value in PostgreSQL's text input form, as COPY takes it: dates
 * as ISO timestamps, booleans as true/false, objects and arrays as JSON; null stays null.
 */
function asText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** A value as one CSV field for COPY: null is an empty unquoted field, everything else quoted. */
function csvField(value: unknown): string {
  const text = asText(value);
  return text === null ? '' : `"${text.replaceAll('"', '""')}"`;
}

/** Objects and arrays as JSON text (jsonb columns), the rest as the driver takes it. */
const asParam = (value: unknown): unknown =>
  value !== null && typeof value === 'object' && !(value instanceof Date) ? JSON.stringify(value) : value;

const singleInserts = new Map<string, PreparedStatement>();

/** The prepared one-row INSERT of these columns into `table` (both the caller's constants). */
function insertOne(table: string, columns: readonly string[]): PreparedStatement {
  const key = `${table} (${columns.join(', ')})`;
  let statement = singleInserts.get(key);
  if (statement === undefined) {
    statement = prepared(
      `insert_one_${singleInserts.size}`,
      `insert into ${key} values (${columns.map((_, i) => `$${i + 1}`).join(', ')})`,
    );
    singleInserts.set(key, statement);
  }
  return statement;
}

/**
 * Inserts many rows into `table` within `db` (a transaction or not). On PGlite, two rows or more
 * are one `COPY … FROM '/dev/blob'` in CSV: PGlite binds parameters in JavaScript, and a multi-row
 * INSERT measured about 6× the cost per row of COPY (ADR 0002, amendment). On PostgreSQL it is
 * one multi-row INSERT (the server parses the parameters, in its own process). Objects and arrays
 * are stored as JSON (so not for array columns), dates as ISO timestamps. Identifiers are the
 * caller's constants, never input.
 */
export async function rawInsertMany(
  db: DbOrTx,
  kind: DbHandle['kind'],
  table: string,
  columns: readonly string[],
  rows: readonly (readonly unknown[])[],
): Promise<void> {
  if (rows.length === 0) return;
  // One row is one prepared INSERT anywhere: COPY pays off from the second row on.
  if (rows.length === 1) {
    await runPrepared(db, insertOne(table, columns), (rows[0] as readonly unknown[]).map(asParam));
    return;
  }
  const client = driverClient(db, 'rawInsertMany');
  if (kind === 'pglite') {
    const csv = rows.map((row) => row.map(csvField).join(',')).join('\n');
    await client.query(`copy ${table} (${columns.join(', ')}) from '/dev/blob' with (format csv)`, [], {
      blob: new Blob([csv, '\n']),
    });
    return;
  }
  const params: unknown[] = [];
  const tuples = rows.map((row) => {
    const at = params.length;
    for (const value of row) params.push(asParam(value));
    return `(${row.map((_, i) => `$${at + i + 1}`).join(',')})`;
  });
  await client.query(`insert into ${table} (${columns.join(', ')}) values ${tuples.join(',')}`, params);
}
