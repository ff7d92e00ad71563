import { and, asc, eq } from 'drizzle-orm';
import type { AuditContext, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
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
  /** Creates an org with the default environments, audited as one change. */
  async function createOrg(
    input: { slug: string; name: string },
    by: { principal?: Principal; context?: AuditContext } = {},
  ): Promise<Organization> {
    return db.db.transaction(async (tx) => {
      const [existing] = await tx
        .select({ id: organizations.id })
        .from(organizations)
        .where(eq(organizations.slug, input.slug));
      if (existing) throw tenancyErrors.org_slug_taken(`An org with slug ${input.slug} already exists`);
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
    });
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

  async function createEnvironment(
    principal: Principal,
    input: { name: string; description?: string | undefined },
    context: AuditContext,
  ): Promise<Environment> {
    return db.db.transaction(async (tx) => {
      const [clash] = await tx
        .select({ id: environments.id })
        .from(environments)
        .where(and(eq(environments.orgId, principal.orgId), eq(environments.name, input.name)));
      if (clash) throw tenancyErrors.environment_exists(`Environment ${input.name} already exists`);
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

  return { createOrg, getOrg, findOrgBySlug, listEnvironments, createEnvironment, environmentByName };
}

export type TenancyService = ReturnType<typeof createTenancyService>;
