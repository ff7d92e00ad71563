import type { FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { refusalAuditor } from '../authz/refusals.ts';
import type { AuthzService } from '../authz/service.ts';
import { callerOf } from '../http/auth.ts';
import { noBody } from '../http/body.ts';
import { contextOf } from '../http/context.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import type { Organization } from '../tenancy/service.ts';
import type { Profile } from './profile-cache.ts';
import type { Session } from './queries.ts';
import type { IdentityService, Origin, UserView } from './service.ts';

/** An email to log in with: any one an account may have (limits older than `newEmail`'s included). */
export const email = z.email().max(320);
/**
 * An email for a new account or invitation: within SMTP's limits (RFC 5321 §4.5.3.1: a local part
 * of 64 octets, a path of 256, so an address of 254), which mail servers enforce; a longer one
 * could be stored but never receive mail.
 */
export const newEmail = z
  .email()
  .max(254)
  .refine((value) => Buffer.byteLength(value.slice(0, value.lastIndexOf('@')), 'utf8') <= 64, {
    message: 'The part before @ is at most 64 characters (RFC 5321)',
  });
// Length limits here only stop abuse; the password policy (12+, not common) runs in the service.
export const password = z.string().min(1).max(1024);
export const roleName = z.string().min(1).max(100);
export const username = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$/, 'letters, digits, . _ -, 2 to 64 characters');

export const userSchema = z.object({
  id: z.string(),
  email: z.string(),
  username: z.string().nullable(),
  full_name: z.string().nullable(),
  active: z.boolean(),
  superuser: z.boolean(),
  verified: z.boolean(),
  totp_enabled: z.boolean(),
  locked_until: z.string().nullable(),
  last_login_at: z.string().nullable(),
  password_changed_at: z.string().nullable(),
  created_by: z.string().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
  roles: z.array(z.string()),
});

const iso = (d: Date | null) => (d ? d.toISOString() : null);

export const userView = ({
  user: u,
  active,
  roles,
  createdBy,
}: {
  user: Profile;
  active: boolean;
  roles: UserView['roles'];
  createdBy?: string | null | undefined;
}) => ({
  id: u.id,
  email: u.email,
  username: u.username,
  full_name: u.fullName,
  active,
  superuser: u.superuser,
  verified: u.verified,
  totp_enabled: u.totpEnabled,
  locked_until: iso(u.lockedUntil),
  last_login_at: iso(u.lastLoginAt),
  password_changed_at: iso(u.passwordChangedAt),
  // Who added the user to this org (the users API), not who created the account in another one.
  created_by: createdBy === undefined ? u.createdBy : createdBy,
  created_at: u.createdAt.toISOString(),
  updated_at: u.updatedAt.toISOString(),
  roles: [...roles],
});

const tokenPair = z.object({
  access_token: z.string(),
  refresh_token: z.string(),
  token_type: z.literal('Bearer'),
  expires_in: z.number().int(),
});

const sessionSchema = z.object({
  id: z.string(),
  org_id: z.string(),
  ip: z.string().nullable(),
  user_agent: z.string().nullable(),
  device_name: z.string().nullable(),
  created_at: z.string(),
  last_activity_at: z.string(),
  expires_at: z.string(),
  current: z.boolean(),
});

const sessionView = (s: Session, current: string | undefined) => ({
  id: s.id,
  org_id: s.orgId,
  ip: s.ip,
  user_agent: s.userAgent,
  device_name: s.deviceName,
  created_at: s.createdAt.toISOString(),
  last_activity_at: s.lastActivityAt.toISOString(),
  expires_at: s.expiresAt.toISOString(),
  current: s.id === current,
});

const orgSchema = z.object({ id: z.string(), slug: z.string(), name: z.string(), created_at: z.string() });
const orgView = (o: Organization) => ({
  id: o.id,
  slug: o.slug,
  name: o.name,
  created_at: o.createdAt.toISOString(),
});

/** The password policy's refusals of a new password (400), on every route that sets one. */
export const PASSWORD_POLICY_ERRORS = [
  'password_too_short',
  'password_too_long',
  'password_too_common',
  'password_contains_identity',
] as const;

/** Authz's refusals of a role a caller gives (its delegation rules; a role that does not exist). */
export const ROLE_ASSIGNMENT_ERRORS = [
  'role_escalation',
  'role_outlives_delegator',
  'role_not_found',
] as const;

export const idCursor = z.object({ id: z.string() });
export const idParams = z.strictObject({ id: z.string().max(100) });

export const originOf = (request: FastifyRequest): Origin => contextOf(request);

/** Users, orgs, login, 2FA, sessions, /v1/me and the JWKS. */
export const identityRoutes: FastifyPluginAsyncZod<{
  identity: IdentityService;
  authz: AuthzService;
}> = async (app, { identity, authz }) => {
  const tags = ['identity'];
  // Refused changes of users (their roles above all) are audited as authz's refusals are.
  const auditRefusal = refusalAuditor(authz);

  app.get(
    '/.well-known/jwks.json',
    {
      config: { access: 'public', errors: [] },
      schema: {
        tags,
        summary: 'Public keys that verify access tokens (active and recently retired)',
        response: { 200: z.object({ keys: z.array(z.record(z.string(), z.unknown())) }) },
      },
    },
    async (_request, reply) => {
      reply.header('cache-control', 'public, max-age=300');
      return identity.jwks();
    },
  );

  // ---------------------------------------------------------------- login

  app.post(
    '/v1/auth/login',
    {
      config: { access: 'public', errors: ['rate_limited', 'invalid_credentials', 'account_locked'] },
      schema: {
        tags,
        summary: 'Log in with email and password',
        description:
          'Answers the tokens, or `{mfa_required, mfa_token}` when 2FA is on. Unknown email and wrong password answer alike.',
        body: z.strictObject({
          email,
          password,
          org: z
            .string()
            .min(1)
            .max(100)
            .optional()
            .describe('Org slug or id; default: the first org joined.'),
          device_name: z.string().max(200).optional(),
        }),
        response: {
          200: z.union([tokenPair, z.object({ mfa_required: z.literal(true), mfa_token: z.string() })]),
        },
      },
    },
    async (request, reply) => {
      reply.header('cache-control', 'no-store');
      return identity.login(request.body, originOf(request));
    },
  );

  app.post(
    '/v1/auth/login/mfa',
    {
      config: {
        access: 'public',
        errors: [
          'rate_limited',
          'invalid_credentials',
          'mfa_token_invalid',
          'mfa_token_expired',
          'mfa_code_invalid',
          'mfa_code_replayed',
          'account_locked',
        ],
      },
      schema: {
        tags,
        summary: 'Second login step: a TOTP code or a recovery code',
        body: z.strictObject({
          mfa_token: z.string().min(1).max(200),
          code: z.string().min(1).max(64),
          device_name: z.string().max(200).optional(),
        }),
        response: { 200: tokenPair },
      },
    },
    async (request, reply) => {
      reply.header('cache-control', 'no-store');
      return identity.loginMfa(request.body, originOf(request));
    },
  );

  app.post(
    '/v1/auth/refresh',
    {
      config: {
        access: 'public',
        errors: ['refresh_token_invalid', 'refresh_token_reused', 'session_expired', 'session_revoked'],
      },
      schema: {
        tags,
        summary: 'Exchange a refresh token for new tokens (the old one stops working)',
        description:
          'Presenting an already-rotated refresh token revokes the whole session (`refresh_token_reused`).',
        body: z.strictObject({ refresh_token: z.string().min(1).max(300) }),
        response: { 200: tokenPair },
      },
    },
    async (request, reply) => {
      reply.header('cache-control', 'no-store');
      return identity.refresh(request.body.refresh_token, originOf(request));
    },
  );

  app.post(
    '/v1/auth/logout',
    {
      config: { access: 'authenticated', errors: ['not_a_user'] },
      schema: { tags, summary: 'End the current session', body: noBody, response: { 204: z.null() } },
    },
    async (request, reply) => {
      await identity.logout(callerOf(request), contextOf(request));
      return reply.code(204).send(null);
    },
  );

  app.get(
    '/v1/auth/sessions',
    {
      config: { access: 'authenticated', errors: ['not_a_user'] },
      schema: {
        tags,
        summary: "The caller's live sessions, newest first",
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(sessionSchema) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const after = decodeCursor(request.query.cursor, idCursor);
      const rows = await identity.listSessions(caller, {
        limit: request.query.limit + 1,
        afterId: after?.id,
      });
      const page = rows.slice(0, request.query.limit);
      const last = page.at(-1);
      return {
        data: page.map((s) => sessionView(s, caller.sessionId)),
        next_cursor: rows.length > page.length && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.delete(
    '/v1/auth/sessions/:id',
    {
      config: { access: 'authenticated', errors: ['session_not_found'] },
      schema: {
        tags,
        summary: 'Revoke a session (your own; or, with users:update, any in your org)',
        params: idParams,
        body: noBody,
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await identity.revokeSession(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/v1/auth/password',
    {
      config: {
        access: 'authenticated',
        errors: [
          ...PASSWORD_POLICY_ERRORS,
          'not_a_user',
          'password_incorrect',
          'user_not_found',
          'account_locked',
          // Another change with the same current password committed first.
          'conflict',
        ],
      },
      schema: {
        tags,
        summary: 'Change your password (ends your other sessions)',
        body: z.strictObject({ current_password: password, new_password: password }),
        response: { 200: z.object({ revoked_sessions: z.number().int() }) },
      },
    },
    async (request) => identity.changePassword(callerOf(request), request.body, contextOf(request)),
  );

  // ---------------------------------------------------------------- 2FA

  app.post(
    '/v1/auth/totp/enroll',
    {
      config: {
        access: 'authenticated',
        errors: [
          'not_a_user',
          'password_incorrect',
          'user_not_found',
          'totp_already_enabled',
          'account_locked',
          // The password changed or 2FA was turned on by another request meanwhile.
          'conflict',
        ],
      },
      schema: {
        tags,
        summary: 'Start TOTP enrolment (current password): a new secret to scan',
        description:
          'The current password is checked as a login checks it: a wrong one is 403 `password_incorrect`, ' +
          'counted toward the account lock (423 `account_locked`) and the per-IP limit (429).',
        body: z.strictObject({ password }),
        response: { 200: z.object({ secret: z.string(), otpauth_uri: z.string() }) },
      },
    },
    async (request, reply) => {
      reply.header('cache-control', 'no-store');
      return identity.enrollTotp(callerOf(request), request.body, contextOf(request));
    },
  );

  app.post(
    '/v1/auth/totp/confirm',
    {
      config: {
        access: 'authenticated',
        errors: [
          'totp_code_invalid',
          'not_a_user',
          'user_not_found',
          'totp_already_enabled',
          'totp_not_enrolled',
        ],
      },
      schema: {
        tags,
        summary: 'Turn 2FA on with a first code; returns 10 recovery codes, shown once',
        body: z.strictObject({ code: z.string().min(1).max(64) }),
        response: { 200: z.object({ recovery_codes: z.array(z.string()) }) },
      },
    },
    async (request, reply) => {
      reply.header('cache-control', 'no-store');
      return identity.confirmTotp(callerOf(request), request.body.code, contextOf(request));
    },
  );

  app.post(
    '/v1/auth/totp/disable',
    {
      config: {
        access: 'authenticated',
        errors: [
          'totp_code_invalid',
          'not_a_user',
          'password_incorrect',
          'user_not_found',
          'totp_not_enabled',
          'account_locked',
        ],
      },
      schema: {
        tags,
        summary: 'Turn 2FA off (password and a current code or a recovery code)',
        body: z.strictObject({ password, code: z.string().min(1).max(64) }),
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await identity.disableTotp(callerOf(request), request.body, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  // ---------------------------------------------------------------- me

  app.get(
    '/v1/me',
    {
      config: { access: 'authenticated', errors: ['not_a_user', 'user_not_found'] },
      schema: {
        tags,
        summary: 'The caller: user, org, roles, 2FA state',
        response: {
          200: z.object({
            user: userSchema,
            org_id: z.string(),
            roles: z.array(z.string()),
            superuser: z.boolean(),
            session_id: z.string().nullable(),
            totp_enabled: z.boolean(),
          }),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      // From memory when warm; roles, superuser and the session are the principal's (this request's).
      const user = await identity.me(caller);
      return {
        user: userView({ user, active: user.active, roles: caller.roles }),
        org_id: caller.orgId,
        roles: [...caller.roles],
        superuser: caller.superuser,
        session_id: caller.sessionId ?? null,
        totp_enabled: user.totpEnabled,
      };
    },
  );

  app.get(
    '/v1/auth/whoami',
    {
      config: { access: 'authenticated', errors: [] },
      schema: {
        tags,
        summary:
          'The principal behind this request, as the access token and role index say (no database read)',
        response: {
          200: z.object({
            id: z.string(),
            kind: z.string(),
            org_id: z.string(),
            name: z.string(),
            roles: z.array(z.string()),
            superuser: z.boolean(),
            session_id: z.string().nullable(),
          }),
        },
      },
    },
    async (request) => {
      const p = callerOf(request);
      return {
        id: p.id,
        kind: p.kind,
        org_id: p.orgId,
        name: p.name,
        roles: [...p.roles],
        superuser: p.superuser,
        session_id: p.sessionId ?? null,
      };
    },
  );

  // ---------------------------------------------------------------- users

  app.post(
    '/v1/users',
    {
      onError: auditRefusal('user.created', 'user'),
      config: {
        access: { permission: 'users:create' },
        errors: [...PASSWORD_POLICY_ERRORS, ...ROLE_ASSIGNMENT_ERRORS, 'email_taken', 'username_taken'],
      },
      schema: {
        tags,
        summary: "Create a user in the caller's org",
        body: z.strictObject({
          email: newEmail,
          password,
          username: username.optional(),
          full_name: z.string().min(1).max(200).optional(),
          roles: z.array(roleName).max(20).optional(),
        }),
        response: { 201: userSchema },
      },
    },
    async (request, reply) => {
      const created = await identity.createUser(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send(userView(created));
    },
  );

  app.get(
    '/v1/users',
    {
      config: { access: { permission: 'users:read' }, errors: [] },
      schema: {
        tags,
        summary: "Users of the caller's org",
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(userSchema) },
      },
    },
    async (request) => {
      const after = decodeCursor(request.query.cursor, idCursor);
      const { views, more } = await identity.listUsers(callerOf(request), {
        limit: request.query.limit,
        afterId: after?.id,
      });
      const last = views.at(-1);
      return {
        data: views.map(userView),
        next_cursor: more && last ? encodeCursor({ id: last.user.id }) : null,
      };
    },
  );

  app.get(
    '/v1/users/:id',
    {
      config: { access: { permission: 'users:read' }, errors: ['user_not_found'] },
      schema: { tags, summary: 'One user', params: idParams, response: { 200: userSchema } },
    },
    async (request) => userView(await identity.getUser(callerOf(request), request.params.id)),
  );

  app.patch(
    '/v1/users/:id',
    {
      onError: auditRefusal('user.updated', 'user'),
      config: {
        access: { permission: 'users:update' },
        errors: [
          'superuser_protected',
          'self_modification',
          ...ROLE_ASSIGNMENT_ERRORS,
          'user_not_found',
          'principal_not_found',
          'cannot_deactivate_self',
          'last_superuser',
          'username_taken',
          'shared_account',
        ],
      },
      schema: {
        tags,
        summary: 'Edit a user: name, username, active, roles (replaces the set)',
        description:
          'Name and username belong to the account, which may belong to other orgs too: changing them ' +
          "for such an account needs a superuser (403 `shared_account`); active and roles are this org's.",
        params: idParams,
        body: z.strictObject({
          full_name: z.string().min(1).max(200).nullable().optional(),
          username: username.nullable().optional(),
          active: z.boolean().optional(),
          roles: z.array(roleName).max(20).optional(),
        }),
        response: { 200: userSchema },
      },
    },
    async (request) =>
      userView(
        await identity.updateUser(callerOf(request), request.params.id, request.body, contextOf(request)),
      ),
  );

  app.post(
    '/v1/users/:id/unlock',
    {
      onError: auditRefusal('user.unlocked', 'user'),
      config: { access: { permission: 'users:update' }, errors: ['user_not_found', 'shared_account'] },
      schema: {
        tags,
        summary: 'Clear a lockout',
        description:
          'A user who is not locked is answered as is, and nothing is audited. The lock is the ' +
          "account's, in every org it belongs to: for an account that also belongs to another org only " +
          'a superuser may clear it (403 `shared_account`).',
        params: idParams,
        body: noBody,
        response: { 200: userSchema },
      },
    },
    async (request) =>
      userView(await identity.unlockUser(callerOf(request), request.params.id, contextOf(request))),
  );

  app.post(
    '/v1/users/:id/totp/reset',
    {
      onError: auditRefusal('user.totp_disabled', 'user'),
      config: {
        access: { permission: 'users:admin' },
        errors: ['user_not_found', 'shared_account', 'self_modification', 'superuser_protected'],
      },
      schema: {
        tags,
        summary: "Reset a user's 2FA (turns it off; they enrol again)",
        description:
          'For a user who lost their authenticator and recovery codes. Not for oneself (403 ' +
          '`self_modification`: use `POST /v1/auth/totp/disable`), nor a superuser unless the caller ' +
          'is one (403 `superuser_protected`), nor an account that also belongs to another org unless ' +
          'the caller is a superuser (403 `shared_account`). A user with 2FA off is answered as is.',
        params: idParams,
        body: noBody,
        response: { 200: userSchema },
      },
    },
    async (request) =>
      userView(await identity.resetTotp(callerOf(request), request.params.id, contextOf(request))),
  );

  app.get(
    '/v1/users/:id/sessions',
    {
      // Who may revoke a session may see it; IPs and user agents are more than users:read shows.
      config: { access: { permission: 'users:update' }, errors: ['user_not_found'] },
      schema: {
        tags,
        summary: "A user's live sessions in the caller's org, newest first",
        description: 'Revoke one with `DELETE /v1/auth/sessions/{id}` (needs `users:update`).',
        params: idParams,
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(sessionSchema) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const after = decodeCursor(request.query.cursor, idCursor);
      const rows = await identity.listUserSessions(caller, request.params.id, {
        limit: request.query.limit + 1,
        afterId: after?.id,
      });
      const page = rows.slice(0, request.query.limit);
      const last = page.at(-1);
      return {
        data: page.map((s) => sessionView(s, caller.sessionId)),
        next_cursor: rows.length > page.length && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.delete(
    '/v1/users/:id',
    {
      onError: auditRefusal('user.deactivated', 'user'),
      config: {
        access: { permission: 'users:delete' },
        errors: [
          'superuser_protected',
          'role_escalation',
          'user_not_found',
          'cannot_deactivate_self',
          'last_superuser',
        ],
      },
      schema: {
        tags,
        summary: 'Deactivate a user in this org (history is kept; sessions end)',
        params: idParams,
        body: noBody,
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await identity.deactivateUser(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  // ---------------------------------------------------------------- orgs

  app.get(
    '/v1/orgs',
    {
      config: { access: 'authenticated', errors: [] },
      schema: {
        tags,
        summary: 'Orgs the caller belongs to (every org, for a superuser), oldest first',
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(orgSchema) },
      },
    },
    async (request) => {
      const after = decodeCursor(request.query.cursor, idCursor);
      const { orgs, more } = await identity.listOrgs(callerOf(request), {
        limit: request.query.limit,
        afterId: after?.id,
      });
      const last = orgs.at(-1);
      return {
        data: orgs.map(orgView),
        next_cursor: more && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.post(
    '/v1/orgs',
    {
      // Superusers only: no permission stands for that (an org admin's org:admin is one org's), so
      // the access layer admits any caller and the service refuses all but a superuser (403). The
      // route declared org:admin, which told org admins they could.
      config: {
        access: 'authenticated',
        errors: ['permission_denied', 'user_not_found', 'principal_not_found', 'org_slug_taken'],
      },
      schema: {
        tags,
        summary: 'Create an org (superuser); the creator and admin_user_id become its admins',
        description:
          'Superuser only: any other caller, an org admin included, is refused with 403 `permission_denied`.',
        body: z.strictObject({
          slug: z.string().regex(/^[a-z0-9][a-z0-9-]{1,62}$/, 'lower-case letters, digits and -'),
          name: z.string().min(1).max(200),
          admin_user_id: z.string().max(100).optional(),
        }),
        response: { 201: orgSchema },
      },
    },
    async (request, reply) => {
      const org = await identity.createOrg(callerOf(request), request.body, contextOf(request));
      return reply.code(201).send(orgView(org));
    },
  );
};
