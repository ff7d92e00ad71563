import { createRequire } from 'node:module';

// murmurhash3js-revisited ships CommonJS without types; it hashes bytes, which lets us feed
// it UTF-8. (The older `murmurhash3js` used by unleash-client hashes `charCode & 0xff`, so
// it disagrees with the reference vectors and with the other Unleash SDKs on non-ASCII ids.)
interface MurmurLib {
  x86: { hash32(bytes: Uint8Array, seed?: number): number | undefined };
}
const lib = createRequire(import.meta.url)('murmurhash3js-revisited') as MurmurLib;

/** Seed Unleash uses for rollout buckets. */
export const STRATEGY_SEED = 0;
/** Seed Unleash uses for variant buckets. */
export const VARIANT_SEED = 86028157;

/** MurmurHash3 x86 32-bit of raw bytes, unsigned. */
export function murmur3(bytes: Uint8Array, seed: number): number {
  return lib.x86.hash32(bytes, seed) ?? 0;
}

// Hashing runs on every rollout evaluation, so keys are written into one reusable buffer
// and handed over as a cached view of the right length: no string concatenation, no
// TextEncoder result object, no new Uint8Array per call. Evaluation is synchronous, so a
// module-level buffer cannot be shared by two evaluations at once.
const SCRATCH_BYTES = 1024;
const scratch = new Uint8Array(SCRATCH_BYTES);
const views: Uint8Array[] = [];
const encoder = new TextEncoder();

function view(length: number): Uint8Array {
  let v = views[length];
  if (v === undefined) {
    v = scratch.subarray(0, length);
    views[length] = v;
  }
  return v;
}

/** Writes `id` as UTF-8 after `offset`; returns the end, or -1 if it does not fit. */
function writeUtf8(id: string, offset: number): number {
  const n = id.length;
  if (offset + n > SCRATCH_BYTES) return -1;
  for (let i = 0; i < n; i++) {
    const c = id.charCodeAt(i);
    if (c >= 0x80) {
      const { read, written } = encoder.encodeInto(id.slice(i), scratch.subarray(offset + i));
      return read === n - i ? offset + i + written : -1;
    }
    scratch[offset + i] = c;
  }
  return offset + n;
}

/**
 * Returns `id => murmur3(utf8(groupId + ':' + id), seed) % normalizer + 1`, Unleash's
 * normalised bucket, with the prefix encoded once.
 */
export function createBucketer(groupId: string, normalizer: number, seed: number): (id: string) => number {
  const prefix = encoder.encode(`${groupId}:`);
  const p = prefix.length;
  return (id) => {
    let end = -1;
    if (p <= SCRATCH_BYTES) {
      for (let i = 0; i < p; i++) scratch[i] = prefix[i] as number;
      end = writeUtf8(id, p);
    }
    const bytes = end >= 0 ? view(end) : encoder.encode(`${groupId}:${id}`);
    return ((lib.x86.hash32(bytes, seed) ?? 0) % normalizer) + 1;
  };
}

/** Unleash's `normalizedValue(id, groupId, normalizer, seed)`, for one-off use. */
export function normalizedValue(id: string, groupId: string, normalizer = 100, seed = STRATEGY_SEED): number {
  return (murmur3(encoder.encode(`${groupId}:${id}`), seed) % normalizer) + 1;
}
