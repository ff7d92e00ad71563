// drizzle-kit reads src/*/schema.ts: the vault's tables live next to their code and are
// re-exported here so the one migration history sees them. The four-eyes tables, shared by
// secrets and settings (and later flags), are defined here.
import { boolean, index, jsonb, pgTable, text } from 'drizzle-orm/pg-core';
import { at, idColumn } from '../db/columns.ts';
import { environments, organizations } from '../tenancy/schema.ts';

export * from './secrets/schema.ts';
export * from './settings/schema.ts';

/** The requester's request context, stored with a held change (`vault_changes.request_context`). */
export interface ChangeRequestContext {
  ip: string | null;
  user_agent: string | null;
  session_id: string | null;
  request_id: string | null;
  tool_id: string | null;
}

/** Vault policy per org: whether changes in some environments need a second person's approval. */
export const vaultPolicies = pgTable('vault_policies', {
  orgId: text('org_id')
    .primaryKey()
    .references(() => organizations.id, { onDelete: 'cascade' }),
  fourEyes: boolean('four_eyes').notNull().default(false),
  /** Environment names the four-eyes rule covers. */
  fourEyesEnvironments: jsonb('four_eyes_environments').$type<string[]>().notNull().default(['production']),
  updatedBy: text('updated_by'),
  updatedAt: at('updated_at').notNull().defaultNow(),
});

/**
 * A change held for approval. `payload` is the request, sealed (it may carry a secret value)
 * with AAD `org/<org>/change/<id>`; `summary` is what a reviewer sees, secret values masked.
 */
export const vaultChanges = pgTable(
  'vault_changes',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    /** Null for org-wide changes (flag segments serve every environment). */
    environmentId: text('environment_id').references(() => environments.id, { onDelete: 'cascade' }),
    kind: text('kind').notNull(),
    targetId: text('target_id'),
    summary: jsonb('summary').$type<Record<string, unknown>>().notNull(),
    payload: text('payload').notNull(),
    keyId: text('key_id').notNull(),
    status: text('status').notNull().default('pending'),
    requestedBy: text('requested_by').notNull(),
    requestedByType: text('requested_by_type').notNull(),
    /**
     * The API key the change was asked with (`key_…`), when a key asked: `requested_by` is then its
     * owner. Null for a user's or agent's own request, and for key requests before migration 0013.
     */
    requestedByKeyId: text('requested_by_key_id'),
    /**
     * Where the requester asked from: the applied change is recorded with it, never with the
     * approver's. Null only for changes requested before migration 0010 and not backfilled.
     */
    requestContext: jsonb('request_context').$type<ChangeRequestContext>(),
    decidedBy: text('decided_by'),
    decisionReason: text('decision_reason'),
    /** Id of the resource the applied change created or changed. */
    resultId: text('result_id'),
    createdAt: at('created_at').notNull().defaultNow(),
    decidedAt: at('decided_at'),
  },
  (t) => [
    index('vault_changes_org_status').on(t.orgId, t.status, t.createdAt),
    index('vault_changes_key_id').on(t.keyId),
  ],
);
