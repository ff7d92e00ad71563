import { createHash } from 'node:crypto';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { Authz } from '../authz/contract.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { callerOf } from '../http/auth.ts';
import { httpErrors } from '../http/errors.ts';
import { noneMatch, parseEntityTags } from '../http/etag.ts';
import { unleashClientSecurity } from '../http/openapi.ts';
import type { Principal } from '../http/principal.ts';
import { KEYS_TOPIC } from '../keys/verifier.ts';
import { type ClientMetrics, clientMetricsBody, clientRegisterBody, type FlagMetrics } from './metrics.ts';
import type { FlagService, FlagSnapshot } from './service.ts';
import type { DeltaEvent } from './types.ts';
import { CLIENT_API_ERRORS, type KeyAccess, unleashStreamingRoutes } from './unleash-streaming.ts';

/** Key metadata field naming the environment an Unleash SDK using the key sees. */
export const FLAGS_ENVIRONMENT_METADATA = 'flags_environment';

/** Without that metadata: `stw_live_…` keys see `production`, `stw_test_…` keys `development`. */
const BY_KEY_MARKER: Record<string, string> = { live: 'production', test: 'development' };

/** What the client API needs of the keys domain: a key's environment marker, metadata and expiry. */
export interface KeyLookup {
  get(
    caller: Principal,
    id: string,
  ): Promise<{ environment: string; metadata: Record<string, unknown>; expiresAt: Date | null }>;
}

/** A delta event as an SDK asking only for flags named `prefix…` sees it (segments always pass). */
function withPrefix(event: DeltaEvent, prefix: string): DeltaEvent[] {
  switch (event.type) {
    case 'hydration':
      return [{ ...event, features: event.features.filter((f) => f.name.startsWith(prefix)) }];
    case 'feature-updated':
      return event.feature.name.startsWith(prefix) ? [event] : [];
    case 'feature-removed':
      return event.featureName.startsWith(prefix) ? [event] : [];
    default:
      return [event];
  }
}

/**
 * The ETag suffix of responses filtered by `namePrefix`: each prefix's representation of a state
 * gets its own strong tag (`"<state>.<prefix hash>"`), so that a tag validates only the
 * representation it was issued for, never the full one nor another prefix's. A hash, as the
 * prefix may hold any character and a tag only some.
 */
function prefixMark(prefix: string | undefined): string {
  if (prefix === undefined) return '';
  return `.${createHash('sha256').update(prefix).digest('base64url').slice(0, 16)}`;
}

/** The tag a representation with this mark gets for a state's ETag (`"<state>"`). */
const markedTag = (etag: string, mark: string) => (mark === '' ? etag : `${etag.slice(0, -1)}${mark}"`);

/**
 * The state a client's tag names, if it was issued for the representation with this mark. A
 * state's own tag holds no `.` (base64url), so an unmarked request never takes a marked tag.
 */
function stateOfTag(opaque: string, mark: string): string | undefined {
  if (mark === '') return opaque.includes('.') ? undefined : opaque;
  const end = `${mark}"`;
  return opaque.endsWith(end) ? `${opaque.slice(0, -end.length)}"` : undefined;
}

/**
 * What a key reads, and until when: key id → `{environment, expiresAt}`, cached per key id and
 * dropped whenever any key changes (the keys domain's bus topic). Shared by the Unleash client API
 * and `/v1/flags/{env}/stream` (a key's stream ends when the key expires).
 */
export function createKeyAccess({ keys, bus }: { keys: KeyLookup; bus: InvalidationBus }) {
  const access = new Map<string, KeyAccess>();
  bus.subscribe(KEYS_TOPIC, () => access.clear());
  return async function accessOf(principal: Principal): Promise<KeyAccess> {
    const keyId = principal.keyId;
    if (keyId === undefined) {
      throw httpErrors.permission_denied('The Unleash client API takes an API key (stw_…)', {
        permission: 'flags:read',
      });
    }
    const cached = access.get(keyId);
    if (cached !== undefined) return cached;
    const row = await keys.get(principal, keyId);
    const named = row.metadata[FLAGS_ENVIRONMENT_METADATA];
    const explicit = typeof named === 'string' && named.length > 0;
    const environment = explicit ? named : (BY_KEY_MARKER[row.environment] ?? 'production');
    const bound = explicit || row.environment === 'test';
    const got: KeyAccess = { keyId, environment, bound, expiresAt: row.expiresAt };
    access.set(keyId, got);
    return got;
  };
}

export type KeyAccessOf = ReturnType<typeof createKeyAccess>;

/**
 * Unleash's client API (`/api/client/features`, `/delta`, `/streaming`, `/register`,
 * `/metrics`), so the official SDKs pointed at `<steward>/api/` evaluate Steward's flags. Unleash
 * SDKs send the API key as the raw `Authorization` value (no `Bearer`); a hook scoped to these
 * routes adds the scheme so the keys domain's authenticator verifies it as usual (limits,
 * revocation, scopes: `flags:read`).
 */
export const unleashClientRoutes: FastifyPluginAsyncZod<{
  flags: FlagService;
  metrics: FlagMetrics;
  accessOf: KeyAccessOf;
  bus: InvalidationBus;
  clock: () => Date;
  authz: Pick<Authz, 'check' | 'checkSync'>;
}> = async (app, { flags, metrics, accessOf, bus, clock, authz }) => {
  const bodies = new WeakMap<FlagSnapshot, string>();

  app.addHook('onRequest', async (request) => {
    const authorization = request.headers.authorization;
    if (authorization?.startsWith('stw_')) request.headers.authorization = `Bearer ${authorization.trim()}`;
  });
  // The document names the SDKs' scheme (a raw key in Authorization) for every route of the scope.
  app.addHook('onRoute', (route) => {
    route.schema = { ...route.schema, security: unleashClientSecurity };
  });

  const environmentOf = async (principal: Principal) => (await accessOf(principal)).environment;

  // `/api/client/streaming`: a child plugin, so the Authorization hook above applies to it too.
  await app.register(unleashStreamingRoutes, { flags, accessOf, bus, clock, authz });

  app.get(
    '/api/client/features',
    {
      config: { access: { permission: 'flags:read' }, errors: CLIENT_API_ERRORS },
      schema: {
        tags: ['unleash'],
        summary: "Unleash client API: every flag and segment of the key's environment",
        description:
          "Authorization: the raw API key. The environment is the key's `metadata.flags_environment`, " +
          'else `production` for `stw_live_` keys and `development` for `stw_test_` keys. ' +
          '`namePrefix` filters by name; ETag / If-None-Match answer 304.',
        querystring: z.looseObject({ namePrefix: z.string().max(100).optional() }),
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const s = await flags.snapshot(principal.orgId, await environmentOf(principal));
      const prefix = request.query.namePrefix;
      const etag = markedTag(s.etag, prefixMark(prefix));
      reply.header('etag', etag).header('cache-control', 'no-cache');
      if (noneMatch(request.headers['if-none-match'], etag)) return reply.code(304).send();
      reply.type('application/json; charset=utf-8');
      if (prefix !== undefined) {
        const features = s.features.filter((f) => f.name.startsWith(prefix));
        return reply.send(
          JSON.stringify({ version: 2, features, segments: s.segments, query: { namePrefix: prefix } }),
        );
      }
      let body = bodies.get(s);
      if (body === undefined) {
        body = JSON.stringify({ version: 2, features: s.features, segments: s.segments });
        bodies.set(s, body);
      }
      return reply.send(body);
    },
  );

  app.get(
    '/api/client/delta',
    {
      config: { access: { permission: 'flags:read' }, errors: CLIENT_API_ERRORS },
      schema: {
        tags: ['unleash'],
        summary: 'Unleash client API (delta): changes since the state the SDK holds',
        description:
          '`{events: [...]}` as Unleash serves it: with `If-None-Match` naming one of the last states ' +
          'of the environment, the `feature-updated` / `feature-removed` / `segment-updated` / ' +
          '`segment-removed` events leading to the current one; otherwise one `hydration` event with every ' +
          'flag and segment. The current state answers 304. `ETag` names the state returned. ' +
          '`namePrefix` keeps the flags (and flag events) whose names start with it.',
        querystring: z.looseObject({ namePrefix: z.string().max(100).optional() }),
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const prefix = request.query.namePrefix;
      const mark = prefixMark(prefix);
      // Weak comparison (RFC 9110 §13.1.2): `W/"x"` names the state `"x"`; any tag of a list may.
      // A tag issued with another namePrefix (or none) names no state here: that client's copy
      // holds other flags, so it gets a hydration.
      const header = request.headers['if-none-match'];
      const tags = header === undefined ? undefined : parseEntityTags(header);
      const known =
        tags === '*' ? '*' : tags?.map((t) => stateOfTag(t.opaque, mark)).filter((t) => t !== undefined);
      const d = await flags.delta(principal.orgId, await environmentOf(principal), known);
      // A 304 carries the ETag (and caching) a 200 would have (RFC 9110 §15.4.5).
      reply.header('etag', markedTag(d.etag, mark)).header('cache-control', 'no-cache');
      if (d.events === null) return reply.code(304).send();
      const events = prefix === undefined ? d.events : d.events.flatMap((e) => withPrefix(e, prefix));
      return reply.type('application/json; charset=utf-8').send(JSON.stringify({ events }));
    },
  );

  // SDK reports: registrations and evaluation counts, stored per the key's environment.
  app.post(
    '/api/client/register',
    {
      config: { access: { permission: 'flags:read' }, errors: CLIENT_API_ERRORS },
      schema: {
        tags: ['unleash'],
        summary: 'Unleash client API: an SDK instance registers (stored; see /v1/flag-clients/{env})',
        body: clientRegisterBody,
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const s = await flags.snapshot(principal.orgId, await environmentOf(principal));
      await metrics.register(s, request.body);
      return reply.code(202).send();
    },
  );

  app.post(
    '/api/client/metrics',
    {
      config: { access: { permission: 'flags:read' }, errors: CLIENT_API_ERRORS },
      schema: {
        tags: ['unleash'],
        summary: 'Unleash client API: evaluation counts, summed per flag per hour',
        description:
          "Counts go to the key's environment, in the hour of `bucket.start` (the current hour when that " +
          'is more than 48 h old or in the future). Flags the environment does not have are skipped, and ' +
          'variant names the flag does not have (but `disabled`). ' +
          'Read them at `GET /v1/flags/{env}/{name}/metrics`.',
        body: clientMetricsBody,
      },
    },
    async (request, reply) => {
      const principal = callerOf(request);
      const s = await flags.snapshot(principal.orgId, await environmentOf(principal));
      await metrics.record(s, request.body as ClientMetrics);
      return reply.code(202).send();
    },
  );
};
