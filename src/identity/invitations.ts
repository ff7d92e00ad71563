// Registration other than by an admin: invitations (a show-once token an admin hands to someone)
// and open sign-up, a per-org setting that is off by default.
import { randomBytes } from 'node:crypto';
import { and, desc, eq, gt, isNull, lt } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { DbOrTx } from '../db/client.ts';
import { isUniqueViolation } from '../db/errors.ts';
import { isId, newId } from '../db/ids.ts';
import { StewardError } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import type { Organization } from '../tenancy/service.ts';
import {
  assertPasswordPolicy,
  displayName,
  type IdentityCore,
  type Origin,
  type UserView,
  uniqueViolation,
} from './core.ts';
import { identityErrors } from './errors.ts';
import type { IpReservation } from './limiter.ts';
import { createLockout, FAILURES_RESET } from './lockout.ts';
import { hashPassword, verifyPassword } from './password.ts';
import { activeMemberships, membership, type User, userByEmail } from './queries.ts';
import { identitySettings, invitations, orgMemberships, users } from './schema.ts';
import { sha256Hex } from './tokens.ts';
import { assertFree, assertMayChangeRoles, assignRoles, insertMember } from './users.ts';

export type Invitation = typeof invitations.$inferSelect;
export type InvitationStatus = 'pending' | 'accepted' | 'revoked' | 'expired';

/** Per-org identity settings; absent row = these defaults. */
export interface SignupSettings {
  openSignup: boolean;
  /** The role a signed-up user starts with; null: none. */
  signupRole: string | null;
}
export const DEFAULT_SIGNUP_SETTINGS: SignupSettings = { openSignup: false, signupRole: null };

export const INVITATION_DEFAULT_TTL_HOURS = 7 * 24;
const INVITATION_TOKEN_PREFIX = 'inv_';

/** An invitation's state at `now`: accepted and revoked are final, expiry only applies to pending ones. */
export function invitationStatus(invitation: Invitation, now: Date): InvitationStatus {
  if (invitation.acceptedAt) return 'accepted';
  if (invitation.revokedAt) return 'revoked';
  return invitation.expiresAt <= now ? 'expired' : 'pending';
}

/** What a new user sends to register (invitation or open sign-up). */
export interface Registration {
  password: string;
  username?: string | undefined;
  full_name?: string | undefined;
}

export function createInvitations(core: IdentityCore) {
  const { db, audit, authz, tenancy, clock } = core;
  const lockout = createLockout(core);
  // Thrown inside a transaction to roll it back on purpose (role validation).
  const DRY_RUN = Symbol('dry run');

  /**
   * Runs authz's own checks on the roles an invitation will grant (unknown role 404, a role the
   * inviter could not assign 403) by assigning them to a stand-in user in a transaction that is
   * always rolled back: the invitation cannot smuggle in rights its creator does not have. The
   * creator needs `roles:update` too, as `POST /v1/role-assignments` does.
   */
  async function assertRolesAssignable(principal: Principal, roles: readonly string[]) {
    if (roles.length === 0) return;
    await assertMayChangeRoles(core, principal, { adding: true, removing: false });
    await db.db
      .transaction(async (tx) => {
        await insertMember(
          core,
          tx,
          {
            // A stand-in: the invitee may exist already, and only the roles are on trial here.
            email: `dry-run+${randomBytes(8).toString('hex')}@invalid`,
            passwordHash: '!',
            orgId: principal.orgId,
            roles,
            createdBy: null,
            by: principal,
          },
          undefined,
        );
        throw DRY_RUN;
      })
      .catch((error: unknown) => {
        if (error !== DRY_RUN) uniqueViolation(error);
      });
  }

  /** Admin: invites `email` into the caller's org. The token is in this answer only. */
  async function createInvitation(
    principal: Principal,
    input: { email: string; roles?: string[] | undefined; expires_in_hours?: number | undefined },
    origin: AuditContext,
  ): Promise<{ invitation: Invitation; token: string }> {
    // Someone with an account elsewhere joins with it; someone here already is not invited again.
    const existing = await userByEmail(db.db, input.email);
    if (existing && (await membership(db.db, principal.orgId, existing.id))) {
      throw identityErrors.already_member(
        'This user belongs to the organization already (an inactive member is reactivated with PATCH /v1/users/{id})',
      );
    }
    const roles = [...new Set(input.roles ?? [])].sort();
    await assertRolesAssignable(principal, roles);
    const now = clock();
    const token = `${INVITATION_TOKEN_PREFIX}${randomBytes(32).toString('base64url')}`;
    const ttlHours = input.expires_in_hours ?? INVITATION_DEFAULT_TTL_HOURS;
    const invitation = await db.db.transaction(async (tx) => {
      const [row] = await tx
        .insert(invitations)
        .values({
          id: newId('inv'),
          orgId: principal.orgId,
          email: input.email,
          roles,
          tokenHash: sha256Hex(token),
          createdBy: principal.kind === 'user' ? principal.id : (principal.ownerId ?? principal.id),
          createdAt: now,
          expiresAt: new Date(now.getTime() + ttlHours * 3_600_000),
        })
        .returning();
      if (!row) throw new Error('invitation insert returned nothing');
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'invitation.created',
        resource: { type: 'invitation', id: row.id },
        context: origin,
        details: { email: row.email, roles, expires_at: row.expiresAt.toISOString() },
      });
      return row;
    });
    return { invitation, token };
  }

  /** Invitations of the caller's org, newest first. */
  async function listInvitations(
    principal: Principal,
    page: { limit: number; afterId?: string | undefined },
  ): Promise<Invitation[]> {
    return db.db
      .select()
      .from(invitations)
      .where(
        and(
          eq(invitations.orgId, principal.orgId),
          page.afterId ? lt(invitations.id, page.afterId) : undefined,
        ),
      )
      .orderBy(desc(invitations.id))
      .limit(page.limit);
  }

  async function getInvitation(principal: Principal, id: string, tx: DbOrTx = db.db): Promise<Invitation> {
    const [row] = isId('inv', id)
      ? await tx
          .select()
          .from(invitations)
          .where(and(eq(invitations.id, id), eq(invitations.orgId, principal.orgId)))
      : [];
    if (!row) throw identityErrors.invitation_not_found();
    return row;
  }

  /** Admin: withdraws a pending invitation (idempotent); an accepted one cannot be. */
  async function revokeInvitation(principal: Principal, id: string, origin: AuditContext): Promise<void> {
    const found = await getInvitation(principal, id);
    if (found.acceptedAt) throw identityErrors.invitation_used();
    if (found.revokedAt) return;
    const now = clock();
    await db.db.transaction(async (tx) => {
      const [row] = await tx
        .update(invitations)
        .set({ revokedAt: now, revokedBy: principal.id })
        .where(and(eq(invitations.id, id), isNull(invitations.acceptedAt), isNull(invitations.revokedAt)))
        .returning();
      if (!row) {
        // Accepted or revoked in between.
        const again = await getInvitation(principal, id, tx);
        if (again.acceptedAt) throw identityErrors.invitation_used();
        return;
      }
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'invitation.revoked',
        resource: { type: 'invitation', id },
        context: origin,
        details: { email: row.email, was: invitationStatus(found, now) },
      });
    });
  }

  function refusal(invitation: Invitation | undefined, now: Date) {
    if (!invitation) return identityErrors.invitation_invalid();
    const status = invitationStatus(invitation, now);
    if (status === 'accepted') return identityErrors.invitation_used();
    if (status === 'revoked') return identityErrors.invitation_revoked();
    if (status === 'expired') return identityErrors.invitation_expired();
    return null;
  }

  /** Public: the invited person chooses a password; the user is created in the org with the invited roles. */
  async function acceptInvitation(
    input: Registration & { token: string },
    origin: Origin,
  ): Promise<{ view: UserView; orgId: string }> {
    const tokenHash = sha256Hex(input.token);
    const [invitation] = await db.db.select().from(invitations).where(eq(invitations.tokenHash, tokenHash));
    const refused = refusal(invitation, clock());
    if (refused || !invitation) throw refused ?? identityErrors.invitation_invalid();
    const existing = await userByEmail(db.db, invitation.email);
    if (existing) return joinWithAccount(invitation, existing, input.password, origin);
    assertPasswordPolicy(input.password, { email: invitation.email, username: input.username ?? null });
    await assertFree(db.db, invitation.email, input.username);
    const hash = await hashPassword(input.password);
    const now = clock();
    const { user, after } = await db.db
      .transaction(async (tx) => {
        await claim(tx, invitation, now);
        const created = await insertMember(
          core,
          tx,
          {
            email: invitation.email,
            username: input.username,
            fullName: input.full_name,
            passwordHash: hash,
            orgId: invitation.orgId,
            roles: invitation.roles,
            createdBy: invitation.createdBy,
            by: null,
          },
          origin,
        );
        await tx
          .update(invitations)
          .set({ acceptedUserId: created.user.id })
          .where(eq(invitations.id, invitation.id));
        const actor = { type: 'user' as const, id: created.user.id, name: displayName(created.user) };
        await audit.record(tx, [
          {
            orgId: invitation.orgId,
            actor,
            action: 'user.created',
            resource: { type: 'user', id: created.user.id },
            context: origin,
            changes: {
              after: {
                email: created.user.email,
                username: created.user.username,
                full_name: created.user.fullName,
                roles: invitation.roles,
              },
            },
            details: { via: 'invitation', invitation_id: invitation.id },
          },
          {
            orgId: invitation.orgId,
            actor,
            action: 'invitation.accepted',
            resource: { type: 'invitation', id: invitation.id },
            context: origin,
            details: { user_id: created.user.id, invited_by: invitation.createdBy },
          },
        ]);
        return created;
      })
      .catch(uniqueViolation);
    for (const run of after) await run();
    return {
      view: {
        user,
        active: true,
        roles: await authz.rolesOf(invitation.orgId, user.id),
        createdBy: invitation.createdBy, // the membership's, as GET /v1/users/{id} shows it
      },
      orgId: invitation.orgId,
    };
  }

  /**
   * An invitation for an email that has an account: its owner proves it with their current
   * password (which stays as it is) and joins the org with the invited roles. No tokens are
   * issued here: signing in to the new org is a login, with 2FA where it is on. A wrong password
   * counts as a failed login does (the account's lockout and the per-IP limiter), so whoever
   * holds an invitation cannot guess the account's password. The failures are audited in the
   * org the user already belongs to (their first), never in the inviting org: its admin must not
   * learn who holds the account. Two invitations of one org accepted at once: the membership's
   * key decides, the other answers `already_member`.
   */
  async function joinWithAccount(
    invitation: Invitation,
    user: User,
    password: string,
    origin: Origin,
  ): Promise<{ view: UserView; orgId: string }> {
    await lockout.withIpPoint(origin.ip, async (ip) => {
      const home = user.active ? (await activeMemberships(db.db, user.id))[0] : undefined;
      const refused = identityErrors.invalid_credentials();
      if (!home) {
        // Inactive account: nothing to lock, as a login by an inactive user.
        await verifyPassword(user.passwordHash, password);
        ip.fail();
        throw refused;
      }
      await lockout.withAccountProof(
        { user, orgId: home.orgId, origin, ip, during: 'invitation_accept' },
        async (attempt) => {
          const check = await verifyPassword(user.passwordHash, password);
          if (!check.ok) throw await lockout.fail(attempt, 'wrong_password', refused);
        },
      );
    });
    const now = clock();
    const after = await db.db
      .transaction(async (tx) => {
        await claim(tx, invitation, now);
        if (await membership(tx, invitation.orgId, user.id)) throw identityErrors.already_member();
        await tx.update(users).set(FAILURES_RESET).where(eq(users.id, user.id));
        await tx
          .insert(orgMemberships)
          .values({ orgId: invitation.orgId, userId: user.id, createdBy: invitation.createdBy });
        const assigned = await assignRoles(
          core,
          tx,
          invitation.orgId,
          user.id,
          invitation.roles,
          null,
          origin,
        );
        await tx
          .update(invitations)
          .set({ acceptedUserId: user.id })
          .where(eq(invitations.id, invitation.id));
        await audit.record(tx, {
          orgId: invitation.orgId,
          actor: { type: 'user', id: user.id, name: displayName(user) },
          action: 'invitation.accepted',
          resource: { type: 'invitation', id: invitation.id },
          context: origin,
          details: { user_id: user.id, invited_by: invitation.createdBy, existing_account: true },
        });
        return assigned;
      })
      .catch((error: unknown) => {
        // Another invitation of this org, accepted at the same moment, added the membership first.
        throw isUniqueViolation(error) ? identityErrors.already_member() : error;
      });
    for (const run of after) await run();
    await core.userChanged(user.id); // any lock cleared
    return {
      view: {
        user,
        active: true,
        roles: await authz.rolesOf(invitation.orgId, user.id),
        createdBy: invitation.createdBy, // the membership's, as GET /v1/users/{id} shows it
      },
      orgId: invitation.orgId,
    };
  }

  /** Marks the invitation used, once: two requests racing with one token cannot both use it. */
  async function claim(tx: DbOrTx, invitation: Invitation, now: Date): Promise<void> {
    const [claimed] = await tx
      .update(invitations)
      .set({ acceptedAt: now })
      .where(
        and(
          eq(invitations.id, invitation.id),
          isNull(invitations.acceptedAt),
          isNull(invitations.revokedAt),
          gt(invitations.expiresAt, now),
        ),
      )
      .returning({ id: invitations.id });
    if (!claimed) {
      const [again] = await tx.select().from(invitations).where(eq(invitations.id, invitation.id));
      throw refusal(again, now) ?? identityErrors.invitation_invalid();
    }
  }

  // ---------------------------------------------------------------- open sign-up

  async function settingsOf(orgId: string): Promise<SignupSettings> {
    const [row] = await db.db.select().from(identitySettings).where(eq(identitySettings.orgId, orgId));
    return row ? { openSignup: row.openSignup, signupRole: row.signupRole } : DEFAULT_SIGNUP_SETTINGS;
  }

  async function getSettings(principal: Principal): Promise<SignupSettings> {
    return settingsOf(principal.orgId);
  }

  async function putSettings(
    principal: Principal,
    input: SignupSettings,
    origin: AuditContext,
  ): Promise<SignupSettings> {
    // The caller must be able to assign the role themselves (an unknown role is 404).
    if (input.signupRole !== null) await assertRolesAssignable(principal, [input.signupRole]);
    const before = await settingsOf(principal.orgId);
    const now = clock();
    await db.db.transaction(async (tx) => {
      await tx
        .insert(identitySettings)
        .values({ orgId: principal.orgId, ...input, updatedBy: principal.id, createdAt: now, updatedAt: now })
        .onConflictDoUpdate({
          target: identitySettings.orgId,
          set: { ...input, updatedBy: principal.id, updatedAt: now },
        });
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'signup.policy_changed',
        resource: { type: 'identity_settings', id: principal.orgId },
        context: origin,
        changes: {
          before: { open_signup: before.openSignup, signup_role: before.signupRole },
          after: { open_signup: input.openSignup, signup_role: input.signupRole },
        },
      });
    });
    return input;
  }

  async function findOrg(org: string): Promise<Organization | null> {
    if (isId('org', org)) return tenancy.getOrg(org).catch(() => null);
    return tenancy.findOrgBySlug(org);
  }

  /**
   * Public sign-up into an org whose `open_signup` is on; the new user starts with the org's
   * `signup_role`, or none (also when that role has been deleted since it was chosen). A closed
   * or unknown org answers the same 403. Refusals count against the per-IP
   * login limiter, so sign-up cannot be used to enumerate emails faster than logins can; the
   * IP's point is taken before anything is read, as a login's is.
   */
  function signup(
    input: Registration & { email: string; org: string },
    origin: Origin,
  ): Promise<{ view: UserView; orgId: string }> {
    return lockout.withIpPoint(origin.ip, (ip) => signUp(input, origin, ip));
  }

  async function signUp(
    input: Registration & { email: string; org: string },
    origin: Origin,
    ip: IpReservation,
  ): Promise<{ view: UserView; orgId: string }> {
    const org = await findOrg(input.org);
    const settings = org ? await settingsOf(org.id) : DEFAULT_SIGNUP_SETTINGS;
    if (!org || !settings.openSignup) {
      ip.fail();
      throw identityErrors.signup_disabled();
    }
    assertPasswordPolicy(input.password, { email: input.email, username: input.username ?? null });
    try {
      await assertFree(db.db, input.email, input.username);
    } catch (error) {
      ip.fail();
      throw error;
    }
    const hash = await hashPassword(input.password);
    const register = (roles: string[]) =>
      db.db.transaction(async (tx) => {
        const created = await insertMember(
          core,
          tx,
          {
            email: input.email,
            username: input.username,
            fullName: input.full_name,
            passwordHash: hash,
            orgId: org.id,
            roles,
            createdBy: null,
            by: null,
          },
          origin,
        );
        const actor = { type: 'user' as const, id: created.user.id, name: displayName(created.user) };
        await audit.record(tx, {
          orgId: org.id,
          actor,
          action: 'user.signed_up',
          resource: { type: 'user', id: created.user.id },
          context: origin,
          changes: {
            after: {
              email: created.user.email,
              username: created.user.username,
              full_name: created.user.fullName,
              roles,
            },
          },
        });
        return created;
      });
    const roles = settings.signupRole === null ? [] : [settings.signupRole];
    const { user, after } = await register(roles)
      .catch((error: unknown) => {
        // The role was deleted after it was chosen: the user signs up without one, as by default.
        if (roles.length > 0 && error instanceof StewardError && error.code === 'role_not_found') {
          return register([]);
        }
        throw error;
      })
      .catch(uniqueViolation);
    for (const run of after) await run();
    return { view: { user, active: true, roles: await authz.rolesOf(org.id, user.id) }, orgId: org.id };
  }

  return {
    createInvitation,
    listInvitations,
    revokeInvitation,
    acceptInvitation,
    getSignupSettings: getSettings,
    putSignupSettings: putSettings,
    signup,
  };
}
