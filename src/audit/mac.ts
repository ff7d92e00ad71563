import type { Keyring } from '../crypto/keyring.ts';
import { hmacSha256, verifyHmacSha256 } from '../crypto/mac.ts';

/** HKDF purpose of the key that signs purge checkpoints. */
export const AUDIT_CHECKPOINT_KEY_PURPOSE = 'steward/audit/checkpoint/v1';
/** HKDF purpose of the key that authenticates each event's content when it is written. */
export const AUDIT_EVENT_KEY_PURPOSE = 'steward/audit/event/v1';

/** What the audit trail needs of the keyring: per-purpose keys, derived from older master keys too. */
export type AuditKeyring = Pick<Keyring, 'current' | 'ids' | 'has' | 'deriveKey'>;

/** The outcome of checking one event's MAC. */
export type MacCheck = 'ok' | 'mac_mismatch' | 'mac_key_unknown';

// `mac1.<master key id>.<base64url of the 32-byte tag>`: named like sealed values (`v1.<key id>.…`)
// but not mistakable for one, so a search for values still under an old key finds no MAC.
const EVENT_MAC = /^mac1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

/**
 * The audit trail's keys: an event key and a checkpoint key per master key, each derived once
 * (HKDF with its own purpose). Events and checkpoints are signed under the current master key;
 * an event's MAC names its master key, so events written before a rotation verify as long as
 * that key is in STEWARD_MASTER_KEY_PREVIOUS.
 */
export function createAuditKeys(keyring: AuditKeyring) {
  const derived = new Map<string, Buffer>();
  const keyFor = (purpose: string, keyId: string): Buffer => {
    const name = `${purpose} ${keyId}`;
    let key = derived.get(name);
    if (key === undefined) {
      key = keyring.deriveKey(purpose, 32, keyId);
      derived.set(name, key);
    }
    return key;
  };
  const currentId = keyring.current.id;
  const eventKey = keyFor(AUDIT_EVENT_KEY_PURPOSE, currentId);
  const prefix = `mac1.${currentId}.`;

  return {
    /** The MAC stored with an event: one HMAC-SHA256 of its canonical content (`canonicalEvent`). */
    eventMac: (content: string): string => prefix + hmacSha256(eventKey, content).toString('base64url'),

    /** Checks a stored MAC against the event's canonical content, in constant time. */
    checkEventMac(content: string, mac: string): MacCheck {
      const match = EVENT_MAC.exec(mac);
      if (match === null) return 'mac_mismatch';
      const [, keyId = '', tag = ''] = match;
      if (!keyring.has(keyId)) return 'mac_key_unknown';
      const ok = verifyHmacSha256(
        keyFor(AUDIT_EVENT_KEY_PURPOSE, keyId),
        content,
        Buffer.from(tag, 'base64url'),
      );
      return ok ? 'ok' : 'mac_mismatch';
    },

    /** Hex HMAC-SHA256 of a checkpoint's payload under the current master key. */
    signCheckpoint: (payload: string): string =>
      hmacSha256(keyFor(AUDIT_CHECKPOINT_KEY_PURPOSE, currentId), payload).toString('hex'),

    /**
     * A checkpoint verifies under any master key held. Its signature does not name its key (older
     * ones could not), so each is tried: one HMAC per key for the one checkpoint verify reads.
     */
    checkCheckpoint(payload: string, signature: string): boolean {
      if (!/^[0-9a-f]{64}$/.test(signature)) return false;
      const tag = Buffer.from(signature, 'hex');
      return keyring.ids.some((id) =>
        verifyHmacSha256(keyFor(AUDIT_CHECKPOINT_KEY_PURPOSE, id), payload, tag),
      );
    },
  };
}

export type AuditKeys = ReturnType<typeof createAuditKeys>;
