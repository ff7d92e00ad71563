import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../../http/auth.ts';
import { contextOf } from '../../http/context.ts';
import { isoDateTime } from '../../http/datetime.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../../http/pagination.ts';
import { toolIdOf, versionNumber } from '../common.ts';
import {
  type Access,
  isDueForRotation,
  type Pending,
  SECRET_TYPES,
  type Secret,
  type SecretService,
  type SecretVersionInfo,
} from './service.ts';

const MAX_VALUE_BYTES = 65_536;

const secretName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/, 'letters, digits, _ . -, starting with a letter or _ (≤ 128)');
const value = z
  .string()
  .min(1)
  .refine((v) => Buffer.byteLength(v, 'utf8') <= MAX_VALUE_BYTES, {
    message: `at most ${MAX_VALUE_BYTES} bytes`,
  })
  .describe('The secret value (UTF-8; base64 for binary). Never returned except by reveal.');
const tags = z
  .array(z.string().min(1).max(64))
  .max(50)
  .describe('Stored as a set: exact duplicates are dropped (case matters).');
const metadata = z
  .record(z.string().max(100), z.unknown())
  .refine((m) => JSON.stringify(m).length <= 16_384, { message: 'at most 16 KiB of JSON' });
const rotationDays = z.number().int().min(1).max(3650);
const isoDate = isoDateTime;
const idParams = z.object({ id: z.string().min(1).max(100) });
const ownerId = z
  .string()
  .min(1)
  .max(100)
  .describe(
    'A `usr_…` id of a member of the org or an `agt_…` id, as for API keys (400 otherwise; 404 ' +
      '`owner_not_found` for a user not of the org). Default: the caller. Needs secrets:admin.',
  );

const secretSchema = z.object({
  id: z.string(),
  name: z.string(),
  display_name: z.string().nullable(),
  description: z.string().nullable(),
  environment: z.string(),
  secret_type: z.enum(SECRET_TYPES),
  tags: z.array(z.string()),
  metadata: z.record(z.string(), z.unknown()),
  owner_id: z.string().nullable(),
  required_permission: z.string().nullable(),
  active: z.boolean(),
  current_version: z.number().int(),
  rotation_enabled: z.boolean(),
  rotation_days: z.number().int().nullable(),
  last_rotated_at: z.string().nullable(),
  next_rotation_at: z.string().nullable(),
  due_for_rotation: z
    .boolean()
    .describe(
      'Active, not expired, rotation enabled and past `next_rotation_at`: what `?due_for_rotation=` ' +
        'filters on.',
    ),
  expires_at: z.string().nullable(),
  last_accessed_at: z.string().nullable(),
  created_by: z.string().nullable(),
  updated_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

const withheldSchema = z
  .object({
    id: z.string(),
    current_version: z.number().int(),
    updated_at: z.string(),
    masked: z.literal(true),
  })
  .describe(
    'A write answered to a caller without `secrets:read` on the secret: only the id, the version ' +
      'and when it changed, as settings mask a value the writer may not read.',
  );

const WRITE_ANSWER =
  "The answer is the secret's view when the caller may read it (`secrets:read` on it), else only " +
  '`id`, `current_version`, `updated_at` and `masked: true`.';

/** A write's answer: the whole view, or the withheld one to a caller who may not read the secret. */
const writtenSchema = z.union([secretSchema, withheldSchema]);

const pendingSchema = z.object({
  status: z.literal('pending_approval'),
  change_id: z.string().describe('The pending change; another user with approvals:approve decides it.'),
});

const versionSchema = z.object({
  version: z.number().int(),
  active: z.boolean().describe('True for the current version.'),
  reason: z.string().nullable(),
  restored_from: z.number().int().nullable(),
  key_id: z.string().describe('Master key id wrapping this version’s data key.'),
  created_by: z.string().nullable(),
  created_at: z.string(),
});

const iso = (d: Date | null) => (d === null ? null : d.toISOString());

function secretView(s: Secret, now: Date) {
  return {
    id: s.id,
    name: s.name,
    display_name: s.displayName,
    description: s.description,
    environment: s.environment,
    secret_type: s.secretType as (typeof SECRET_TYPES)[number],
    tags: s.tags,
    metadata: s.metadata,
    owner_id: s.ownerId,
    required_permission: s.requiredPermission,
    active: s.active,
    current_version: s.currentVersion,
    rotation_enabled: s.rotationEnabled,
    rotation_days: s.rotationDays,
    last_rotated_at: iso(s.lastRotatedAt),
    next_rotation_at: iso(s.nextRotationAt),
    due_for_rotation: isDueForRotation(s, now),
    expires_at: iso(s.expiresAt),
    last_accessed_at: iso(s.lastAccessedAt),
    created_by: s.createdBy,
    updated_by: s.updatedBy,
    created_at: s.createdAt.toISOString(),
    updated_at: s.updatedAt.toISOString(),
  };
}

const withheldView = (s: Secret) => ({
  id: s.id,
  current_version: s.currentVersion,
  updated_at: s.updatedAt.toISOString(),
  masked: true as const,
});

const versionView = (v: SecretVersionInfo) => ({
  version: v.version,
  active: v.active,
  reason: v.reason,
  restored_from: v.restoredFrom,
  key_id: v.keyId,
  created_by: v.createdBy,
  created_at: v.createdAt.toISOString(),
});

const isPending = (r: unknown): r is Pending => typeof r === 'object' && r !== null && 'pending' in r;
const pendingReply = (reply: FastifyReply, p: Pending) =>
  reply.code(202).send({ status: 'pending_approval' as const, change_id: p.changeId });

const accessOf = (request: FastifyRequest): Access => ({
  principal: callerOf(request),
  context: contextOf(request),
  toolId: toolIdOf(request),
});

const toolHeader = z.looseObject({
  'x-steward-tool-id': z
    .string()
    .max(200)
    .optional()
    .describe('The tool an agent asks for (recorded in the access log when the caller is an agent).'),
});

/**
 * `/v1/secrets`. Per-secret routes authenticate at the route and check the permission on the
 * secret itself in the service, so grants on one secret id work.
 */
export const secretRoutes: FastifyPluginAsyncZod<{ secrets: SecretService; clock: () => Date }> = async (
  app,
  { secrets, clock },
) => {
  /**
   * What a write answers: the secret's view when the caller may read it (`secrets:read` on it),
   * else only what the write itself tells (`withheldView`). A write needs `secrets:update`, not
   * `secrets:read`: a deny of reading one secret must not be undone by writing to it.
   */
  const written = async (request: FastifyRequest, s: Secret) =>
    (await secrets.mayRead(callerOf(request), s.id)) ? secretView(s, clock()) : withheldView(s);

  app.post(
    '/v1/secrets',
    {
      // A refused creation is audited (secret.created, success false), the route's own
      // secrets:create refusal included; a 400 is not.
      onError: async (request, _reply, error) => {
        if (request.principal) await secrets.refusedCreate(accessOf(request), request.body, error);
      },
      config: {
        access: { permission: 'secrets:create' },
        errors: [
          'environment_not_found',
          'invalid_required_permission',
          'owner_not_found',
          'secret_name_taken',
        ],
      },
      schema: {
        tags: ['secrets'],
        summary: 'Create a secret (version 1)',
        headers: toolHeader,
        body: z.strictObject({
          name: secretName,
          environment: z.string().min(1).max(40),
          value,
          secret_type: z.enum(SECRET_TYPES).optional(),
          display_name: z.string().max(200).optional(),
          description: z.string().max(2000).optional(),
          tags: tags.optional(),
          metadata: metadata.optional(),
          owner_id: ownerId.optional(),
          required_permission: z
            .string()
            .max(100)
            .optional()
            .describe(
              'A permission also needed to reveal it: held as `POST /v1/authz/check` decides it on its ' +
                'own type, or granted on this secret; a deny grant of it in either place refuses. ' +
                'Needs secrets:admin.',
            ),
          rotation_enabled: z
            .boolean()
            .optional()
            .describe('Default: true when rotation_days is given. true without rotation_days is a 400.'),
          rotation_days: rotationDays.optional(),
          expires_at: isoDate.optional(),
        }),
        response: { 201: secretSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await secrets.create(accessOf(request), request.body);
      if (isPending(result)) return pendingReply(reply, result);
      return reply.code(201).send(secretView(result, clock()));
    },
  );

  app.get(
    '/v1/secrets',
    {
      config: { access: { permission: 'secrets:read' }, errors: ['environment_not_found'] },
      schema: {
        tags: ['secrets'],
        summary: 'List secrets (metadata only, never values)',
        description:
          'Only the secrets the caller may read (`secrets:read` on each; a deny grant on one id leaves it ' +
          'out). The cursor follows the last secret examined: a page may hold fewer than `limit` secrets, ' +
          'even none, and still have a `next_cursor`.',
        querystring: z.strictObject({
          ...pageQuery,
          environment: z.string().min(1).max(40).optional(),
          secret_type: z.enum(SECRET_TYPES).optional(),
          tag: z.string().min(1).max(64).optional(),
          due_for_rotation: z
            .enum(['true', 'false'])
            .optional()
            .describe(
              '`true`: only secrets due for rotation (active, not expired, rotation enabled, past ' +
                '`next_rotation_at`); ' +
                '`false`: only those not due.',
            ),
        }),
        response: { 200: listResponse(secretSchema) },
      },
    },
    async (request) => {
      const q = request.query;
      const cursor = decodeCursor(q.cursor, z.object({ id: z.string().max(100) }));
      const page = await secrets.list(
        callerOf(request),
        {
          environment: q.environment,
          secret_type: q.secret_type,
          tag: q.tag,
          due_for_rotation: q.due_for_rotation === undefined ? undefined : q.due_for_rotation === 'true',
        },
        { limit: q.limit, after: cursor?.id },
      );
      const now = clock();
      return {
        data: page.rows.map((s) => secretView(s, now)),
        next_cursor: page.next === null ? null : encodeCursor({ id: page.next }),
      };
    },
  );

  app.get(
    '/v1/secrets/:id',
    {
      config: { access: 'authenticated', errors: ['permission_denied', 'secret_not_found'] },
      schema: {
        tags: ['secrets'],
        summary: "A secret's metadata (needs secrets:read on it)",
        params: idParams,
        headers: toolHeader,
        response: { 200: secretSchema },
      },
    },
    async (request) => secretView(await secrets.get(accessOf(request), request.params.id), clock()),
  );

  app.patch(
    '/v1/secrets/:id',
    {
      config: {
        access: 'authenticated',
        errors: ['permission_denied', 'secret_not_found', 'invalid_required_permission', 'owner_not_found'],
      },
      schema: {
        tags: ['secrets'],
        summary: "Change a secret's metadata and rotation policy (needs secrets:update on it)",
        description:
          'A PATCH whose fields all equal the stored ones (`{}` included) answers 200 and writes ' +
          'nothing: no event, no access-log row, `updated_at` unchanged, nothing held for approval. ' +
          WRITE_ANSWER,
        params: idParams,
        headers: toolHeader,
        body: z.strictObject({
          display_name: z.string().max(200).nullable().optional(),
          description: z.string().max(2000).nullable().optional(),
          secret_type: z.enum(SECRET_TYPES).optional(),
          tags: tags.optional(),
          metadata: metadata.optional(),
          owner_id: ownerId.nullable().optional(),
          required_permission: z.string().max(100).nullable().optional(),
          active: z.boolean().optional(),
          rotation_enabled: z.boolean().optional(),
          rotation_days: rotationDays.nullable().optional(),
          expires_at: isoDate.nullable().optional(),
        }),
        response: { 200: writtenSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await secrets.update(accessOf(request), request.params.id, request.body);
      return isPending(result) ? pendingReply(reply, result) : written(request, result);
    },
  );

  app.post(
    '/v1/secrets/:id/reveal',
    {
      config: {
        access: 'authenticated',
        errors: [
          'permission_denied',
          'secret_not_found',
          'secret_version_not_found',
          'secret_inactive',
          'secret_expired',
          'secret_undecryptable',
        ],
      },
      schema: {
        tags: ['secrets'],
        summary: 'Reveal the value (needs secrets:reveal on this secret; audited)',
        description:
          'Needs `secrets:reveal` on the secret (role, type grant or a grant on this id) and, when the ' +
          'secret names one, its `required_permission` (held as `POST /v1/authz/check` decides it on ' +
          'its own type, or granted on this secret; a deny grant of it refuses). Every attempt is in ' +
          'the access log and the audit trail.',
        params: idParams,
        headers: toolHeader,
        body: z
          .strictObject({
            version: versionNumber().optional().describe('Default: the current version.'),
          })
          .nullish(),
        response: {
          200: z.object({
            id: z.string(),
            name: z.string(),
            environment: z.string(),
            version: z.number().int(),
            value: z.string(),
          }),
        },
      },
    },
    async (request) => {
      const { secret, version, value } = await secrets.reveal(
        accessOf(request),
        request.params.id,
        request.body?.version,
      );
      return { id: secret.id, name: secret.name, environment: secret.environment, version, value };
    },
  );

  app.put(
    '/v1/secrets/:id/value',
    {
      config: { access: 'authenticated', errors: ['permission_denied', 'secret_not_found'] },
      schema: {
        tags: ['secrets'],
        summary: 'Write a new version (a rotation; needs secrets:update on it)',
        description: WRITE_ANSWER,
        params: idParams,
        headers: toolHeader,
        body: z.strictObject({ value, rotation_reason: z.string().max(500).optional() }),
        response: { 200: writtenSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await secrets.putValue(accessOf(request), request.params.id, request.body);
      if (isPending(result)) return pendingReply(reply, result);
      return written(request, result);
    },
  );

  app.get(
    '/v1/secrets/:id/versions',
    {
      config: { access: 'authenticated', errors: ['permission_denied', 'secret_not_found'] },
      schema: {
        tags: ['secrets'],
        summary: 'Versions, newest first (no values)',
        params: idParams,
        headers: toolHeader,
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(versionSchema) },
      },
    },
    async (request) => {
      const cursor = decodeCursor(request.query.cursor, z.object({ v: versionNumber() }));
      const rows = await secrets.versions(accessOf(request), request.params.id, {
        limit: request.query.limit,
        before: cursor?.v,
      });
      const last = rows.at(-1);
      return {
        data: rows.map(versionView),
        next_cursor: rows.length === request.query.limit && last ? encodeCursor({ v: last.version }) : null,
      };
    },
  );

  app.post(
    '/v1/secrets/:id/rollback',
    {
      config: {
        access: 'authenticated',
        errors: ['permission_denied', 'secret_not_found', 'secret_version_not_found', 'secret_undecryptable'],
      },
      schema: {
        tags: ['secrets'],
        summary: "Restore a version's value as a new version (audited)",
        description: WRITE_ANSWER,
        params: idParams,
        headers: toolHeader,
        body: z.strictObject({ version: versionNumber(), reason: z.string().max(500).optional() }),
        response: { 200: writtenSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await secrets.rollback(accessOf(request), request.params.id, request.body);
      if (isPending(result)) return pendingReply(reply, result);
      return written(request, result);
    },
  );

  app.delete(
    '/v1/secrets/:id',
    {
      config: { access: 'authenticated', errors: ['permission_denied', 'secret_not_found'] },
      schema: {
        tags: ['secrets'],
        summary: 'Delete a secret (needs secrets:delete on it; versions are kept for the record)',
        params: idParams,
        headers: toolHeader,
        response: { 204: z.null(), 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const pending = await secrets.remove(accessOf(request), request.params.id);
      if (pending) return pendingReply(reply, pending);
      return reply.code(204).send(null);
    },
  );
};
