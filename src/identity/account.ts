// The signed-in user's own account: who they are (/v1/me, from memory when warm), their password.
import { and, eq } from 'drizzle-orm';
import { actorOf } from '../audit/service.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import {
  assertPasswordPolicy,
  type IdentityCore,
  type Origin,
  requireUser,
  sessionRevokedEvents,
} from './core.ts';
import { identityErrors } from './errors.ts';
import { createLockout, FAILURES_RESET } from './lockout.ts';
import { hashPassword, verifyPassword } from './password.ts';
import { type Profile, profileOf } from './profile-cache.ts';
import { endMfaChallenges, revokeSessions, userById } from './queries.ts';
import { users } from './schema.ts';

export function createAccount(core: IdentityCore) {
  const { db, audit, clock, revocation, profiles } = core;
  const lockout = createLockout(core);

  /**
   * The caller as /v1/me shows them: from the profile cache when warm (no database read), else
   * the row, cached unless a change to this user or any other was announced during the read.
   */
  function me(principal: Principal): Profile | Promise<Profile> {
    const id = requireUser(principal);
    return profiles.get(id) ?? load(id);
  }

  async function load(id: string): Promise<Profile> {
    const mark = profiles.mark();
    const user = await userById(db.db, id);
    if (!user) throw identityErrors.user_not_found();
    const profile = profileOf(user);
    profiles.set(id, profile, mark);
    return profile;
  }

  /** Changes the caller's password and revokes their other sessions. */
  async function changePassword(
    principal: Principal,
    input: { current_password: string; new_password: string },
    origin: Origin,
  ): Promise<{ revoked_sessions: number }> {
    const user = await core.currentUser(principal);
    // The current password is a proof like a login's: throttled, counted and locked alike.
    await lockout.withIpPoint(origin.ip, (ip) =>
      lockout.withAccountProof(
        { user, orgId: principal.orgId, origin, ip, during: 'password_change' },
        async (attempt) => {
          const check = await verifyPassword(user.passwordHash, input.current_password);
          if (!check.ok)
            throw await lockout.fail(attempt, 'wrong_password', identityErrors.password_incorrect());
        },
      ),
    );
    assertPasswordPolicy(input.new_password, user);
    const hash = await hashPassword(input.new_password);
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      // The right password also resets the failure count, as a login does. Only over the hash the
      // current password was checked against: of two changes racing with the same old password,
      // the second must not win with a password that is no longer current.
      const changed = await tx
        .update(users)
        .set({
          passwordHash: hash,
          passwordChangedAt: now,
          updatedAt: now,
          ...FAILURES_RESET,
        })
        .where(and(eq(users.id, user.id), eq(users.passwordHash, user.passwordHash)))
        .returning({ id: users.id });
      if (changed.length === 0) {
        throw httpErrors.conflict('The password was changed by another request meanwhile; sign in again');
      }
      // An mfa_token from a login with the old password must not finish after the change.
      await endMfaChallenges(tx, { userId: user.id }, now);
      const revoked = await revokeSessions(
        tx,
        { userId: user.id, ...(principal.sessionId ? { exceptId: principal.sessionId } : {}) },
        'password_changed',
        now,
      );
      await audit.record(tx, [
        {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.password_changed',
          resource: { type: 'user', id: user.id },
          context: origin,
          details: { revoked_sessions: revoked.length },
        },
        ...sessionRevokedEvents(
          revoked,
          { orgId: principal.orgId, principal, origin },
          user.id,
          'password_changed',
        ),
      ]);
      return revoked;
    });
    await revocation.publish(ids);
    await core.userChanged(user.id);
    return { revoked_sessions: ids.length };
  }

  return { me, changePassword };
}
