import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
import { isoDateTime } from '../http/datetime.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import type { ApiKeyRow, KeySettings } from './queries.ts';
import type { KeysService } from './service.ts';
import type { KeyVerifier, Verification, VerifyCode } from './verifier.ts';

const TAGS = ['keys'];

const ratelimitInput = z.strictObject({
  limit: z.number().int().min(1).max(1_000_000_000),
  window_seconds: z.number().int().min(1).max(86_400),
});
const metadataInput = z
  .record(z.string().max(100), z.unknown())
  .refine((m) => JSON.stringify(m).length <= 8192, 'at most 8 KiB of JSON');
const scopesInput = z.array(z.string().min(1).max(100)).max(100);
const ipsInput = z.array(z.string().min(1).max(64)).max(100);
const dateInput = isoDateTime.transform((s) => new Date(s));

const createBody = z.strictObject({
  name: z.string().trim().min(1).max(200),
  owner: z.string().max(100).optional().describe('A `usr_…` or `agt_…` id of the org; default the caller.'),
  scopes: scopesInput.describe(
    'Permissions or patterns (`secrets:read`, `secrets:*`); ∩ the owner’s rights.',
  ),
  tier: z.string().max(40).optional().describe('Default `free`.'),
  environment: z.enum(['live', 'test']).optional(),
  ratelimit: ratelimitInput.nullable().optional().describe('Per-key limit; default the tier’s.'),
  allowed_ips: ipsInput.optional().describe('IPv4/IPv6 addresses or CIDRs; empty: any address.'),
  expires_at: dateInput.nullable().optional(),
  period_days: z.number().int().min(1).max(366).optional().describe('Billing period length (default 30).'),
  metadata: metadataInput.optional(),
});

const updateBody = z.strictObject({
  name: z.string().trim().min(1).max(200).optional(),
  scopes: scopesInput.optional(),
  tier: z.string().max(40).optional(),
  ratelimit: ratelimitInput.nullable().optional(),
  allowed_ips: ipsInput.optional(),
  expires_at: dateInput.nullable().optional(),
  period_days: z.number().int().min(1).max(366).optional(),
  metadata: metadataInput.optional(),
  active: z
    .boolean()
    .optional()
    .describe('false disables the key; true re-enables a disabled or suspended one.'),
});

const keySchema = z.object({
  id: z.string(),
  name: z.string(),
  prefix: z.string().describe('The first characters of the key, for recognition; never the key.'),
  environment: z.string(),
  owner: z.string(),
  scopes: z.array(z.string()),
  tier: z.string(),
  ratelimit: z.object({ limit: z.number(), window_seconds: z.number() }).nullable(),
  usage: z.object({
    request_count: z.number().describe('In the current period, as last flushed (at most a second behind).'),
    period_start: z.string(),
    period_days: z.number(),
  }),
  allowed_ips: z.array(z.string()),
  expires_at: z.string().nullable(),
  revoked_at: z.string().nullable(),
  revoked_reason: z.string().nullable(),
  active: z.boolean(),
  disabled_reason: z.string().nullable(),
  last_used_at: z.string().nullable(),
  rolled_to: z.string().nullable(),
  created_by: z.string(),
  created_at: z.string(),
  updated_at: z.string(),
  metadata: z.record(z.string(), z.unknown()),
});

const iso = (d: Date | null) => (d === null ? null : d.toISOString());

export function keyView(row: ApiKeyRow) {
  return {
    id: row.id,
    name: row.name,
    prefix: row.prefix,
    environment: row.environment,
    owner: row.ownerId,
    scopes: row.scopes,
    tier: row.tier,
    ratelimit:
      row.ratelimitLimit === null || row.ratelimitWindowSeconds === null
        ? null
        : { limit: row.ratelimitLimit, window_seconds: row.ratelimitWindowSeconds },
    usage: {
      request_count: row.requestCount,
      period_start: row.periodStart.toISOString(),
      period_days: row.periodDays,
    },
    allowed_ips: row.allowedIps,
    expires_at: iso(row.expiresAt),
    revoked_at: iso(row.revokedAt),
    revoked_reason: row.revokedReason,
    active: row.active,
    disabled_reason: row.disabledReason,
    last_used_at: iso(row.lastUsedAt),
    rolled_to: row.rolledTo,
    created_by: row.createdBy,
    created_at: row.createdAt.toISOString(),
    updated_at: row.updatedAt.toISOString(),
    metadata: row.metadata,
  };
}

const idParams = z.strictObject({ id: z.string().max(100) });
const cursorSchema = z.object({ id: z.string() });

const verifyBody = z.strictObject({
  key: z.string().max(512),
  permission: z
    .string()
    .max(200)
    .optional()
    .describe('Also check this permission (scopes ∩ owner’s rights).'),
  ip: z
    .string()
    .max(64)
    .optional()
    .describe('Address of your client, for keys with an allowlist; default the address of this request.'),
});

const verifyCodes = [
  'valid',
  'malformed',
  'not_found',
  'revoked',
  'expired',
  'disabled',
  'ip_not_allowed',
  'rate_limited',
  'quota_exceeded',
  'permission_denied',
] as const satisfies readonly VerifyCode[];

const verifyResponse = z.object({
  valid: z.boolean(),
  code: z.enum(verifyCodes),
  key_id: z.string().nullable(),
  org_id: z.string().nullable(),
  owner: z.string().nullable(),
  scopes: z.array(z.string()).nullable(),
  ratelimit: z
    .object({
      limit: z.number(),
      remaining: z.number(),
      reset: z.number().describe('Unix time, milliseconds.'),
    })
    .nullable(),
  quota: z.object({ limit: z.number(), remaining: z.number(), period_end: z.string() }).nullable(),
});

const JSON_TYPE = 'application/json; charset=utf-8';
const UNKNOWN_KEY = '"key_id":null,"org_id":null,"owner":null,"scopes":null';

/** The verify answer as a string: fragments precomputed per key, no zod on the way out. */
export function verificationJson(v: Verification): string {
  const key = v.key;
  const rl =
    v.limit < 0 ? 'null' : `{"limit":${v.limit},"remaining":${v.remaining},"reset":${v.nowMs + v.resetMs}}`;
  const quota =
    key === null || key.quota === null
      ? 'null'
      : `{"limit":${key.quota},"remaining":${v.quotaRemaining < 0 ? Math.max(0, key.quota - key.usage.count) : v.quotaRemaining},"period_end":"${key.usage.periodEndIso}"}`;
  return `{"valid":${v.code === 'valid'},"code":"${v.code}",${key === null ? UNKNOWN_KEY : key.json},"ratelimit":${rl},"quota":${quota}}`;
}

const settingsSchema = z.strictObject({
  burst_threshold: z.number().int().min(1).max(1_000_000),
  burst_window_seconds: z.number().int().min(1).max(86_400),
  suspend_on_burst: z.boolean().describe('Suspend (disable) a key whose burst is detected. Default false.'),
});
const settingsView = (s: KeySettings) => ({
  burst_threshold: s.burstThreshold,
  burst_window_seconds: s.burstWindowSeconds,
  suspend_on_burst: s.suspendOnBurst,
});

/** `/v1/keys`: create (shown once), list, get, update, revoke, roll, verify, burst settings. */
export const keysRoutes: FastifyPluginAsyncZod<{
  keys: KeysService;
  verifier: KeyVerifier;
}> = async (app, { keys, verifier }) => {
  app.post(
    '/v1/keys/verify',
    {
      config: { access: { permission: 'api_keys:verify' }, errors: [] },
      // The hottest route: the answer is built as a string from precomputed fragments, so the
      // response schema documents it but zod does not re-validate it.
      serializerCompiler: () => (data) => (typeof data === 'string' ? data : JSON.stringify(data)),
      schema: {
        tags: TAGS,
        summary: 'Verify an API key for another service (keys of other orgs answer not_found)',
        body: verifyBody,
        response: { 200: verifyResponse },
      },
    },
    // Not async: a warm key is answered in the same tick, without a promise.
    (request, reply) => {
      const caller = callerOf(request);
      const body = request.body;
      const result = verifier.verify(body.key, {
        ip: body.ip ?? request.ip,
        orgId: caller.orgId,
        permission: body.permission,
      });
      reply.header('content-type', JSON_TYPE);
      if (result instanceof Promise) {
        return result.then(verificationJson) as unknown as Promise<z.infer<typeof verifyResponse>>;
      }
      reply.send(verificationJson(result) as unknown as z.infer<typeof verifyResponse>);
    },
  );

  app.get(
    '/v1/keys/settings',
    {
      config: { access: { permission: 'api_keys:read' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: 'Burst detection settings of the org',
        response: { 200: settingsSchema },
      },
    },
    async (request) => settingsView(await keys.getSettings(callerOf(request))),
  );

  app.put(
    '/v1/keys/settings',
    {
      config: { access: { permission: 'api_keys:admin' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: 'Set burst detection settings',
        body: settingsSchema,
        response: { 200: settingsSchema },
      },
    },
    async (request) => {
      const b = request.body;
      return settingsView(
        await keys.putSettings(
          callerOf(request),
          {
            burstThreshold: b.burst_threshold,
            burstWindowSeconds: b.burst_window_seconds,
            suspendOnBurst: b.suspend_on_burst,
          },
          contextOf(request),
        ),
      );
    },
  );

  app.post(
    '/v1/keys',
    {
      config: {
        access: { permission: 'api_keys:create' },
        errors: [
          'invalid_scope',
          'unknown_tier',
          'invalid_cidr',
          'scope_not_held',
          'key_bounds_exceeded',
          'owner_not_found',
        ],
      },
      schema: {
        tags: TAGS,
        summary: 'Create an API key (the key is in this response only)',
        body: createBody,
        response: { 201: keySchema.extend({ key: z.string().describe('The full key. Shown once.') }) },
      },
    },
    async (request, reply) => {
      const { row, key } = await keys.create(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send({ ...keyView(row), key });
    },
  );

  app.get(
    '/v1/keys',
    {
      config: { access: { permission: 'api_keys:read' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: "The org's API keys, newest first (never the keys themselves)",
        querystring: z.strictObject({ ...pageQuery, owner: z.string().max(100).optional() }),
        response: { 200: listResponse(keySchema) },
      },
    },
    async (request) => {
      const { limit, cursor, owner } = request.query;
      const before = decodeCursor(cursor, cursorSchema)?.id;
      const rows = await keys.list(callerOf(request), {
        limit: limit + 1,
        before,
        ...(owner === undefined ? {} : { owner }),
      });
      const page = rows.slice(0, limit);
      const last = page.at(-1);
      return {
        data: page.map(keyView),
        next_cursor: rows.length > limit && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.get(
    '/v1/keys/:id',
    {
      config: { access: { permission: 'api_keys:read' }, errors: ['api_key_not_found'] },
      schema: { tags: TAGS, summary: 'One API key', params: idParams, response: { 200: keySchema } },
    },
    async (request) => keyView(await keys.get(callerOf(request), request.params.id)),
  );

  app.patch(
    '/v1/keys/:id',
    {
      config: {
        access: { permission: 'api_keys:update' },
        errors: [
          'invalid_scope',
          'unknown_tier',
          'invalid_cidr',
          'scope_not_held',
          'key_self_change',
          'key_bounds_exceeded',
          'api_key_suspended',
          'api_key_not_found',
          'api_key_revoked',
          'api_key_already_rolled',
          'api_key_conflict',
        ],
      },
      schema: {
        tags: TAGS,
        summary: 'Change a key: name, scopes, tier, limits, allowlist, expiry, metadata, active',
        params: idParams,
        body: updateBody,
        response: { 200: keySchema },
      },
    },
    async (request) =>
      keyView(await keys.update(callerOf(request), request.params.id, request.body, contextOf(request))),
  );

  app.delete(
    '/v1/keys/:id',
    {
      config: {
        access: { permission: 'api_keys:delete' },
        errors: [
          'scope_not_held',
          'key_bounds_exceeded',
          'api_key_not_found',
          'api_key_revoked',
          'api_key_conflict',
        ],
      },
      schema: {
        tags: TAGS,
        summary: 'Revoke a key (the row stays, for audit)',
        params: idParams,
        body: z.strictObject({ reason: z.string().max(500).optional() }).nullish(),
        response: { 200: keySchema },
      },
    },
    async (request) =>
      keyView(
        await keys.revoke(callerOf(request), request.params.id, request.body?.reason, contextOf(request)),
      ),
  );

  app.post(
    '/v1/keys/:id/roll',
    {
      config: {
        access: { permission: 'api_keys:create' },
        errors: [
          'scope_not_held',
          'key_bounds_exceeded',
          'api_key_not_found',
          'api_key_revoked',
          'api_key_already_rolled',
          'api_key_expired',
          'api_key_conflict',
        ],
      },
      schema: {
        tags: TAGS,
        summary: 'Issue a new key; the old one keeps working for grace_seconds',
        params: idParams,
        body: z.strictObject({
          grace_seconds: z
            .number()
            .int()
            .min(0)
            .max(30 * 86_400),
        }),
        response: {
          201: keySchema.extend({
            key: z.string().describe('The new key. Shown once.'),
            previous: z.object({ id: z.string(), expires_at: z.string() }),
          }),
        },
      },
    },
    async (request, reply) => {
      const { row, key, oldExpiresAt } = await keys.roll(
        callerOf(request),
        request.params.id,
        request.body.grace_seconds,
        contextOf(request),
      );
      return reply.code(201).send({
        ...keyView(row),
        key,
        previous: { id: request.params.id, expires_at: oldExpiresAt.toISOString() },
      });
    },
  );
};
