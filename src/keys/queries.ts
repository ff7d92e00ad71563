import { and, desc, eq, gte, inArray, lt, type SQL, sql } from 'drizzle-orm';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { apiKeySettings, apiKeys, signals, webhookKeys } from './schema.ts';

export type ApiKeyRow = typeof apiKeys.$inferSelect;
export type WebhookKeyRow = typeof webhookKeys.$inferSelect;
export type SignalRow = typeof signals.$inferSelect;

/** Burst detection settings of an org (defaults when it has no row). */
export interface KeySettings {
  burstThreshold: number;
  burstWindowSeconds: number;
  suspendOnBurst: boolean;
}

export const DEFAULT_KEY_SETTINGS: KeySettings = Object.freeze({
  burstThreshold: 50,
  burstWindowSeconds: 60,
  suspendOnBurst: false,
});

export async function keyByHash(db: DbOrTx, hash: string): Promise<ApiKeyRow | null> {
  const [row] = await db.select().from(apiKeys).where(eq(apiKeys.hash, hash));
  return row ?? null;
}

/** `lock`: `FOR UPDATE`, inside a write's transaction (concurrent writers of the row wait). */
export async function keyById(
  db: DbOrTx,
  orgId: string,
  id: string,
  lock = false,
): Promise<ApiKeyRow | null> {
  const query = db
    .select()
    .from(apiKeys)
    .where(and(eq(apiKeys.orgId, orgId), eq(apiKeys.id, id)));
  const [row] = lock ? await query.for('update') : await query;
  return row ?? null;
}

/** One page of an org's keys, newest first; `before` is the last id of the previous page. */
export async function listKeys(
  db: DbOrTx,
  orgId: string,
  options: { limit: number; before?: string | undefined; ownerId?: string | undefined },
): Promise<ApiKeyRow[]> {
  const where: SQL[] = [eq(apiKeys.orgId, orgId)];
  if (options.before !== undefined) where.push(lt(apiKeys.id, options.before));
  if (options.ownerId !== undefined) where.push(eq(apiKeys.ownerId, options.ownerId));
  return db
    .select()
    .from(apiKeys)
    .where(and(...where))
    .orderBy(desc(apiKeys.id))
    .limit(options.limit);
}

/** An org's settings and when they last changed (0: never set, the defaults). `lock`: `FOR UPDATE`. */
export async function settingsVersionOf(
  db: DbOrTx,
  orgId: string,
  lock = false,
): Promise<{ settings: KeySettings; updatedAtMs: number }> {
  const query = db.select().from(apiKeySettings).where(eq(apiKeySettings.orgId, orgId));
  const [row] = lock ? await query.for('update') : await query;
  if (!row) return { settings: DEFAULT_KEY_SETTINGS, updatedAtMs: 0 };
  return {
    settings: {
      burstThreshold: row.burstThreshold,
      burstWindowSeconds: row.burstWindowSeconds,
      suspendOnBurst: row.suspendOnBurst,
    },
    updatedAtMs: row.updatedAt.getTime(),
  };
}

export async function settingsOf(db: DbOrTx, orgId: string): Promise<KeySettings> {
  return (await settingsVersionOf(db, orgId)).settings;
}

/**
 * Stamps `updated_at` — the change marker the invalidation poll reads — with the database's clock
 * (`statement_timestamp()`: one value for every row of the statement), as the last statement of a
 * write's transaction, so the stamp precedes the moment the change becomes visible by no more than
 * the commit itself. It was the writer's clock read before the row lock: a
 * write that waited longer than the poll's look-back on a lock (or a writer whose clock ran behind
 * the others') committed a change older than any poll still looking, and no poll ever saw it.
 * Returns the stamp.
 */
export async function stampKeysChanged(tx: DbOrTx, ids: readonly string[]): Promise<Date> {
  const rows = await tx
    .update(apiKeys)
    // Never before the stamp it replaces (nor the creation's, made by the service's clock, which
    // may run ahead of the database's): `updated_at` only moves forward for a client syncing by it.
    .set({
      updatedAt: sql`greatest(statement_timestamp(), ${apiKeys.updatedAt} + interval '1 millisecond', ${apiKeys.createdAt})`,
    })
    .where(inArray(apiKeys.id, [...ids]))
    .returning({ updatedAt: apiKeys.updatedAt });
  const stamp = rows[0]?.updatedAt;
  if (stamp === undefined) throw new Error('api key change stamp updated nothing');
  return stamp;
}

/** As `stampKeysChanged`, for an org's settings row. */
export async function stampSettingsChanged(tx: DbOrTx, orgId: string): Promise<void> {
  await tx
    .update(apiKeySettings)
    .set({
      updatedAt: sql`greatest(statement_timestamp(), ${apiKeySettings.updatedAt} + interval '1 millisecond')`,
    })
    .where(eq(apiKeySettings.orgId, orgId));
}

/** The database's clock (unix ms): the invalidation poll keeps its position in it, as the stamps are. */
export async function databaseNowMs(db: DbHandle): Promise<number> {
  const [row] = await db.query<{ ms: number | string }>(
    'select (extract(epoch from clock_timestamp()) * 1000)::float8 as ms',
    [],
  );
  if (row === undefined) throw new Error('clock_timestamp() returned nothing');
  return Number(row.ms);
}

/** Orgs whose settings changed since `since`: the invalidation poll, for a lost bus message. */
export async function settingsChangedSince(
  db: DbOrTx,
  since: Date,
): Promise<{ orgId: string; updatedAt: Date }[]> {
  return db
    .select({ orgId: apiKeySettings.orgId, updatedAt: apiKeySettings.updatedAt })
    .from(apiKeySettings)
    .where(gte(apiKeySettings.updatedAt, since))
    .limit(10_000);
}

/** Keys changed (not merely used) since `since`: the invalidation poll. */
export async function keysChangedSince(db: DbOrTx, since: Date): Promise<{ id: string; updatedAt: Date }[]> {
  return db
    .select({ id: apiKeys.id, updatedAt: apiKeys.updatedAt })
    .from(apiKeys)
    .where(gte(apiKeys.updatedAt, since))
    .limit(10_000);
}

export interface UsageDelta {
  id: string;
  delta: number;
  periodStart: Date;
  /** Null: the row's last use does not move (usage counted on a rolled key's successor). */
  lastUsedAt: Date | null;
}

/**
 * Adds batched usage in one statement. A delta counted in a newer period than the row's
 * restarts the count (the period ended); one counted in an older period is dropped. Returns the
 * totals, so each instance sees the others' usage at every flush. Does not touch `updated_at`.
 */
export async function addUsage(
  db: DbHandle,
  deltas: readonly UsageDelta[],
): Promise<{ id: string; request_count: number; period_start: Date | string }[]> {
  return db.query(
    `update api_keys as k set
       request_count = case
         when k.period_start = v.ps then k.request_count + v.d
         when k.period_start < v.ps then v.d
         else k.request_count end,
       period_start = greatest(k.period_start, v.ps),
       last_used_at = greatest(k.last_used_at, v.lu)
     from unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[]) as v(id, d, ps, lu)
     where k.id = v.id
     returning k.id, k.request_count, k.period_start`,
    [
      deltas.map((d) => d.id),
      deltas.map((d) => d.delta),
      deltas.map((d) => d.periodStart.toISOString()),
      deltas.map((d) => d.lastUsedAt?.toISOString() ?? null),
    ],
  );
}

export async function webhookKeyByHash(db: DbOrTx, hash: string): Promise<WebhookKeyRow | null> {
  const [row] = await db.select().from(webhookKeys).where(eq(webhookKeys.keyHash, hash));
  return row ?? null;
}

/** `lock`: `FOR UPDATE`, inside a write's transaction. */
export async function webhookKeyById(
  db: DbOrTx,
  orgId: string,
  id: string,
  lock = false,
): Promise<WebhookKeyRow | null> {
  const query = db
    .select()
    .from(webhookKeys)
    .where(and(eq(webhookKeys.orgId, orgId), eq(webhookKeys.id, id)));
  const [row] = lock ? await query.for('update') : await query;
  return row ?? null;
}

export async function listWebhookKeys(
  db: DbOrTx,
  orgId: string,
  options: { limit: number; before?: string | undefined },
): Promise<WebhookKeyRow[]> {
  const where: SQL[] = [eq(webhookKeys.orgId, orgId)];
  if (options.before !== undefined) where.push(lt(webhookKeys.id, options.before));
  return db
    .select()
    .from(webhookKeys)
    .where(and(...where))
    .orderBy(desc(webhookKeys.id))
    .limit(options.limit);
}

export async function listSignals(
  db: DbOrTx,
  orgId: string,
  options: { limit: number; before?: string | undefined; sourceKeyId?: string | undefined },
): Promise<SignalRow[]> {
  const where: SQL[] = [eq(signals.orgId, orgId)];
  if (options.before !== undefined) where.push(lt(signals.id, options.before));
  if (options.sourceKeyId !== undefined) where.push(eq(signals.sourceKeyId, options.sourceKeyId));
  return db
    .select()
    .from(signals)
    .where(and(...where))
    .orderBy(desc(signals.id))
    .limit(options.limit);
}
