// Named prepared statements for the hottest statements: parsed, typed and planned once per
// connection instead of on every call.
//
// On PGlite, `query()` costs five protocol round trips into the WebAssembly module (parse,
// describe statement, bind, describe portal, execute) plus a plan, every time: a one-row lookup
// by e-mail measured 382 µs that way and 102 µs as a named statement bound and executed in one
// round trip (measured in session 3 with a one-off script, not kept). On PostgreSQL, node-postgres prepares a named statement
// once per pooled connection and then skips parse and plan.
import { type PGlite, protocol, parse as results, type Transaction } from '@electric-sql/pglite';
import { getTableColumns, type Table } from 'drizzle-orm';
import { type DbOrTx, driverClient } from './client.ts';

/** A statement with a name unique in the process; its text is a constant, never built from input. */
export interface PreparedStatement {
  readonly name: string;
  readonly text: string;
}

const names = new Set<string>();

/** Declares a statement once, at module load (a name used twice is a programming error). */
export function prepared(name: string, text: string): PreparedStatement {
  if (names.has(name)) throw new Error(`prepared statement ${name} declared twice`);
  names.add(name);
  return { name: `stw_${name}`, text };
}

// Column types both drivers hand back exactly as Drizzle's own mapping would (int8, numeric and
// timestamps in string mode differ between PGlite and node-postgres: they are not allowed here).
const SAME_ON_BOTH_DRIVERS = new Set(['PgText', 'PgBoolean', 'PgInteger', 'PgJsonb', 'PgTimestamp']);

/**
 * The select list of every column of `table`, each aliased to its property name (`"full_name" as
 * "fullName"`), so a prepared statement's rows have the shape Drizzle's `select()` gives. Built
 * from the schema at module load: a column added later is selected too.
 */
export function selectColumns(table: Table, alias: string): string {
  return Object.entries(getTableColumns(table))
    .map(([property, column]) => {
      // PgTimestamp is Drizzle's `mode: 'date'` column (string mode is PgTimestampString).
      if (!SAME_ON_BOTH_DRIVERS.has(column.columnType)) {
        throw new Error(
          `selectColumns: ${column.name} (${column.columnType}) does not read the same on both drivers`,
        );
      }
      return `${alias}."${column.name}" as "${property}"`;
    })
    .join(', ');
}

/** The PGlite instance each open transaction object belongs to (see `trackTransactions`). */
const owners = new WeakMap<Transaction, PGlite>();
/** Per PGlite instance: the parameter types of each statement it has prepared. */
const preparedOn = new WeakMap<PGlite, Map<string, number[]>>();

/**
 * Makes the transactions of `client` known here, so a statement run inside one can reach the
 * instance's protocol (the transaction object PGlite hands Drizzle has only `query` and `exec`).
 */
export function trackTransactions(client: PGlite): void {
  const transaction = client.transaction.bind(client);
  client.transaction = <T>(callback: (tx: Transaction) => Promise<T>) =>
    transaction((tx) => {
      owners.set(tx, client);
      return callback(tx);
    });
}

const { serialize } = protocol;

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

const EXECUTE_SYNC = concat([
  serialize.describe({ type: 'P', name: '' }),
  serialize.execute({}),
  serialize.sync(),
]);

/** Parses the statement under its name and learns its parameter types (one round trip, once). */
async function prepare(pg: PGlite, statement: PreparedStatement, inTransaction: boolean): Promise<number[]> {
  const { messages } = await pg.execProtocol(
    concat([
      serialize.parse({ name: statement.name, text: statement.text, types: [] }),
      serialize.describe({ type: 'S', name: statement.name }),
      serialize.sync(),
    ]),
    { syncToFs: !inTransaction },
  );
  const description = messages.find((m) => m.name === 'parameterDescription') as
    | { dataTypeIDs: number[] }
    | undefined;
  return description?.dataTypeIDs ?? [];
}

async function runOnPglite<Row>(
  pg: PGlite,
  inTransaction: boolean,
  statement: PreparedStatement,
  params: readonly unknown[],
): Promise<Row[]> {
  const run = () =>
    pg._runExclusiveQuery(async () => {
      let known = preparedOn.get(pg);
      if (known === undefined) {
        known = new Map();
        preparedOn.set(pg, known);
      }
      let types = known.get(statement.name);
      if (types === undefined) {
        types = await prepare(pg, statement, inTransaction);
        known.set(statement.name, types);
      }
      const values = params.map((value, i) => {
        if (value === null || value === undefined) return null;
        const serializer = pg.serializers[types[i] as number];
        return serializer ? serializer(value) : String(value);
      });
      const { messages } = await pg.execProtocol(
        concat([serialize.bind({ statement: statement.name, values }), EXECUTE_SYNC]),
        { syncToFs: !inTransaction },
      );
      return (results.parseResults(messages, pg.parsers)[0]?.rows ?? []) as Row[];
    });
  // Outside a transaction, wait for any open one to finish, as `query()` does.
  return inTransaction ? run() : pg._runExclusiveTransaction(run);
}

type NodePgClient = {
  query(config: { name: string; text: string; values: unknown[] }): Promise<{ rows: unknown[] }>;
};

/**
 * Runs a prepared statement within `db` (a transaction or not) and returns its rows, column
 * names as the database spells them. Parameters are typed by the statement, as with `query()`.
 */
export async function runPrepared<Row = Record<string, unknown>>(
  db: DbOrTx,
  statement: PreparedStatement,
  params: readonly unknown[],
): Promise<Row[]> {
  const client = driverClient(db, 'runPrepared') as unknown;
  const owner = owners.get(client as Transaction);
  if (owner !== undefined) {
    if ((client as Transaction).closed) throw new Error('runPrepared: the transaction is closed');
    return runOnPglite<Row>(owner, true, statement, params);
  }
  if (isPglite(client)) return runOnPglite<Row>(client, false, statement, params);
  // node-postgres serialises values as its `query()` does (objects as JSON, dates as timestamps).
  const result = await (client as NodePgClient).query({
    name: statement.name,
    text: statement.text,
    values: [...params],
  });
  return result.rows as Row[];
}

function isPglite(client: unknown): client is PGlite {
  return (
    typeof (client as Partial<PGlite>).execProtocol === 'function' &&
    typeof (client as Partial<PGlite>)._runExclusiveQuery === 'function'
  );
}
