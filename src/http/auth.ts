import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify';
import { httpErrors } from './errors.ts';
import type { Principal } from './principal.ts';

/**
 * What a route needs: a `resource:action` permission, any authenticated caller,
 * or nothing. Every route declares one; a route without one refuses to register.
 */
export type RouteAccess = { permission: string } | 'authenticated' | 'public';

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyRequest {
    /** The authenticated caller; null only on public routes. */
    principal: Principal | null;
    /** Response headers an authenticator asks for (an API key's `RateLimit-*`); null: none. */
    authHeaders: Record<string, string> | null;
  }
}

/**
 * Turns a credential into a Principal. Returns null when the request carries no
 * credential of its kind (the next authenticator is tried); throws a StewardError
 * for a credential of its kind that is bad (expired, revoked, malformed).
 */
export interface Authenticator {
  readonly name: string;
  authenticate(request: FastifyRequest): Promise<Principal | null> | Principal | null;
}

/** Answers route-level permission checks; the authz domain provides the real one. */
export interface Authorizer {
  can(principal: Principal, permission: string): boolean;
  /**
   * Makes `can` answerable for this principal (the authz domain loads the org's index on first
   * sight). Returns undefined when nothing needs waiting for, so a warm request never awaits.
   */
  prepare?(principal: Principal): Promise<void> | undefined;
}

/** Until the authz domain plugs in, only superusers pass: denied by default. */
export const superuserOnlyAuthorizer: Authorizer = { can: (principal) => principal.superuser };

/** The pluggable authentication chain and authorizer shared by every domain. */
export class AuthRegistry {
  private readonly authenticators: Authenticator[] = [];
  authorizer: Authorizer = superuserOnlyAuthorizer;

  addAuthenticator(authenticator: Authenticator): void {
    this.authenticators.push(authenticator);
  }

  async authenticate(request: FastifyRequest): Promise<Principal | null> {
    for (const authenticator of this.authenticators) {
      const principal = await authenticator.authenticate(request);
      if (principal) return principal;
    }
    return null;
  }
}

function requireCaller(registry: AuthRegistry, permission: string | null): onRequestHookHandler {
  return async (request, reply) => {
    const principal = await registry.authenticate(request);
    if (!principal) throw httpErrors.unauthenticated('Send a bearer token or an API key');
    request.principal = principal;
    if (request.authHeaders !== null) reply.headers(request.authHeaders);
    if (permission === null) return;
    const pending = registry.authorizer.prepare?.(principal);
    if (pending !== undefined) await pending;
    if (!registry.authorizer.can(principal, permission)) {
      throw httpErrors.permission_denied(`This action needs ${permission}`, { permission });
    }
  };
}

/** Routes outside /v1 that are public by nature may omit `access`. */
const IMPLICITLY_PUBLIC = /^\/(docs|openapi\.json|healthz|readyz|metrics|\.well-known)(\/|$)/;

/**
 * Enforces the access declaration of every route: authentication and the route's
 * permission run in onRequest, before the body is read or validated, so an
 * anonymous caller learns nothing from validation errors.
 */
export function installAccessControl(app: FastifyInstance, registry: AuthRegistry): void {
  app.decorateRequest('principal', null);
  app.decorateRequest('authHeaders', null);
  app.addHook('onRoute', (route) => {
    const access = route.config?.access;
    if (access === undefined) {
      // CORS preflights never carry credentials: @fastify/cors's OPTIONS route is public by nature.
      if (IMPLICITLY_PUBLIC.test(route.url) || route.method === 'OPTIONS') return;
      throw new Error(
        `Route ${route.method} ${route.url} declares no access (permission, authenticated or public)`,
      );
    }
    if (access === 'public') return;
    const hook = requireCaller(registry, access === 'authenticated' ? null : access.permission);
    const existing = route.onRequest;
    route.onRequest =
      existing === undefined ? [hook] : [hook, ...(Array.isArray(existing) ? existing : [existing])];
  });
}

/** The caller of an authenticated route (a route-level guarantee, checked here for the compiler). */
export function callerOf(request: FastifyRequest): Principal {
  if (!request.principal) throw httpErrors.unauthenticated();
  return request.principal;
}
