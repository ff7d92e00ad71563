import { and, asc, desc, eq, gt, gte, lt, lte, type SQL } from 'drizzle-orm';
import type { DbOrTx } from '../db/client.ts';
import { auditChainHeads, auditEvents } from './schema.ts';

/** A stored event, as read back. */
export type StoredEvent = typeof auditEvents.$inferSelect;

/** Filters of the audit query and export APIs; all optional, combined with AND. */
export interface AuditFilters {
  actorId?: string | undefined;
  actorType?: string | undefined;
  action?: string | undefined;
  resourceType?: string | undefined;
  resourceId?: string | undefined;
  success?: boolean | undefined;
  since?: Date | undefined;
  until?: Date | undefined;
}

function conditions(orgId: string, f: AuditFilters): SQL[] {
  const where: SQL[] = [eq(auditEvents.orgId, orgId)];
  if (f.actorId !== undefined) where.push(eq(auditEvents.actorId, f.actorId));
  if (f.actorType !== undefined) where.push(eq(auditEvents.actorType, f.actorType));
  if (f.action !== undefined) where.push(eq(auditEvents.action, f.action));
  if (f.resourceType !== undefined) where.push(eq(auditEvents.resourceType, f.resourceType));
  if (f.resourceId !== undefined) where.push(eq(auditEvents.resourceId, f.resourceId));
  if (f.success !== undefined) where.push(eq(auditEvents.success, f.success));
  if (f.since !== undefined) where.push(gte(auditEvents.createdAt, f.since));
  if (f.until !== undefined) where.push(lte(auditEvents.createdAt, f.until));
  return where;
}

/**
 * Newest first, by id (time-ordered, so events not yet linked into the chain show
 * too); `beforeId` is the keyset cursor: the last id of the previous page.
 */
export async function listEvents(
  db: DbOrTx,
  orgId: string,
  filters: AuditFilters,
  page: { limit: number; beforeId?: string | undefined },
): Promise<StoredEvent[]> {
  const where = conditions(orgId, filters);
  if (page.beforeId !== undefined) where.push(lt(auditEvents.id, page.beforeId));
  return db
    .select()
    .from(auditEvents)
    .where(and(...where))
    .orderBy(desc(auditEvents.id))
    .limit(page.limit);
}

/**
 * Forward by sequence: the org's linked events with `seq > afterSeq`, oldest first. Gap-free for a
 * reader that continues from the last sequence it saw: sequences are given under the org's chain
 * head lock, consecutively, each batch committing before the next is given, so an event that shows
 * later (committed late, linked late) always gets a sequence above every one already visible.
 * Events not linked yet are not returned; they are, once linked, on a later read.
 */
/**
 * The org's last linked sequence (0 if none). Every event up to it is committed (the head moves in
 * the linking transaction), so a query that starts after this read sees all of them.
 */
export async function linkedThrough(db: DbOrTx, orgId: string): Promise<number> {
  const [head] = await db
    .select({ lastSeq: auditChainHeads.lastSeq })
    .from(auditChainHeads)
    .where(eq(auditChainHeads.orgId, orgId));
  return head?.lastSeq ?? 0;
}

export async function listEventsAfterSeq(
  db: DbOrTx,
  orgId: string,
  filters: AuditFilters,
  page: { limit: number; afterSeq: number },
): Promise<StoredEvent[]> {
  const where = conditions(orgId, filters);
  where.push(gt(auditEvents.seq, page.afterSeq));
  return db
    .select()
    .from(auditEvents)
    .where(and(...where))
    .orderBy(asc(auditEvents.seq))
    .limit(page.limit);
}
