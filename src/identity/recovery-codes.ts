import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export const RECOVERY_CODE_COUNT = 10;
// Crockford's base32: no I, L, O or U, so a code copied from paper cannot be misread.
const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
const CODE_CHARS = 16; // 16 × 5 bits = 80 bits of entropy per code

/** Fresh recovery codes to show once, and the hashes to store instead of them. */
export interface RecoveryCodes {
  codes: string[];
  hashes: string[];
}

function randomCode(): string {
  // 10 random bytes are exactly 80 bits: sixteen 5-bit groups, with no modulo bias.
  const bytes = randomBytes(10);
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let out = '';
  for (let i = CODE_CHARS - 1; i >= 0; i--) out += ALPHABET[Number((bits >> BigInt(i * 5)) & 31n)];
  return out.match(/.{4}/g)?.join('-') ?? out;
}

/** Canonical form: lowercase, no separators, with Crockford's look-alikes (i/l → 1, o → 0) folded. */
export function normalizeRecoveryCode(code: string): string {
  return code.toLowerCase().replace(/[\s-]/g, '').replace(/[il]/g, '1').replace(/o/g, '0');
}

/**
 * SHA-256 is enough here, unlike for passwords: each code carries 80 random bits, so a stolen
 * hash table still needs ~2^79 guesses per code; a slow hash would only slow down logins.
 */
export function hashRecoveryCode(code: string): string {
  return createHash('sha256').update(normalizeRecoveryCode(code)).digest('hex');
}

/** Ten codes formatted `xxxx-xxxx-xxxx-xxxx`, and their SHA-256 hashes (hex). */
export function generateRecoveryCodes(count = RECOVERY_CODE_COUNT): RecoveryCodes {
  const codes = Array.from({ length: count }, randomCode);
  return { codes, hashes: codes.map(hashRecoveryCode) };
}

/**
 * Index of the stored hash the code matches, or -1. Every hash is compared in constant time and
 * the loop never stops early. The caller deletes the matched hash in the same transaction as the login.
 */
export function matchRecoveryCode(code: string, hashes: readonly string[]): number {
  const normalized = normalizeRecoveryCode(code);
  if (!/^[0-9a-hjkmnp-tv-z]{16}$/.test(normalized)) return -1;
  const candidate = Buffer.from(hashRecoveryCode(normalized), 'hex');
  let found = -1;
  hashes.forEach((stored, i) => {
    const bytes = Buffer.from(stored, 'hex');
    if (bytes.length === candidate.length && timingSafeEqual(bytes, candidate) && found === -1) found = i;
  });
  return found;
}
