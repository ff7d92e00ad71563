import type { FastifyInstance } from 'fastify';
import type { StewardContext } from '../context.ts';
import type { Environment } from '../tenancy/service.ts';
import type { FourEyesService } from '../vault/four-eyes.ts';
import { FLAG_CHANGE_ERRORS } from './errors.ts';
import { createFlagMetrics, flagMetricsRoutes } from './metrics.ts';
import { flagRoutes } from './routes.ts';
import { createFlagService, type SegmentInput } from './service.ts';
import { createStreamHub } from './stream.ts';
import { createStreamGuard } from './stream-guard.ts';
import type { Feature } from './types.ts';
import { createKeyAccess, unleashClientRoutes } from './unleash-api.ts';

/** Heartbeat comment on every server-sent-events stream. */
const HEARTBEAT_MS = 15_000;
/** How often SDK metrics past their retention are deleted. */
const PURGE_EVERY_MS = 3_600_000;

/**
 * Feature flags: the service (compiled engines per org + environment, invalidated over the bus),
 * `/v1/flags…`, `/v1/segments…`, the Unleash client API and the event stream. Registered by the
 * vault plugin, which owns four-eyes: production changes are held there and applied here.
 */
export async function registerFlags(
  app: FastifyInstance,
  { ctx, changes }: { ctx: StewardContext; changes: FourEyesService },
) {
  const flags = createFlagService({
    db: ctx.db,
    audit: ctx.audit,
    tenancy: ctx.tenancy,
    bus: ctx.bus,
    clock: ctx.clock,
    fourEyes: changes.fourEyes,
    authz: ctx.authz,
    recheckMs: ctx.config.FLAG_RECHECK_MS,
    onError: (error, what) => app.log.error({ err: error }, what),
  });
  ctx.onShutdown(() => flags.stop());
  const envOf = (env: Environment | null): Environment => {
    if (env === null) throw new Error('a flag change without its environment');
    return env;
  };
  // What applying a held flag or segment change may refuse with: listed on the approval route.
  const register = (kind: string, applier: Parameters<typeof changes.register>[1]) =>
    changes.register(kind, applier, FLAG_CHANGE_ERRORS);
  register('flag.create', ({ tx, requester, payload, environment, approvedBy }) =>
    flags.apply.create(tx, requester, envOf(environment), payload as { feature: Feature }, approvedBy),
  );
  // Replace and delete act on the flag they were made against (`targetId`), never on another
  // flag given its name since.
  register('flag.replace', ({ tx, requester, payload, targetId, environment, approvedBy }) =>
    flags.apply.replace(
      tx,
      requester,
      envOf(environment),
      payload as { feature: Feature; expectedVersion: number },
      targetId,
      approvedBy,
    ),
  );
  register('flag.delete', ({ tx, requester, payload, targetId, environment, approvedBy }) =>
    flags.apply.remove(
      tx,
      requester,
      envOf(environment),
      payload as { name: string; expectedVersion: number },
      targetId,
      approvedBy,
    ),
  );
  for (const kind of ['segment.create', 'segment.update'] as const) {
    register(kind, ({ tx, requester, payload, approvedBy }) =>
      flags.apply.putSegment(
        tx,
        requester,
        payload as { id: number | null; input: SegmentInput; expectedVersion: number | null },
        approvedBy,
      ),
    );
  }
  register('segment.delete', ({ tx, requester, payload, approvedBy }) =>
    flags.apply.removeSegment(tx, requester, payload as { id: number; expectedVersion: number }, approvedBy),
  );

  const hub = createStreamHub(HEARTBEAT_MS);
  // Streams never end by themselves: close them before the server waits for its connections.
  app.addHook('preClose', (done) => {
    hub.closeAll();
    done();
  });
  const keyAccess = createKeyAccess({ keys: ctx.keys.service, bus: ctx.bus });
  // `/v1/flags/{env}/stream` is re-authenticated like `/api/client/streaming`, and also ends when
  // the session it was opened with is revoked or logged out.
  const guard = createStreamGuard({
    bus: ctx.bus,
    clock: ctx.clock,
    sessionRevoked: (sid) => ctx.identity.revocation.isRevoked(sid),
    authz: ctx.authz,
    onError: (error, what) => app.log.error({ err: error }, what),
  });
  await app.register(flagRoutes, { flags, hub, guard, keyAccess });
  const metrics = createFlagMetrics({ db: ctx.db, clock: ctx.clock });
  const retention = setInterval(() => {
    metrics
      .purge(ctx.config.FLAG_METRICS_RETENTION_DAYS)
      .catch((error: unknown) => app.log.error({ err: error }, 'flag metrics purge'));
  }, PURGE_EVERY_MS);
  retention.unref();
  ctx.onShutdown(async () => clearInterval(retention));
  await app.register(flagMetricsRoutes, { flags, metrics, keyAccess });
  await app.register(unleashClientRoutes, {
    flags,
    metrics,
    accessOf: keyAccess,
    bus: ctx.bus,
    clock: ctx.clock,
    authz: ctx.authz,
  });
  return { flags, hub, metrics };
}
