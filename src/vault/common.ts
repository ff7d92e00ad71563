import type { FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { Authz } from '../authz/contract.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';

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

/**
 * The rows of a list page the caller may read one by one: the resource-level check on each id
 * (a deny grant on one id leaves that row out; lists need the type-wide permission at the route).
 * Answered from the org's in-memory index: the first check loads it when cold, the rest are
 * synchronous. No database query per row.
 */
export async function readableRows<T>(
  authz: Pick<Authz, 'check' | 'checkSync'>,
  principal: Principal,
  permission: string,
  type: string,
  rows: readonly T[],
  idOf: (row: T) => string,
): Promise<T[]> {
  const out: T[] = [];
  for (const row of rows) {
    const resource = { type, id: idOf(row) };
    const result =
      authz.checkSync(principal, permission, resource) ??
      (await authz.check(principal, permission, resource));
    if (result.allowed) out.push(row);
  }
  return out;
}

/**
 * A page of rows examined in key order: the rows to show and the cursor after the last row
 * examined, shown or not (null when the query ran out). A page may hold fewer rows than asked
 * for — none at all — and still have a next cursor.
 */
export interface FilteredPage<T> {
  rows: T[];
  next: string | null;
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

/** Largest PostgreSQL `integer`: version numbers are int4 columns, and a larger one failed in the database (a 500). */
export const INT4_MAX = 2_147_483_647;

/** A version number in a body or a cursor: 1 … INT4_MAX (anything else is 400, never a query). */
export const versionNumber = () => z.number().int().min(1).max(INT4_MAX);
