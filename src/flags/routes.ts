import type { FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import { toolIdOf } from '../vault/common.ts';
import type { Access } from '../vault/secrets/service.ts';
import { BOUND_KEY_ERRORS, holdKeysToTheirEnvironment } from './key-binding.ts';
import { envParams, flagCursor, flagParams, ifMatchOf } from './params.ts';
import type { FlagRow, FlagService, SegmentRow } from './service.ts';
import type { StreamHub } from './stream.ts';
import type { StreamGuard } from './stream-guard.ts';
import {
  constraintSchema,
  dependencySchema,
  type Feature,
  FLAG_TYPES,
  type FlagContext,
  payloadSchema,
  strategySchema,
  variantDefinitionSchema,
} from './types.ts';
import type { KeyAccessOf } from './unleash-api.ts';
import { RESERVED_NAME_MESSAGE, RESERVED_NAMES } from './validate.ts';

/** Refuses the members of Object.prototype, which break unleash-client (validate.ts). */
const notReserved = <T extends z.ZodString>(name: T) =>
  name.refine((n) => !RESERVED_NAMES.has(n), RESERVED_NAME_MESSAGE);

/**
 * Unleash's rule for a feature name: one `encodeURIComponent` leaves as it is (letters, digits and
 * `- _ . ! ~ * ' ( )`), 1 to 100 characters.
 */
export const UNLEASH_FLAG_NAME = /^[A-Za-z0-9\-_.!~*'()]{1,100}$/;
/** Steward's rule before it followed Unleash's: still accepted on PUT, so such flags stay editable. */
const EARLIER_FLAG_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.~:-]{0,99}$/;
const NAME_RULE = "letters, digits and - _ . ! ~ * ' ( ) (1 to 100), URL-friendly as Unleash requires";

/**
 * What every flag name written must also be: not `stream` (the event stream's path), not `.` or
 * `..` (path segments URLs resolve away: `/v1/flags/dev/..` is `/v1/flags/`), not a member of
 * Object.prototype (validate.ts).
 */
const usableName = (name: z.ZodString) =>
  name
    .refine((n) => n !== 'stream', "`stream` is reserved (the event stream's path)")
    .refine((n) => n !== '.' && n !== '..', '`.` and `..` cannot name a flag: URLs resolve them away')
    .refine((n) => !RESERVED_NAMES.has(n), RESERVED_NAME_MESSAGE);

/** A new flag's name: Unleash's rule (so `a:b`, which Unleash refuses, is refused too). */
const flagName = usableName(z.string().regex(UNLEASH_FLAG_NAME, NAME_RULE));
/** A replaced flag's name: Unleash's rule, or the earlier one (a flag named `team:x` before stays editable). */
const existingFlagName = usableName(
  z.string().refine((n) => UNLEASH_FLAG_NAME.test(n) || EARLIER_FLAG_NAME.test(n), NAME_RULE),
);
const segmentParams = z.object({ id: z.coerce.number().int().min(1).max(2_147_483_647) });
const ifMatchHeader = z.looseObject({
  'if-match': z
    .string()
    .max(1000)
    .optional()
    .describe(
      'The version you read (`"3"`; a list matches if any strong tag does; weak tags never match; `*`); ' +
        'a stale one is refused with 412.',
    ),
});

// The engine's schemas, with the names a write may not use (the engine still reads stored ones).
const variantBody = variantDefinitionSchema.extend({ name: notReserved(variantDefinitionSchema.shape.name) });
const strategyBody = strategySchema.extend({ variants: z.array(variantBody).optional() });
const dependencyBody = dependencySchema.extend({ feature: notReserved(dependencySchema.shape.feature) });

/** A flag as sent: Unleash's feature-toggle shape, checked with the engine's schemas. */
const flagBody = z.strictObject({
  name: flagName,
  type: z
    .enum(FLAG_TYPES)
    .optional()
    .describe("Unleash's feature type (informational; SDKs do not read it). Default `release`."),
  project: z
    .string()
    .min(1)
    .max(100)
    .optional()
    .describe("Unleash's project: accepted and ignored (Steward has no projects; not stored)."),
  description: z.string().max(10_000).nullish(),
  enabled: z.boolean(),
  strategies: z.array(strategyBody).max(1_000).default([]),
  variants: z.array(variantBody).max(1_000).nullish(),
  dependencies: z.array(dependencyBody).max(100).optional(),
  impressionData: z.boolean().optional(),
});

/**
 * What GET returns besides the flag itself. Accepted on PUT and ignored, so a declarative tool can
 * PUT what it read (a GET → PUT round trip); anything else unknown is still refused. Checked only
 * for shape: `version` is not a precondition (send `If-Match` for that), and `id`/`environment`
 * may name another copy (a flag read in one environment, written to another).
 */
const readOnlyFields = {
  id: z.string().max(100).optional(),
  environment: z.string().max(100).optional(),
  version: z.number().int().optional(),
  created_by: z.string().max(100).nullish(),
  updated_by: z.string().max(100).nullish(),
  created_at: z.string().max(100).optional(),
  updated_at: z.string().max(100).optional(),
};
const flagPutBody = flagBody.extend({ name: existingFlagName, ...readOnlyFields });

/** The flag of a POST or PUT body, without the read-only fields and `project` (ignored). */
function featureOf(body: z.infer<typeof flagPutBody>): Feature {
  const { id, environment, version, created_by, updated_by, created_at, updated_at, project, ...feature } =
    body;
  return feature as Feature;
}

const flagSchema = z.object({
  id: z.string(),
  environment: z.string(),
  name: z.string(),
  type: z.string(),
  description: z.string().nullable(),
  enabled: z.boolean(),
  strategies: z.array(strategySchema),
  variants: z.array(variantDefinitionSchema),
  dependencies: z.array(dependencySchema),
  impressionData: z.boolean(),
  version: z.number().int(),
  created_by: z.string().nullable(),
  updated_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

const segmentBody = z.strictObject({
  name: notReserved(z.string().min(1).max(200)),
  description: z.string().max(2000).nullish(),
  constraints: z.array(constraintSchema).max(100),
});

const segmentSchema = z.object({
  id: z.number().int(),
  name: z.string(),
  description: z.string().nullable(),
  constraints: z.array(constraintSchema),
  version: z.number().int(),
  created_by: z.string().nullable(),
  updated_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

const pendingSchema = z.object({ status: z.literal('pending_approval'), change_id: z.string() });

const contextValue = z.union([z.string().max(10_000), z.number(), z.boolean(), z.null()]);
/** Unleash's context: the standard fields, `properties`, and any other field (read as a property). */
const contextSchema = z.looseObject({
  userId: z.string().max(1000).optional(),
  sessionId: z.string().max(1000).optional(),
  remoteAddress: z.string().max(100).optional(),
  environment: z.string().max(100).optional(),
  appName: z.string().max(200).optional(),
  currentTime: z.string().max(100).optional(),
  properties: z.record(z.string().max(200), contextValue).optional(),
});

const evaluationSchema = z.object({
  name: z.string(),
  enabled: z.boolean(),
  variant: z.object({
    name: z.string(),
    enabled: z.boolean(),
    feature_enabled: z.boolean(),
    payload: payloadSchema.optional(),
  }),
});

export function flagView(row: FlagRow, environment: string) {
  const f = row.definition;
  return {
    id: row.id,
    environment,
    name: row.name,
    type: f.type ?? 'release',
    description: f.description ?? null,
    enabled: f.enabled,
    strategies: f.strategies,
    variants: f.variants ?? [],
    dependencies: f.dependencies ?? [],
    impressionData: f.impressionData ?? false,
    version: row.version,
    created_by: row.createdBy,
    updated_by: row.updatedBy,
    created_at: row.createdAt.toISOString(),
    updated_at: row.updatedAt.toISOString(),
  };
}

const segmentView = (s: SegmentRow) => ({
  id: s.id,
  name: s.name,
  description: s.description,
  constraints: s.constraints,
  version: s.version,
  created_by: s.createdBy,
  updated_by: s.updatedBy,
  created_at: s.createdAt.toISOString(),
  updated_at: s.updatedAt.toISOString(),
});

/**
 * What replacing or deleting one flag may answer: the rules (400; a delete while flags depend on
 * it), the environment or the flag unknown (404), a stale If-Match (412), and the flag read
 * deleted and another created under its name before the write (409 `flag_target_gone`).
 */
const ONE_FLAG_WRITE_ERRORS = [
  'invalid_flag',
  'environment_not_found',
  'flag_not_found',
  'flag_target_gone',
  'version_conflict',
  ...BOUND_KEY_ERRORS,
];

const accessOf = (request: FastifyRequest): Access => ({
  principal: callerOf(request),
  context: contextOf(request),
  toolId: toolIdOf(request),
});

/** `/v1/flags/{env}…` and `/v1/segments…`. */
export const flagRoutes: FastifyPluginAsyncZod<{
  flags: FlagService;
  hub: StreamHub;
  guard: StreamGuard;
  keyAccess: KeyAccessOf;
}> = async (app, { flags, hub, guard, keyAccess }) => {
  // A key bound to an environment is refused every other one on each `{env}` route (403).
  holdKeysToTheirEnvironment(app, keyAccess);
  app.get(
    '/v1/flags/:env',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', 'invalid_cursor', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'Flags of an environment, by name',
        params: envParams,
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(flagSchema) },
      },
    },
    async (request) => {
      const cursor = decodeCursor(request.query.cursor, flagCursor);
      const { rows, last } = await flags.list(callerOf(request), request.params.env, {
        limit: request.query.limit,
        after: cursor?.name,
      });
      return {
        data: rows.map((r) => flagView(r, request.params.env)),
        next_cursor: last === undefined ? null : encodeCursor({ name: last }),
      };
    },
  );

  app.post(
    '/v1/flags/:env',
    {
      config: {
        access: { permission: 'flags:create' },
        errors: ['invalid_flag', 'environment_not_found', 'flag_exists', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'Create a flag (Unleash feature-toggle shape); 202 when held for approval',
        params: envParams,
        body: flagBody,
        response: { 201: flagSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.create(accessOf(request), request.params.env, featureOf(request.body));
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', `"${result.version}"`);
      return reply.code(201).send(flagView(result, request.params.env));
    },
  );

  app.get(
    '/v1/flags/:env/stream',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'Server-sent events: `unleash-connected` (hydration), then `unleash-updated` (changes)',
        description:
          'Each event\'s data is `{"events": [...]}` in the shape of Unleash\'s delta API: `hydration` ' +
          '(every flag and segment), then `feature-updated`, `feature-removed`, `segment-updated`, ' +
          '`segment-removed`. A `: heartbeat` comment every 15 s.',
        params: envParams,
        produces: ['text/event-stream'],
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const { orgId } = principal;
      // Resolve the environment before hijacking, so an unknown one is a normal 404.
      await flags.snapshot(orgId, request.params.env);
      const expiresAt = principal.keyId === undefined ? null : (await keyAccess(principal)).expiresAt;
      let unwatch: (() => void) | undefined;
      const stream = hub.start(reply, () => {
        guard.release(stream);
        unwatch?.();
        unwatch = undefined;
      });
      // Ended on the credential's revocation, expiry or change, and hourly: the client
      // reconnects and is authenticated again.
      guard.hold(stream, principal, expiresAt);
      try {
        const stop = await flags.watch(
          orgId,
          request.params.env,
          (s) =>
            stream.send(
              'unleash-connected',
              {
                events: [
                  { type: 'hydration', eventId: s.revision, features: s.features, segments: s.segments },
                ],
              },
              s.revision,
            ),
          (events, s) => stream.send('unleash-updated', { events }, s.revision),
        );
        if (stream.closed) stop();
        else unwatch = stop;
      } catch (error) {
        // Hijacked: nothing can be sent but the end; the client reconnects.
        request.log.error({ err: error }, 'flag stream');
        stream.close();
      }
    },
  );

  app.post(
    '/v1/flags/:env/evaluate',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: "Every flag's value and variant for a context (from memory when warm)",
        params: envParams,
        body: z
          .strictObject({
            context: contextSchema.optional(),
            flags: z.array(z.string().max(100)).max(1000).optional().describe('Only these flags.'),
          })
          .nullish(),
        response: {
          200: z.object({
            data: z.array(evaluationSchema),
            missing: z
              .array(z.string())
              .describe('Names in `flags` the environment does not have (left out of `data`).'),
          }),
        },
      },
    },
    async (request) => {
      const context = (request.body?.context ?? {}) as FlagContext;
      return flags.evaluate(callerOf(request).orgId, request.params.env, context, request.body?.flags);
    },
  );

  app.get(
    '/v1/flags/:env/:name',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', 'flag_not_found', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'One flag, with its version as ETag',
        params: flagParams,
        response: { 200: flagSchema },
      },
    },
    async (request, reply) => {
      const row = await flags.get(callerOf(request), request.params.env, request.params.name);
      reply.header('etag', `"${row.version}"`);
      return flagView(row, request.params.env);
    },
  );

  app.put(
    '/v1/flags/:env/:name',
    {
      config: {
        access: { permission: 'flags:update' },
        errors: ONE_FLAG_WRITE_ERRORS,
      },
      schema: {
        tags: ['flags'],
        summary: 'Replace a flag (optional If-Match); 202 when held for approval',
        params: flagParams,
        headers: ifMatchHeader,
        body: flagPutBody,
        response: { 200: flagSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.replace(
        accessOf(request),
        request.params.env,
        request.params.name,
        featureOf(request.body),
        ifMatchOf(request.headers['if-match']),
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', `"${result.version}"`);
      return flagView(result, request.params.env);
    },
  );

  app.delete(
    '/v1/flags/:env/:name',
    {
      config: {
        access: { permission: 'flags:delete' },
        errors: ONE_FLAG_WRITE_ERRORS,
      },
      schema: {
        tags: ['flags'],
        summary: 'Delete a flag (refused while flags depend on it); 202 when held for approval',
        params: flagParams,
        headers: ifMatchHeader,
        response: { 204: z.null(), 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.remove(
        accessOf(request),
        request.params.env,
        request.params.name,
        ifMatchOf(request.headers['if-match']),
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      return reply.code(204).send(null);
    },
  );

  // Segments belong to the org, as in Unleash: every environment's strategies may use them.
  app.get(
    '/v1/segments',
    {
      config: { access: { permission: 'flags:read' }, errors: [] },
      schema: {
        tags: ['flags'],
        summary: 'Segments of the org (reusable constraint lists)',
        response: { 200: z.object({ data: z.array(segmentSchema) }) },
      },
    },
    async (request) => ({ data: (await flags.listSegments(callerOf(request))).map(segmentView) }),
  );

  app.post(
    '/v1/segments',
    {
      config: { access: { permission: 'flags:create' }, errors: ['invalid_flag', 'segment_exists'] },
      schema: {
        tags: ['flags'],
        summary: 'Create a segment; 202 when four-eyes holds it (segments serve every environment)',
        body: segmentBody,
        response: { 201: segmentSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.createSegment(accessOf(request), request.body);
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', `"${result.version}"`);
      return reply.code(201).send(segmentView(result));
    },
  );

  app.get(
    '/v1/segments/:id',
    {
      config: { access: { permission: 'flags:read' }, errors: ['segment_not_found'] },
      schema: {
        tags: ['flags'],
        summary: 'One segment, with its version as ETag',
        params: segmentParams,
        response: { 200: segmentSchema },
      },
    },
    async (request, reply) => {
      const row = await flags.getSegment(callerOf(request), request.params.id);
      reply.header('etag', `"${row.version}"`);
      return segmentView(row);
    },
  );

  app.put(
    '/v1/segments/:id',
    {
      config: {
        access: { permission: 'flags:update' },
        errors: ['invalid_flag', 'segment_not_found', 'segment_exists', 'version_conflict'],
      },
      schema: {
        tags: ['flags'],
        summary: 'Replace a segment (every flag using it changes at once); optional If-Match; 202 when held',
        params: segmentParams,
        headers: ifMatchHeader,
        body: segmentBody,
        response: { 200: segmentSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.updateSegment(
        accessOf(request),
        request.params.id,
        request.body,
        ifMatchOf(request.headers['if-match']),
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', `"${result.version}"`);
      return segmentView(result);
    },
  );

  app.delete(
    '/v1/segments/:id',
    {
      config: {
        access: { permission: 'flags:delete' },
        errors: ['segment_not_found', 'segment_in_use', 'version_conflict'],
      },
      schema: {
        tags: ['flags'],
        summary: 'Delete a segment no flag uses; optional If-Match; 202 when held',
        params: segmentParams,
        headers: ifMatchHeader,
        response: { 204: z.null(), 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await flags.removeSegment(
        accessOf(request),
        request.params.id,
        ifMatchOf(request.headers['if-match']),
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      return reply.code(204).send(null);
    },
  );
};
