import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { StewardContext } from '../context.ts';
import { callerOf } from '../http/auth.ts';
import { contextOf } from '../http/context.ts';
import { isoDateTime } from '../http/datetime.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery, paginationErrors } from '../http/pagination.ts';
import { PERMISSIONS, permissionInfo } from './catalogue.ts';
import type { CheckResult } from './engine.ts';
import type { AssignmentRow, GrantRow } from './queries.ts';
import { refusalAuditor } from './refusals.ts';
import { SYSTEM_ROLES } from './roles.ts';
import type { PrincipalPermissions, RoleInfo } from './service.ts';

const principalId = z
  .string()
  .min(1)
  .max(100)
  .describe('Prefixed principal id: `usr_…`, `agt_…` or `key_…`.');
const idParams = z.object({ id: z.string().min(1).max(100) });
const cursorSchema = z.object({ id: z.string().min(1).max(100) });
const permissionCursor = z.object({ permission: z.string().min(1).max(100) });

const decisionSchema = z.object({
  by: z.enum(['resource_grant', 'type_grant', 'role', 'superuser', 'default_deny']),
  rule_id: z.string().optional().describe('The grant that decided.'),
  role: z.string().optional().describe('The role that decided.'),
  reason: z.string().optional().describe('Why nothing allowed it (default_deny only).'),
});
const checkResultSchema = z.object({ allowed: z.boolean(), decision: decisionSchema });

const permissionSchema = z.object({
  permission: z.string(),
  resource: z.string(),
  action: z.string(),
  description: z.string(),
});

const roleSchema = z.object({
  id: z.string().describe('`rol_…` for a custom role; the name for a system role.'),
  name: z.string(),
  description: z.string().nullable(),
  system: z.boolean(),
  permissions: z.array(z.string()),
  effective_permissions: z.array(z.string()),
  inherits: z.string().nullable(),
  created_by: z.string().nullable(),
  created_at: z.string().nullable(),
  updated_at: z.string().nullable(),
});

const assignmentSchema = z.object({
  id: z.string(),
  principal: z.string(),
  role: z.string(),
  role_id: z.string().nullable(),
  assigned_by: z.string().nullable(),
  assigned_at: z.string(),
});

const grantSchema = z.object({
  id: z.string(),
  principal: z.string(),
  permission: z.string(),
  resource_type: z.string(),
  resource_id: z.string().nullable(),
  effect: z.enum(['allow', 'deny']),
  expires_at: z.string().nullable(),
  active: z.boolean().describe('False once expired: an expired grant counts for nothing.'),
  created_by: z.string().nullable(),
  created_at: z.string(),
});

const principalPermissionsSchema = z.object({
  principal: z.string(),
  kind: z.enum(['user', 'agent', 'key']),
  superuser: z.boolean(),
  roles: z.array(z.string()),
  permissions: z.array(z.object({ permission: z.string(), decision: decisionSchema })),
  resource_grants: z.array(grantSchema).describe('Active grants on single resources.'),
});

const roleName = z
  .string()
  .regex(/^[a-z][a-z0-9_-]{0,63}$/, 'lower-case letters, digits, - and _, starting with a letter');
const rolePermissions = z
  .array(z.string().min(1).max(100))
  .max(200)
  .describe('Permissions or patterns: `secrets:read`, `secrets:*`, `*:read`, `*`.');

const checkBody = z.strictObject({
  principal: principalId.optional().describe('Default: the caller.'),
  permission: z.string().min(1).max(100),
  resource_type: z.string().min(1).max(100).optional().describe("Default: the permission's own type."),
  resource_id: z.string().min(1).max(200).optional(),
});

const iso = (d: Date | null) => (d === null ? null : d.toISOString());

const roleView = (r: RoleInfo) => ({
  id: r.id,
  name: r.name,
  description: r.description,
  system: r.system,
  permissions: [...r.permissions],
  effective_permissions: [...r.effectivePermissions],
  inherits: r.inherits,
  created_by: r.createdBy,
  created_at: iso(r.createdAt),
  updated_at: iso(r.updatedAt),
});

const assignmentView = (a: AssignmentRow) => ({
  id: a.id,
  principal: a.principalId,
  role: a.roleName,
  role_id: a.roleId,
  assigned_by: a.assignedBy,
  assigned_at: a.assignedAt.toISOString(),
});

const grantView = (g: GrantRow, nowMs: number) => ({
  id: g.id,
  principal: g.principalId,
  permission: g.permission,
  resource_type: g.resourceType,
  resource_id: g.resourceId,
  effect: g.effect,
  expires_at: iso(g.expiresAt),
  active: g.expiresAt === null || g.expiresAt.getTime() > nowMs,
  created_by: g.createdBy,
  created_at: g.createdAt.toISOString(),
});

const checkView = (r: CheckResult) => ({ allowed: r.allowed, decision: r.decision });

const permissionsView = (p: PrincipalPermissions, nowMs: number) => ({
  principal: p.principalId,
  kind: p.kind,
  superuser: p.superuser,
  roles: [...p.roles],
  permissions: p.permissions.map((e) => ({ permission: e.permission, decision: e.decision })),
  resource_grants: p.resourceGrants.map((g) => grantView(g, nowMs)),
});

const page = <T extends { id: string }>(rows: readonly T[], limit: number) => {
  const last = rows.at(-1);
  return rows.length === limit && last ? encodeCursor({ id: last.id }) : null;
};

const TAGS = ['authz'];

/** Roles, assignments, grants and checks (SPEC section 3). */
export const authzRoutes: FastifyPluginAsyncZod<{ ctx: StewardContext }> = async (app, { ctx }) => {
  const { authz } = ctx;
  const nowMs = () => ctx.clock().getTime();

  const auditRefusal = refusalAuditor(authz);

  app.get(
    '/v1/authz/permissions',
    {
      config: { access: 'authenticated', errors: [] },
      schema: {
        tags: TAGS,
        summary: 'The permission catalogue, in catalogue order',
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(permissionSchema) },
      },
    },
    async (request) => {
      const { limit, cursor } = request.query;
      const after = decodeCursor(cursor, permissionCursor)?.permission;
      const start = after === undefined ? 0 : PERMISSIONS.findIndex((p) => p.permission === after) + 1;
      if (start === 0 && after !== undefined) {
        throw paginationErrors.invalid_cursor('The cursor names no permission of the catalogue');
      }
      const rows = PERMISSIONS.slice(start, start + limit);
      const last = rows.at(-1);
      return {
        data: rows.map((p) => ({ ...p })),
        next_cursor:
          start + limit < PERMISSIONS.length && last ? encodeCursor({ permission: last.permission }) : null,
      };
    },
  );

  // ---- roles ----

  app.get(
    '/v1/roles',
    {
      config: { access: { permission: 'roles:read' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: 'System roles (first), then custom roles',
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(roleSchema) },
      },
    },
    async (request) => {
      const { limit, cursor } = request.query;
      const after = decodeCursor(cursor, cursorSchema)?.id;
      const rows = await authz.listRoles(callerOf(request).orgId, { limit, after });
      return { data: rows.map(roleView), next_cursor: page(rows, limit) };
    },
  );

  app.post(
    '/v1/roles',
    {
      config: {
        access: { permission: 'roles:create' },
        errors: [
          'unknown_permission',
          'role_escalation',
          'role_outlives_delegator',
          'role_exists',
          'role_name_reserved',
        ],
      },
      onError: auditRefusal('role.created', 'role'),
      schema: {
        tags: TAGS,
        summary: 'Create a custom role',
        body: z.strictObject({
          name: roleName,
          description: z.string().max(500).nullable().optional(),
          permissions: rolePermissions,
          inherits: z.enum(SYSTEM_ROLES).nullable().optional().describe('A system role to build on.'),
        }),
        response: { 201: roleSchema },
      },
    },
    async (request, reply) => {
      const role = await authz.createRole(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send(roleView(role));
    },
  );

  app.get(
    '/v1/roles/:id',
    {
      config: { access: { permission: 'roles:read' }, errors: ['role_not_found'] },
      schema: { tags: TAGS, summary: 'One role', params: idParams, response: { 200: roleSchema } },
    },
    async (request) => roleView(await authz.getRole(callerOf(request).orgId, request.params.id)),
  );

  app.patch(
    '/v1/roles/:id',
    {
      config: {
        access: { permission: 'roles:update' },
        errors: [
          'unknown_permission',
          'role_escalation',
          'role_outlives_delegator',
          'role_not_found',
          'role_exists',
          'role_name_reserved',
          'system_role_immutable',
        ],
      },
      onError: auditRefusal('role.updated', 'role'),
      schema: {
        tags: TAGS,
        summary: 'Change a custom role (system roles cannot be changed)',
        params: idParams,
        body: z
          .strictObject({
            name: roleName.optional(),
            description: z.string().max(500).nullable().optional(),
            permissions: rolePermissions.optional(),
            inherits: z.enum(SYSTEM_ROLES).nullable().optional(),
          })
          .refine((b) => Object.keys(b).length > 0, 'Give at least one field to change'),
        response: { 200: roleSchema },
      },
    },
    async (request) =>
      roleView(
        await authz.updateRole(callerOf(request), request.params.id, request.body, contextOf(request)),
      ),
  );

  app.delete(
    '/v1/roles/:id',
    {
      config: {
        access: { permission: 'roles:delete' },
        errors: ['role_escalation', 'role_not_found', 'system_role_immutable'],
      },
      onError: auditRefusal('role.deleted', 'role'),
      schema: {
        tags: TAGS,
        summary: 'Delete a custom role and its assignments',
        params: idParams,
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await authz.deleteRole(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  // ---- assignments ----

  app.get(
    '/v1/role-assignments',
    {
      config: { access: { permission: 'roles:read' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: 'Role assignments, oldest first',
        querystring: z.strictObject({
          principal: principalId.optional(),
          role: z.string().max(100).optional().describe('Role name.'),
          ...pageQuery,
        }),
        response: { 200: listResponse(assignmentSchema) },
      },
    },
    async (request) => {
      const { limit, cursor, principal, role } = request.query;
      const afterId = decodeCursor(cursor, cursorSchema)?.id;
      const rows = await authz.listAssignments(
        callerOf(request).orgId,
        { principalId: principal, roleName: role },
        { limit, afterId },
      );
      return { data: rows.map(assignmentView), next_cursor: page(rows, limit) };
    },
  );

  app.post(
    '/v1/role-assignments',
    {
      config: {
        access: { permission: 'roles:update' },
        errors: [
          'invalid_principal',
          'role_escalation',
          'role_outlives_delegator',
          'self_modification',
          'principal_not_found',
          'role_not_found',
          'assignment_exists',
        ],
      },
      onError: auditRefusal('role.assigned', 'role_assignment'),
      schema: {
        tags: TAGS,
        summary: 'Assign a role to a user or agent',
        body: z.strictObject({
          principal: principalId,
          role: z.string().min(1).max(100).describe('Role name or `rol_…` id.'),
        }),
        response: { 201: assignmentSchema },
      },
    },
    async (request, reply) => {
      const row = await authz.assignRole(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send(assignmentView(row));
    },
  );

  app.delete(
    '/v1/role-assignments/:id',
    {
      config: {
        access: { permission: 'roles:delete' },
        errors: ['role_escalation', 'self_modification', 'assignment_not_found'],
      },
      onError: auditRefusal('role.unassigned', 'role_assignment'),
      schema: {
        tags: TAGS,
        summary: 'Remove a role assignment',
        params: idParams,
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await authz.unassign(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  // ---- grants ----

  app.post(
    '/v1/authz/grants',
    {
      config: {
        access: { permission: 'roles:admin' },
        errors: [
          'unknown_permission',
          'unknown_resource_type',
          'invalid_principal',
          'expiry_in_past',
          'grant_escalation',
          'grant_outlives_delegator',
          'self_modification',
          'principal_not_found',
          'grant_exists',
        ],
      },
      onError: auditRefusal('grant.created', 'grant'),
      schema: {
        tags: TAGS,
        summary: 'Grant or deny a permission on a resource type or one resource',
        body: z.strictObject({
          principal: principalId,
          permission: z.string().min(1).max(100),
          resource_type: z.string().min(1).max(100),
          resource_id: z.string().min(1).max(200).nullable().optional().describe('Omit for the whole type.'),
          effect: z.enum(['allow', 'deny']),
          expires_at: isoDateTime.nullable().optional(),
        }),
        response: { 201: grantSchema },
      },
    },
    async (request, reply) => {
      const b = request.body;
      const row = await authz.createGrant(
        callerOf(request),
        {
          principal: b.principal,
          permission: b.permission,
          resourceType: b.resource_type,
          resourceId: b.resource_id,
          effect: b.effect,
          expiresAt: b.expires_at == null ? null : new Date(b.expires_at),
        },
        contextOf(request),
      );
      return reply.code(201).send(grantView(row, nowMs()));
    },
  );

  app.get(
    '/v1/authz/grants',
    {
      config: { access: { permission: 'roles:read' }, errors: [] },
      schema: {
        tags: TAGS,
        summary: 'Grants, oldest first (expired ones included unless active=true)',
        querystring: z.strictObject({
          principal: principalId.optional(),
          permission: z.string().max(100).optional(),
          resource_type: z.string().max(100).optional(),
          resource_id: z.string().max(200).optional(),
          active: z.enum(['true', 'false']).optional(),
          ...pageQuery,
        }),
        response: { 200: listResponse(grantSchema) },
      },
    },
    async (request) => {
      const { limit, cursor, active, principal, permission, resource_type, resource_id } = request.query;
      const afterId = decodeCursor(cursor, cursorSchema)?.id;
      const rows = await authz.listGrants(
        callerOf(request).orgId,
        {
          principalId: principal,
          permission,
          resourceType: resource_type,
          resourceId: resource_id,
          active: active === undefined ? undefined : active === 'true',
        },
        { limit, afterId },
      );
      const now = nowMs();
      return { data: rows.map((g) => grantView(g, now)), next_cursor: page(rows, limit) };
    },
  );

  app.delete(
    '/v1/authz/grants/:id',
    {
      config: {
        access: { permission: 'roles:admin' },
        errors: ['grant_escalation', 'grant_outlives_delegator', 'self_modification', 'grant_not_found'],
      },
      onError: auditRefusal('grant.revoked', 'grant'),
      schema: { tags: TAGS, summary: 'Revoke a grant', params: idParams, response: { 204: z.null() } },
    },
    async (request, reply) => {
      await authz.revokeGrant(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  // ---- checks ----

  app.post(
    '/v1/authz/check',
    {
      // Any caller may check itself; checking someone else needs roles:read (in the service).
      config: { access: 'authenticated', errors: ['permission_denied', 'principal_not_found'] },
      // The hot route: answers are built here from the engine's frozen results, so they are
      // stringified directly instead of being re-validated by zod (the schema still documents them).
      serializerCompiler: () => (data) => JSON.stringify(data),
      schema: {
        tags: TAGS,
        summary: 'Check one permission, or up to 100, with the rule that decided each',
        body: z.union([checkBody, z.strictObject({ checks: z.array(checkBody).min(1).max(100) })]),
        response: { 200: z.union([checkResultSchema, z.object({ results: z.array(checkResultSchema) })]) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const body = request.body;
      // One check about oneself on a warm index: answered synchronously, the shared result as is.
      if (!('checks' in body) && (body.principal === undefined || body.principal === caller.id)) {
        const { permission, resource_type: type, resource_id: id } = body;
        const resource =
          type === undefined && id === undefined
            ? undefined
            : { type: type ?? permissionInfo(permission)?.resource ?? '', id: id ?? null };
        const answer = authz.checkSync(caller, permission, resource);
        if (answer !== null) return answer;
      }
      const many = 'checks' in body;
      const inputs = (many ? body.checks : [body]).map((c) => ({
        principal: c.principal,
        permission: c.permission,
        resourceType: c.resource_type,
        resourceId: c.resource_id,
      }));
      const results = await authz.checkMany(caller, inputs);
      if (many) return { results: results.map(checkView) };
      return checkView(results[0]!);
    },
  );

  app.get(
    '/v1/authz/me',
    {
      config: { access: 'authenticated', errors: [] },
      schema: {
        tags: TAGS,
        summary: "The caller's effective permissions",
        response: { 200: principalPermissionsSchema },
      },
    },
    async (request) => permissionsView(await authz.permissionsOf(callerOf(request)), nowMs()),
  );

  app.get(
    '/v1/authz/principals/:id/permissions',
    {
      config: { access: { permission: 'roles:read' }, errors: ['principal_not_found'] },
      schema: {
        tags: TAGS,
        summary: "A principal's effective permissions",
        params: idParams,
        response: { 200: principalPermissionsSchema },
      },
    },
    async (request) =>
      permissionsView(await authz.permissionsOf(callerOf(request), request.params.id), nowMs()),
  );

  app.get(
    '/v1/authz/principals/:id/resources',
    {
      config: {
        access: { permission: 'roles:read' },
        errors: ['unknown_permission', 'unknown_resource_type', 'principal_not_found'],
      },
      schema: {
        tags: TAGS,
        summary: 'What a principal can access with one permission, in one call',
        params: idParams,
        querystring: z.strictObject({
          permission: z.string().min(1).max(100),
          resource_type: z.string().min(1).max(100).optional(),
        }),
        response: {
          200: z.object({
            principal: z.string(),
            permission: z.string(),
            resource_type: z.string(),
            type_wide: z
              .boolean()
              .describe(
                'Allowed on every resource of the type except `denied_ids` (and a deny on the type).',
              ),
            decision: decisionSchema,
            allowed_ids: z.array(z.string()),
            denied_ids: z.array(z.string()),
          }),
        },
      },
    },
    async (request) => {
      const { permission, resource_type } = request.query;
      const r = await authz.resourcesFor(callerOf(request), request.params.id, permission, resource_type);
      return {
        principal: request.params.id,
        permission: r.permission,
        resource_type: r.resourceType,
        type_wide: r.typeWide,
        decision: r.decision,
        allowed_ids: [...r.allowedIds],
        denied_ids: [...r.deniedIds],
      };
    },
  );
};
