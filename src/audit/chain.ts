import { createHash } from 'node:crypto';

/** prev_hash of an org's first event. */
export const GENESIS_HASH = '0'.repeat(64);

/** The fields covered by an event's hash: every stored column but the hashes and the MAC. */
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

/** An event's content: what is known when it is written, before it has a place in the chain. */
export type EventContent = Omit<ChainedFields, 'seq'>;

/** A stored row's content: every column but its place in the chain (seq, prev_hash, hash) and its MAC. */
export function contentOf(
  row: EventContent & { seq?: unknown; prevHash?: unknown; hash?: unknown; mac?: unknown },
): EventContent {
  const { seq: _seq, prevHash: _prevHash, hash: _hash, mac: _mac, ...content } = row;
  return content;
}

/** `"key":value` of each defined member of an object, canonical, in key order. */
function sortedMembers(value: Record<string, unknown>): [string, string][] {
  return Object.entries(value)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => [k, `${JSON.stringify(k)}:${canonicalJson(v)}`]);
}

/**
 * JSON with object keys sorted at every depth, so the same event hashes the same
 * whatever order jsonb hands its keys back in.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (value instanceof Date) return JSON.stringify(value.toISOString());
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  return `{${sortedMembers(value as Record<string, unknown>)
    .map(([, member]) => member)
    .join(',')}}`;
}

/** An event serialised once, for its MAC (without seq) and its hash (with seq, once it has one). */
export interface CanonicalEvent {
  /** Canonical JSON of the content: what the event's MAC covers. */
  readonly content: string;
  /** Canonical JSON of the content with `seq` in its sorted place: `canonicalJson({ ...content, seq })`. */
  withSeq(seq: number): string;
}

/**
 * Serialises an event's content once (about 8 µs for a typical event on this machine, four times
 * its HMAC): the writer needs it for the MAC and, when it links as it writes, for the hash too.
 */
export function canonicalEvent(content: EventContent): CanonicalEvent {
  const members = sortedMembers(content as unknown as Record<string, unknown>);
  if (members.some(([key]) => key === 'seq')) throw new Error('canonicalEvent: content has no seq');
  const at = members.findIndex(([key]) => key > 'seq');
  const before = (at === -1 ? members : members.slice(0, at)).map(([, member]) => member);
  const after = at === -1 ? [] : members.slice(at).map(([, member]) => member);
  return {
    content: `{${[...before, ...after].join(',')}}`,
    withSeq: (seq) => `{${[...before, `"seq":${JSON.stringify(seq)}`, ...after].join(',')}}`,
  };
}

/** SHA-256 over the previous hash and the canonical event, hex. */
export function eventHash(prevHash: string, event: ChainedFields): string {
  return createHash('sha256').update(prevHash).update('\n').update(canonicalJson(event)).digest('hex');
}

/** `eventHash` of an event already serialised, at sequence `seq`. */
export function linkHash(prevHash: string, event: CanonicalEvent, seq: number): string {
  return createHash('sha256').update(prevHash).update('\n').update(event.withSeq(seq)).digest('hex');
}
