import type { SealedColumn } from '../vault/sealed-columns.ts';
import { webhookKeys } from './schema.ts';

/**
 * The keys domain's values sealed under the master key, for `steward vault rewrap`: the HMAC
 * secrets of inbound webhook keys (AAD `webhook-key/<id>/secret`).
 */
export const keysSealedColumns: readonly SealedColumn[] = [
  { table: webhookKeys, key: [webhookKeys.id], sealed: webhookKeys.secretSealed, org: webhookKeys.orgId },
];
