import { and, asc, count, eq, getTableName, isNotNull, ne, notLike, type SQL, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import type { AuditRecorder } from '../audit/service.ts';
import { rewrap, sealedKeyId } from '../crypto/envelope.ts';
import { CryptoError } from '../crypto/errors.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { SEALED_COLUMNS, type SealedColumn } from './sealed-columns.ts';

export interface RewrapDeps {
  db: DbHandle;
  keyring: Keyring;
  audit: AuditRecorder;
  batchSize?: number;
  /** What to walk; every sealed column of Steward unless a test narrows it. */
  columns?: readonly SealedColumn[];
}

/** Counts of one table (or of all of them). */
export interface RewrapCounts {
  /**
   * Values found under another master key: those counted when the run began, or, when the walk met
   * more (written under the old key by a server during the run), those it met. Never below
   * `rewrapped + failed`, so progress never passes 100 %.
   */
  total: number;
  rewrapped: number;
  /** Values that could not be re-wrapped (their master key is not loaded, or they are damaged). */
  failed: number;
  /** Values still under another key when the run ended (failed ones, rows locked throughout, new writes by a server on the old key). */
  remaining: number;
}

export interface RewrapResult extends RewrapCounts {
  /** Per `table.column`: where anything is left. */
  tables: Record<string, RewrapCounts>;
}

interface Row {
  key: unknown[];
  sealed: string;
  orgIds: readonly string[];
}

/** `table.column`, as the summary and the events name a sealed column. */
export const sealedColumnName = (c: SealedColumn) => `${getTableName(c.table)}.${c.sealed.name}`;

/** Rows whose value is not under `currentId`: by the indexed key id column where there is one. */
function notCurrent(c: SealedColumn, currentId: string): SQL {
  return c.keyId
    ? (and(isNotNull(c.keyId), ne(c.keyId, currentId)) as SQL)
    : (and(isNotNull(c.sealed), notLike(c.sealed, `v1.${currentId}.%`)) as SQL);
}

async function pending(tx: DbOrTx, c: SealedColumn, currentId: string): Promise<number> {
  const [row] = await tx.select({ n: count() }).from(c.table).where(notCurrent(c, currentId));
  return row?.n ?? 0;
}

const list = (values: readonly SQL[]) => sql.join([...values], sql`, `);

/** The next rows to re-wrap after `after` (keyset order), locked; rows others hold are skipped. */
async function batch(
  tx: DbOrTx,
  c: SealedColumn,
  currentId: string,
  after: unknown[] | null,
  limit: number,
): Promise<Row[]> {
  const keyCols = c.key.map((col) => sql`${col}`);
  const orgColumn = typeof c.org === 'function' ? undefined : c.org;
  const fields: Record<string, AnyPgColumn> = {
    sealed: c.sealed,
    ...(orgColumn ? { org: orgColumn } : {}),
    ...Object.fromEntries(c.key.map((col, i) => [`k${i}`, col])),
  };
  const rows = (await tx
    .select(fields)
    .from(c.table)
    .where(
      and(
        notCurrent(c, currentId),
        after ? sql`(${list(keyCols)}) > (${list(after.map((v) => sql`${v}`))})` : undefined,
      ),
    )
    .orderBy(...c.key.map((col) => asc(col)))
    .limit(limit)
    .for('update', { skipLocked: true })) as Record<string, unknown>[];
  const keys = rows.map((r) => c.key.map((_, i) => r[`k${i}`]));
  const orgs =
    typeof c.org === 'function' ? await c.org(tx, keys) : rows.map((r) => [String(r.org)] as string[]);
  return rows.map((r, i) => ({ key: keys[i] ?? [], sealed: String(r.sealed), orgIds: orgs[i] ?? [] }));
}

async function save(tx: DbOrTx, c: SealedColumn, row: Row, sealed: string, keyId: string): Promise<void> {
  const set: Record<string, unknown> = { [columnProperty(c, c.sealed)]: sealed };
  if (c.keyId) set[columnProperty(c, c.keyId)] = keyId;
  await tx
    .update(c.table)
    .set(set)
    .where(and(...c.key.map((col, i) => eq(col, row.key[i]))));
}

/** The property name Drizzle knows a column by in its table (`.set()` takes those, not SQL names). */
function columnProperty(c: SealedColumn, column: AnyPgColumn): string {
  const entry = Object.entries(c.table).find(([, value]) => value === column);
  if (!entry) throw new Error(`${column.name} is not a column of ${getTableName(c.table)}`);
  return entry[0];
}

/**
 * Re-wraps every data key not under the keyring's current master key, in every sealed column of
 * Steward (`SEALED_COLUMNS`: the vault's secrets, settings, history and pending changes; identity's
 * signing keys and TOTP seeds; the keys domain's webhook secrets). Only the 32-byte data keys are
 * decrypted: payloads are copied untouched and no plaintext exists. Small transactions with SKIP
 * LOCKED keep it safe while servers run (they must hold both keys: new as STEWARD_MASTER_KEY, old
 * in _PREVIOUS). Each batch writes one `secret.rewrapped` event per org in the same transaction.
 */
export async function rewrapAll(
  { db, keyring, audit, batchSize = 200, columns = SEALED_COLUMNS }: RewrapDeps,
  onProgress?: (done: number, total: number) => void,
): Promise<RewrapResult> {
  const currentId = keyring.current.id;
  const tables: Record<string, RewrapCounts> = {};
  for (const c of columns) {
    tables[sealedColumnName(c)] = {
      total: await pending(db.db, c, currentId),
      rewrapped: 0,
      failed: 0,
      remaining: 0,
    };
  }
  const sum = (field: keyof RewrapCounts) => Object.values(tables).reduce((n, t) => n + t[field], 0);
  onProgress?.(0, sum('total'));
  for (const c of columns) {
    const name = sealedColumnName(c);
    const counts = tables[name] as RewrapCounts;
    let after: unknown[] | null = null;
    for (;;) {
      const done = await db.db.transaction(async (tx) => {
        const rows = await batch(tx, c, currentId, after, batchSize);
        const perOrg = new Map<string, { count: number; from: Set<string> }>();
        let ok = 0;
        let bad = 0;
        for (const row of rows) {
          let next: string;
          let from: string;
          try {
            from = sealedKeyId(row.sealed);
            next = rewrap(keyring, row.sealed);
          } catch (error) {
            if (!(error instanceof CryptoError)) throw error;
            bad++;
            continue;
          }
          await save(tx, c, row, next, currentId);
          for (const orgId of row.orgIds) {
            const entry = perOrg.get(orgId) ?? { count: 0, from: new Set<string>() };
            entry.count++;
            entry.from.add(from);
            perOrg.set(orgId, entry);
          }
          ok++;
        }
        if (perOrg.size > 0) {
          await audit.record(
            tx,
            [...perOrg].map(([orgId, e]) => ({
              orgId,
              actor: { type: 'system' as const, name: 'vault rewrap' },
              action: 'secret.rewrapped' as const,
              resource: { type: getTableName(c.table) },
              details: {
                column: c.sealed.name,
                count: e.count,
                from_key_ids: [...e.from],
                to_key_id: currentId,
              },
            })),
          );
        }
        return { rows, ok, bad };
      });
      counts.rewrapped += done.ok;
      counts.failed += done.bad;
      // Rows written under the old key during the run and met ahead of the walk: counted, as
      // `steward vault rewrap` used to show `616/604`.
      counts.total = Math.max(counts.total, counts.rewrapped + counts.failed);
      onProgress?.(sum('rewrapped') + sum('failed'), sum('total'));
      const last = done.rows.at(-1);
      if (!last || done.rows.length < batchSize) break;
      after = last.key;
    }
  }
  for (const c of columns) {
    (tables[sealedColumnName(c)] as RewrapCounts).remaining = await pending(db.db, c, currentId);
  }
  return {
    total: sum('total'),
    rewrapped: sum('rewrapped'),
    failed: sum('failed'),
    remaining: sum('remaining'),
    tables,
  };
}
