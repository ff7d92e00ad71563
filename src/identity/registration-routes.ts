import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { refusalAuditor } from '../authz/refusals.ts';
import type { AuthzService } from '../authz/service.ts';
import { callerOf } from '../http/auth.ts';
import { noBody } from '../http/body.ts';
import { contextOf } from '../http/context.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import { type Invitation, invitationStatus } from './invitations.ts';
import {
  idCursor,
  idParams,
  newEmail,
  originOf,
  PASSWORD_POLICY_ERRORS,
  password,
  ROLE_ASSIGNMENT_ERRORS,
  roleName,
  username,
  userSchema,
  userView,
} from './routes.ts';
import type { IdentityService } from './service.ts';

const invitationSchema = z.object({
  id: z.string(),
  org_id: z.string(),
  email: z.string(),
  roles: z.array(z.string()),
  status: z.enum(['pending', 'accepted', 'revoked', 'expired']),
  created_by: z.string().nullable(),
  created_at: z.string(),
  expires_at: z.string(),
  accepted_at: z.string().nullable(),
  accepted_user_id: z.string().nullable(),
  revoked_at: z.string().nullable(),
});

const iso = (d: Date | null) => (d ? d.toISOString() : null);

const invitationView = (i: Invitation, now: Date) => ({
  id: i.id,
  org_id: i.orgId,
  email: i.email,
  roles: [...i.roles],
  status: invitationStatus(i, now),
  created_by: i.createdBy,
  created_at: i.createdAt.toISOString(),
  expires_at: i.expiresAt.toISOString(),
  accepted_at: iso(i.acceptedAt),
  accepted_user_id: i.acceptedUserId,
  revoked_at: iso(i.revokedAt),
});

const registered = z.object({ user: userSchema, org_id: z.string() });
const profile = {
  password,
  username: username.optional(),
  full_name: z.string().min(1).max(200).optional(),
};

/** Invitations, their acceptance, open sign-up and its per-org setting. */
export const registrationRoutes: FastifyPluginAsyncZod<{
  identity: IdentityService;
  authz: AuthzService;
  clock: () => Date;
}> = async (app, { identity, authz, clock }) => {
  const tags = ['identity'];
  // Refused invitations and sign-up settings (a role the caller may not hand out) are audited.
  const auditRefusal = refusalAuditor(authz);

  app.post(
    '/v1/invitations',
    {
      onError: auditRefusal('invitation.created', 'invitation'),
      config: {
        access: { permission: 'users:create' },
        errors: [...ROLE_ASSIGNMENT_ERRORS, 'already_member'],
      },
      schema: {
        tags,
        summary: "Invite someone into the caller's org (the token is in this response only)",
        description:
          'Hand the token to the invitee, who calls `POST /v1/auth/invitations/accept`. Roles are checked now: ' +
          'you cannot invite with a role you could not assign. Someone with an account (in another org) may be ' +
          'invited; a member of this org may not (`already_member` 409).',
        body: z.strictObject({
          email: newEmail,
          roles: z.array(roleName).max(20).optional(),
          expires_in_hours: z
            .number()
            .int()
            .min(1)
            .max(24 * 30)
            .optional()
            .describe('Default 168 (7 days).'),
        }),
        response: {
          201: invitationSchema.extend({ token: z.string().describe('Single use. Shown once.') }),
        },
      },
    },
    async (request, reply) => {
      const { invitation, token } = await identity.createInvitation(
        callerOf(request),
        request.body,
        contextOf(request),
      );
      reply.header('cache-control', 'no-store');
      return reply.code(201).send({ ...invitationView(invitation, clock()), token });
    },
  );

  app.get(
    '/v1/invitations',
    {
      config: { access: { permission: 'users:read' }, errors: [] },
      schema: {
        tags,
        summary: "Invitations of the caller's org, newest first",
        querystring: z.strictObject(pageQuery),
        response: { 200: listResponse(invitationSchema) },
      },
    },
    async (request) => {
      const after = decodeCursor(request.query.cursor, idCursor);
      const rows = await identity.listInvitations(callerOf(request), {
        limit: request.query.limit + 1,
        afterId: after?.id,
      });
      const page = rows.slice(0, request.query.limit);
      const last = page.at(-1);
      const now = clock();
      return {
        data: page.map((i) => invitationView(i, now)),
        next_cursor: rows.length > page.length && last ? encodeCursor({ id: last.id }) : null,
      };
    },
  );

  app.delete(
    '/v1/invitations/:id',
    {
      onError: auditRefusal('invitation.revoked', 'invitation'),
      config: { access: { permission: 'users:create' }, errors: ['invitation_not_found', 'invitation_used'] },
      schema: {
        tags,
        summary: 'Revoke a pending invitation (an accepted one answers 409 invitation_used)',
        params: idParams,
        body: noBody,
        response: { 204: z.null() },
      },
    },
    async (request, reply) => {
      await identity.revokeInvitation(callerOf(request), request.params.id, contextOf(request));
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/v1/auth/invitations/accept',
    {
      config: {
        access: 'public',
        errors: [
          'rate_limited',
          ...PASSWORD_POLICY_ERRORS,
          'invalid_credentials',
          'role_not_found',
          'invitation_invalid',
          'invitation_used',
          'already_member',
          'email_taken',
          'username_taken',
          'invitation_expired',
          'invitation_revoked',
          'account_locked',
        ],
      },
      schema: {
        tags,
        summary: 'Accept an invitation: creates your user in the inviting org (or joins it), then log in',
        description:
          'When the invited email has an account already, `password` is its current password (unchanged) and ' +
          'the account joins the org with the invited roles; a wrong one is `invalid_credentials` 401 and counts ' +
          'against the per-IP login limit. ' +
          'Errors: `invitation_invalid` 404, `invitation_expired` / `invitation_revoked` 410, ' +
          '`invitation_used` / `already_member` 409, password policy 400, `username_taken` 409.',
        body: z.strictObject({ token: z.string().min(1).max(200), ...profile }),
        response: { 201: registered },
      },
    },
    async (request, reply) => {
      const { view, orgId } = await identity.acceptInvitation(request.body, originOf(request));
      return reply.code(201).send({ user: userView(view), org_id: orgId });
    },
  );

  app.post(
    '/v1/auth/signup',
    {
      config: {
        access: 'public',
        errors: [
          'rate_limited',
          ...PASSWORD_POLICY_ERRORS,
          'signup_disabled',
          'email_taken',
          'username_taken',
        ],
      },
      schema: {
        tags,
        summary: 'Open sign-up into an org that allows it (off by default); the user starts with no role',
        description: 'A closed or unknown org answers 403 `signup_disabled`.',
        body: z.strictObject({
          email: newEmail,
          org: z.string().min(1).max(100).describe('Org slug or id.'),
          ...profile,
        }),
        response: { 201: registered },
      },
    },
    async (request, reply) => {
      const { view, orgId } = await identity.signup(request.body, originOf(request));
      return reply.code(201).send({ user: userView(view), org_id: orgId });
    },
  );

  const openSignup = z.boolean().describe('Anyone may create a user in this org with POST /v1/auth/signup.');
  const signupRole = z
    .string()
    .min(1)
    .max(100)
    .nullable()
    .describe(
      'The role a signed-up user starts with (one you can assign yourself); null: none until an admin gives one.',
    );
  const settingsSchema = z.object({ open_signup: openSignup, signup_role: signupRole });
  const settingsBody = z.strictObject({ open_signup: openSignup, signup_role: signupRole.optional() });
  const settingsView = (s: { openSignup: boolean; signupRole: string | null }) => ({
    open_signup: s.openSignup,
    signup_role: s.signupRole,
  });

  app.get(
    '/v1/auth/settings',
    {
      config: { access: { permission: 'org:read' }, errors: [] },
      schema: { tags, summary: "The org's registration settings", response: { 200: settingsSchema } },
    },
    async (request) => {
      return settingsView(await identity.getSignupSettings(callerOf(request)));
    },
  );

  app.put(
    '/v1/auth/settings',
    {
      onError: auditRefusal('signup.policy_changed', 'org'),
      config: { access: { permission: 'org:admin' }, errors: [...ROLE_ASSIGNMENT_ERRORS] },
      schema: {
        tags,
        summary: "Set the org's registration settings",
        description: 'Replaces both settings: an omitted `signup_role` is none.',
        body: settingsBody,
        response: { 200: settingsSchema },
      },
    },
    async (request) => {
      const s = await identity.putSignupSettings(
        callerOf(request),
        { openSignup: request.body.open_signup, signupRole: request.body.signup_role ?? null },
        contextOf(request),
      );
      return settingsView(s);
    },
  );
};
