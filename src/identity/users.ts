// The users admin API of an org: create, list, get, update (name, active, roles), deactivate,
// unlock; and the user insertion shared with invitations and sign-up.
import { and, eq, ne, sql } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import { authzErrors } from '../authz/errors.ts';
import type { DbOrTx } from '../db/client.ts';
import { isId, newId } from '../db/ids.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import {
  type AfterCommit,
  assertPasswordPolicy,
  type IdentityCore,
  sessionRevokedEvents,
  type UserView,
  uniqueViolation,
} from './core.ts';
import { identityErrors } from './errors.ts';
import { FAILURES_RESET } from './lockout.ts';
import { hashPassword } from './password.ts';
import {
  activeMemberships,
  endMfaChallenges,
  listMembers,
  lockUserRow,
  type Membership,
  memberById,
  revokeSessions,
  type User,
  userByEmail,
} from './queries.ts';
import { orgMemberships, users } from './schema.ts';
import { TOTP_CLEARED } from './two-factor.ts';

/** A new user and their membership of one org, as inserted by insertMember. */
export interface NewMember {
  email: string;
  username?: string | null | undefined;
  fullName?: string | null | undefined;
  passwordHash: string;
  orgId: string;
  roles: readonly string[];
  verified?: boolean;
  /** Who created the user (`usr_…`), or null (sign-up, bootstrap). */
  createdBy: string | null;
  /** Recorded on the membership when it differs (an API key creating a user: the key's id). */
  membershipCreatedBy?: string | null;
  /** Who assigns the roles, for authz's audit events; null: the system. */
  by: Principal | null;
}

/** Refuses (403 `permission_denied`, the access layer's answer) a caller without `permission`. */
export async function requirePermission(
  core: Pick<IdentityCore, 'authz'>,
  principal: Principal,
  permission: string,
): Promise<void> {
  const may = await core.authz.check(principal, permission);
  if (!may.allowed) {
    throw httpErrors.permission_denied(`This action needs ${permission}`, { permission });
  }
}

/**
 * Roles changed through the users API (and invitations) need what the role routes need:
 * `roles:update` to add one (`POST /v1/role-assignments`), `roles:delete` to remove one
 * (`DELETE /v1/role-assignments/{id}`). Authz's delegation rules then apply to each role, as on
 * those routes. Without this, `users:update` alone demoted a peer and a role with no `roles:*`
 * at all assigned roles.
 */
export async function assertMayChangeRoles(
  core: Pick<IdentityCore, 'authz'>,
  principal: Principal,
  change: { adding: boolean; removing: boolean },
): Promise<void> {
  if (change.adding) await requirePermission(core, principal, 'roles:update');
  if (change.removing) await requirePermission(core, principal, 'roles:delete');
}

/** Assigns roles inside `tx`; returns what to run after the commit. */
export async function assignRoles(
  core: Pick<IdentityCore, 'authz'>,
  tx: DbOrTx,
  orgId: string,
  userId: string,
  roles: readonly string[],
  by: Principal | null,
  context: AuditContext | undefined,
): Promise<AfterCommit[]> {
  const after: AfterCommit[] = [];
  for (const role of new Set(roles)) {
    const r = await core.authz.assignRoleInTx(tx, {
      orgId,
      principalId: userId,
      role,
      by,
      ...(context ? { context } : {}),
    });
    after.push(r.afterCommit);
  }
  return after;
}

/** Inserts a user, their membership and their roles inside `tx` (the caller audits). */
export async function insertMember(
  core: Pick<IdentityCore, 'authz' | 'clock'>,
  tx: DbOrTx,
  input: NewMember,
  origin: AuditContext | undefined,
): Promise<{ user: User; after: AfterCommit[] }> {
  const now = core.clock();
  const id = newId('usr');
  const [user] = await tx
    .insert(users)
    .values({
      id,
      email: input.email,
      username: input.username ?? null,
      fullName: input.fullName ?? null,
      passwordHash: input.passwordHash,
      verified: input.verified ?? false,
      passwordChangedAt: now,
      createdBy: input.createdBy,
      createdAt: now,
      updatedAt: now,
    })
    .returning();
  if (!user) throw new Error('user insert returned nothing');
  await tx.insert(orgMemberships).values({
    orgId: input.orgId,
    userId: id,
    createdBy: input.membershipCreatedBy === undefined ? input.createdBy : input.membershipCreatedBy,
  });
  const after = await assignRoles(core, tx, input.orgId, id, input.roles, input.by, origin);
  return { user, after };
}

/** Refuses an email or username already in use (the unique indexes decide races). */
export async function assertFree(
  db: DbOrTx,
  email: string,
  username: string | undefined | null,
): Promise<void> {
  if (await userByEmail(db, email)) throw identityErrors.email_taken();
  await assertUsernameFree(db, username);
}

async function assertUsernameFree(db: DbOrTx, username: string | undefined | null): Promise<void> {
  if (username) {
    const [clash] = await db
      .select({ id: users.id })
      .from(users)
      .where(sql`lower(${users.username}) = lower(${username})`);
    if (clash) throw identityErrors.username_taken();
  }
}

export function createUsers(core: IdentityCore) {
  const { db, audit, authz, clock, revocation } = core;

  // created_by: who added the user to this org. The account's own is another org's admin for an
  // account that joined by invitation (GET showed org B's admin id to org A).
  async function view(orgId: string, user: User, m: Membership): Promise<UserView> {
    return {
      user,
      active: user.active && m.active,
      roles: await authz.rolesOf(orgId, user.id),
      createdBy: m.createdBy,
    };
  }

  /**
   * Refuses (403 `shared_account`) a change to what the account carries into every org it belongs
   * to — name, username, its lock, its 2FA — when it also has an active membership in another org,
   * unless the caller is a superuser: one org's admin must not act for the others (org A unlocked
   * a lock org B's failures had set, and renamed B's member). Run before the transaction, for a
   * prompt answer, and inside it after `lockUserRow`: an invitation accepted meanwhile with the
   * account writes the user's row too, so it commits before this read or waits for this change.
   */
  async function assertSoleOrg(tx: DbOrTx, principal: Principal, userId: string): Promise<void> {
    if (principal.superuser) return;
    const elsewhere = (await activeMemberships(tx, userId)).some((m) => m.orgId !== principal.orgId);
    if (elsewhere) {
      throw identityErrors.shared_account(
        'This account also belongs to another organization: its name, username, lock and 2FA are shared, and only a superuser can change them',
      );
    }
  }

  async function createUser(
    principal: Principal,
    input: {
      email: string;
      password: string;
      username?: string | undefined;
      full_name?: string | undefined;
      roles?: string[] | undefined;
    },
    origin: AuditContext,
  ): Promise<UserView> {
    await assertMayChangeRoles(core, principal, { adding: (input.roles ?? []).length > 0, removing: false });
    assertPasswordPolicy(input.password, { email: input.email, username: input.username ?? null });
    await assertFree(db.db, input.email, input.username);
    const hash = await hashPassword(input.password);
    const { user, after } = await db.db
      .transaction(async (tx) => {
        const created = await insertMember(
          core,
          tx,
          {
            email: input.email,
            username: input.username,
            fullName: input.full_name,
            passwordHash: hash,
            orgId: principal.orgId,
            roles: input.roles ?? [],
            createdBy: principal.kind === 'user' ? principal.id : (principal.ownerId ?? principal.id),
            membershipCreatedBy: principal.id,
            by: principal,
          },
          origin,
        );
        const { user } = created;
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'user.created',
          resource: { type: 'user', id: user.id },
          context: origin,
          changes: {
            after: {
              email: user.email,
              username: user.username,
              full_name: user.fullName,
              roles: input.roles ?? [],
            },
          },
        });
        return created;
      })
      .catch(uniqueViolation);
    for (const run of after) await run();
    return {
      user,
      active: true,
      roles: await authz.rolesOf(principal.orgId, user.id),
      createdBy: principal.id, // the membership's, as GET shows it
    };
  }

  async function listUsers(principal: Principal, page: { limit: number; afterId?: string | undefined }) {
    const rows = await listMembers(db.db, principal.orgId, {
      limit: page.limit + 1,
      ...(page.afterId ? { afterId: page.afterId } : {}),
    });
    const views = await Promise.all(
      rows.slice(0, page.limit).map((r) => view(principal.orgId, r.user, r.membership)),
    );
    return { views, more: rows.length > page.limit };
  }

  async function getMember(orgId: string, userId: string) {
    const found = isId('usr', userId) ? await memberById(db.db, orgId, userId) : undefined;
    if (!found) throw identityErrors.user_not_found();
    return found;
  }

  async function getUser(principal: Principal, userId: string): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    return view(principal.orgId, user, m);
  }

  /** The caller acting on itself: its own account, or (an API key) its owner's. */
  const isSelf = (principal: Principal, userId: string) =>
    principal.id === userId || principal.ownerId === userId;

  /**
   * Refuses a deactivation the caller may not make, whatever the route: of oneself or of one's
   * key's owner (409 `cannot_deactivate_self`), of a superuser by anyone but a superuser (403
   * `superuser_protected`). The last active superuser is refused in the transaction (`deactivateInTx`).
   */
  function assertMayDeactivate(principal: Principal, target: User): void {
    if (isSelf(principal, target.id)) throw identityErrors.cannot_deactivate_self();
    if (target.superuser && !principal.superuser) {
      throw identityErrors.superuser_protected('Only a superuser can deactivate a superuser');
    }
  }

  /**
   * Edits a user: every part (name, username, active, roles) and its audit events commit in one
   * transaction, or nothing does. What can be checked before writing is (permission to deactivate,
   * self-deactivation, the username); roles are replaced by difference — those dropped are
   * unassigned, those new assigned, each under authz's delegation rules (one's own roles, roles
   * carrying permissions one does not hold: 403), inside the transaction, which rolls everything
   * back on a refusal. A PATCH that changes nothing writes nothing. Revocations and cache drops
   * are published after the commit.
   */
  async function updateUser(
    principal: Principal,
    userId: string,
    input: {
      full_name?: string | null | undefined;
      username?: string | null | undefined;
      active?: boolean | undefined;
      roles?: string[] | undefined;
    },
    origin: AuditContext,
  ): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    if (input.active === false) {
      // The same operation as DELETE /v1/users/{id}, so the same permission.
      await requirePermission(core, principal, 'users:delete');
      assertMayDeactivate(principal, user);
      // Deactivation removes every role: roles sent with it would be dropped in the same breath.
      if (input.roles !== undefined && input.roles.length > 0) {
        throw httpErrors.validation_failed('roles: a deactivated user holds no roles', {
          errors: [{ path: 'body.roles', message: 'A deactivated user holds no roles' }],
        });
      }
    }
    if (input.username && input.username.toLowerCase() !== user.username?.toLowerCase()) {
      await assertUsernameFree(db.db, input.username);
    }
    const beforeRoles = await authz.rolesOf(principal.orgId, userId);
    const renaming = input.full_name !== undefined && input.full_name !== user.fullName;
    const reusername = input.username !== undefined && input.username !== user.username;
    const reactivating = input.active === true && !(m.active && user.active);
    // The membership decides: a user already deactivated here is not deactivated again.
    const deactivating = input.active === false && m.active;
    const next =
      input.roles === undefined || input.active === false ? undefined : [...new Set(input.roles)].sort();
    const dropped = next === undefined ? [] : beforeRoles.filter((r) => !next.includes(r));
    const added = next === undefined ? [] : next.filter((r) => !beforeRoles.includes(r));
    const rolesChange = dropped.length > 0 || added.length > 0;
    await assertMayChangeRoles(core, principal, { adding: added.length > 0, removing: dropped.length > 0 });
    // Name and username are the account's, in every org; active and roles are this org's.
    const global = renaming || reusername;
    if (global) await assertSoleOrg(db.db, principal, userId);
    if (!renaming && !reusername && !reactivating && !deactivating && !rolesChange) {
      return view(principal.orgId, user, m);
    }
    const now = clock();
    const { runs, revoked } = await db.db
      .transaction(async (tx) => {
        if (global) {
          await lockUserRow(tx, userId);
          await assertSoleOrg(tx, principal, userId);
        }
        const before: Record<string, unknown> = {};
        const changed: Record<string, unknown> = {};
        const set: Partial<typeof users.$inferInsert> = { updatedAt: now };
        if (renaming) {
          before.full_name = user.fullName;
          set.fullName = changed.full_name = input.full_name;
        }
        if (reusername) {
          before.username = user.username;
          set.username = changed.username = input.username;
        }
        await tx.update(users).set(set).where(eq(users.id, userId));
        if (reactivating) {
          await tx
            .update(orgMemberships)
            .set({ active: true, updatedAt: now })
            .where(and(eq(orgMemberships.orgId, principal.orgId), eq(orgMemberships.userId, userId)));
          await tx.update(users).set({ active: true }).where(eq(users.id, userId));
          before.active = false;
          changed.active = true;
        }
        const runs: AfterCommit[] = [];
        if (next !== undefined && rolesChange) {
          const un = await authz.unassignAllInTx(tx, {
            orgId: principal.orgId,
            principalId: userId,
            by: principal,
            context: origin,
            roles: dropped,
          });
          runs.push(un.afterCommit);
          runs.push(...(await assignRoles(core, tx, principal.orgId, userId, added, principal, origin)));
          before.roles = beforeRoles;
          changed.roles = next;
        }
        if (Object.keys(changed).length > 0) {
          await audit.record(tx, {
            orgId: principal.orgId,
            actor: actorOf(principal),
            action: 'user.updated',
            resource: { type: 'user', id: userId },
            context: origin,
            changes: { before, after: changed },
          });
        }
        if (!deactivating) return { runs, revoked: [] as string[] };
        const off = await deactivateInTx(tx, principal, user, origin, now);
        return { runs: [...runs, ...off.runs], revoked: off.revoked };
      })
      .catch(uniqueViolation);
    for (const run of runs) await run();
    await revocation.publish(revoked);
    await core.userChanged(userId);
    return getUser(principal, userId);
  }

  /**
   * Inside `tx`: the membership off (and the user, once no active membership remains), roles
   * removed (under authz's delegation rules: a role the caller could not unassign refuses the
   * whole deactivation), sessions and pending 2FA challenges in this org ended, all audited. The
   * caller runs `runs` and publishes `revoked` after the commit. Refuses (409 `last_superuser`)
   * to turn off the account of the last active superuser: `steward bootstrap` could not recover.
   */
  async function deactivateInTx(
    tx: DbOrTx,
    principal: Principal,
    target: User,
    origin: AuditContext,
    now: Date,
  ): Promise<{ runs: AfterCommit[]; revoked: string[] }> {
    const userId = target.id;
    // The user's row before the membership's, as a 2FA login's last step takes them (queries.ts,
    // accountStanding): that login waits for this commit, or this waits for the login's.
    await lockUserRow(tx, userId);
    await tx
      .update(orgMemberships)
      .set({ active: false, updatedAt: now })
      .where(and(eq(orgMemberships.orgId, principal.orgId), eq(orgMemberships.userId, userId)));
    const others = await activeMemberships(tx, userId);
    const global = others.length === 0;
    if (global && target.superuser) {
      // Two superusers turning each other off at once: the second waits here and sees the first.
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext('steward:superusers'))`);
      const [another] = await tx
        .select({ id: users.id })
        .from(users)
        .where(and(eq(users.superuser, true), eq(users.active, true), ne(users.id, userId)))
        .limit(1);
      if (!another) {
        throw identityErrors.last_superuser('The last active superuser cannot be deactivated');
      }
    }
    if (global) await tx.update(users).set({ active: false, updatedAt: now }).where(eq(users.id, userId));
    const un = await authz.unassignAllInTx(tx, {
      orgId: principal.orgId,
      principalId: userId,
      by: principal,
      context: origin,
    });
    const revoked = await revokeSessions(tx, { userId, orgId: principal.orgId }, 'user_deactivated', now);
    await endMfaChallenges(tx, { userId, orgId: principal.orgId }, now);
    await audit.record(tx, [
      {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.deactivated',
        resource: { type: 'user', id: userId },
        context: origin,
        changes: { before: { active: true }, after: { active: false } },
        details: { revoked_sessions: revoked.length, deactivated_everywhere: global },
      },
      ...sessionRevokedEvents(
        revoked,
        { orgId: principal.orgId, principal, origin },
        userId,
        'user_deactivated',
      ),
    ]);
    return { runs: [un.afterCommit], revoked };
  }

  /**
   * Deactivates a user in the caller's org: membership off, roles removed, sessions revoked. A
   * membership already off answers as done, with no write and no event (idempotent).
   */
  async function deactivateUser(principal: Principal, userId: string, origin: AuditContext): Promise<void> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    assertMayDeactivate(principal, user);
    if (!m.active) return;
    const now = clock();
    const { runs, revoked } = await db.db.transaction((tx) =>
      deactivateInTx(tx, principal, user, origin, now),
    );
    for (const run of runs) await run();
    await revocation.publish(revoked);
    await core.userChanged(userId);
  }

  /**
   * Clears a lockout: the lock, its doubling level and the failure count. A user with none of
   * them is answered as is, with no write and no `user.unlocked` event (an unlock that changed
   * nothing would only add noise to the audit trail).
   */
  async function unlockUser(principal: Principal, userId: string, origin: AuditContext): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    // The lock is the account's (failures in any of its orgs set it), so is clearing it.
    await assertSoleOrg(db.db, principal, userId);
    if (user.lockedUntil === null && user.lockCount === 0 && user.failedLoginCount === 0) {
      return view(principal.orgId, user, m);
    }
    await db.db.transaction(async (tx) => {
      await lockUserRow(tx, userId);
      await assertSoleOrg(tx, principal, userId);
      await tx
        .update(users)
        .set({ ...FAILURES_RESET, updatedAt: clock() })
        .where(eq(users.id, userId));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.unlocked',
        resource: { type: 'user', id: userId },
        context: origin,
        changes: {
          before: {
            locked_until: user.lockedUntil?.toISOString() ?? null,
            lock_count: user.lockCount,
            failed_login_count: user.failedLoginCount,
          },
          after: { locked_until: null, lock_count: 0, failed_login_count: 0 },
        },
      });
    });
    await core.userChanged(userId);
    return getUser(principal, userId);
  }

  /**
   * An admin's reset of a user's 2FA (`users:admin`), for one who lost the authenticator and the
   * recovery codes: secret, replay step and recovery codes cleared, pending 2FA logins ended (their
   * code step would ask for a secret that is gone), audited `user.totp_disabled` with `by: admin`.
   * Not of oneself (the own route asks password and code), nor of a superuser but by one, nor of
   * an account shared with another org but by a superuser. 2FA already off: answered as is.
   */
  async function resetTotp(principal: Principal, userId: string, origin: AuditContext): Promise<UserView> {
    const { user, membership: m } = await getMember(principal.orgId, userId);
    if (isSelf(principal, userId)) {
      throw authzErrors.self_modification(
        'Turn your own 2FA off with POST /v1/auth/totp/disable (password and a code)',
      );
    }
    if (user.superuser && !principal.superuser) {
      throw identityErrors.superuser_protected("Only a superuser can reset a superuser's 2FA");
    }
    await assertSoleOrg(db.db, principal, userId);
    if (!user.totpEnabled) return view(principal.orgId, user, m);
    const now = clock();
    await db.db.transaction(async (tx) => {
      await lockUserRow(tx, userId);
      await assertSoleOrg(tx, principal, userId);
      await tx
        .update(users)
        .set({ ...TOTP_CLEARED, updatedAt: now })
        .where(eq(users.id, userId));
      await endMfaChallenges(tx, { userId }, now);
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_disabled',
        resource: { type: 'user', id: userId },
        context: origin,
        details: { by: 'admin' }, // as the user's own `by: self`
      });
    });
    await core.userChanged(userId);
    return getUser(principal, userId);
  }

  return { createUser, listUsers, getMember, getUser, updateUser, deactivateUser, unlockUser, resetTotp };
}
