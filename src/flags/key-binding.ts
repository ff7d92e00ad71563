import type { FastifyInstance, FastifyRequest } from 'fastify';
import { flagErrors } from './errors.ts';
import type { KeyAccessOf } from './unleash-api.ts';

/**
 * What a route with an `{env}` parameter may answer for a key (`config.errors`): another
 * environment than the one the key is bound to (403), or the key deleted between its verification
 * and the lookup of its environment (404).
 */
export const BOUND_KEY_ERRORS = ['key_environment_mismatch', 'api_key_not_found'] as const;

/**
 * Holds a key bound to an environment (`KeyAccess.bound`: `metadata.flags_environment`, or a
 * `stw_test_…` key) to it on every route of this plugin with an `{env}` parameter: any other is
 * 403 `key_environment_mismatch`, reads and writes alike. Users, agents' tokens and unbound keys
 * are untouched. Runs after the route's access check (authentication, permission), before the
 * body is read; from the key cache when warm. Call before the plugin declares its routes.
 */
export function holdKeysToTheirEnvironment(app: FastifyInstance, accessOf: KeyAccessOf): void {
  const check = async (request: FastifyRequest): Promise<void> => {
    const principal = request.principal;
    if (principal?.keyId === undefined) return;
    const env = (request.params as { env?: unknown } | undefined)?.env;
    if (typeof env !== 'string') return;
    const access = await accessOf(principal);
    if (access.bound && access.environment !== env) {
      throw flagErrors.key_environment_mismatch(
        `This API key is bound to the flags environment ${access.environment}`,
        { key_environment: access.environment },
      );
    }
  };
  app.addHook('onRoute', (route) => {
    if (!route.url.includes(':env')) return;
    const existing = route.onRequest;
    // Appended: the access layer puts its hook first, whichever onRoute hook runs first.
    route.onRequest =
      existing === undefined ? [check] : [...(Array.isArray(existing) ? existing : [existing]), check];
  });
}
