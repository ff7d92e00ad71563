import { createHash } from 'node:crypto';

/** prev_hash of an org's first event. */
export const GENESIS_HASH = '0'.repeat(64);

/** The fields covered by an event's hash: every stored column but the hashes themselves. */
export interface ChainedFields {
  id: string;
  orgId: string;
  seq: number;
  actorType: string;
  actorId: string | null;
  actorName: string | null;
  action: string;
  resourceType: string | null;
  resourceId: string | null;
  ip: string | null;
  userAgent: string | null;
  sessionId: string | null;
  requestId: string | null;
  details: unknown;
  changes: unknown;
  success: boolean;
  errorMessage: string | null;
  sensitive: boolean;
  retentionDays: number;
  createdAt: Date;
}

/**
 * JSON with object keys sorted at every depth, so the same event hashes the same
 * whatever order jsonb hands its keys back in.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

/** SHA-256 over the previous hash and the canonical event, hex. */
export function eventHash(prevHash: string, event: ChainedFields): string {
  return createHash('sha256').update(prevHash).update('\n').update(canonicalJson(event)).digest('hex');
}
