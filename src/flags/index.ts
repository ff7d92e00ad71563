import type { FastifyInstance } from 'fastify';
import type { StewardContext } from '../context.ts';
import type { FourEyesService } from '../vault/four-eyes.ts';
import type { Access } from '../vault/secrets/service.ts';
import { flagRoutes } from './routes.ts';
import { createFlagService } from './service.ts';
import { createStreamHub } from './stream.ts';
import type { Feature } from './types.ts';
import { unleashClientRoutes } from './unleash-api.ts';

/** Heartbeat comment on every server-sent-events stream. */
const HEARTBEAT_MS = 15_000;

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
    onError: (error, what) => app.log.error({ err: error }, what),
  });
  changes.register('flag.create', async (who: Access, payload, _target, by) => {
    return (await flags.apply.create(who, payload as { environment: string; feature: Feature }, by)).id;
  });
  changes.register('flag.replace', async (who, payload, _target, by) => {
    const p = payload as { environment: string; feature: Feature; expectedVersion: number };
    return (await flags.apply.replace(who, p, by)).id;
  });
  changes.register('flag.delete', async (who, payload, _target, by) => {
    return flags.apply.remove(
      who,
      payload as { environment: string; name: string; expectedVersion: number },
      by,
    );
  });

  const hub = createStreamHub(HEARTBEAT_MS);
  // Streams never end by themselves: close them before the server waits for its connections.
  app.addHook('preClose', (done) => {
    hub.closeAll();
    done();
  });
  await app.register(flagRoutes, { flags, hub });
  await app.register(unleashClientRoutes, { flags, keys: ctx.keys.service, bus: ctx.bus });
  return { flags, hub };
}
