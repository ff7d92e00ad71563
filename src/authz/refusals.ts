import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AuditAction } from '../audit/actions.ts';
import { contextOf } from '../http/context.ts';
import { StewardError } from '../http/errors.ts';
import type { AuthzService } from './service.ts';

// What a refused change asked for, as its audit event keeps it. A refusal by the route's own
// permission comes before body validation, so only known fields of the expected types are kept.
const ASKED_FIELDS = [
  'principal',
  'role',
  'name',
  'permission',
  'resource_type',
  'resource_id',
  'effect',
  'expires_at',
  'inherits',
  'email',
];
const ASKED_LISTS = ['permissions', 'roles'];

function askedFor(body: unknown): Record<string, unknown> | undefined {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return undefined;
  const given = body as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const field of ASKED_FIELDS) {
    const value = given[field];
    if (typeof value === 'string') out[field] = value.slice(0, 200);
  }
  for (const field of ASKED_LISTS) {
    const list = given[field];
    if (!Array.isArray(list)) continue;
    out[field] = list
      .filter((p): p is string => typeof p === 'string')
      .slice(0, 200)
      .map((p) => p.slice(0, 100));
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * Route hooks (`onError`) that put a refused change of roles, grants or of the roles a user holds
 * (403: the route's permission, or a delegation rule) on the audit record, after the refused
 * transaction has rolled back: the event of the change it would have been, `success: false`.
 * Best effort (the service swallows a failed record); the answer stays the refusal.
 */
export function refusalAuditor(authz: AuthzService) {
  return (action: AuditAction, resourceType: string) =>
    async (request: FastifyRequest, _reply: FastifyReply, error: Error): Promise<void> => {
      const caller = request.principal;
      if (!caller || !(error instanceof StewardError) || error.status !== 403) return;
      const id = (request.params as { id?: unknown } | undefined)?.id;
      await authz.recordRefusal(
        caller,
        {
          action,
          resource: { type: resourceType, id: typeof id === 'string' ? id.slice(0, 200) : null },
          error,
          request: askedFor(request.body),
        },
        contextOf(request),
      );
    };
}
