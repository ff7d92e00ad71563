import { hash, randomBytes } from 'node:crypto';
import bs58 from 'bs58';

/**
 * Key format: `<product>_<env>_<base58 of 32 random bytes>_<checksum>`, e.g.
 * `stw_live_5Hq…_3xY9aB`. The product prefix and the fixed shape let secret scanners find
 * leaked keys; the checksum (CRC-32 of everything before it, 6 base58 characters) lets a
 * mistyped or truncated key be refused without a hash or a lookup.
 */
export const API_KEY_PRODUCT = 'stw';
/** Inbound webhook keys get a product prefix of their own, so scanners tell them apart. */
export const WEBHOOK_KEY_PRODUCT = 'stwhk';

export const KEY_ENVIRONMENTS = ['live', 'test'] as const;
export type KeyEnvironment = (typeof KEY_ENVIRONMENTS)[number];

const RANDOM_BYTES = 32;
const ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
const CHECKSUM_CHARS = 6; // 58^6 > 2^32
const BODY_MIN = 40;
const BODY_MAX = 46;
/** Longest well-formed key (prefix, env, body, checksum, separators); anything longer is malformed. */
export const MAX_KEY_LENGTH = 80;

// Verification checks the shape and checksum of every key it sees, so both are a loop over char
// codes here rather than a regex plus zlib.crc32 (which encodes the string into a buffer first).
const ALPHABET_CODES = Uint8Array.from(ALPHABET, (c) => c.charCodeAt(0));
const IS_BASE58 = new Uint8Array(128);
for (const code of ALPHABET_CODES) IS_BASE58[code] = 1;
const CRC_TABLE = new Int32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  CRC_TABLE[n] = c;
}

/** CRC-32 (zlib's) of `text[0, end)`, which must be ASCII (callers check). */
export function crc32Ascii(text: string, end = text.length): number {
  let c = -1;
  for (let i = 0; i < end; i++) c = (CRC_TABLE[(c ^ text.charCodeAt(i)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** CRC-32 as 6 base58 characters, fixed width. */
function checksum(text: string): string {
  let n = crc32Ascii(text);
  let out = '';
  for (let i = 0; i < CHECKSUM_CHARS; i++) {
    out = ALPHABET[n % 58] + out;
    n = Math.floor(n / 58);
  }
  return out;
}

/** A new key. Returned to the caller once; only `hashKey(key)` is stored. */
export function generateKey(product: string, env: string): string {
  const head = `${product}_${env}_${bs58.encode(randomBytes(RANDOM_BYTES))}`;
  return `${head}_${checksum(head)}`;
}

/**
 * Whether `key` has the shape and checksum of a key of `product` (any environment). Cheap: one
 * pass over the characters (ASCII, base58 body of 40–46 characters, CRC-32), run before any hash
 * or lookup.
 */
export function isWellFormed(product: string, key: string): boolean {
  if (key.length > MAX_KEY_LENGTH || key.length < product.length + 50) return false;
  if (!key.startsWith(product) || key.charCodeAt(product.length) !== 95 /* _ */) return false;
  const envEnd = key.indexOf('_', product.length + 1);
  const sumStart = key.length - CHECKSUM_CHARS - 1;
  if (envEnd < 0 || envEnd - product.length - 1 < 2 || key.charCodeAt(sumStart) !== 95) return false;
  const bodyLength = sumStart - envEnd - 1;
  if (bodyLength < BODY_MIN || bodyLength > BODY_MAX) return false;
  let c = -1;
  for (let i = 0; i < sumStart; i++) {
    const code = key.charCodeAt(i);
    if (code > 127 || (i > envEnd && IS_BASE58[code] === 0)) return false;
    c = (CRC_TABLE[(c ^ code) & 0xff] as number) ^ (c >>> 8);
  }
  // The checksum's base58 digits, last first, compared in place.
  let n = (c ^ -1) >>> 0;
  for (let i = key.length - 1; i > sumStart; i--) {
    if (key.charCodeAt(i) !== ALPHABET_CODES[n % 58]) return false;
    n = Math.floor(n / 58);
  }
  return true;
}

/** The environment marker of a well-formed key. */
export function environmentOf(product: string, key: string): string {
  return key.slice(product.length + 1, key.indexOf('_', product.length + 1));
}

/** SHA-256 of the full key, hex: the only form a key is stored in. */
export function hashKey(key: string): string {
  return hash('sha256', key, 'hex');
}

/**
 * What lists show instead of the key: product, environment and the first 6 characters of the
 * random part (`stw_live_5Hq9Zx…`). Enough to recognise a key, far too little to guess one.
 */
export function displayPrefix(product: string, key: string): string {
  const envEnd = key.indexOf('_', product.length + 1);
  return `${key.slice(0, envEnd + 7)}…`;
}
