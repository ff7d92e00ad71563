// The signed-in user's own account: who they are, their password.
import { eq } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Principal } from '../http/principal.ts';
import { assertPasswordPolicy, type IdentityCore } from './core.ts';
import { identityErrors } from './errors.ts';
import { hashPassword, verifyPassword } from './password.ts';
import { revokeSessions } from './queries.ts';
import { users } from './schema.ts';

export function createAccount(core: IdentityCore) {
  const { db, audit, clock, revocation } = core;

  /** Changes the caller's password and revokes their other sessions. */
  async function changePassword(
    principal: Principal,
    input: { current_password: string; new_password: string },
    origin: AuditContext,
  ): Promise<{ revoked_sessions: number }> {
    const user = await core.currentUser(principal);
    const check = await verifyPassword(user.passwordHash, input.current_password);
    if (!check.ok) throw identityErrors.password_incorrect();
    assertPasswordPolicy(input.new_password, user);
    const hash = await hashPassword(input.new_password);
    const now = clock();
    const ids = await db.db.transaction(async (tx) => {
      await tx
        .update(users)
        .set({ passwordHash: hash, passwordChangedAt: now, updatedAt: now })
        .where(eq(users.id, user.id));
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
        ...revoked.map((id) => ({
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'session.revoked' as const,
          resource: { type: 'session', id },
          context: origin,
          details: { user_id: user.id, reason: 'password_changed' },
        })),
      ]);
      return revoked;
    });
    await revocation.publish(ids);
    return { revoked_sessions: ids.length };
  }

  return { currentUser: (principal: Principal) => core.currentUser(principal), changePassword };
}
