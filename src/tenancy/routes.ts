import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { StewardContext } from '../context.ts';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
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
      config: { access: { permission: 'org:read' } },
      schema: { tags: ['tenancy'], summary: "The caller's organization", response: { 200: orgSchema } },
    },
    async (request) => orgView(await ctx.tenancy.getOrg(callerOf(request).orgId)),
  );

  app.get(
    '/v1/environments',
    {
      config: { access: { permission: 'org:read' } },
      schema: {
        tags: ['tenancy'],
        summary: "The org's environments",
        response: { 200: z.object({ data: z.array(environmentSchema), next_cursor: z.null() }) },
      },
    },
    // An org has a handful of environments: one page, always.
    async (request) => ({
      data: (await ctx.tenancy.listEnvironments(callerOf(request).orgId)).map(envView),
      next_cursor: null,
    }),
  );

  app.post(
    '/v1/environments',
    {
      config: { access: { permission: 'org:update' } },
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
