// Embedded mode's stand-in for autovacuum.
//
// PGlite runs PostgreSQL in single-user mode: there is no autovacuum worker, and the statistics
// it would act on are not even counted. Measured: 30 updates of every row of a 1,000-row table
// grew it from 80 KB to 2 MB, and its unique index 26×; nothing reclaimed the space, and the
// planner never got statistics. So in embedded mode Steward vacuums and analyses its tables
// itself, one table per statement with the event loop free between them (each statement holds
// PGlite's one thread while it runs). VACUUM skips pages unchanged since its last pass, so a
// regular pass costs about what changed since the previous one; ANALYZE runs when it has
// something to learn (see `vacuumAll`).
import type { DbHandle } from './client.ts';

export interface MaintenancePass {
  tables: number;
  /** Tables analysed in this pass (the others were vacuumed only). */
  analyzed: string[];
  ms: number;
  /** The slowest table and its time: what a request may have waited behind. */
  slowest: { table: string; ms: number } | null;
}

/** Row estimates at each table's last ANALYZE, as this process saw them. */
export type AnalyzeMemory = Map<string, number>;

const DAY_MS = 86_400_000;

/**
 * Vacuums every table of the public schema, one at a time, and analyses those whose size moved
 * by more than 10 % + 50 rows since their last ANALYZE (autovacuum's own default rule, on row
 * estimates since PGlite counts no modifications), never analysed, or not for a day. VACUUM of
 * an unchanged 200,000-event audit table took 1–2 ms; its ANALYZE 316 ms (a 30,000-row sample),
 * so ANALYZE only runs when it has something to learn.
 */
export async function vacuumAll(
  db: DbHandle,
  memory: AnalyzeMemory = new Map(),
  now = Date.now(),
): Promise<MaintenancePass> {
  const started = performance.now();
  const tables = await db.query<{ name: string }>(
    "select tablename as name from pg_tables where schemaname = 'public' order by tablename",
  );
  const analyzed: string[] = [];
  let slowest: MaintenancePass['slowest'] = null;
  for (const { name } of tables) {
    const t0 = performance.now();
    // The name comes from the catalogue, quoted as an identifier.
    const table = `"${name.replaceAll('"', '""')}"`;
    await db.query(`vacuum ${table}`);
    const [state] = await db.query<{ rows: number; last: Date | string | null }>(
      'select c.reltuples::float8 as rows, greatest(s.last_analyze, s.last_autoanalyze) as last ' +
        'from pg_class c left join pg_stat_user_tables s on s.relid = c.oid ' +
        "where c.oid = ('public.' || $1)::regclass",
      [table],
    );
    const rows = Math.max(0, Number(state?.rows ?? 0));
    const last = state?.last ? new Date(state.last).getTime() : null;
    const seen = memory.get(name) ?? (last === null ? undefined : rows);
    if (
      last === null ||
      seen === undefined ||
      Math.abs(rows - seen) > 50 + 0.1 * seen ||
      now - last > DAY_MS
    ) {
      await db.query(`analyze ${table}`);
      const [after] = await db.query<{ rows: number }>(
        "select reltuples::float8 as rows from pg_class where oid = ('public.' || $1)::regclass",
        [table],
      );
      memory.set(name, Math.max(0, Number(after?.rows ?? 0)));
      analyzed.push(name);
    } else {
      memory.set(name, seen);
    }
    const ms = performance.now() - t0;
    if (slowest === null || ms > slowest.ms) slowest = { table: name, ms };
    await new Promise((resolve) => setImmediate(resolve)); // let waiting requests run
  }
  return { tables: tables.length, analyzed, ms: performance.now() - started, slowest };
}

export interface EmbeddedMaintenanceOptions {
  db: DbHandle;
  intervalMs: number;
  onPass: (pass: MaintenancePass) => void;
  onError: (error: unknown) => void;
}

/** Runs `vacuumAll` every `intervalMs` on PGlite (nothing on PostgreSQL, whose autovacuum does it). Returns a stop function. */
export function startEmbeddedMaintenance({
  db,
  intervalMs,
  onPass,
  onError,
}: EmbeddedMaintenanceOptions): () => Promise<void> {
  if (db.kind !== 'pglite' || intervalMs <= 0) return async () => {};
  let running: Promise<void> | undefined;
  const memory: AnalyzeMemory = new Map();
  const timer = setInterval(() => {
    if (running) return;
    running = vacuumAll(db, memory)
      .then(onPass, onError)
      .finally(() => {
        running = undefined;
      });
  }, intervalMs);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await running;
  };
}
