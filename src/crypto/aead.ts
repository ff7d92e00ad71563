import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CryptoError } from './errors.ts';

export const KEY_BYTES = 32;
export const IV_BYTES = 12;
export const TAG_BYTES = 16;

/** Output of one AES-256-GCM encryption. */
export interface AeadBox {
  readonly iv: Buffer;
  readonly ciphertext: Buffer;
  readonly tag: Buffer;
}

// Only one parameter set is accepted: other IV lengths go through GHASH (Wycheproof's
// LongIv/CounterWrap bugs) and short tags weaken authentication; we never need them.
function checkSizes(key: Uint8Array, iv: Uint8Array, tag?: Uint8Array): void {
  if (key.length !== KEY_BYTES)
    throw new CryptoError('unsupported_parameters', 'AES-256-GCM needs a 32-byte key');
  if (iv.length !== IV_BYTES)
    throw new CryptoError('unsupported_parameters', 'AES-256-GCM needs a 12-byte IV');
  if (tag !== undefined && tag.length !== TAG_BYTES) {
    throw new CryptoError('unsupported_parameters', 'AES-256-GCM needs a 16-byte tag');
  }
}

/**
 * AES-256-GCM encryption. The IV is random unless given; pass one only to reproduce
 * known-answer vectors, since reusing an IV under one key reveals the authentication key.
 */
export function aeadEncrypt(
  key: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array,
  iv: Uint8Array = randomBytes(IV_BYTES),
): AeadBox {
  checkSizes(key, iv);
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return { iv: Buffer.from(iv), ciphertext, tag: cipher.getAuthTag() };
}

/** AES-256-GCM decryption; throws `decrypt_failed` unless key, IV, tag and AAD all match. */
export function aeadDecrypt(
  key: Uint8Array,
  box: { readonly iv: Uint8Array; readonly ciphertext: Uint8Array; readonly tag: Uint8Array },
  aad: Uint8Array,
): Buffer {
  checkSizes(key, box.iv, box.tag);
  // authTagLength pins the tag size so a truncated tag can never be accepted.
  const decipher = createDecipheriv('aes-256-gcm', key, box.iv, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(box.tag);
  const head = decipher.update(box.ciphertext);
  try {
    return Buffer.concat([head, decipher.final()]);
  } catch {
    head.fill(0);
    throw new CryptoError(
      'decrypt_failed',
      'decryption failed: wrong key, tampered data or different context',
    );
  }
}
