import { DrizzleQueryError } from 'drizzle-orm/errors';
import { stdSerializers } from 'pino';

/**
 * The log's `err` serializer (app.ts hands it to pino, so every line that logs an error uses it:
 * request failures and the domains' background errors alike).
 *
 * A failed query must not put its parameters in the log: they are request payloads, key hashes,
 * sealed secrets. Drizzle's `DrizzleQueryError` carries them three times (`params`, and its
 * message and stack: "Failed query: … params: …"), PGlite's error carries them as `params`, and
 * PostgreSQL's `detail` quotes row values ("Key (key_hash)=(…) already exists"). An error whose
 * chain holds a query error is therefore rebuilt from named fields only: for each error its class,
 * message (for Drizzle's, the statement text, which has placeholders, not values) and stack
 * frames, plus the driver's code, severity and the constraint, table, column, schema and routine
 * it names; `detail`, `hint`, `where`, `params` and the rest are left out. Any other error is
 * serialized as pino always has.
 */
export function serializeError(value: unknown): unknown {
  return value instanceof Error && hasQueryError(value)
    ? describe(value, 0)
    : stdSerializers.err(value as Error);
}

const MAX_DEPTH = 8;
const DRIVER_FIELDS = [
  'code',
  'severity',
  'constraint',
  'table',
  'column',
  'schema',
  'dataType',
  'routine',
] as const;

type Record_ = Record<string, unknown>;

function isDrizzleQueryError(error: Error): error is DrizzleQueryError {
  return error instanceof DrizzleQueryError || error.constructor?.name === 'DrizzleQueryError';
}

/** A PostgreSQL error as node-postgres and PGlite raise it (pg-protocol's DatabaseError). */
function isDriverError(error: Error): boolean {
  const e = error as unknown as Record_;
  return typeof e.severity === 'string' && typeof e.code === 'string';
}

function hasQueryError(error: Error): boolean {
  let current: unknown = error;
  for (let depth = 0; current instanceof Error && depth < MAX_DEPTH; depth++) {
    if (isDrizzleQueryError(current) || isDriverError(current) || 'params' in current) return true;
    current = current.cause;
  }
  return false;
}

function describe(error: Error, depth: number): Record_ {
  const drizzle = isDrizzleQueryError(error);
  const driver = !drizzle && isDriverError(error);
  const type = drizzle
    ? 'DrizzleQueryError'
    : driver
      ? 'DatabaseError'
      : (error.constructor?.name ?? error.name);
  const message = drizzle ? `Failed query: ${String(error.query)}` : String(error.message);
  const out: Record_ = { type, message, stack: `${type}: ${message}\n${framesOf(error.stack)}` };
  if (driver) {
    const fields = error as unknown as Record_;
    for (const field of DRIVER_FIELDS) {
      if (fields[field] !== undefined) out[field] = fields[field];
    }
  } else if (!drizzle) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' || typeof code === 'number') out.code = code;
  }
  if (error.cause instanceof Error && depth + 1 < MAX_DEPTH) out.cause = describe(error.cause, depth + 1);
  return out;
}

/** The `    at …` lines of a stack, without its first lines (which repeat the message). */
function framesOf(stack: string | undefined): string {
  if (stack === undefined) return '';
  const at = stack.indexOf('\n    at ');
  return at === -1 ? '' : stack.slice(at + 1);
}
