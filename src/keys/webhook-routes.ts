import type { FastifyPluginAsyncZod, ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
import { webhookSecurity } from '../http/openapi.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import type { SignalRow, WebhookKeyRow } from './queries.ts';
import type { KeysService } from './service.ts';

const webhookKeySchema = z.object({
  id: z.string(),
  name: z.string(),
  prefix: z.string(),
  active: z.boolean(),
  last_used_at: z.string().nullable(),
  created_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

const signalSchema = z.object({
  id: z.string(),
  source_key_id: z.string(),
  source_key_name: z.string(),
  message_id: z.string(),
  event_type: z.string().nullable(),
  payload: z.unknown(),
  received_at: z.string(),
});

const webhookKeyView = (row: WebhookKeyRow) => ({
  id: row.id,
  name: row.name,
  prefix: row.prefix,
  active: row.active,
  last_used_at: row.lastUsedAt?.toISOString() ?? null,
  created_by: row.createdBy,
  created_at: row.createdAt.toISOString(),
  updated_at: row.updatedAt.toISOString(),
});

const signalView = (row: SignalRow) => ({
  id: row.id,
  source_key_id: row.sourceKeyId,
  source_key_name: row.sourceKeyName,
  message_id: row.messageId,
  event_type: row.eventType,
  payload: row.payload,
  received_at: row.receivedAt.toISOString(),
});

const name = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$/, 'letters, digits, space, . _ -; up to 100 characters');
const idParams = z.strictObject({ id: z.string().max(100) });
const cursorSchema = z.object({ id: z.string() });

function page<T extends { id: string }, V>(rows: T[], limit: number, view: (row: T) => V) {
  const data = rows.slice(0, limit);
  const last = data.at(-1);
  return {
    data: data.map(view),
    next_cursor: rows.length > limit && last ? encodeCursor({ id: last.id }) : null,
  };
}

/**
 * What ingestion answers itself: the route is public (the webhook key and the signature are the
 * credential, checked in the handler), so its refusals are its own to declare.
 */
// The route parses its own body (the signature covers the raw bytes), so the JSON parser's
// refusals are its own to list.
const INGEST_ERRORS = [
  'invalid_json',
  'json_too_deep',
  'unsupported_character',
  'number_out_of_range',
  'invalid_signal_payload',
  'webhook_key_invalid',
  'webhook_key_inactive',
  'webhook_headers_missing',
  'webhook_timestamp_invalid',
  'webhook_timestamp_out_of_tolerance',
  'webhook_signature_invalid',
  'webhook_replayed',
] as const;

/** Inbound webhook keys, `POST /v1/ingest` and `GET /v1/signals`. */
export const webhookKeyRoutes: FastifyPluginAsyncZod<{ keys: KeysService }> = async (app, { keys }) => {
  const tags = ['webhook keys'];

  app.post(
    '/v1/webhook-keys',
    {
      config: { access: { permission: 'webhook_keys:create' }, errors: ['webhook_key_name_taken'] },
      schema: {
        tags,
        summary: 'Create an inbound webhook key (key and HMAC secret are in this response only)',
        body: z.strictObject({ name }),
        response: {
          201: webhookKeySchema.extend({
            key: z.string().describe('Send as X-API-Key. Shown once.'),
            secret: z.string().describe('Standard Webhooks signing secret (`whsec_…`). Shown once.'),
          }),
        },
      },
    },
    async (request, reply) => {
      const { row, key, secret } = await keys.createWebhookKey(
        callerOf(request),
        request.body,
        contextOf(request),
      );
      return reply.code(201).send({ ...webhookKeyView(row), key, secret });
    },
  );

  app.get(
    '/v1/webhook-keys',
    {
      config: { access: { permission: 'webhook_keys:read' }, errors: [] },
      schema: {
        tags,
        summary: "The org's inbound webhook keys",
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(webhookKeySchema) },
      },
    },
    async (request) => {
      const { limit, cursor } = request.query;
      const rows = await keys.listWebhookKeys(callerOf(request), {
        limit: limit + 1,
        before: decodeCursor(cursor, cursorSchema)?.id,
      });
      return page(rows, limit, webhookKeyView);
    },
  );

  app.get(
    '/v1/webhook-keys/:id',
    {
      config: { access: { permission: 'webhook_keys:read' }, errors: ['webhook_key_not_found'] },
      schema: {
        tags,
        summary: 'One inbound webhook key',
        params: idParams,
        response: { 200: webhookKeySchema },
      },
    },
    async (request) => webhookKeyView(await keys.getWebhookKey(callerOf(request), request.params.id)),
  );

  app.patch(
    '/v1/webhook-keys/:id',
    {
      config: {
        access: { permission: 'webhook_keys:update' },
        errors: ['webhook_key_not_found', 'webhook_key_name_taken'],
      },
      schema: {
        tags,
        summary: 'Rename, deactivate or activate an inbound webhook key',
        params: idParams,
        body: z.strictObject({ name: name.optional(), active: z.boolean().optional() }),
        response: { 200: webhookKeySchema },
      },
    },
    async (request) =>
      webhookKeyView(
        await keys.updateWebhookKey(callerOf(request), request.params.id, request.body, contextOf(request)),
      ),
  );

  app.delete(
    '/v1/webhook-keys/:id',
    {
      config: { access: { permission: 'webhook_keys:delete' }, errors: ['webhook_key_not_found'] },
      schema: {
        tags,
        summary: 'Delete an inbound webhook key',
        params: idParams,
        response: { 204: z.null().describe('Deleted.') },
      },
    },
    async (request, reply) => {
      await keys.deleteWebhookKey(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  app.get(
    '/v1/signals',
    {
      config: { access: { permission: 'signals:read' }, errors: [] },
      schema: {
        tags: ['signals'],
        summary: 'Signals received through /v1/ingest, newest first',
        querystring: z.strictObject({ ...pageQuery, source_key_id: z.string().max(100).optional() }),
        response: { 200: listResponse(signalSchema) },
      },
    },
    async (request) => {
      const { limit, cursor, source_key_id } = request.query;
      const rows = await keys.listSignals(callerOf(request), {
        limit: limit + 1,
        before: decodeCursor(cursor, cursorSchema)?.id,
        sourceKeyId: source_key_id,
      });
      return page(rows, limit, signalView);
    },
  );

  // Ingestion needs the raw body (the signature covers its exact bytes): its own context, where
  // every content type is read as a Buffer. The webhook key and the signature are the credential,
  // checked in the handler, so the access layer sees a public route.
  await app.register(async (scope) => {
    const ingest = scope.withTypeProvider<ZodTypeProvider>();
    ingest.removeAllContentTypeParsers();
    ingest.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
    const handler = async (
      request: { headers: Record<string, string | string[] | undefined>; body: unknown; params: unknown },
      keyName: string | undefined,
    ) => {
      const apiKey = request.headers['x-api-key'];
      return keys.ingest({
        apiKey: typeof apiKey === 'string' ? apiKey : undefined,
        keyName,
        headers: request.headers,
        body: Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0),
      });
    };
    const accepted = z.object({ id: z.string(), received_at: z.string() });
    ingest.post(
      '/v1/ingest',
      {
        config: { access: 'public', errors: INGEST_ERRORS },
        schema: {
          tags: ['signals'],
          summary: 'Push an event (X-API-Key: a webhook key; Standard Webhooks signature headers)',
          security: webhookSecurity,
          response: { 202: accepted },
        },
      },
      async (request, reply) => {
        const signal = await handler(request, undefined);
        return reply.code(202).send({ id: signal.id, received_at: signal.receivedAt.toISOString() });
      },
    );
    ingest.post(
      '/v1/ingest/:keyName',
      {
        config: { access: 'public', errors: INGEST_ERRORS },
        schema: {
          tags: ['signals'],
          summary: 'Push an event, naming the webhook key (must match the X-API-Key)',
          security: webhookSecurity,
          params: z.strictObject({ keyName: z.string().max(100) }),
          response: { 202: accepted },
        },
      },
      async (request, reply) => {
        const signal = await handler(request, request.params.keyName);
        return reply.code(202).send({ id: signal.id, received_at: signal.receivedAt.toISOString() });
      },
    );
  });
};
