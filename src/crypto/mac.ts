import { createHmac, timingSafeEqual } from 'node:crypto';

export const HMAC_SHA256_BYTES = 32;

/** HMAC-SHA256 of `data` (RFC 2104 / 4231). */
export function hmacSha256(key: Uint8Array, data: Uint8Array | string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/**
 * Constant-time check of a full 32-byte HMAC-SHA256 tag. Truncated tags are refused
 * outright: accepting a prefix would let a forger guess far fewer bits.
 */
export function verifyHmacSha256(key: Uint8Array, data: Uint8Array | string, tag: Uint8Array): boolean {
  if (tag.length !== HMAC_SHA256_BYTES) return false;
  return timingSafeEqual(hmacSha256(key, data), tag);
}
