import { inArray } from 'drizzle-orm';
import { organizations } from '../tenancy/schema.ts';
import type { SealedColumn } from '../vault/sealed-columns.ts';
import { orgMemberships, signingKeys, users } from './schema.ts';

/**
 * Identity's values sealed under the master key, for `steward vault rewrap`: the private JWKs of
 * access-token signing keys (AAD `signing-key/<id>`; the server cannot start without the active
 * one) and the TOTP seeds of users (AAD `user/<id>/totp`).
 */
export const identitySealedColumns: readonly SealedColumn[] = [
  {
    table: signingKeys,
    key: [signingKeys.id],
    sealed: signingKeys.privateJwk,
    // The instance's keys sign every org's tokens: each org's trail records their re-wrap.
    org: async (tx, keys) => {
      const orgs = (await tx.select({ id: organizations.id }).from(organizations)).map((o) => o.id);
      return keys.map(() => orgs);
    },
  },
  {
    table: users,
    key: [users.id],
    sealed: users.totpSecret,
    // A user is global: the event goes to every org they are (or were) a member of.
    org: async (tx, keys) => {
      const ids = keys.map((k) => String(k[0]));
      const rows = await tx
        .select({ userId: orgMemberships.userId, orgId: orgMemberships.orgId })
        .from(orgMemberships)
        .where(inArray(orgMemberships.userId, ids));
      return ids.map((id) => rows.filter((r) => r.userId === id).map((r) => r.orgId));
    },
  },
];
