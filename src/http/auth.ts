import type {
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  HookHandlerDoneFunction,
  onRequestHookHandler,
} from 'fastify';
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
  /**
   * Optional cheap, synchronous test: true when the request carries this authenticator's kind
   * of credential and no other kind. Authenticators that have one are asked before the chain,
   * so a recognised request skips the others (and, when `authenticate` answers synchronously,
   * never waits for a promise: the API key hot path).
   */
  recognizes?(request: FastifyRequest): boolean;
  /** Every error code `authenticate` may throw (documented on every route that needs a caller). */
  readonly errors: readonly string[];
  authenticate(request: FastifyRequest): Promise<Principal | null> | Principal | null;
}

type MaybePromise<T> = T | Promise<T>;

/** Answers route-level permission checks; the authz domain provides the real one. */
export interface Authorizer {
  can(principal: Principal, permission: string): boolean;
  /**
   * Makes `can` answerable for this principal (the authz domain loads the org's index on first
   * sight). Returns undefined when nothing needs waiting for, so a warm request never awaits.
   */
  prepare?(principal: Principal): Promise<void> | undefined;
  /** Every error code `can` and `prepare` may throw, beyond `permission_denied`. */
  readonly errors?: readonly string[];
}

/** Until the authz domain plugs in, only superusers pass: denied by default. */
export const superuserOnlyAuthorizer: Authorizer = { can: (principal) => principal.superuser };

/** The pluggable authentication chain and authorizer shared by every domain. */
export class AuthRegistry {
  private readonly authenticators: Authenticator[] = [];
  authorizer: Authorizer = superuserOnlyAuthorizer;

  private readonly recognizers: Authenticator[] = [];
  /**
   * The codes the access layer may answer on any route that needs a caller: its authenticators'
   * and its authorizer's. The OpenAPI document lists them under those routes' 401, 403 and 429.
   */
  accessCodes(): ReadonlySet<string> {
    return new Set([...this.authenticators.flatMap((a) => a.errors), ...(this.authorizer.errors ?? [])]);
  }

  addAuthenticator(authenticator: Authenticator): void {
    this.authenticators.push(authenticator);
    if (authenticator.recognizes !== undefined) this.recognizers.push(authenticator);
  }

  /**
   * The caller, or null when no authenticator finds a credential. Synchronous when the
   * authenticator that answers is (a warm API key), so the hot path allocates no promise.
   */
  authenticate(request: FastifyRequest): MaybePromise<Principal | null> {
    for (const authenticator of this.recognizers) {
      if (authenticator.recognizes?.(request) !== true) continue;
      const principal = authenticator.authenticate(request);
      if (principal instanceof Promise) return principal.then((p) => p ?? this.chain(request, 0));
      if (principal !== null) return principal;
      break;
    }
    return this.chain(request, 0);
  }

  /** Tries the authenticators in registration order, from `from`; awaits only those that return promises. */
  private chain(request: FastifyRequest, from: number): MaybePromise<Principal | null> {
    for (let i = from; i < this.authenticators.length; i++) {
      const principal = (this.authenticators[i] as Authenticator).authenticate(request);
      if (principal instanceof Promise) return principal.then((p) => p ?? this.chain(request, i + 1));
      if (principal !== null) return principal;
    }
    return null;
  }
}

function requireCaller(registry: AuthRegistry, permission: string | null): onRequestHookHandler {
  // A callback hook, not an async one: a warm API key or token is admitted without a promise
  // or a microtask (docs/adr/0003).
  function admit(
    request: FastifyRequest,
    reply: FastifyReply,
    principal: Principal | null,
    done: HookHandlerDoneFunction,
  ): void {
    if (!principal) {
      done(httpErrors.unauthenticated('Send a bearer token or an API key'));
      return;
    }
    request.principal = principal;
    if (request.authHeaders !== null) reply.headers(request.authHeaders);
    if (permission === null) {
      done();
      return;
    }
    let pending: Promise<void> | undefined;
    try {
      pending = registry.authorizer.prepare?.(principal);
    } catch (error) {
      done(error as Error);
      return;
    }
    if (pending === undefined) decide(principal, permission, done);
    else pending.then(() => decide(principal, permission, done), done);
  }
  function decide(principal: Principal, needed: string, done: HookHandlerDoneFunction): void {
    let allowed: boolean;
    try {
      allowed = registry.authorizer.can(principal, needed);
    } catch (error) {
      done(error as Error);
      return;
    }
    if (allowed) done();
    else done(httpErrors.permission_denied(`This action needs ${needed}`, { permission: needed }));
  }
  return (request, reply, done) => {
    let found: MaybePromise<Principal | null>;
    try {
      found = registry.authenticate(request);
    } catch (error) {
      done(error as Error);
      return;
    }
    if (found instanceof Promise) {
      found.then(
        (principal) => admit(request, reply, principal, done),
        (error: unknown) => done(error as Error),
      );
    } else {
      admit(request, reply, found, done);
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
