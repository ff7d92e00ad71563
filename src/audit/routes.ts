import { Readable } from 'node:stream';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { StewardContext } from '../context.ts';
import { callerOf } from '../http/auth.ts';
import { noBody } from '../http/body.ts';
import { contextOf } from '../http/context.ts';
import { isoDateTime } from '../http/datetime.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import { eventSchema, eventView, exportLines } from './export.ts';
import type { AuditFilters } from './queries.ts';
import { actorOf, VERIFY_REASONS } from './service.ts';

const filterQuery = {
  actor_id: z.string().max(200).optional(),
  actor_type: z.enum(['user', 'agent', 'key', 'system']).optional(),
  action: z.string().max(100).optional(),
  resource_type: z.string().max(100).optional(),
  resource_id: z.string().max(200).optional(),
  success: z.enum(['true', 'false']).optional(),
  since: isoDateTime.optional().describe('Events at or after this time (ISO 8601).'),
  until: isoDateTime.optional().describe('Events at or before this time (ISO 8601).'),
};

type FilterQuery = { [K in keyof typeof filterQuery]?: z.infer<(typeof filterQuery)[K]> };

function filtersOf(q: FilterQuery): AuditFilters {
  return {
    actorId: q.actor_id,
    actorType: q.actor_type,
    action: q.action,
    resourceType: q.resource_type,
    resourceId: q.resource_id,
    success: q.success === undefined ? undefined : q.success === 'true',
    since: q.since === undefined ? undefined : new Date(q.since),
    until: q.until === undefined ? undefined : new Date(q.until),
  };
}

const cursorSchema = z.object({ id: z.string().startsWith('evt_').max(40) });

/**
 * `?after_seq=<n>`: read forward by sequence, for a forwarder (SIEM) that must see every event once.
 * Digits only (no sign, exponent, hex or blank), at most 2^53 − 1: sequences are PostgreSQL bigints
 * read as JavaScript numbers, and no chain comes near that.
 */
const afterSeqQuery = z
  .string()
  .regex(/^[0-9]+$/, 'must be a non-negative integer')
  .transform(Number)
  .pipe(z.number().max(Number.MAX_SAFE_INTEGER, 'must be at most 9007199254740991 (2^53 − 1)'))
  .optional()
  .describe(
    'Read forward: only linked events with a sequence above this, in ascending sequence order ' +
      '(continue with `next_after_seq`). Gap-free, unlike paging newest first: use it to forward the trail.',
  );

/** Query, export and verify the caller org's audit trail. No route changes or deletes an event. */
export const auditRoutes: FastifyPluginAsyncZod<{ ctx: StewardContext }> = async (app, { ctx }) => {
  app.get(
    '/v1/audit/events',
    {
      config: { access: { permission: 'audit:read' }, errors: [] },
      schema: {
        tags: ['audit'],
        summary: 'Query audit events, newest first (or forward by sequence, with after_seq)',
        // Strict: a misspelt filter (`?actor=`) is a 400, not silently the whole trail.
        querystring: z
          .strictObject({ ...filterQuery, ...pageQuery, after_seq: afterSeqQuery })
          .superRefine((q, issues) => {
            if (q.after_seq !== undefined && q.cursor !== undefined)
              issues.addIssue({
                code: 'custom',
                path: ['after_seq'],
                message: 'cannot be combined with cursor: continue a forward read with next_after_seq',
              });
          }),
        response: {
          200: listResponse(eventSchema).extend({
            next_after_seq: z
              .number()
              .int()
              .nullable()
              .describe(
                'With `after_seq`: pass it as `after_seq` for the next read. The last sequence returned ' +
                  'when the page is full; otherwise the org’s last linked sequence as it was before the page ' +
                  'was read (if further), so a filtered read that matches nothing still moves on, and no event ' +
                  'is skipped. Null without `after_seq`.',
              ),
          }),
        },
      },
    },
    async (request) => {
      const { limit, cursor, after_seq: afterSeq, ...filters } = request.query;
      const orgId = callerOf(request).orgId;
      if (afterSeq !== undefined) {
        const page = await ctx.audit.listAfterSeq(orgId, filtersOf(filters), { limit, afterSeq });
        return { data: page.events.map(eventView), next_cursor: null, next_after_seq: page.nextAfterSeq };
      }
      const before = decodeCursor(cursor, cursorSchema);
      const events = await ctx.audit.list(orgId, filtersOf(filters), {
        limit,
        beforeId: before?.id,
      });
      const last = events.at(-1);
      return {
        data: events.map(eventView),
        next_cursor: events.length === limit && last ? encodeCursor({ id: last.id }) : null,
        next_after_seq: null,
      };
    },
  );

  app.get(
    '/v1/audit/export',
    {
      // Fastify would add a HEAD route running this handler: the whole export, and an audit.exported event.
      exposeHeadRoute: false,
      config: { access: { permission: 'audit:export' }, errors: [] },
      schema: {
        tags: ['audit'],
        summary: 'Export audit events as NDJSON or CSV (streamed, newest first; by sequence with after_seq)',
        querystring: z.strictObject({
          ...filterQuery,
          format: z.enum(['ndjson', 'csv']).default('ndjson'),
          after_seq: afterSeqQuery,
        }),
        produces: ['application/x-ndjson', 'text/csv'],
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const { format, after_seq: afterSeq, ...filterValues } = request.query;
      const filters = filtersOf(filterValues);
      const query = afterSeq === undefined ? filterValues : { ...filterValues, after_seq: afterSeq };
      // The export itself is on the record, written before the first byte leaves.
      await ctx.db.db.transaction((tx) =>
        ctx.audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'audit.exported',
          resource: { type: 'audit' },
          context: contextOf(request),
          details: { format, filters: query },
          sensitive: true,
        }),
      );
      const stamp = ctx.clock().toISOString().replaceAll(':', '-');
      reply
        .type(format === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson; charset=utf-8')
        .header('content-disposition', `attachment; filename="audit-${stamp}.${format}"`);
      return reply.send(
        Readable.from(exportLines(ctx.audit.stream(principal.orgId, filters, { afterSeq }), format)),
      );
    },
  );

  app.post(
    '/v1/audit/verify',
    {
      config: { access: { permission: 'audit:read' }, errors: [] },
      schema: {
        tags: ['audit'],
        summary: "Re-compute the org's hash chain and check each event's MAC",
        body: noBody,
        response: {
          200: z.object({
            valid: z.boolean(),
            checked: z.number().int(),
            first_bad_sequence: z.number().int().nullable(),
            first_bad_event_id: z
              .string()
              .nullable()
              .describe('The first bad event, when there is a row to point at (not for a missing event).'),
            reason: z.enum(VERIFY_REASONS).optional(),
          }),
        },
      },
    },
    async (request) => ctx.audit.verify(callerOf(request).orgId),
  );
};
