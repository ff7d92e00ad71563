import type { Keyring } from '../crypto/keyring.ts';
import { hmacSha256, verifyHmacSha256 } from '../crypto/mac.ts';
import type { AuditMacKeys } from './mac-key.ts';

/** HKDF purpose of the master-key-derived key that signed checkpoints before the audit MAC key (hex signatures). */
export const AUDIT_CHECKPOINT_KEY_PURPOSE = 'steward/audit/checkpoint/v1';
/** What verifying hex checkpoints needs of the keyring: keys derived from any master key held. */
export type AuditKeyring = Pick<Keyring, 'ids' | 'deriveKey'>;

/** The outcome of checking one event's MAC. */
export type MacCheck = 'ok' | 'mac_mismatch' | 'mac_key_unknown';

// `mac2.<audit key id>.<base64url of the 32-byte tag>`: named like sealed values (`v1.<key id>.…`)
// but not mistakable for one, so a search for values still under an old key finds no MAC. (`mac1`,
// keyed by the master key itself, was an intermediate version that never landed.)
const SIGNED = /^mac2\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;
// A checkpoint signed before the audit MAC key: hex, under a key derived from some master key.
const LEGACY_CHECKPOINT = /^[0-9a-f]{64}$/;

/**
 * The audit trail's keys. Events and checkpoints are signed under the audit MAC key
 * (`mac2.<audit key id>.…`), which a master-key rotation does not change. Checkpoints of releases
 * before it (hex) verify under the master key that signed them while it is held (the key derived
 * from it is derived once per key id); each start re-signs them (`resignLegacyCheckpoints`).
 */
export function createAuditKeys(keyring: AuditKeyring, macKeys: AuditMacKeys) {
  const derived = new Map<string, Buffer>();
  const legacyCheckpointKey = (masterKeyId: string): Buffer => {
    let key = derived.get(masterKeyId);
    if (key === undefined) {
      key = keyring.deriveKey(AUDIT_CHECKPOINT_KEY_PURPOSE, 32, masterKeyId);
      derived.set(masterKeyId, key);
    }
    return key;
  };
  const { current } = macKeys;
  const prefix = `mac2.${current.id}.`;

  return {
    /** The MAC stored with an event: one HMAC-SHA256 of its canonical content (`canonicalEvent`). */
    eventMac: (content: string): string =>
      prefix + hmacSha256(current.eventKey, content).toString('base64url'),

    /** Checks a stored MAC against the event's canonical content, in constant time. */
    checkEventMac(content: string, mac: string): MacCheck {
      const match = SIGNED.exec(mac);
      if (match === null) return 'mac_mismatch';
      const [, keyId = '', tag = ''] = match;
      const key = macKeys.byId.get(keyId)?.eventKey;
      if (key === undefined) return 'mac_key_unknown';
      return verifyHmacSha256(key, content, Buffer.from(tag, 'base64url')) ? 'ok' : 'mac_mismatch';
    },

    /** A checkpoint's signature: `mac2.<audit key id>.<base64url HMAC-SHA256>` of its payload. */
    signCheckpoint: (payload: string): string =>
      prefix + hmacSha256(current.checkpointKey, payload).toString('base64url'),

    /**
     * A checkpoint verifies under the audit MAC key it names. One signed before that key existed
     * (hex, no key named) verifies under any master key held: each is tried, one HMAC per key for
     * the one checkpoint verify reads.
     */
    checkCheckpoint(payload: string, signature: string): boolean {
      const match = SIGNED.exec(signature);
      if (match !== null) {
        const [, keyId = '', tag = ''] = match;
        const key = macKeys.byId.get(keyId)?.checkpointKey;
        return key !== undefined && verifyHmacSha256(key, payload, Buffer.from(tag, 'base64url'));
      }
      if (!LEGACY_CHECKPOINT.test(signature)) return false;
      const tag = Buffer.from(signature, 'hex');
      return keyring.ids.some((id) => verifyHmacSha256(legacyCheckpointKey(id), payload, tag));
    },
  };
}

export type AuditKeys = ReturnType<typeof createAuditKeys>;
