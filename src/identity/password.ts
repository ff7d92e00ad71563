import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Algorithm, Options } from '@node-rs/argon2';
import { hash, parseOptions, verify } from '@node-rs/argon2';

/**
 * OWASP Password Storage Cheat Sheet, Argon2id option 3: 12 MiB, 3 passes, 1 lane. OWASP gives its
 * five options as equal defences; measured here (2 cores), option 2 (19 MiB, 2 passes) verified
 * 92/s and this one 121/s, since a smaller block stays in cache. Hashes made with other parameters
 * are rehashed at the next login.
 */
export const ARGON2_PARAMS = { memoryCost: 12288, timeCost: 3, parallelism: 1, outputLen: 32 } as const;
export const PASSWORD_MIN_LENGTH = 12;
export const PASSWORD_MAX_LENGTH = 256;

// Ambient const enums cannot be read under isolatedModules; the numbers are fixed by the binding.
const ARGON2ID = 2 as Algorithm;
const VERSION_0X13 = 1;
const OPTIONS: Options = { ...ARGON2_PARAMS, algorithm: ARGON2ID };

// A hash of 32 random bytes nobody kept, with the current parameters: verifying against it costs
// exactly what a real verify costs. password.test.ts fails if ARGON2_PARAMS drift from it.
export const DUMMY_HASH =
  '$argon2id$v=19$m=12288,t=3,p=1$NsJUHmyCrPgIHvceGd/Gsw$dJt/jfEkGjsE+3mRQAMiGrcewRJAIELIkWhb/zDBDFM';

// Far above any password the policy accepts, far below what would make hashing the input costly.
const VERIFY_INPUT_LIMIT = 4 * PASSWORD_MAX_LENGTH;

/**
 * At most one Argon2 computation per core at a time; the rest wait their turn in order. libuv's
 * pool runs four at once, and on this 2-core machine four 12 MiB computations evicted each other
 * from cache and starved the event loop of CPU: Argon2 cost 11.7 ms of CPU per login that way and
 * about 10 ms two at a time, and logins went from 77/s to 96/s in the same session (runs with a
 * pool of two threads; bench/identity-http.ts). An unknown user's dummy verify queues alike, so
 * the same-time rule holds.
 */
export const ARGON2_CONCURRENCY = availableParallelism();
let running = 0;
const waiting: (() => void)[] = [];

async function gated<T>(task: () => Promise<T>): Promise<T> {
  if (running < ARGON2_CONCURRENCY) running++;
  else await new Promise<void>((resolve) => waiting.push(resolve)); // the finisher hands its slot over
  try {
    return await task();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running--;
  }
}

/** Argon2 computations running now (tests: never above ARGON2_CONCURRENCY). */
export const argon2Running = () => running;

// NFKC so that the same password typed on two keyboards (composed vs decomposed é) matches.
const normalize = (password: string) => password.normalize('NFKC');

/** Argon2id hash in PHC string form, computed on the libuv thread pool. */
export function hashPassword(password: string): Promise<string> {
  return gated(() => hash(normalize(password), OPTIONS));
}

/** Result of a password check; `needsRehash` is only ever true alongside `ok`. */
export interface PasswordCheck {
  ok: boolean;
  needsRehash: boolean;
}

/** Verifies a password; asks for a rehash when the stored hash used other parameters than ARGON2_PARAMS. */
export async function verifyPassword(stored: string, password: string): Promise<PasswordCheck> {
  let params: ReturnType<typeof parseOptions>;
  try {
    params = parseOptions(stored);
  } catch {
    await verifyDummy();
    return { ok: false, needsRehash: false };
  }
  if (password.length > VERIFY_INPUT_LIMIT) {
    await verifyDummy();
    return { ok: false, needsRehash: false };
  }
  const ok = await gated(() => verify(stored, normalize(password)));
  const current =
    params.algorithm === ARGON2ID &&
    params.version === VERSION_0X13 &&
    params.memoryCost === ARGON2_PARAMS.memoryCost &&
    params.timeCost === ARGON2_PARAMS.timeCost &&
    params.parallelism === ARGON2_PARAMS.parallelism &&
    params.outputLen === ARGON2_PARAMS.outputLen;
  return { ok, needsRehash: ok && !current };
}

/** Spends the time of one real verify, so an unknown user answers as slowly as a wrong password. */
export async function verifyDummy(): Promise<void> {
  await gated(() => verify(DUMMY_HASH, 'not the password'));
}

/** Why a new password is refused. */
export type PasswordPolicyError =
  | 'password_too_short'
  | 'password_too_long'
  | 'password_too_common'
  | 'password_contains_identity';

let common: ReadonlySet<string> | undefined;
function commonPasswords(): ReadonlySet<string> {
  if (common === undefined) {
    const text = readFileSync(new URL('./common-passwords.txt', import.meta.url), 'utf8');
    const lines = text.split('\n').filter((l) => l !== '' && !l.startsWith('# '));
    common = new Set([...lines, 'steward']);
  }
  return common;
}

// Cracking rules try list words with digits and symbols around them and doubled words
// first, so "Password2024!" and "dragondragon" are as weak as the word itself.
function isCommon(lower: string): boolean {
  const list = commonPasswords();
  if (list.has(lower)) return true;
  const core = lower.replace(/^\P{L}+|\P{L}+$/gu, '');
  if (core.length >= 4 && list.has(core)) return true;
  const unit = /^(.+?)\1+$/su.exec(lower)?.[1];
  return unit !== undefined && (unit.length <= 4 || list.has(unit) || list.has(unit.replace(/\P{L}+$/u, '')));
}

/**
 * NIST SP 800-63B style policy for a new password: 12 to 256 characters (code points, after
 * NFKC), not a common password or a trivial variant of one, not containing the user's own name.
 * Returns the reason for refusal, or null. No composition rules: they do not add strength.
 */
export function checkPasswordPolicy(
  password: string,
  identity: { email?: string | undefined; username?: string | undefined } = {},
): PasswordPolicyError | null {
  const normalized = normalize(password);
  const length = [...normalized].length;
  if (length < PASSWORD_MIN_LENGTH) return 'password_too_short';
  if (length > PASSWORD_MAX_LENGTH) return 'password_too_long';
  const lower = normalized.toLowerCase();
  if (isCommon(lower)) return 'password_too_common';
  const local = identity.email?.split('@')[0];
  for (const word of [identity.email, local, identity.username]) {
    const w = word?.normalize('NFKC').toLowerCase();
    if (w !== undefined && w.length >= 4 && lower.includes(w)) return 'password_contains_identity';
  }
  return null;
}
