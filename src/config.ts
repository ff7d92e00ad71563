import { z } from 'zod';
import { tiersVariable } from './keys/tiers.ts';

const commaList = z.string().transform((s) =>
  s
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0),
);

/**
 * Every environment variable Steward reads. The README's configuration table is
 * checked against this schema by a test, so a variable added here must be documented.
 * Secrets have no default, ever.
 */
export const configSchema = z.object({
  HOST: z.string().min(1).default('127.0.0.1').describe('Interface the HTTP server listens on.'),
  PORT: z.coerce.number().int().min(0).max(65535).default(8080).describe('TCP port (0 picks a free one).'),
  LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('info')
    .describe(
      'pino log level. Requests are not logged one by one (it halves throughput); failed (5xx) ones are.',
    ),
  STEWARD_DATA_DIR: z
    .string()
    .min(1)
    .default('./data')
    .describe('Embedded mode: folder for the PGlite database, its lock file and the generated master key.'),
  DATABASE_URL: z
    .url({ protocol: /^postgres(ql)?$/ })
    .optional()
    .describe(
      'PostgreSQL connection string. When set, Steward uses this server instead of the embedded PGlite.',
    ),
  DATABASE_POOL_SIZE: z.coerce
    .number()
    .int()
    .min(1)
    .max(500)
    .default(10)
    .describe('Maximum connections in the node-postgres pool (server mode only).'),
  REDIS_URL: z
    .url({ protocol: /^rediss?$/ })
    .optional()
    .describe(
      'Redis for cache invalidation (and, with API keys, rate limits) shared by several Steward instances. Unset: in-process only.',
    ),
  REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, `_`, `.` or `-`, at most 64')
    .default('steward')
    .describe(
      'Namespace of every Redis key and channel Steward uses. Deployments sharing one Redis must each set their own, or they share login-failure counts.',
    ),
  STEWARD_MASTER_KEY: z
    .string()
    .optional()
    .describe(
      'Base64 of 32 random bytes; encrypts secrets at rest. Required with DATABASE_URL; embedded mode generates one into the data folder.',
    ),
  STEWARD_MASTER_KEY_PREVIOUS: commaList
    .optional()
    .describe('Comma-separated older master keys (base64), still accepted for decryption while re-wrapping.'),
  CORS_ORIGINS: commaList
    .default([])
    .describe('Comma-separated origins allowed by CORS (`*` for any). Empty: CORS disabled.'),
  TRUST_PROXY: commaList
    .default([])
    .describe('Comma-separated addresses/CIDRs of proxies whose X-Forwarded-For is believed. Empty: none.'),
  BODY_LIMIT_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(64 * 1024 * 1024)
    .default(1024 * 1024)
    .describe('Largest accepted request body, in bytes.'),
  PGLITE_VACUUM_INTERVAL_MINUTES: z.coerce
    .number()
    .int()
    .min(0)
    .max(1440)
    .default(10)
    .describe(
      'Embedded mode only: how often Steward vacuums and analyses its tables (PGlite has no autovacuum); 0 turns it off.',
    ),
  FLAG_METRICS_RETENTION_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3650)
    .default(90)
    .describe('Hourly SDK evaluation counts and SDK instances not seen for this long are deleted.'),
  AUDIT_RETENTION_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(36500)
    .default(365)
    .describe('Default retention of audit events; the purge keeps a signed checkpoint.'),
  STEWARD_ADMIN_EMAIL: z
    .email()
    // A new account's address, so within RFC 5321's limits as the users API holds them
    // (src/identity/routes.ts `newEmail`): 254 in all, a local part of 64 octets.
    .max(254)
    .refine((value) => Buffer.byteLength(value.slice(0, value.lastIndexOf('@')), 'utf8') <= 64, {
      message: 'The part before @ is at most 64 characters (RFC 5321)',
    })
    .optional()
    .describe(
      'Bootstrap: email of the first superuser, created with the org `default` on an empty database.',
    ),
  STEWARD_ADMIN_PASSWORD: z
    .string()
    .optional()
    .describe(
      'Bootstrap: password of the first superuser. Unset: a strong one is generated and printed once on stdout.',
    ),
  ACCESS_TOKEN_ISSUER: z
    .string()
    .min(1)
    .default('steward')
    .describe('`iss` of access tokens (set it to the public URL when other services verify them).'),
  ACCESS_TOKEN_TTL_SECONDS: z.coerce
    .number()
    .int()
    .min(60)
    .max(3600)
    .default(900)
    .describe('Lifetime of access tokens (JWT, Ed25519).'),
  SESSION_TTL_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(365)
    .default(30)
    .describe('Lifetime of a session and its refresh tokens, from login.'),
  SIGNING_KEY_ROTATION_DAYS: z.coerce
    .number()
    .int()
    .min(1)
    .max(3650)
    .default(30)
    .describe(
      'Age at which the access-token signing key is replaced; the old one stays published until its tokens expire.',
    ),
  LOGIN_MAX_FAILURES: z.coerce
    .number()
    .int()
    .min(1)
    .max(100)
    .default(5)
    .describe('Consecutive failed logins that lock an account.'),
  LOGIN_LOCKOUT_MINUTES: z.coerce
    .number()
    .int()
    .min(1)
    .max(1440)
    .default(15)
    .describe('First lock period; each further lock (without a successful login between) doubles it.'),
  LOGIN_IP_MAX_FAILURES: z.coerce
    .number()
    .int()
    .min(1)
    .max(100000)
    .default(100)
    .describe(
      'Failed logins allowed per client IP in LOGIN_IP_WINDOW_SECONDS, across accounts (shared through Redis when set).',
    ),
  LOGIN_IP_WINDOW_SECONDS: z.coerce
    .number()
    .int()
    .min(1)
    .max(86400)
    .default(900)
    .describe('Window of the per-IP failed-login limit; an IP over the limit waits for the window to end.'),
  MFA_TOKEN_TTL_SECONDS: z.coerce
    .number()
    .int()
    .min(30)
    .max(3600)
    .default(300)
    .describe('Lifetime of the single-use mfa_token between the password and the 2FA step.'),
  SESSION_REVOCATION_POLL_MS: z.coerce
    .number()
    .int()
    .min(50)
    .max(1000)
    .default(500)
    .describe(
      'How often each instance re-reads revoked sessions, in case a bus message was lost (keeps revocation under 1 s). Server mode only: embedded, one process owns the data folder and learns of every revoke directly.',
    ),
  API_KEY_ENVIRONMENT: z
    .enum(['live', 'test'])
    .default('live')
    .describe('Environment marker of new API keys (`stw_live_…` or `stw_test_…`) when a request names none.'),
  API_KEY_TIERS: tiersVariable
    .optional()
    .describe(
      'JSON of API key tiers: `{"name": {"quota": n|null, "ratelimit": {"limit": n, "window_seconds": s}|null}}`. Unset: free, pro, enterprise (see src/keys/README.md).',
    ),
  API_KEY_FLUSH_MS: z.coerce
    .number()
    .int()
    .min(50)
    .max(1000)
    .default(1000)
    .describe('How often batched API key usage (request counts, last used) is written to the database.'),
  API_KEY_POLL_MS: z.coerce
    .number()
    .int()
    .min(50)
    .max(1000)
    .default(500)
    .describe(
      'How often each instance re-reads changed API keys, in case a bus message was lost (keeps revocation under 1 s).',
    ),
  FLAG_RECHECK_MS: z.coerce
    .number()
    .int()
    .min(0)
    .max(600000)
    .default(2000)
    .describe(
      'On PostgreSQL, how often each instance compares the flags it holds with the database, in case a bus message was lost (0: never).',
    ),
  SHUTDOWN_TIMEOUT_MS: z.coerce
    .number()
    .int()
    .min(100)
    .max(600000)
    .default(10000)
    .describe('How long graceful shutdown waits for in-flight requests before closing connections.'),
});

/** Parsed, validated configuration. */
export type Config = z.infer<typeof configSchema>;

/** Names of every variable Steward reads (used by the README check). */
export const configVariables = Object.keys(configSchema.shape) as (keyof Config)[];

/** A configuration problem, with a one-line message naming the variable. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * Parses the environment once. On a bad value, throws a ConfigError whose message is
 * a single line naming the variable — without echoing the value, which may be a secret.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  // An empty variable means "unset": `PORT= npm start` should not be a type error.
  const present = Object.fromEntries(
    configVariables.filter((k) => env[k] !== undefined && env[k] !== '').map((k) => [k, env[k]]),
  );
  const parsed = configSchema.safeParse(present);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const variable = String(issue?.path[0] ?? 'configuration');
    throw new ConfigError(`Invalid ${variable}: ${issue?.message ?? 'invalid value'}`);
  }
  return parsed.data;
}
