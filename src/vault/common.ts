import type { FastifyRequest } from 'fastify';
import type { Authz } from '../authz/contract.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';

/** Whether a database error is a unique violation (Postgres 23505), however it is wrapped. */
export function isUniqueViolation(error: unknown): boolean {
  for (let e: unknown = error; typeof e === 'object' && e !== null; ) {
    if ((e as { code?: unknown }).code === '23505') return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * Resource-level check (id grants, type grants, roles); throws permission_denied. Without a
 * resource, the type-wide check a route's `access: {permission}` makes.
 */
export async function requireOn(
  authz: Pick<Authz, 'check'>,
  principal: Principal,
  permission: string,
  resource?: { type: string; id: string },
): Promise<void> {
  const result = await authz.check(principal, permission, resource);
  if (!result.allowed) {
    throw httpErrors.permission_denied(
      resource
        ? `This action needs ${permission} on this ${resource.type}`
        : `This action needs ${permission}`,
      { permission },
    );
  }
}

const TOOL_ID = /^[A-Za-z0-9._:@/-]{1,200}$/;

/**
 * The tool an agent says it asks for (`X-Steward-Tool-Id`), kept only when the caller is an agent
 * or an agent's key, and only when it is a plain identifier.
 */
export function toolIdOf(request: FastifyRequest): string | null {
  const principal = request.principal;
  const given = request.headers['x-steward-tool-id'];
  if (!principal || typeof given !== 'string' || !TOOL_ID.test(given)) return null;
  const isAgent =
    principal.kind === 'agent' || (principal.kind === 'key' && principal.ownerId?.startsWith('agt_'));
  return isAgent ? given : null;
}
