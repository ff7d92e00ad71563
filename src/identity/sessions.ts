// Sessions after login: refresh rotation with reuse detection, listing, revocation, logout.
import { randomBytes } from 'node:crypto';
import { and, desc, eq, gt, isNull, lt } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import { batchesInFlight, createBatcher } from '../db/batcher.ts';
import { isId } from '../db/ids.ts';
import { prepared, runPrepared } from '../db/prepared.ts';
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

// Rotates the refresh tokens of a batch in one statement. $1 now; $2 the batch as JSON:
// [{id: session, gen: presented generation, hash: its hash, next_hash, jti: new access jti}].
// A row comes back only where the presented generation and hash are the session's current ones;
// two items for one session (a token presented twice at once) move it once: the row names the
// winner by its jti, and the other is treated as the reuse it is.
const ROTATE_REFRESHES = prepared(
  'refresh_rotate_many',
  'update sessions s set refresh_generation = v.gen + 1, refresh_hash = v.next_hash, access_jti = v.jti, ' +
    'last_activity_at = $1::timestamptz ' +
    'from jsonb_to_recordset($2::text::jsonb) as v(id text, gen int, hash text, next_hash text, jti text) ' +
    'where s.id = v.id and s.refresh_generation = v.gen and s.refresh_hash = v.hash ' +
    'and s.revoked_at is null and s.expires_at > $1::timestamptz ' +
    'returning v.jti, s.user_id, s.org_id',
);

// The same for one session, without the JSON: $1 now, $2 session, $3 generation, $4 its hash,
// $5 next hash, $6 new access jti.
const ROTATE_REFRESH = prepared(
  'refresh_rotate_one',
  'update sessions set refresh_generation = $3::int + 1, refresh_hash = $5, access_jti = $6, ' +
    'last_activity_at = $1::timestamptz where id = $2 and refresh_generation = $3::int and refresh_hash = $4 ' +
    'and revoked_at is null and expires_at > $1::timestamptz ' +
    'returning $6 as jti, user_id, org_id',
);

interface Rotation {
  id: string;
  gen: number;
  hash: string;
  next_hash: string;
  jti: string;
}
interface Rotated {
  /** Which item won: the access-token jti is random per request, the next hash is not. */
  jti: string;
  user_id: string;
  org_id: string;
}

export function createSessions(core: IdentityCore) {
  const { db, audit, authz, clock, settings, refreshTokens, revocation } = core;

  // Refreshes arriving together share one statement and one commit (group commit): on PGlite a
  // statement's commit costs far more than the row it changes.
  const rotations = createBatcher<Rotation, Rotated | undefined>({
    maxInFlight: batchesInFlight(db),
    run: async (items) => {
      const now = clock().toISOString();
      const [one] = items;
      const rows =
        items.length === 1 && one !== undefined
          ? await runPrepared<Rotated>(db.db, ROTATE_REFRESH, [
              now,
              one.id,
              one.gen,
              one.hash,
              one.next_hash,
              one.jti,
            ])
          : await runPrepared<Rotated>(db.db, ROTATE_REFRESHES, [now, JSON.stringify(items)]);
      const byJti = new Map(rows.map((r) => [r.jti, r]));
      return items.map((item) => byJti.get(item.jti));
    },
  });

  /** Rotates a refresh token. Presenting a rotated one revokes the whole session. */
  async function refresh(refreshToken: string, origin: Origin): Promise<TokenPair> {
    const parsed = refreshTokens.parse(refreshToken);
    if (!parsed) throw identityErrors.refresh_token_invalid();
    const now = clock();
    const next = refreshTokens.issue(parsed.sessionId, parsed.generation + 1);
    const jti = randomBytes(16).toString('base64url');
    // One statement checks the presented generation and rotates it, shared with concurrent
    // refreshes; sent straight to the driver (Drizzle's builder costs more than the statement).
    const row = await rotations.submit({
      id: parsed.sessionId,
      gen: parsed.generation,
      hash: parsed.hash,
      next_hash: next.hash,
      jti,
    });
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
