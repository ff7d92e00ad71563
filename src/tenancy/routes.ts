import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { StewardContext } from '../context.ts';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import type { Environment, Organization } from './service.ts';

const orgSchema = z.object({
  id: z.string(),
  slug: z.string(),
  name: z.string(),
  created_at: z.string(),
  updated_at: z.string(),
});

const environmentSchema = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string().nullable(),
  created_at: z.string(),
});

/** The last environment of a page; the next page starts after it. */
const environmentCursor = z.object({ id: z.string() });

const orgView = (o: Organization) => ({
  id: o.id,
  slug: o.slug,
  name: o.name,
  created_at: o.createdAt.toISOString(),
  updated_at: o.updatedAt.toISOString(),
});

const envView = (e: Environment) => ({
  id: e.id,
  name: e.name,
  description: e.description,
  created_at: e.createdAt.toISOString(),
});

/** The caller's org and its environments. */
export const tenancyRoutes: FastifyPluginAsyncZod<{ ctx: StewardContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/org',
    {
      config: { access: { permission: 'org:read' }, errors: ['org_not_found'] },
      schema: { tags: ['tenancy'], summary: "The caller's organization", response: { 200: orgSchema } },
    },
    async (request) => orgView(await ctx.tenancy.getOrg(callerOf(request).orgId)),
  );

  app.get(
    '/v1/environments',
    {
      config: { access: { permission: 'org:read' }, errors: [] },
      schema: {
        tags: ['tenancy'],
        summary: "The org's environments, oldest first",
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(environmentSchema) },
      },
    },
    // Paged like every list (SPEC 0), though an org has a handful: `limit` was ignored and any
    // `cursor` accepted.
    async (request) => {
      const after = decodeCursor(request.query.cursor, environmentCursor);
      const { environments, more } = await ctx.tenancy.pageEnvironments(callerOf(request).orgId, {
        limit: request.query.limit,
        afterId: after?.id,
      });
      const last = environments.at(-1);
      return {
        data: environments.map(envView),
        next_cursor: more && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.post(
    '/v1/environments',
    {
      // The catalogue's org:admin ("environments, sign-up policy, deletion"); org:update is renaming
      // the org and its policies.
      config: { access: { permission: 'org:admin' }, errors: ['environment_exists'] },
      schema: {
        tags: ['tenancy'],
        summary: 'Add an environment',
        body: z.strictObject({
          name: z
            .string()
            .regex(/^[a-z][a-z0-9_-]{0,39}$/, 'lower-case letters, digits, - and _, starting with a letter'),
          description: z.string().max(500).optional(),
        }),
        response: { 201: environmentSchema },
      },
    },
    async (request, reply) => {
      const env = await ctx.tenancy.createEnvironment(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send(envView(env));
    },
  );
};
