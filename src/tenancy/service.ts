import { and, asc, eq, sql } from 'drizzle-orm';
import type { AuditContext, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { isUniqueViolation } from '../db/errors.ts';
import { newId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import { tenancyErrors } from './errors.ts';
import { environments, organizations } from './schema.ts';

/** Environments every org starts with. */
export const DEFAULT_ENVIRONMENTS = ['development', 'staging', 'production'] as const;

export type Organization = typeof organizations.$inferSelect;
export type Environment = typeof environments.$inferSelect;

export interface TenancyDeps {
  db: DbHandle;
  audit: AuditRecorder;
}

/** Orgs and their environments. */
export function createTenancyService({ db, audit }: TenancyDeps) {
  /**
   * Creates an org with the default environments, audited as one change: in its own transaction,
   * or inside `tx` (identity adds the org's admins in the same one, so a failure leaves no org
   * without them). The slug is checked first; two creations racing with one slug are decided by
   * its unique index, and the loser answers 409 `org_slug_taken` as well (it was a 500).
   */
  async function createOrg(
    input: { slug: string; name: string },
    by: { principal?: Principal; context?: AuditContext } = {},
    tx?: DbOrTx,
  ): Promise<Organization> {
    const create = (t: DbOrTx) => insertOrg(t, input, by);
    return (tx ? create(tx) : db.db.transaction(create)).catch((error: unknown) => {
      throw isUniqueViolation(error) ? slugTaken(input.slug) : error;
    });
  }

  const slugTaken = (slug: string) => tenancyErrors.org_slug_taken(`An org with slug ${slug} already exists`);

  async function insertOrg(
    tx: DbOrTx,
    input: { slug: string; name: string },
    by: { principal?: Principal; context?: AuditContext },
  ): Promise<Organization> {
    const [existing] = await tx
      .select({ id: organizations.id })
      .from(organizations)
      .where(eq(organizations.slug, input.slug));
    if (existing) throw slugTaken(input.slug);
    const [org] = await tx
      .insert(organizations)
      .values({ id: newId('org'), ...input })
      .returning();
    if (!org) throw new Error('org insert returned nothing');
    await tx
      .insert(environments)
      .values(DEFAULT_ENVIRONMENTS.map((name) => ({ id: newId('env'), orgId: org.id, name })));
    await audit.record(tx, {
      orgId: org.id,
      actor: by.principal ? actorOf(by.principal) : { type: 'system', name: 'steward' },
      action: 'org.created',
      resource: { type: 'org', id: org.id },
      context: by.context,
      changes: { after: { slug: org.slug, name: org.name, environments: DEFAULT_ENVIRONMENTS } },
    });
    return org;
  }

  async function getOrg(orgId: string): Promise<Organization> {
    const [org] = await db.db.select().from(organizations).where(eq(organizations.id, orgId));
    if (!org) throw tenancyErrors.org_not_found();
    return org;
  }

  async function findOrgBySlug(slug: string): Promise<Organization | null> {
    const [org] = await db.db.select().from(organizations).where(eq(organizations.slug, slug));
    return org ?? null;
  }

  async function listEnvironments(orgId: string): Promise<Environment[]> {
    return db.db
      .select()
      .from(environments)
      .where(eq(environments.orgId, orgId))
      .orderBy(asc(environments.createdAt), asc(environments.id));
  }

  /**
   * The org's environments, oldest first, a page at a time: up to `limit` after the environment
   * `afterId` (the keyset is (created_at, id), read from that environment's row in this org, so
   * the cursor loses no timestamp precision and another org's id gives an empty page). `more`:
   * another page follows.
   */
  async function pageEnvironments(
    orgId: string,
    page: { limit: number; afterId?: string | undefined },
  ): Promise<{ environments: Environment[]; more: boolean }> {
    const after =
      page.afterId === undefined
        ? undefined
        : sql`(${environments.createdAt}, ${environments.id}) > (select e.created_at, e.id from environments e where e.id = ${page.afterId} and e.org_id = ${orgId})`;
    const rows = await db.db
      .select()
      .from(environments)
      .where(and(eq(environments.orgId, orgId), after))
      .orderBy(asc(environments.createdAt), asc(environments.id))
      .limit(page.limit + 1);
    return { environments: rows.slice(0, page.limit), more: rows.length > page.limit };
  }

  const environmentExists = (name: string) =>
    tenancyErrors.environment_exists(`Environment ${name} already exists`);

  /**
   * Adds an environment to the caller's org. The name is checked first; two creations racing with
   * one name are decided by the unique index, and the loser answers 409 `environment_exists` as
   * well (it was a 500).
   */
  async function createEnvironment(
    principal: Principal,
    input: { name: string; description?: string | undefined },
    context: AuditContext,
  ): Promise<Environment> {
    const created = db.db.transaction(async (tx) => {
      const [clash] = await tx
        .select({ id: environments.id })
        .from(environments)
        .where(and(eq(environments.orgId, principal.orgId), eq(environments.name, input.name)));
      if (clash) throw environmentExists(input.name);
      const [env] = await tx
        .insert(environments)
        .values({
          id: newId('env'),
          orgId: principal.orgId,
          name: input.name,
          description: input.description ?? null,
        })
        .returning();
      if (!env) throw new Error('environment insert returned nothing');
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'environment.created',
        resource: { type: 'environment', id: env.id },
        context,
        changes: { after: { name: env.name, description: env.description } },
      });
      return env;
    });
    return created.catch((error: unknown) => {
      throw isUniqueViolation(error) ? environmentExists(input.name) : error;
    });
  }

  /** Resolves an environment name within an org, or throws environment_not_found. */
  /** `tx`: read inside the caller's transaction (on PGlite, a read beside an open one would wait for it). */
  async function environmentByName(orgId: string, name: string, tx: DbOrTx = db.db): Promise<Environment> {
    const [env] = await tx
      .select()
      .from(environments)
      .where(and(eq(environments.orgId, orgId), eq(environments.name, name)));
    if (!env) throw tenancyErrors.environment_not_found(`No environment named ${name}`);
    return env;
  }

  return {
    createOrg,
    getOrg,
    findOrgBySlug,
    listEnvironments,
    pageEnvironments,
    createEnvironment,
    environmentByName,
  };
}

export type TenancyService = ReturnType<typeof createTenancyService>;
