import { and, asc, eq, gt, isNotNull, isNull, lt, or, sql } from 'drizzle-orm';
import type { DbOrTx } from '../db/client.ts';
import { prepared, runPrepared, selectColumns } from '../db/prepared.ts';
import { mfaChallenges, orgMemberships, sessions, users } from './schema.ts';

export type User = typeof users.$inferSelect;
export type Session = typeof sessions.$inferSelect;
export type Membership = typeof orgMemberships.$inferSelect;

// Logins and every request's user lookups: prepared statements (src/db/prepared.ts), whose rows
// have the shape Drizzle's select() gives. Email lookup is case-insensitive, as the unique index is.
const USER_BY_EMAIL = prepared(
  'user_by_email',
  `select ${selectColumns(users, 'u')} from users u where lower(u.email) = lower($1)`,
);
const USER_BY_ID = prepared('user_by_id', `select ${selectColumns(users, 'u')} from users u where u.id = $1`);
const USER_BY_EMAIL_WITH_HOME_ORG = prepared(
  'user_by_email_with_home_org',
  `select ${selectColumns(users, 'u')}, (select m.org_id from org_memberships m where m.user_id = u.id ` +
    'and m.active order by m.created_at, m.org_id limit 1) as "homeOrgId" from users u where lower(u.email) = lower($1)',
);

// One statement, run by every login: the locking clauses take the rows in the order they are
// written (PostgreSQL applies a statement's row marks in that order), the user's first. The
// password's change time is compared to the millisecond, the precision a JavaScript Date read it
// with (Steward writes it from one, so it never has more).
const ACCOUNT_STANDING = prepared(
  'account_standing',
  'select (u.active and m.active) as "active", u.locked_until as "lockedUntil", ' +
    `coalesce(date_trunc('milliseconds', u.password_changed_at) > coalesce($3::timestamptz, '-infinity'), false) ` +
    'as "passwordChanged" from users u ' +
    'join org_memberships m on m.user_id = u.id and m.org_id = $1 where u.id = $2 ' +
    'for no key update of u for share of m',
);

export async function userByEmail(db: DbOrTx, email: string): Promise<User | undefined> {
  const [row] = await runPrepared<User>(db, USER_BY_EMAIL, [email]);
  return row;
}

export async function userById(db: DbOrTx, id: string): Promise<User | undefined> {
  const [row] = await runPrepared<User>(db, USER_BY_ID, [id]);
  return row;
}

/** The user, if a member (active or not) of the org: another org's user is simply not found. */
export async function memberById(
  db: DbOrTx,
  orgId: string,
  userId: string,
): Promise<{ user: User; membership: Membership } | undefined> {
  const [row] = await db
    .select({ user: users, membership: orgMemberships })
    .from(users)
    .innerJoin(orgMemberships, eq(orgMemberships.userId, users.id))
    .where(and(eq(orgMemberships.orgId, orgId), eq(users.id, userId)));
  return row;
}

export async function membership(db: DbOrTx, orgId: string, userId: string): Promise<Membership | undefined> {
  const [row] = await db
    .select()
    .from(orgMemberships)
    .where(and(eq(orgMemberships.orgId, orgId), eq(orgMemberships.userId, userId)));
  return row;
}

/** Active memberships, oldest first: the first is where a login without `org` lands. */
export async function activeMemberships(db: DbOrTx, userId: string): Promise<Membership[]> {
  return db
    .select()
    .from(orgMemberships)
    .where(and(eq(orgMemberships.userId, userId), eq(orgMemberships.active, true)))
    .orderBy(asc(orgMemberships.createdAt), asc(orgMemberships.orgId));
}

export async function listMembers(
  db: DbOrTx,
  orgId: string,
  page: { limit: number; afterId?: string | undefined },
): Promise<{ user: User; membership: Membership }[]> {
  return db
    .select({ user: users, membership: orgMemberships })
    .from(users)
    .innerJoin(orgMemberships, eq(orgMemberships.userId, users.id))
    .where(and(eq(orgMemberships.orgId, orgId), page.afterId ? gt(users.id, page.afterId) : undefined))
    .orderBy(asc(users.id))
    .limit(page.limit);
}

/** Revokes live sessions matching `where`, returning their ids for the revocation list. */
export async function revokeSessions(
  db: DbOrTx,
  filter: { userId: string; orgId?: string; exceptId?: string; id?: string },
  reason: string,
  now: Date,
): Promise<string[]> {
  const rows = await db
    .update(sessions)
    .set({ revokedAt: now, revokedReason: reason })
    .where(
      and(
        eq(sessions.userId, filter.userId),
        isNull(sessions.revokedAt),
        filter.orgId ? eq(sessions.orgId, filter.orgId) : undefined,
        filter.id ? eq(sessions.id, filter.id) : undefined,
        filter.exceptId ? sql`${sessions.id} <> ${filter.exceptId}` : undefined,
      ),
    )
    .returning({ id: sessions.id });
  return rows.map((r) => r.id);
}

/**
 * A user by email with the org a login without `org` lands in (the oldest active membership),
 * in one round trip: the login hot path.
 */
export async function userByEmailWithHomeOrg(
  db: DbOrTx,
  email: string,
): Promise<{ user: User; homeOrgId: string | null } | undefined> {
  const [row] = await runPrepared<User & { homeOrgId: string | null }>(db, USER_BY_EMAIL_WITH_HOME_ORG, [
    email,
  ]);
  if (!row) return undefined;
  const { homeOrgId, ...user } = row;
  return { user, homeOrgId };
}

/**
 * Ends a user's pending 2FA challenges (in one org, or all of them): an `mfa_token` issued before
 * a password change or a deactivation must not complete a login after it.
 */
export async function endMfaChallenges(
  db: DbOrTx,
  filter: { userId: string; orgId?: string },
  now: Date,
): Promise<void> {
  await db
    .update(mfaChallenges)
    .set({ usedAt: now })
    .where(
      and(
        eq(mfaChallenges.userId, filter.userId),
        isNull(mfaChallenges.usedAt),
        filter.orgId ? eq(mfaChallenges.orgId, filter.orgId) : undefined,
      ),
    );
}

/**
 * Deletes the challenges no login can complete any more: used ones (a completed login, too many
 * wrong codes, a password change), and those that expired before `expiredBefore`. Returns how many.
 */
export async function purgeMfaChallenges(db: DbOrTx, expiredBefore: Date): Promise<number> {
  const gone = await db
    .delete(mfaChallenges)
    .where(or(isNotNull(mfaChallenges.usedAt), lt(mfaChallenges.expiresAt, expiredBefore)))
    .returning({ tokenHash: mfaChallenges.tokenHash });
  return gone.length;
}

/** An account as a login sees it where the session opens (`accountStanding`). */
export interface Standing {
  active: boolean;
  lockedUntil: Date | null;
  /** The password changed after the `since` given: the proof checked is no longer the password. */
  passwordChanged: boolean;
}

/**
 * Inside a transaction: whether the user and their membership of the org are both active, the
 * user's lock, and whether the password changed after `since` (the `password_changed_at` of the
 * row whose hash the login verified, or when a 2FA challenge was issued); undefined without a
 * user or a membership. Holds the user's row (FOR NO KEY UPDATE: the caller goes on to update it)
 * and then the membership's (FOR SHARE) until the transaction ends, in that order, the order
 * every deactivation takes them (`lockUserRow` first) and a password change takes the user's: one
 * committed before is seen, one after waits for the commit, and neither can deadlock with it.
 */
export async function accountStanding(
  tx: DbOrTx,
  orgId: string,
  userId: string,
  since: Date | null,
): Promise<Standing | undefined> {
  const [row] = await runPrepared<Standing>(tx, ACCOUNT_STANDING, [
    orgId,
    userId,
    since === null ? null : since.toISOString(),
  ]);
  return row;
}

/** Inside a transaction: holds the user's row, before any membership's (see accountStanding). */
export async function lockUserRow(tx: DbOrTx, userId: string): Promise<void> {
  await tx.select({ id: users.id }).from(users).where(eq(users.id, userId)).for('no key update');
}
