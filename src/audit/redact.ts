/**
 * Words that mark a field as secret, matched against the lower-cased field name with
 * separators removed (`refresh_token`, `refreshToken` and `REFRESH-TOKEN` all match).
 */
const SECRET_WORDS = [
  'password',
  'passphrase',
  'secret',
  'token',
  'totp',
  'recoverycode',
  'privatekey',
  'apikey',
  'keyhash',
  'seed',
  'ciphertext',
  'credential',
  'masterkey',
];

export const REDACTED = '[REDACTED]';

function isSecretField(name: string): boolean {
  const flat = name.toLowerCase().replace(/[^a-z0-9]/g, '');
  return SECRET_WORDS.some((w) => flat.includes(w));
}

/**
 * Masks secret-looking fields (plus any named explicitly, e.g. a secret setting's
 * `value`) in audit details and changes. Errs on the side of masking: a row is forever.
 */
export function redact<T>(value: T, extraFields: readonly string[] = []): T {
  const extra = new Set(extraFields);
  const walk = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(walk);
    if (v === null || typeof v !== 'object' || v instanceof Date) return v;
    const out: Record<string, unknown> = {};
    for (const [k, inner] of Object.entries(v)) {
      const secret = inner !== null && inner !== undefined && (extra.has(k) || isSecretField(k));
      out[k] = secret ? REDACTED : walk(inner);
    }
    return out;
  };
  return walk(value) as T;
}

// PostgreSQL text and jsonb refuse NUL and lone surrogates; an attacker-chosen user
// agent must not turn an audit write (and so the change it records) into a 500.
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what we strip
const NUL = /\u0000/g;

/** Makes a string safe to store: no NUL, no lone surrogates. */
export function storable(s: string): string {
  return s.toWellFormed().replace(NUL, '\uFFFD');
}

/**
 * JSON data as PostgreSQL will hand it back: strings (keys too) storable, undefined
 * dropped, Dates as ISO strings, non-finite numbers as null. Hashing this form makes
 * the chain verify after a round trip through jsonb.
 */
export function storableJson(value: unknown): unknown {
  if (value === undefined) return null;
  const walk = (v: unknown): unknown => {
    if (typeof v === 'string') return storable(v);
    if (typeof v === 'number') return Number.isFinite(v) ? v : null;
    if (v === null || typeof v === 'boolean') return v;
    if (v instanceof Date) return v.toISOString();
    if (Array.isArray(v)) return v.map((item) => (item === undefined ? null : walk(item)));
    if (typeof v === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, inner] of Object.entries(v)) if (inner !== undefined) out[storable(k)] = walk(inner);
      return out;
    }
    return null; // functions, symbols, bigints: not JSON
  };
  return walk(value);
}
