import { hash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
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
const BODY = /^[1-9A-HJ-NP-Za-km-z]{40,46}$/;
/** Longest well-formed key (prefix, env, body, checksum, separators); anything longer is malformed. */
export const MAX_KEY_LENGTH = 80;

/** CRC-32 as 6 base58 characters, fixed width (no allocation beyond the string). */
function checksum(text: string): string {
  let n = crc32(text);
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
 * Whether `key` has the shape and checksum of a key of `product` (any environment). Cheap:
 * a few string scans and one CRC-32; run before any hash or lookup.
 */
export function isWellFormed(product: string, key: string): boolean {
  if (key.length > MAX_KEY_LENGTH || key.length < product.length + 50) return false;
  if (!key.startsWith(product) || key.charCodeAt(product.length) !== 95 /* _ */) return false;
  const envEnd = key.indexOf('_', product.length + 1);
  const sumStart = key.length - CHECKSUM_CHARS - 1;
  if (envEnd < 0 || envEnd - product.length - 1 < 2 || key.charCodeAt(sumStart) !== 95) return false;
  const body = key.slice(envEnd + 1, sumStart);
  if (!BODY.test(body)) return false;
  const head = key.slice(0, sumStart);
  return checksum(head) === key.slice(sumStart + 1);
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
