import type { FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../../http/auth.ts';
import { contextOf } from '../../http/context.ts';
import { httpErrors } from '../../http/errors.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../../http/pagination.ts';
import { toolIdOf, versionNumber } from '../common.ts';
import type { Access } from '../secrets/service.ts';
import { rulesSchema, VALUE_TYPES } from './rules.ts';
import { etagOf, type HistoryEntry, type Setting, type SettingService } from './service.ts';

const settingKey = z
  .string()
  .regex(
    /^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$/,
    'letters, digits, _ . : -, starting with a letter or _ (≤ 200)',
  );
const envParam = z.string().min(1).max(40);
const keyParams = z.object({ env: envParam, key: settingKey });
const undecryptableSchema = z.enum(['unknown_master_key', 'integrity']);
const ifMatchHeader = z.looseObject({
  'if-match': z
    .string()
    .max(100)
    .optional()
    .describe('The version (or ETag) you read. Required to update; a stale one is refused with 412.'),
});

const settingSchema = z.object({
  id: z.string(),
  environment: z.string(),
  key: z.string(),
  category: z.string().nullable(),
  value_type: z.enum(VALUE_TYPES),
  value: z
    .unknown()
    .describe(
      "Null and `masked: true` for secret settings, in a write's answer to a caller who may not " +
        'read the setting, and in a list for a value that does not open (see `undecryptable`).',
    ),
  masked: z.boolean(),
  undecryptable: undecryptableSchema
    .optional()
    .describe(
      'Lists only: the stored value did not open (its master key is not held here, or it failed its ' +
        'integrity check); the row is still listed, masked. GET of the setting answers 409.',
    ),
  rules: z.record(z.string(), z.unknown()),
  description: z.string().nullable(),
  is_secret: z.boolean(),
  encrypted: z.boolean(),
  version: z.number().int(),
  created_by: z.string().nullable(),
  updated_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

const historySchema = z.object({
  version: z.number().int(),
  action: z.enum(['created', 'updated', 'rolled_back', 'deleted']),
  value_type: z.enum(VALUE_TYPES),
  old_value: z.unknown(),
  new_value: z.unknown(),
  masked: z
    .boolean()
    .describe('True when the values are hidden: a secret setting, or a value that does not open.'),
  undecryptable: undecryptableSchema
    .optional()
    .describe(
      "This version's value, or the one before it (`old_value`), did not open (its master key is not " +
        'held here, or it failed its integrity check): the entry is listed with both values null and ' +
        "`masked: true`. The new value's reason first.",
    ),
  restored_from: z.number().int().nullable(),
  changed_by: z.string().nullable(),
  changed_by_type: z.string().nullable(),
  ip: z.string().nullable(),
  user_agent: z.string().nullable(),
  request_id: z.string().nullable(),
  created_at: z.string(),
});

const pendingSchema = z.object({ status: z.literal('pending_approval'), change_id: z.string() });

function settingView(s: Setting) {
  const r = s.row;
  return {
    id: r.id,
    environment: s.environment,
    key: r.key,
    category: r.category,
    value_type: r.valueType as (typeof VALUE_TYPES)[number],
    value: s.value,
    masked: s.masked,
    ...(s.undecryptable ? { undecryptable: s.undecryptable } : {}),
    rules: r.rules as Record<string, unknown>,
    description: r.description,
    is_secret: r.isSecret,
    encrypted: r.encrypted,
    version: r.version,
    created_by: r.createdBy,
    updated_by: r.updatedBy,
    created_at: r.createdAt.toISOString(),
    updated_at: r.updatedAt.toISOString(),
  };
}

const historyView = (h: HistoryEntry) => ({
  version: h.row.version,
  action: h.row.action as 'created' | 'updated' | 'rolled_back' | 'deleted',
  value_type: h.row.valueType as (typeof VALUE_TYPES)[number],
  old_value: h.oldValue,
  new_value: h.newValue,
  masked: h.masked,
  ...(h.undecryptable ? { undecryptable: h.undecryptable } : {}),
  restored_from: h.row.restoredFrom,
  changed_by: h.row.changedBy,
  changed_by_type: h.row.changedByType,
  ip: h.row.ip,
  user_agent: h.row.userAgent,
  request_id: h.row.requestId,
  created_at: h.row.createdAt.toISOString(),
});

const accessOf = (request: FastifyRequest): Access => ({
  principal: callerOf(request),
  context: contextOf(request),
  toolId: toolIdOf(request),
});

/** `/v1/settings/{env}`: typed settings with ETag/If-Match, history and rollback. */
export const settingRoutes: FastifyPluginAsyncZod<{ settings: SettingService }> = async (
  app,
  { settings },
) => {
  app.get(
    '/v1/settings/:env',
    {
      // A value that does not open is flagged on its row, not refused.
      config: { access: { permission: 'settings:read' }, errors: ['environment_not_found'] },
      schema: {
        tags: ['settings'],
        summary: 'All settings of an environment, by key (secret values masked)',
        description:
          'Only the settings the caller may read (`settings:read` on each; a deny grant on one id leaves ' +
          'it out). The cursor follows the last key examined: a page may hold fewer than `limit` ' +
          'settings, even none, and still have a `next_cursor`.',
        params: z.object({ env: envParam }),
        querystring: z.strictObject({
          ...pageQuery,
          category: z.string().min(1).max(100).optional(),
        }),
        response: { 200: listResponse(settingSchema) },
      },
    },
    async (request) => {
      const q = request.query;
      const cursor = decodeCursor(q.cursor, z.object({ key: z.string().max(200) }));
      const page = await settings.list(callerOf(request), request.params.env, {
        limit: q.limit,
        after: cursor?.key,
        category: q.category,
      });
      return {
        data: page.rows.map(settingView),
        next_cursor: page.next === null ? null : encodeCursor({ key: page.next }),
      };
    },
  );

  app.get(
    '/v1/settings/:env/:key',
    {
      config: {
        access: { permission: 'settings:read' },
        errors: ['environment_not_found', 'setting_not_found', 'setting_undecryptable'],
      },
      schema: {
        tags: ['settings'],
        summary: 'One setting, with its version as ETag',
        params: keyParams,
        response: { 200: settingSchema },
      },
    },
    async (request, reply) => {
      const s = await settings.get(callerOf(request), request.params.env, request.params.key);
      reply.header('etag', etagOf(s.row.version));
      return settingView(s);
    },
  );

  app.put(
    '/v1/settings/:env/:key',
    {
      // No 409: a PUT opens only the value it has just sealed (an old encrypted value is masked in
      // the audit event, never opened). A held change answers 202.
      config: {
        access: 'authenticated',
        errors: ['permission_denied', 'environment_not_found', 'precondition_required', 'version_conflict'],
      },
      schema: {
        tags: ['settings'],
        summary: 'Create (201) or update (200, needs If-Match) a setting',
        description:
          'Creating needs `settings:create` and `value_type`; updating needs `settings:update` and ' +
          '`If-Match: "<version>"` (missing → 428 `precondition_required`, stale → 412 `version_conflict`; ' +
          '`*` applies on the latest version, whatever it is when the write runs). Without If-Match the ' +
          'key is created if absent (or deleted); if it exists — also when another request created it ' +
          'first, while this one ran — 428. If-Match on a key that does not exist is 412. ' +
          'Omitted fields keep their value on update. The answer holds the value only if the caller may ' +
          'read the setting (`settings:read` on it), else `value: null, masked: true`.',
        params: keyParams,
        headers: ifMatchHeader,
        body: z.strictObject({
          value: z.unknown(),
          value_type: z.enum(VALUE_TYPES).optional(),
          category: z.string().min(1).max(100).nullable().optional(),
          rules: rulesSchema.optional(),
          is_secret: z
            .boolean()
            .optional()
            .describe('Masked in every response, history entry and audit event.'),
          encrypted: z.boolean().optional().describe('Store the value sealed (default: is_secret).'),
          description: z.string().max(2000).nullable().optional(),
        }),
        response: { 200: settingSchema, 201: settingSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      if (!('value' in (request.body as object))) {
        throw httpErrors.validation_failed('body.value: Required', {
          errors: [{ path: 'body.value', message: 'Required' }],
        });
      }
      const result = await settings.put(
        accessOf(request),
        request.params.env,
        request.params.key,
        request.body,
        request.headers['if-match'],
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', etagOf(result.setting.row.version));
      return reply.code(result.created ? 201 : 200).send(settingView(result.setting));
    },
  );

  app.delete(
    '/v1/settings/:env/:key',
    {
      config: {
        access: { permission: 'settings:delete' },
        errors: ['environment_not_found', 'setting_not_found', 'precondition_required', 'version_conflict'],
      },
      schema: {
        tags: ['settings'],
        summary: 'Delete a setting (needs If-Match); its history stays readable',
        description:
          'Needs `settings:delete` on the setting and `If-Match: "<version>"` (missing → 428, stale → 412). ' +
          'The history gets a `deleted` entry; putting the key again creates it with the next version.',
        params: keyParams,
        headers: ifMatchHeader,
        response: { 204: z.null(), 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await settings.remove(
        accessOf(request),
        request.params.env,
        request.params.key,
        request.headers['if-match'],
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      return reply.code(204).send(null);
    },
  );

  app.get(
    '/v1/settings/:env/:key/history',
    {
      // A value that does not open is flagged on its entry, not refused.
      config: {
        access: { permission: 'settings:read' },
        errors: ['environment_not_found', 'setting_not_found'],
      },
      schema: {
        tags: ['settings'],
        summary: 'Immutable history, newest first (values masked for secret settings)',
        description:
          'An entry whose value (or the previous one) does not open is listed masked, with ' +
          '`undecryptable` saying why; it does not fail the page.',
        params: keyParams,
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(historySchema) },
      },
    },
    async (request) => {
      const cursor = decodeCursor(request.query.cursor, z.object({ v: versionNumber() }));
      const rows = await settings.history(callerOf(request), request.params.env, request.params.key, {
        limit: request.query.limit,
        before: cursor?.v,
      });
      const last = rows.at(-1);
      return {
        data: rows.map(historyView),
        next_cursor:
          rows.length === request.query.limit && last && last.row.version > 1
            ? encodeCursor({ v: last.row.version })
            : null,
      };
    },
  );

  app.post(
    '/v1/settings/:env/:key/rollback',
    {
      // No 428: a rollback without If-Match means `*`. The restored value must open (409).
      config: {
        access: 'authenticated',
        errors: [
          'permission_denied',
          'environment_not_found',
          'setting_not_found',
          'setting_version_not_found',
          'version_conflict',
          'setting_undecryptable',
        ],
      },
      schema: {
        tags: ['settings'],
        summary: "Restore a version's value, type and rules as a new version (audited)",
        description:
          'Needs `settings:update` on the setting. Without `If-Match` (or with `*`) the version is ' +
          'restored onto whatever version is latest when the rollback runs; with versions, a stale ' +
          'one is 412. The answer holds the value only if the caller may read the setting.',
        params: keyParams,
        headers: ifMatchHeader,
        body: z.strictObject({ version: versionNumber() }),
        response: { 200: settingSchema, 202: pendingSchema },
      },
    },
    async (request, reply) => {
      const result = await settings.rollback(
        accessOf(request),
        request.params.env,
        request.params.key,
        request.body,
        request.headers['if-match'],
      );
      if ('pending' in result) {
        return reply.code(202).send({ status: 'pending_approval' as const, change_id: result.changeId });
      }
      reply.header('etag', etagOf(result.row.version));
      return settingView(result);
    },
  );
};
