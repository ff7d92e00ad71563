import type { SealedColumn } from '../vault/sealed-columns.ts';
import { auditChainHeads, auditMacKeys } from './schema.ts';

/**
 * The audit domain's value sealed under the master key, for `steward vault rewrap`: the audit MAC
 * key (AAD `audit-mac-key/<id>`). Re-wrapping it is all a master-key rotation asks of the audit
 * trail: what it signed stays as it is, and verifies once the old master key is dropped.
 */
export const auditSealedColumns: readonly SealedColumn[] = [
  {
    table: auditMacKeys,
    key: [auditMacKeys.id],
    sealed: auditMacKeys.keySealed,
    // The key authenticates every org's trail: each trail records its re-wrap.
    org: async (tx, keys) => {
      const orgs = (await tx.select({ id: auditChainHeads.orgId }).from(auditChainHeads)).map((o) => o.id);
      return keys.map(() => orgs);
    },
  },
];
