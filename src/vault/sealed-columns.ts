import type { AnyPgColumn, PgTable } from 'drizzle-orm/pg-core';
import { auditSealedColumns } from '../audit/sealed-columns.ts';
import type { DbOrTx } from '../db/client.ts';
import { identitySealedColumns } from '../identity/sealed-columns.ts';
import { keysSealedColumns } from '../keys/sealed-columns.ts';
import { vaultChanges } from './schema.ts';
import { secretVersions } from './secrets/schema.ts';
import { settingHistory, settings } from './settings/schema.ts';

/**
 * A column holding values sealed under the master key (src/crypto/envelope.ts). Each domain that
 * seals declares its columns next to its tables (`<domain>/sealed-columns.ts`); `steward vault
 * rewrap` walks every one of them, so a master key can be dropped once the walk leaves nothing
 * behind. A value left out of this list would stop opening the day its key is dropped.
 */
export interface SealedColumn {
  table: PgTable;
  /** The primary key, in the order the re-wrap walks the rows (keyset pagination). */
  key: readonly [AnyPgColumn, ...AnyPgColumn[]];
  /** The sealed text (`v1.<masterKeyId>.…`); null where the row has no sealed value. */
  sealed: AnyPgColumn;
  /** A column repeating the sealed value's master key id (indexed), kept in step by the re-wrap. */
  keyId?: AnyPgColumn;
  /**
   * The orgs a row belongs to, for the per-org `secret.rewrapped` event: its org column, or, for
   * rows of no single org (users, signing keys), a lookup for the rows of one batch (same order).
   */
  org: AnyPgColumn | ((tx: DbOrTx, keys: readonly (readonly unknown[])[]) => Promise<string[][]>);
}

/** The vault's own sealed columns. */
export const vaultSealedColumns: readonly SealedColumn[] = [
  {
    table: secretVersions,
    key: [secretVersions.secretId, secretVersions.version],
    sealed: secretVersions.value,
    keyId: secretVersions.keyId,
    org: secretVersions.orgId,
  },
  {
    table: settings,
    key: [settings.id],
    sealed: settings.valueSealed,
    keyId: settings.keyId,
    org: settings.orgId,
  },
  {
    table: settingHistory,
    key: [settingHistory.settingId, settingHistory.version],
    sealed: settingHistory.valueSealed,
    keyId: settingHistory.keyId,
    org: settingHistory.orgId,
  },
  {
    table: vaultChanges,
    key: [vaultChanges.id],
    sealed: vaultChanges.payload,
    keyId: vaultChanges.keyId,
    org: vaultChanges.orgId,
  },
];

/**
 * Every sealed column of Steward. A domain that starts sealing adds its list here; the re-wrap
 * test fails when a table holds sealed values no entry names.
 */
export const SEALED_COLUMNS: readonly SealedColumn[] = [
  ...vaultSealedColumns,
  ...identitySealedColumns,
  ...keysSealedColumns,
  ...auditSealedColumns,
];
