import { randomBytes } from 'node:crypto';
import { asc } from 'drizzle-orm';
import { openAtStart, seal } from '../crypto/envelope.ts';
import { CryptoError } from '../crypto/errors.ts';
import { hkdfSha256 } from '../crypto/kdf.ts';
import type { Keyring } from '../crypto/keyring.ts';
import { hmacSha256 } from '../crypto/mac.ts';
import type { DbHandle } from '../db/client.ts';
import { auditMacKeys } from './schema.ts';

/** HKDF purpose of the key that authenticates each event, derived from the audit MAC key. */
export const AUDIT_EVENT_MAC_PURPOSE = 'steward/audit/event/v2';
/** HKDF purpose of the key that signs purge checkpoints, derived from the audit MAC key. */
export const AUDIT_CHECKPOINT_MAC_PURPOSE = 'steward/audit/checkpoint/v2';
const HKDF_SALT = Buffer.from('steward/audit-mac-key/v1');
const KEY_BYTES = 32;

/** What a sealed audit MAC key is bound to: copied to another row, it does not open. */
export const auditMacKeyAad = (id: string) => `audit-mac-key/${id}`;

/** Public 16-hex-char id of an audit MAC key (a keyed hash: it reveals nothing of the key). */
export function auditMacKeyId(key: Uint8Array): string {
  return hmacSha256(key, 'steward/audit-mac-key-id/v1').subarray(0, 8).toString('hex');
}

/** One audit MAC key, opened: its id and the two keys derived from it. */
export interface AuditMacKey {
  readonly id: string;
  readonly eventKey: Buffer;
  readonly checkpointKey: Buffer;
}

/** The audit MAC keys of the deployment: the one that signs, and every one by id (for verify). */
export interface AuditMacKeys {
  readonly current: AuditMacKey;
  readonly byId: ReadonlyMap<string, AuditMacKey>;
}

export interface LoadAuditMacKeysDeps {
  db: DbHandle;
  /** Opens the sealed keys (any master key held); seals the first one under the current key. */
  keyring: Keyring;
  clock?: () => Date;
}

const derive = (key: Buffer, purpose: string) => hkdfSha256(key, HKDF_SALT, Buffer.from(purpose), KEY_BYTES);

/**
 * Loads the audit MAC keys once, at start; the first instance to start on a database makes the
 * key. Instances starting together each insert generation 1 with ON CONFLICT DO NOTHING: one
 * insert wins, the others wait for it and do nothing, and all read back the same row. Every row
 * must open: a key that does not would leave the events it signed unverifiable, and a row Steward
 * did not write (a role without the master key cannot seal one) must not be skipped quietly.
 */
export async function loadAuditMacKeys({
  db,
  keyring,
  clock = () => new Date(),
}: LoadAuditMacKeysDeps): Promise<AuditMacKeys> {
  const read = () => db.db.select().from(auditMacKeys).orderBy(asc(auditMacKeys.generation));
  let rows = await read();
  if (rows.length === 0) {
    const key = randomBytes(KEY_BYTES);
    const id = auditMacKeyId(key);
    await db.db
      .insert(auditMacKeys)
      .values({ id, generation: 1, keySealed: seal(keyring, key, auditMacKeyAad(id)), createdAt: clock() })
      .onConflictDoNothing({ target: auditMacKeys.generation });
    key.fill(0);
    rows = await read();
  }
  const byId = new Map<string, AuditMacKey>();
  for (const row of rows) byId.set(row.id, { id: row.id, ...openKey(keyring, row.id, row.keySealed) });
  const newest = rows.at(-1);
  const current = newest && byId.get(newest.id);
  if (!current) throw new Error('audit MAC key: none stored after inserting one');
  return { current, byId };
}

function openKey(keyring: Keyring, id: string, sealed: string): { eventKey: Buffer; checkpointKey: Buffer } {
  let key: Buffer;
  try {
    key = openAtStart(keyring, sealed, auditMacKeyAad(id), `the audit MAC key ${id}`);
  } catch (error) {
    if (!(error instanceof CryptoError) || error.code === 'invalid_master_key') throw error;
    throw new Error(
      `audit MAC key ${id} cannot be opened: its sealed value does not open (${error.code}): the row was altered`,
      {
        cause: error,
      },
    );
  }
  try {
    // The id is a hash of the key: a row whose key does not match its id was not written by Steward.
    if (key.length !== KEY_BYTES || auditMacKeyId(key) !== id) {
      throw new Error(`audit MAC key ${id} holds a key of another id: the row was altered`);
    }
    return {
      eventKey: derive(key, AUDIT_EVENT_MAC_PURPOSE),
      checkpointKey: derive(key, AUDIT_CHECKPOINT_MAC_PURPOSE),
    };
  } finally {
    key.fill(0);
  }
}
