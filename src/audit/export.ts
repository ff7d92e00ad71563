import { z } from 'zod';
import type { StoredEvent } from './queries.ts';

/** The public shape of an audit event (API, NDJSON export). */
export const eventSchema = z.object({
  id: z.string(),
  org_id: z.string(),
  sequence: z.number().int().nullable().describe('Position in the chain; null for a moment until linked.'),
  actor: z.object({ type: z.string(), id: z.string().nullable(), name: z.string().nullable() }),
  action: z.string(),
  resource: z.object({ type: z.string().nullable(), id: z.string().nullable() }),
  ip: z.string().nullable(),
  user_agent: z.string().nullable(),
  session_id: z.string().nullable(),
  request_id: z.string().nullable(),
  details: z.unknown(),
  changes: z.unknown(),
  success: z.boolean(),
  error_message: z.string().nullable(),
  sensitive: z.boolean(),
  retention_days: z.number().int(),
  created_at: z.string(),
  prev_hash: z.string().nullable(),
  hash: z.string().nullable(),
});

export function eventView(e: StoredEvent): z.infer<typeof eventSchema> {
  return {
    id: e.id,
    org_id: e.orgId,
    sequence: e.seq,
    actor: { type: e.actorType, id: e.actorId, name: e.actorName },
    action: e.action,
    resource: { type: e.resourceType, id: e.resourceId },
    ip: e.ip,
    user_agent: e.userAgent,
    session_id: e.sessionId,
    request_id: e.requestId,
    details: e.details,
    changes: e.changes,
    success: e.success,
    error_message: e.errorMessage,
    sensitive: e.sensitive,
    retention_days: e.retentionDays,
    created_at: e.createdAt.toISOString(),
    prev_hash: e.prevHash,
    hash: e.hash,
  };
}

const CSV_COLUMNS = [
  'sequence',
  'id',
  'created_at',
  'actor_type',
  'actor_id',
  'actor_name',
  'action',
  'resource_type',
  'resource_id',
  'success',
  'error_message',
  'ip',
  'user_agent',
  'session_id',
  'request_id',
  'sensitive',
  'details',
  'changes',
  'prev_hash',
  'hash',
] as const;

/** RFC 4180 quoting; a leading = + - @ is prefixed so spreadsheets do not run it as a formula. */
function csvField(value: unknown): string {
  if (value === null || value === undefined) return '';
  let s = typeof value === 'string' ? value : JSON.stringify(value);
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function csvRow(e: StoredEvent): string {
  const v = eventView(e);
  const flat: Record<(typeof CSV_COLUMNS)[number], unknown> = {
    ...v,
    actor_type: v.actor.type,
    actor_id: v.actor.id,
    actor_name: v.actor.name,
    resource_type: v.resource.type,
    resource_id: v.resource.id,
  };
  return `${CSV_COLUMNS.map((c) => csvField(flat[c])).join(',')}\r\n`;
}

/** One line per event, with a header line for CSV; consumed as a stream. */
export async function* exportLines(
  events: AsyncIterable<StoredEvent>,
  format: 'ndjson' | 'csv',
): AsyncGenerator<string> {
  if (format === 'csv') yield `${CSV_COLUMNS.join(',')}\r\n`;
  for await (const event of events)
    yield format === 'csv' ? csvRow(event) : `${JSON.stringify(eventView(event))}\n`;
}
