// Sessions after login: refresh rotation with reuse detection, listing, revocation, logout.
import { randomBytes } from 'node:crypto';
import { and, desc, eq, gt, isNull, lt } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import { isId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import { type IdentityCore, type Origin, requireUser, SYSTEM_ACTOR, type TokenPair } from './core.ts';
import { identityErrors } from './errors.ts';
import { memberById, revokeSessions, type Session } from './queries.ts';
import { sessions } from './schema.ts';

/** A page of sessions: newest first, `afterId` is the last id of the previous page. */
export interface SessionPage {
  limit: number;
  afterId?: string | undefined;
}

// $1 session, $2 presented generation, $3 its hash, $4 next hash, $5 new access jti, $6 now.
const ROTATE_REFRESH =
  'update sessions set refresh_generation = $2::int + 1, refresh_hash = $4, access_jti = $5, ' +
  'last_activity_at = $6::timestamptz where id = $1 and refresh_generation = $2::int and refresh_hash = $3 ' +
  'and revoked_at is null and expires_at > $6::timestamptz ' +
  'returning user_id, org_id';

export function createSessions(core: IdentityCore) {
  const { db, audit, authz, clock, settings, refreshTokens, revocation } = core;

  /** Rotates a refresh token. Presenting a rotated one revokes the whole session. */
  async function refresh(refreshToken: string, origin: Origin): Promise<TokenPair> {
    const parsed = refreshTokens.parse(refreshToken);
    if (!parsed) throw identityErrors.refresh_token_invalid();
    const now = clock();
    const next = refreshTokens.issue(parsed.sessionId, parsed.generation + 1);
    const jti = randomBytes(16).toString('base64url');
    // One statement on the hot path: it both checks the presented generation and rotates it.
    // Sent straight to the driver: Drizzle's builder costs more than the statement itself.
    const [row] = await db.query<{ user_id: string; org_id: string }>(ROTATE_REFRESH, [
      parsed.sessionId,
      parsed.generation,
      parsed.hash,
      next.hash,
      jti,
      now.toISOString(),
    ]);
    if (row) {
      const roles =
        core.rolesOfSync?.(row.org_id, row.user_id) ?? (await authz.rolesOf(row.org_id, row.user_id));
      const access = await core.signFor(row.user_id, row.org_id, parsed.sessionId, roles, jti);
      return {
        access_token: access.token,
        refresh_token: next.token,
        token_type: 'Bearer',
        expires_in: settings.accessTokenTtlSeconds,
      };
    }
    const [session] = await db.db.select().from(sessions).where(eq(sessions.id, parsed.sessionId));
    if (!session) throw identityErrors.refresh_token_invalid();
    if (session.revokedAt) throw identityErrors.session_revoked();
    if (parsed.generation < session.refreshGeneration) {
      await revokeForReuse(session, parsed.generation, origin);
      throw identityErrors.refresh_token_reused();
    }
    if (session.expiresAt <= now) throw identityErrors.session_expired();
    throw identityErrors.refresh_token_invalid();
  }

  async function revokeForReuse(session: Session, generation: number, origin: Origin): Promise<void> {
    const now = clock();
    const revoked = await db.db.transaction(async (tx) => {
      const ids = await revokeSessions(tx, { userId: session.userId, id: session.id }, 'refresh_reused', now);
      if (ids.length > 0) {
        await audit.record(tx, [
          {
            orgId: session.orgId,
            actor: SYSTEM_ACTOR,
            action: 'session.refresh_reused',
            resource: { type: 'session', id: session.id },
            context: { ...origin, sessionId: session.id },
            details: {
              user_id: session.userId,
              presented_generation: generation,
              current: session.refreshGeneration,
            },
            success: false,
          },
          {
            orgId: session.orgId,
            actor: SYSTEM_ACTOR,
            action: 'session.revoked',
            resource: { type: 'session', id: session.id },
            context: { ...origin, sessionId: session.id },
            details: { user_id: session.userId, reason: 'refresh_reused' },
          },
        ]);
      }
      return ids;
    });
    await revocation.publish(revoked);
  }

  /** Live sessions of a user, in one org or in all of them, newest first. */
  function liveSessions(userId: string, orgId: string | undefined, page: SessionPage): Promise<Session[]> {
    return db.db
      .select()
      .from(sessions)
      .where(
        and(
          eq(sessions.userId, userId),
          orgId === undefined ? undefined : eq(sessions.orgId, orgId),
          isNull(sessions.revokedAt),
          gt(sessions.expiresAt, clock()),
          page.afterId ? lt(sessions.id, page.afterId) : undefined,
        ),
      )
      .orderBy(desc(sessions.id))
      .limit(page.limit);
  }

  /** The caller's own live sessions (in every org). */
  async function listSessions(principal: Principal, page: SessionPage): Promise<Session[]> {
    return liveSessions(requireUser(principal), undefined, page);
  }

  /** Admin: a user's live sessions in the caller's org; another org's user is not found. */
  async function listUserSessions(
    principal: Principal,
    userId: string,
    page: SessionPage,
  ): Promise<Session[]> {
    const found = isId('usr', userId) ? await memberById(db.db, principal.orgId, userId) : undefined;
    if (!found) throw identityErrors.user_not_found();
    return liveSessions(userId, principal.orgId, page);
  }

  /** Revokes a session: one's own, or — with users:update — any session in one's org. */
  async function revokeSession(principal: Principal, sessionId: string, origin: AuditContext): Promise<void> {
    if (!isId('ses', sessionId)) throw identityErrors.session_not_found();
    const [session] = await db.db.select().from(sessions).where(eq(sessions.id, sessionId));
    const own = session !== undefined && principal.kind === 'user' && session.userId === principal.id;
    if (!session || (!own && session.orgId !== principal.orgId)) throw identityErrors.session_not_found();
    if (!own) {
      const decision = await authz.check(principal, 'users:update');
      if (!decision.allowed) throw identityErrors.session_not_found();
    }
    await core.revokeWhere(
      principal,
      { userId: session.userId, id: session.id },
      own ? 'revoked' : 'revoked_by_admin',
      origin,
      session.orgId,
    );
  }

  async function logout(principal: Principal, origin: AuditContext): Promise<void> {
    const userId = requireUser(principal);
    if (!principal.sessionId) throw identityErrors.not_a_user('Logout ends a session; this caller has none');
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      const revoked = await revokeSessions(tx, { userId, id: principal.sessionId }, 'logout', now);
      if (revoked.length > 0) {
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.logout',
          resource: { type: 'session', id: principal.sessionId },
          context: origin,
        });
      }
      return revoked;
    });
    await revocation.publish(ids);
  }

  return { refresh, listSessions, listUserSessions, revokeSession, logout };
}
