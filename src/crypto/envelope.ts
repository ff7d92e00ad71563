import { randomBytes } from 'node:crypto';
import { aeadDecrypt, aeadEncrypt, IV_BYTES, KEY_BYTES, TAG_BYTES } from './aead.ts';
import { CryptoError } from './errors.ts';
import type { Keyring, WrappedKey } from './keyring.ts';

/**
 * A sealed value: `v1.<masterKeyId>.<wrappedDataKey>.<payload>`, where
 * wrappedDataKey = base64url(iv ‖ encrypted data key ‖ tag) under the master key and
 * payload = base64url(iv ‖ ciphertext ‖ tag) under the data key. Plain ASCII, so it fits a
 * text column, and the key id is readable so a re-wrap can select what it still has to do.
 */
export type Sealed = string;

const VERSION = 'v1';
const KEY_ID = /^[0-9a-f]{16}$/;
const WRAPPED_BYTES = IV_BYTES + KEY_BYTES + TAG_BYTES;
const MIN_PAYLOAD_BYTES = IV_BYTES + TAG_BYTES;

interface Parts {
  wrapped: WrappedKey;
  payload: Buffer;
}

const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64url');
const box = (bytes: Buffer) => ({
  iv: bytes.subarray(0, IV_BYTES),
  ciphertext: bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES),
  tag: bytes.subarray(bytes.length - TAG_BYTES),
});

function decodePart(part: string, minBytes: number): Buffer {
  const bytes = Buffer.from(part, 'base64url');
  // Re-encoding rejects stray characters and non-canonical padding bits that Buffer would ignore.
  if (bytes.length < minBytes || bytes.toString('base64url') !== part) {
    throw new CryptoError('malformed', 'sealed value is malformed');
  }
  return bytes;
}

function parse(sealed: Sealed): Parts {
  const parts = typeof sealed === 'string' ? sealed.split('.') : [];
  const [version, keyId, wrapped, payload] = parts;
  if (parts.length !== 4 || version !== VERSION || keyId === undefined || !KEY_ID.test(keyId)) {
    throw new CryptoError('malformed', 'sealed value is malformed or of an unknown version');
  }
  const wrappedBytes = decodePart(wrapped ?? '', WRAPPED_BYTES);
  if (wrappedBytes.length !== WRAPPED_BYTES) throw new CryptoError('malformed', 'sealed value is malformed');
  return { wrapped: { keyId, ...box(wrappedBytes) }, payload: decodePart(payload ?? '', MIN_PAYLOAD_BYTES) };
}

function format(wrapped: WrappedKey, payload: Uint8Array): Sealed {
  const w = Buffer.concat([wrapped.iv, wrapped.ciphertext, wrapped.tag]);
  return `${VERSION}.${wrapped.keyId}.${b64(w)}.${b64(payload)}`;
}

/**
 * Encrypts under a fresh data key, wrapped by the current master key. `aad` names the row the
 * value belongs to (e.g. `org/<org>/secret/<id>/v/<n>`): copied to another row it will not open.
 */
export function seal(keyring: Keyring, plaintext: Uint8Array | string, aad: string): Sealed {
  const dataKey = randomBytes(KEY_BYTES);
  try {
    const data = typeof plaintext === 'string' ? Buffer.from(plaintext, 'utf8') : plaintext;
    const enc = aeadEncrypt(dataKey, data, Buffer.from(aad, 'utf8'));
    return format(keyring.wrap(dataKey), Buffer.concat([enc.iv, enc.ciphertext, enc.tag]));
  } finally {
    dataKey.fill(0);
  }
}

/** Decrypts; throws CryptoError `malformed`, `unknown_key` or `decrypt_failed` (tampered or other AAD). */
export function open(keyring: Keyring, sealed: Sealed, aad: string): Buffer {
  const { wrapped, payload } = parse(sealed);
  const dataKey = keyring.unwrap(wrapped);
  try {
    return aeadDecrypt(dataKey, box(payload), Buffer.from(aad, 'utf8'));
  } finally {
    dataKey.fill(0);
  }
}

/**
 * `open` for what Steward needs in order to start (the access-token signing key, the audit MAC
 * key): when the value is wrapped under a master key that is not loaded — it was dropped before
 * `steward vault rewrap` moved everything off it — the error says which key and what to do, as
 * one line (`invalid_master_key`, which the CLI prints without a stack) rather than a trace.
 */
export function openAtStart(keyring: Keyring, sealed: Sealed, aad: string, what: string): Buffer {
  try {
    return open(keyring, sealed, aad);
  } catch (error) {
    if (!(error instanceof CryptoError && error.code === 'unknown_key')) throw error;
    throw new CryptoError(
      'invalid_master_key',
      `${what} is sealed under master key ${sealedKeyId(sealed)}, which is not loaded: put that key back ` +
        'in STEWARD_MASTER_KEY_PREVIOUS, run "steward vault rewrap" and drop it only once the command exits 0',
    );
  }
}

/** The master key id a sealed value is wrapped under. */
export function sealedKeyId(sealed: Sealed): string {
  return parse(sealed).wrapped.keyId;
}

/** True when the value is not yet wrapped under the keyring's current key. */
export function needsRewrap(keyring: Keyring, sealed: Sealed): boolean {
  return sealedKeyId(sealed) !== keyring.current.id;
}

/**
 * Re-wraps the data key under the current master key. The payload ciphertext is copied
 * untouched, so no AAD is needed and the plaintext never exists in memory.
 */
export function rewrap(keyring: Keyring, sealed: Sealed): Sealed {
  const { wrapped, payload } = parse(sealed);
  if (wrapped.keyId === keyring.current.id) return sealed;
  const dataKey = keyring.unwrap(wrapped);
  try {
    return format(keyring.wrap(dataKey), payload);
  } finally {
    dataKey.fill(0);
  }
}
