// Orgs as identity sees them (membership, creation with admins) and the first-start bootstrap.
import { and, asc, eq, sql } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { isId, newId } from '../db/ids.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { organizations } from '../tenancy/schema.ts';
import type { Organization } from '../tenancy/service.ts';
import {
  type AfterCommit,
  assertPasswordPolicy,
  generatePassword,
  type IdentityCore,
  SYSTEM_ACTOR,
} from './core.ts';
import { identityErrors } from './errors.ts';
import { hashPassword } from './password.ts';
import { type User, userByEmail, userById } from './queries.ts';
import { orgMemberships, users } from './schema.ts';
import { assignRoles } from './users.ts';

const activeSuperuser = and(eq(users.superuser, true), eq(users.active, true));

export function createOrgs(core: IdentityCore) {
  const { db, audit, tenancy, clock } = core;

  /**
   * Orgs the caller belongs to (a superuser sees every org), oldest first, a page at a time: up to
   * `limit` after the org `afterId` (the keyset is (created_at, id), read from that org's row so
   * the cursor loses no timestamp precision). `more`: another page follows.
   */
  async function listOrgs(
    principal: Principal,
    page: { limit: number; afterId?: string | undefined } = { limit: 500 },
  ): Promise<{ orgs: Organization[]; more: boolean }> {
    const after =
      page.afterId === undefined
        ? undefined
        : sql`(${organizations.createdAt}, ${organizations.id}) > (select o.created_at, o.id from organizations o where o.id = ${page.afterId})`;
    const order = [asc(organizations.createdAt), asc(organizations.id)] as const;
    let orgs: Organization[];
    if (principal.superuser) {
      orgs = await db.db
        .select()
        .from(organizations)
        .where(after)
        .orderBy(...order)
        .limit(page.limit + 1);
    } else {
      const userId = principal.kind === 'user' ? principal.id : (principal.ownerId ?? '');
      const rows = await db.db
        .select({ org: organizations })
        .from(organizations)
        .innerJoin(orgMemberships, eq(orgMemberships.orgId, organizations.id))
        .where(and(eq(orgMemberships.userId, userId), eq(orgMemberships.active, true), after))
        .orderBy(...order)
        .limit(page.limit + 1);
      orgs = rows.map((r) => r.org);
    }
    return { orgs: orgs.slice(0, page.limit), more: orgs.length > page.limit };
  }

  /**
   * Superuser: a new org; the creator (and `admin_user_id`, if given) become its admins, in the
   * transaction that creates it: a failure adding them leaves no org behind (two transactions left
   * an org nobody administered).
   */
  async function createOrg(
    principal: Principal,
    input: { slug: string; name: string; admin_user_id?: string | undefined },
    origin: AuditContext,
  ): Promise<Organization> {
    if (!principal.superuser) throw httpErrors.permission_denied('Only a superuser creates organizations');
    const admins = new Set<string>();
    if (principal.kind === 'user') admins.add(principal.id);
    if (input.admin_user_id) {
      const found = isId('usr', input.admin_user_id) ? await userById(db.db, input.admin_user_id) : undefined;
      if (!found) throw identityErrors.user_not_found();
      admins.add(found.id);
    }
    const { org, runs } = await db.db.transaction(async (tx) => {
      const org = await tenancy.createOrg(
        { slug: input.slug, name: input.name },
        { principal, context: origin },
        tx,
      );
      const runs: AfterCommit[] = [];
      for (const userId of admins) {
        await tx.insert(orgMemberships).values({ orgId: org.id, userId, createdBy: principal.id });
        runs.push(...(await assignRoles(core, tx, org.id, userId, ['admin'], null, origin)));
      }
      return { org, runs };
    });
    for (const run of runs) await run();
    return org;
  }

  /** An active superuser exists (a deactivated one does not stop `steward bootstrap` recovering). */
  async function superuserExists(): Promise<boolean> {
    const [row] = await db.db.select({ id: users.id }).from(users).where(activeSuperuser).limit(1);
    return row !== undefined;
  }

  /**
   * Creates the org `default` (if missing) and the first superuser, admin of it. Refuses when a
   * superuser exists. Returns the generated password when none was given: the caller prints it
   * once; it is never logged or stored in clear.
   */
  async function bootstrap(input: { email: string; password?: string | undefined }): Promise<{
    user: User;
    org: Organization;
    generatedPassword: string | null;
  }> {
    if (await superuserExists()) throw identityErrors.superuser_exists();
    const generatedPassword = input.password === undefined ? generatePassword() : null;
    const password = input.password ?? (generatedPassword as string);
    assertPasswordPolicy(password, { email: input.email });
    const hash = await hashPassword(password);
    const org =
      (await tenancy.findOrgBySlug('default')) ??
      (await tenancy.createOrg({ slug: 'default', name: 'Default' }).catch(async (error: unknown) => {
        const again = await tenancy.findOrgBySlug('default'); // another instance won the race
        if (again) return again;
        throw error;
      }));
    const now = clock();
    const id = newId('usr');
    const { user, runs } = await db.db.transaction(async (tx) => {
      // Serialises concurrent bootstraps (several instances on one empty database).
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext('steward:bootstrap'))`);
      const [existing] = await tx.select({ id: users.id }).from(users).where(activeSuperuser).limit(1);
      if (existing) throw identityErrors.superuser_exists();
      if (await userByEmail(tx, input.email)) throw identityErrors.email_taken();
      const [user] = await tx
        .insert(users)
        .values({
          id,
          email: input.email,
          passwordHash: hash,
          superuser: true,
          verified: true,
          passwordChangedAt: now,
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!user) throw new Error('user insert returned nothing');
      await tx.insert(orgMemberships).values({ orgId: org.id, userId: id });
      const runs = await assignRoles(core, tx, org.id, id, ['admin'], null, undefined);
      await audit.record(tx, [
        {
          orgId: org.id,
          actor: SYSTEM_ACTOR,
          action: 'user.created',
          resource: { type: 'user', id },
          changes: { after: { email: user.email, superuser: true, roles: ['admin'] } },
        },
        {
          orgId: org.id,
          actor: SYSTEM_ACTOR,
          action: 'bootstrap.completed',
          resource: { type: 'user', id },
          details: { org: org.slug, generated_password: generatedPassword !== null },
        },
      ]);
      return { user, runs };
    });
    for (const run of runs) await run();
    return { user, org, generatedPassword };
  }

  /** True when the database has no user at all: the first start. */
  async function isEmpty(): Promise<boolean> {
    const [row] = await db.db.select({ id: users.id }).from(users).limit(1);
    return row === undefined;
  }
  return { listOrgs, createOrg, bootstrap, superuserExists, isEmpty };
}
