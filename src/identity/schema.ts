import { sql } from 'drizzle-orm';
import { boolean, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { at, idColumn, timestamps } from '../db/columns.ts';
import { organizations } from '../tenancy/schema.ts';

/**
 * People who sign in. A user is global (one password, one 2FA) and belongs to orgs through
 * `org_memberships`. Secrets at rest: `password_hash` (Argon2id PHC), `totp_secret` (sealed with
 * the keyring, AAD `user/<id>/totp`), `recovery_code_hashes` (SHA-256 of each unused code).
 */
export const users = pgTable(
  'users',
  {
    id: idColumn(),
    email: text('email').notNull(),
    username: text('username'),
    fullName: text('full_name'),
    passwordHash: text('password_hash').notNull(),
    active: boolean('active').notNull().default(true),
    superuser: boolean('superuser').notNull().default(false),
    verified: boolean('verified').notNull().default(false),
    /** Sealed base32 seed; set at enrolment, kept while 2FA is on. */
    totpSecret: text('totp_secret'),
    totpEnabled: boolean('totp_enabled').notNull().default(false),
    /** Last accepted TOTP step: a code of this step or older is a replay. */
    totpLastStep: integer('totp_last_step'),
    recoveryCodeHashes: jsonb('recovery_code_hashes').$type<string[]>().notNull().default([]),
    failedLoginCount: integer('failed_login_count').notNull().default(0),
    lockedUntil: at('locked_until'),
    /** Locks since the last successful login; each doubles the lock period. */
    lockCount: integer('lock_count').notNull().default(0),
    lastLoginAt: at('last_login_at'),
    passwordChangedAt: at('password_changed_at'),
    /** `usr_…` of the creator; null for bootstrap. */
    createdBy: text('created_by'),
    ...timestamps,
  },
  (t) => [
    uniqueIndex('users_email_lower').on(sql`lower(${t.email})`),
    uniqueIndex('users_username_lower').on(sql`lower(${t.username})`),
  ],
);

/** A user's membership of an org; deactivation is per org and keeps the row (audit history). */
export const orgMemberships = pgTable(
  'org_memberships',
  {
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    active: boolean('active').notNull().default(true),
    createdBy: text('created_by'),
    ...timestamps,
  },
  (t) => [primaryKey({ columns: [t.orgId, t.userId] }), index('org_memberships_user').on(t.userId)],
);

/**
 * One row per login. The refresh token is `<session id>.<generation>.<mac>`: the MAC (HMAC of
 * id and generation under a key derived from the master key) proves a token was issued, and the
 * generation says whether it is the current one or an already-rotated one (reuse). Only the
 * SHA-256 of the current token is stored.
 */
export const sessions = pgTable(
  'sessions',
  {
    id: idColumn(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    /** jti of the latest access token issued for this session. */
    accessJti: text('access_jti').notNull(),
    /** SHA-256 (hex) of the current refresh token. */
    refreshHash: text('refresh_hash').notNull(),
    refreshGeneration: integer('refresh_generation').notNull().default(0),
    ip: text('ip'),
    userAgent: text('user_agent'),
    deviceName: text('device_name'),
    createdAt: at('created_at').notNull().defaultNow(),
    lastActivityAt: at('last_activity_at').notNull().defaultNow(),
    expiresAt: at('expires_at').notNull(),
    revokedAt: at('revoked_at'),
    /** logout, revoked, password_changed, refresh_reused, user_deactivated. */
    revokedReason: text('revoked_reason'),
  },
  (t) => [
    index('sessions_user').on(t.userId, t.createdAt),
    index('sessions_revoked_at').on(t.revokedAt).where(sql`${t.revokedAt} is not null`),
  ],
);

/** The second step of a login with 2FA: a short-lived, single-use challenge. */
export const mfaChallenges = pgTable(
  'mfa_challenges',
  {
    /** SHA-256 (hex) of the mfa_token handed to the client. */
    tokenHash: text('token_hash').primaryKey(),
    userId: text('user_id')
      .notNull()
      .references(() => users.id, { onDelete: 'cascade' }),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    attempts: integer('attempts').notNull().default(0),
    createdAt: at('created_at').notNull().defaultNow(),
    expiresAt: at('expires_at').notNull(),
    usedAt: at('used_at'),
  },
  // By user: a password change or a deactivation ends the user's pending challenges.
  (t) => [index('mfa_challenges_expires').on(t.expiresAt), index('mfa_challenges_user').on(t.userId)],
);

/**
 * Ed25519 keys signing access tokens. One is active (`retired_at` null); retired keys stay
 * published in the JWKS until `not_after`, when every token they signed has expired.
 */
export const signingKeys = pgTable(
  'signing_keys',
  {
    id: idColumn(),
    kid: text('kid').notNull().unique(),
    /** Sealed private JWK (AAD `signing-key/<id>`). */
    privateJwk: text('private_jwk').notNull(),
    publicJwk: jsonb('public_jwk').$type<Record<string, unknown>>().notNull(),
    createdAt: at('created_at').notNull().defaultNow(),
    retiredAt: at('retired_at'),
    notAfter: at('not_after'),
  },
  // At most one active key, even with several instances starting at once.
  (t) => [uniqueIndex('signing_keys_one_active').on(sql`(true)`).where(sql`${t.retiredAt} is null`)],
);

/**
 * An invitation to join an org: the token is shown once to the admin who creates it and only its
 * SHA-256 is stored. Accepting it creates the user with `roles`; it is usable once, until
 * `expires_at`, unless revoked.
 */
export const invitations = pgTable(
  'invitations',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    email: text('email').notNull(),
    roles: jsonb('roles').$type<string[]>().notNull().default([]),
    /** SHA-256 (hex) of the invitation token. */
    tokenHash: text('token_hash').notNull(),
    createdBy: text('created_by'),
    createdAt: at('created_at').notNull().defaultNow(),
    expiresAt: at('expires_at').notNull(),
    acceptedAt: at('accepted_at'),
    /** The user the invitation created (set with `accepted_at`). */
    acceptedUserId: text('accepted_user_id').references(() => users.id, { onDelete: 'set null' }),
    revokedAt: at('revoked_at'),
    revokedBy: text('revoked_by'),
  },
  (t) => [uniqueIndex('invitations_token_hash').on(t.tokenHash), index('invitations_org').on(t.orgId, t.id)],
);

/** Per-org identity settings (one row per org, absent = defaults): open sign-up, off by default. */
export const identitySettings = pgTable('identity_settings', {
  orgId: text('org_id')
    .primaryKey()
    .references(() => organizations.id, { onDelete: 'cascade' }),
  openSignup: boolean('open_signup').notNull().default(false),
  /** The role a signed-up user starts with (by name); null: none until an admin gives one. */
  signupRole: text('signup_role'),
  updatedBy: text('updated_by'),
  ...timestamps,
});
