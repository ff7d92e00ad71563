import { hkdfSync } from 'node:crypto';
import { CryptoError } from './errors.ts';

const MAX_OUTPUT = 255 * 32;

/** HKDF-SHA256 (RFC 5869). Throws `unsupported_parameters` past the RFC's 255 × 32-byte limit. */
export function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > MAX_OUTPUT) {
    throw new CryptoError('unsupported_parameters', `HKDF-SHA256 output must be 1..${MAX_OUTPUT} bytes`);
  }
  return Buffer.from(hkdfSync('sha256', ikm, salt, info, length));
}
