import { and, asc, count, eq, gt, isNotNull, ne, sql } from 'drizzle-orm';
import type { AuditRecorder } from '../../audit/service.ts';
import { rewrap, sealedKeyId } from '../../crypto/envelope.ts';
import { CryptoError } from '../../crypto/errors.ts';
import type { Keyring } from '../../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../../db/client.ts';
import { vaultChanges } from '../schema.ts';
import { settingHistory, settings } from '../settings/schema.ts';
import { secretVersions } from './schema.ts';

export interface RewrapDeps {
  db: DbHandle;
  keyring: Keyring;
  audit: AuditRecorder;
  batchSize?: number;
}

export interface RewrapResult {
  /** Values found under another master key when the run began. */
  total: number;
  rewrapped: number;
  /** Values that could not be re-wrapped (their master key is not loaded, or they are damaged). */
  failed: number;
  /** Values still under another key when the run ended (new writes by a server on the old key). */
  remaining: number;
}

interface Row {
  cursor: [string, number];
  orgId: string;
  sealed: string;
}

interface Target {
  name: string;
  pending(tx: DbOrTx, currentId: string): Promise<number>;
  batch(tx: DbOrTx, currentId: string, after: [string, number] | null, limit: number): Promise<Row[]>;
  save(tx: DbOrTx, row: Row, sealed: string, keyId: string): Promise<void>;
}

const numberOf = (rows: { n: number }[]) => rows[0]?.n ?? 0;

const TARGETS: Target[] = [
  {
    name: 'secret_versions',
    pending: async (tx, id) =>
      numberOf(await tx.select({ n: count() }).from(secretVersions).where(ne(secretVersions.keyId, id))),
    batch: async (tx, id, after, limit) =>
      (
        await tx
          .select({
            a: secretVersions.secretId,
            b: secretVersions.version,
            orgId: secretVersions.orgId,
            sealed: secretVersions.value,
          })
          .from(secretVersions)
          .where(
            and(
              ne(secretVersions.keyId, id),
              after
                ? sql`(${secretVersions.secretId}, ${secretVersions.version}) > (${after[0]}, ${after[1]})`
                : undefined,
            ),
          )
          .orderBy(asc(secretVersions.secretId), asc(secretVersions.version))
          .limit(limit)
          .for('update', { skipLocked: true })
      ).map((r) => ({ cursor: [r.a, r.b], orgId: r.orgId, sealed: r.sealed })),
    save: async (tx, row, sealed, keyId) => {
      await tx
        .update(secretVersions)
        .set({ value: sealed, keyId })
        .where(and(eq(secretVersions.secretId, row.cursor[0]), eq(secretVersions.version, row.cursor[1])));
    },
  },
  {
    name: 'settings',
    pending: async (tx, id) =>
      numberOf(
        await tx
          .select({ n: count() })
          .from(settings)
          .where(and(isNotNull(settings.keyId), ne(settings.keyId, id))),
      ),
    batch: async (tx, id, after, limit) =>
      (
        await tx
          .select({ a: settings.id, orgId: settings.orgId, sealed: settings.valueSealed })
          .from(settings)
          .where(
            and(
              isNotNull(settings.keyId),
              ne(settings.keyId, id),
              after ? gt(settings.id, after[0]) : undefined,
            ),
          )
          .orderBy(asc(settings.id))
          .limit(limit)
          .for('update', { skipLocked: true })
      ).map((r) => ({ cursor: [r.a, 0], orgId: r.orgId, sealed: r.sealed ?? '' })),
    save: async (tx, row, sealed, keyId) => {
      await tx.update(settings).set({ valueSealed: sealed, keyId }).where(eq(settings.id, row.cursor[0]));
    },
  },
  {
    name: 'setting_history',
    pending: async (tx, id) =>
      numberOf(
        await tx
          .select({ n: count() })
          .from(settingHistory)
          .where(and(isNotNull(settingHistory.keyId), ne(settingHistory.keyId, id))),
      ),
    batch: async (tx, id, after, limit) =>
      (
        await tx
          .select({
            a: settingHistory.settingId,
            b: settingHistory.version,
            orgId: settingHistory.orgId,
            sealed: settingHistory.valueSealed,
          })
          .from(settingHistory)
          .where(
            and(
              isNotNull(settingHistory.keyId),
              ne(settingHistory.keyId, id),
              after
                ? sql`(${settingHistory.settingId}, ${settingHistory.version}) > (${after[0]}, ${after[1]})`
                : undefined,
            ),
          )
          .orderBy(asc(settingHistory.settingId), asc(settingHistory.version))
          .limit(limit)
          .for('update', { skipLocked: true })
      ).map((r) => ({ cursor: [r.a, r.b], orgId: r.orgId, sealed: r.sealed ?? '' })),
    save: async (tx, row, sealed, keyId) => {
      await tx
        .update(settingHistory)
        .set({ valueSealed: sealed, keyId })
        .where(and(eq(settingHistory.settingId, row.cursor[0]), eq(settingHistory.version, row.cursor[1])));
    },
  },
  {
    name: 'vault_changes',
    pending: async (tx, id) =>
      numberOf(await tx.select({ n: count() }).from(vaultChanges).where(ne(vaultChanges.keyId, id))),
    batch: async (tx, id, after, limit) =>
      (
        await tx
          .select({ a: vaultChanges.id, orgId: vaultChanges.orgId, sealed: vaultChanges.payload })
          .from(vaultChanges)
          .where(and(ne(vaultChanges.keyId, id), after ? gt(vaultChanges.id, after[0]) : undefined))
          .orderBy(asc(vaultChanges.id))
          .limit(limit)
          .for('update', { skipLocked: true })
      ).map((r) => ({ cursor: [r.a, 0], orgId: r.orgId, sealed: r.sealed })),
    save: async (tx, row, sealed, keyId) => {
      await tx.update(vaultChanges).set({ payload: sealed, keyId }).where(eq(vaultChanges.id, row.cursor[0]));
    },
  },
];

/**
 * Re-wraps every data key (secret versions, encrypted settings and their history, pending changes)
 * under the keyring's current master key. Only the 32-byte data keys are decrypted: payloads are
 * copied untouched and no plaintext exists. Small transactions with SKIP LOCKED keep it safe while
 * servers run (they must hold both keys: new as STEWARD_MASTER_KEY, old in _PREVIOUS). Each batch
 * writes one `secret.rewrapped` event per org in the same transaction.
 */
export async function rewrapAll(
  { db, keyring, audit, batchSize = 200 }: RewrapDeps,
  onProgress?: (done: number, total: number) => void,
): Promise<RewrapResult> {
  const currentId = keyring.current.id;
  let total = 0;
  for (const target of TARGETS) total += await target.pending(db.db, currentId);
  let rewrapped = 0;
  let failed = 0;
  onProgress?.(0, total);
  for (const target of TARGETS) {
    let after: [string, number] | null = null;
    for (;;) {
      const done = await db.db.transaction(async (tx) => {
        const rows = await target.batch(tx, currentId, after, batchSize);
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
          await target.save(tx, row, next, currentId);
          const entry = perOrg.get(row.orgId) ?? { count: 0, from: new Set<string>() };
          entry.count++;
          entry.from.add(from);
          perOrg.set(row.orgId, entry);
          ok++;
        }
        if (perOrg.size > 0) {
          await audit.record(
            tx,
            [...perOrg].map(([orgId, e]) => ({
              orgId,
              actor: { type: 'system' as const, name: 'vault rewrap' },
              action: 'secret.rewrapped' as const,
              resource: { type: target.name },
              details: { count: e.count, from_key_ids: [...e.from], to_key_id: currentId },
            })),
          );
        }
        return { rows, ok, bad };
      });
      rewrapped += done.ok;
      failed += done.bad;
      onProgress?.(rewrapped + failed, total);
      const last = done.rows.at(-1);
      if (!last || done.rows.length < batchSize) break;
      after = last.cursor;
    }
  }
  let remaining = 0;
  for (const target of TARGETS) remaining += await target.pending(db.db, currentId);
  return { total, rewrapped, failed, remaining };
}
