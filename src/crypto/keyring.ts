import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { type AeadBox, aeadDecrypt, aeadEncrypt, KEY_BYTES } from './aead.ts';
import { CryptoError } from './errors.ts';
import { hkdfSha256 } from './kdf.ts';
import { hmacSha256 } from './mac.ts';

const ENV_CURRENT = 'STEWARD_MASTER_KEY';
const ENV_PREVIOUS = 'STEWARD_MASTER_KEY_PREVIOUS';
const KEY_FILE = 'master.key';
const HKDF_SALT = Buffer.from('steward/hkdf/v1');

/** A data key encrypted under one master key; `keyId` says which. */
export interface WrappedKey extends AeadBox {
  readonly keyId: string;
}

/**
 * The master keys of this process. Raw key bytes stay inside the closure: callers
 * wrap, unwrap and derive, but can never read or log a master key.
 */
export interface Keyring {
  /** The key new data keys are wrapped under. */
  readonly current: { readonly id: string };
  /** Ids of every key held, current first. */
  readonly ids: readonly string[];
  has(id: string): boolean;
  /** HKDF-SHA256 subkey for one purpose (e.g. `audit-checkpoint`); `keyId` picks an older key. */
  deriveKey(purpose: string, length?: number, keyId?: string): Buffer;
  /** Encrypts a data key under the current master key. */
  wrap(dataKey: Uint8Array): WrappedKey;
  /** Decrypts a data key; throws `unknown_key` or `decrypt_failed`. */
  unwrap(wrapped: WrappedKey): Buffer;
}

/** Stable, public 16-hex-char id of a master key: a keyed hash, so it reveals nothing of the key. */
export function masterKeyId(key: Uint8Array): string {
  return hmacSha256(key, 'steward/master-key-id/v1').subarray(0, 8).toString('hex');
}

// The key id is bound into the wrap so a wrapped key cannot be relabelled as another key's.
const wrapAad = (keyId: string) => Buffer.from(`steward/dek/v1:${keyId}`);

/** Builds a keyring from raw 32-byte keys (the first is current). */
export function createKeyring(current: Uint8Array, previous: readonly Uint8Array[] = []): Keyring {
  const keys = new Map<string, Buffer>();
  for (const raw of [current, ...previous]) {
    if (raw.length !== KEY_BYTES)
      throw new CryptoError('invalid_master_key', 'a master key must be 32 bytes');
    const id = masterKeyId(raw);
    if (!keys.has(id)) keys.set(id, Buffer.from(raw));
  }
  const currentId = masterKeyId(current);
  const keyFor = (id: string): Buffer => {
    const key = keys.get(id);
    if (key === undefined) throw new CryptoError('unknown_key', `no master key with id ${id} is loaded`);
    return key;
  };
  return {
    current: Object.freeze({ id: currentId }),
    ids: Object.freeze([...keys.keys()]),
    has: (id) => keys.has(id),
    deriveKey(purpose, length = 32, keyId = currentId) {
      if (purpose.length === 0) throw new CryptoError('unsupported_parameters', 'deriveKey needs a purpose');
      return hkdfSha256(keyFor(keyId), HKDF_SALT, Buffer.from(purpose), length);
    },
    wrap(dataKey) {
      return { keyId: currentId, ...aeadEncrypt(keyFor(currentId), dataKey, wrapAad(currentId)) };
    },
    unwrap(wrapped) {
      return aeadDecrypt(keyFor(wrapped.keyId), wrapped, wrapAad(wrapped.keyId));
    },
  };
}

/** Options of `loadKeyring`, normally straight from the parsed config. */
export interface LoadKeyringOptions {
  /** Base64 of 32 bytes (STEWARD_MASTER_KEY). */
  masterKey?: string | undefined;
  /** Older keys still accepted for unwrapping (STEWARD_MASTER_KEY_PREVIOUS). */
  previousKeys?: readonly string[] | undefined;
  /** Embedded mode: where `master.key` is generated when no key is configured. */
  dataDir?: string | undefined;
  embedded: boolean;
  warn: (msg: string) => void;
}

const BASE64_32 = /^[A-Za-z0-9+/_-]{43}=?$/;

// The value is never echoed: a typo'd secret in an error message ends up in logs.
function parseKey(value: string, source: string): Buffer {
  const trimmed = value.trim();
  const bytes = BASE64_32.test(trimmed) ? Buffer.from(trimmed, 'base64') : undefined;
  if (bytes === undefined || bytes.length !== KEY_BYTES) {
    throw new CryptoError(
      'invalid_master_key',
      `${source} must be base64 of exactly 32 random bytes (generate one with: openssl rand -base64 32)`,
    );
  }
  if (bytes.every((b) => b === bytes[0])) {
    throw new CryptoError('invalid_master_key', `${source} is a constant byte pattern, not a random key`);
  }
  return bytes;
}

/**
 * Loads the master keys: from STEWARD_MASTER_KEY when set; otherwise, in embedded
 * mode only, from `<dataDir>/master.key`, generating it on the first start.
 */
export function loadKeyring(options: LoadKeyringOptions): Keyring {
  const previous = (options.previousKeys ?? []).map((k, i) => parseKey(k, `${ENV_PREVIOUS} entry ${i + 1}`));
  if (options.masterKey !== undefined && options.masterKey.trim() !== '') {
    return createKeyring(parseKey(options.masterKey, ENV_CURRENT), previous);
  }
  if (!options.embedded) {
    throw new CryptoError('invalid_master_key', `${ENV_CURRENT} is required with an external database`);
  }
  if (options.dataDir === undefined) {
    throw new CryptoError('invalid_master_key', `${ENV_CURRENT} is not set and there is no data directory`);
  }
  return createKeyring(readOrCreateKeyFile(options.dataDir, options.warn), previous);
}

function readOrCreateKeyFile(dataDir: string, warn: (msg: string) => void): Buffer {
  const path = join(dataDir, KEY_FILE);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const fresh = randomBytes(KEY_BYTES);
  // Write a private temp file, then link it into place: link() fails if the name exists,
  // so two processes starting together agree on one key and nobody reads a half-written file.
  const tmp = join(dataDir, `.${KEY_FILE}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, `${fresh.toString('base64')}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, path);
    warn(
      `${ENV_CURRENT} is not set: generated a master key in ${path} (mode 0600). ` +
        `Back it up with the data folder; without it encrypted values cannot be read. Set ${ENV_CURRENT} in production.`,
    );
    return fresh;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    unlinkSync(tmp);
  }
  if ((statSync(path).mode & 0o077) !== 0) {
    warn(`${path} is readable by other users; restrict it with chmod 600`);
  }
  return parseKey(readFileSync(path, 'utf8'), path);
}
