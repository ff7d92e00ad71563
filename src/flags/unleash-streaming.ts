import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Authz } from '../authz/contract.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { callerOf } from '../http/auth.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import type { FlagService, FlagSnapshot } from './service.ts';
import { createStreamHub } from './stream.ts';
import { createStreamGuard } from './stream-guard.ts';
import type { DeltaEvent } from './types.ts';

/** What an Unleash client key reads, and until when (resolved by the client API plugin). */
export interface KeyAccess {
  keyId: string;
  environment: string;
  /**
   * Whether the key is held to `environment` on `/v1/flags/{env}…` too: it names one
   * (`metadata.flags_environment`) or is a `stw_test_…` key. A `stw_live_…` key without the
   * metadata reads `production` here but may use any environment on `/v1` (its scopes permitting).
   */
  bound: boolean;
  expiresAt: Date | null;
}

/**
 * What every client API route may answer of its own (`config.errors`): the environment the key
 * names may not exist (404 `environment_not_found`), and a key deleted between its verification
 * and the lookup of its environment is 404 `api_key_not_found`. A user token is 403, shared.
 */
export const CLIENT_API_ERRORS = ['environment_not_found', 'api_key_not_found'] as const;

/** Streams one key may hold open on one instance; beyond, 429 (unleash-client then polls). */
export const MAX_STREAMS_PER_KEY = 500;
/** A `: heartbeat` comment this often: unleash-client drops a stream silent for 60 s. */
const HEARTBEAT_MS = 15_000;

const hydration = (s: FlagSnapshot): DeltaEvent[] => [
  { type: 'hydration', eventId: s.revision, features: [...s.features], segments: [...s.segments] },
];

/**
 * `GET /api/client/streaming`, Unleash's streaming client endpoint (unleash-client with
 * `experimentalMode: {type: 'streaming'}`): server-sent events `unleash-connected` (a hydration)
 * then `unleash-updated` (the changes), in the delta API's format, each with the state's ETag as
 * its `id`. A client reconnecting with `Last-Event-ID` naming the current state gets nothing
 * again. Registered inside the client API plugin, whose hook reads the raw key.
 */
export const unleashStreamingRoutes: FastifyPluginAsyncZod<{
  flags: FlagService;
  accessOf: (principal: Principal) => Promise<KeyAccess>;
  bus: InvalidationBus;
  clock: () => Date;
  authz: Pick<Authz, 'check' | 'checkSync'>;
}> = async (app, { flags, accessOf, bus, clock, authz }) => {
  const hub = createStreamHub(HEARTBEAT_MS);
  // Re-authentication (key revoked or changed, owner changed, permission lost, expiry, hourly): shared with
  // `/v1/flags/{env}/stream`. A user token is refused here, so there are no sessions to sweep.
  const guard = createStreamGuard({
    bus,
    clock,
    authz,
    onError: (error, what) => app.log.error({ err: error }, what),
  });
  const perKey = new Map<string, number>();
  let listeners = 0;
  // One serialisation per state or change, whatever the number of streams.
  const hydrations = new WeakMap<FlagSnapshot, string>();
  const updates = new WeakMap<readonly DeltaEvent[], string>();

  // Streams never end by themselves: close them before the server waits for its connections.
  app.addHook('preClose', (done) => {
    hub.closeAll();
    done();
  });

  app.stewardMetrics.addSeries(
    () =>
      '# HELP steward_flags_client_streams Open Unleash client streams (/api/client/streaming)\n' +
      '# TYPE steward_flags_client_streams gauge\n' +
      `steward_flags_client_streams ${hub.size()}\n` +
      '# HELP steward_flags_client_stream_listeners Flag change listeners held for those streams\n' +
      '# TYPE steward_flags_client_stream_listeners gauge\n' +
      `steward_flags_client_stream_listeners ${listeners}\n`,
  );

  app.get(
    '/api/client/streaming',
    {
      config: { access: { permission: 'flags:read' }, errors: CLIENT_API_ERRORS },
      schema: {
        tags: ['unleash'],
        produces: ['text/event-stream'],
        summary:
          "Unleash client API (streaming): the key's environment, then every change, as server-sent events",
        description:
          'For unleash-client with `experimentalMode: {type: "streaming"}`. `event: unleash-connected` with ' +
          '`{"events": [{"type": "hydration", ...}]}` (every flag and segment), then `event: unleash-updated` ' +
          'with `feature-updated`, `feature-removed`, `segment-updated`, `segment-removed` events as changes ' +
          "commit. Each event's `id` is the state's ETag (as `/features`); `Last-Event-ID` naming the current " +
          `state sends no hydration. A \`: heartbeat\` comment every ${HEARTBEAT_MS / 1000} s. At most ` +
          `${MAX_STREAMS_PER_KEY} streams per key on one instance (then 429: unleash-client switches to polling).`,
        // Unbounded (Node caps headers): a 400 here would have the SDK retry with it forever.
        headers: z.looseObject({ 'last-event-id': z.string().optional() }),
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const { keyId, environment, expiresAt } = await accessOf(principal);
      const { orgId } = principal;
      // Resolved before hijacking, so an unknown environment is a normal 404.
      await flags.snapshot(orgId, environment);
      const held = perKey.get(keyId) ?? 0;
      if (held >= MAX_STREAMS_PER_KEY) {
        throw httpErrors.rate_limited(
          `At most ${MAX_STREAMS_PER_KEY} streams per key on one instance; poll /api/client/features`,
          { limit: MAX_STREAMS_PER_KEY },
          { 'retry-after': '60' },
        );
      }
      perKey.set(keyId, held + 1);

      let unwatch: (() => void) | undefined;
      const stream = hub.start(reply, () => {
        guard.release(stream);
        const left = (perKey.get(keyId) ?? 1) - 1;
        if (left > 0) perKey.set(keyId, left);
        else perKey.delete(keyId);
        unwatch?.();
        unwatch = undefined;
      });
      guard.hold(stream, principal, expiresAt);

      const known = request.headers['last-event-id'];
      try {
        const stop = await flags.watch(
          orgId,
          environment,
          (s) => {
            // The client holds this state already (it reconnected): nothing to send.
            if (s.etag === known) return;
            let json = hydrations.get(s);
            if (json === undefined) {
              json = JSON.stringify({ events: hydration(s) });
              hydrations.set(s, json);
            }
            stream.sendJson('unleash-connected', json, s.etag);
          },
          (events, s) => {
            let json = updates.get(events);
            if (json === undefined) {
              json = JSON.stringify({ events });
              updates.set(events, json);
            }
            stream.sendJson('unleash-updated', json, s.etag);
          },
        );
        listeners += 1;
        unwatch = () => {
          stop();
          listeners -= 1;
        };
        // Hung up while the watch was being set up.
        if (stream.closed) {
          unwatch();
          unwatch = undefined;
        }
      } catch (error) {
        // The reply is hijacked: nothing can be sent but the end; the client reconnects.
        request.log.error({ err: error }, 'unleash stream');
        stream.close();
      }
    },
  );
};
