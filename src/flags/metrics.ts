import { and, asc, desc, eq, gte, lt, sql } from 'drizzle-orm';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { DbHandle } from '../db/client.ts';
import { callerOf } from '../http/auth.ts';
import type { Environment } from '../tenancy/service.ts';
import { BOUND_KEY_ERRORS, holdKeysToTheirEnvironment } from './key-binding.ts';
import { envParams, flagParams } from './params.ts';
import { flagClients, flagMetrics } from './schema.ts';
import type { FlagService, FlagSnapshot } from './service.ts';
import type { KeyAccessOf } from './unleash-api.ts';

const HOUR_MS = 3_600_000;
/** A bucket claiming to start further back than this (or in the future) is counted now. */
const MAX_BUCKET_AGE_MS = 48 * HOUR_MS;

const count = z.number().int().min(0).max(1e12);

/**
 * `POST /api/client/metrics` as Unleash SDKs send it. Objects are loose: SDKs add fields over
 * time (platformName, specVersion, impactMetrics…), and refusing them would break a client.
 */
export const clientMetricsBody = z.looseObject({
  appName: z.string().min(1).max(200),
  instanceId: z.string().min(1).max(200).optional(),
  environment: z.string().max(100).optional(),
  bucket: z.looseObject({
    start: z.string().max(64),
    stop: z.string().max(64).optional(),
    toggles: z
      .record(
        z.string().min(1).max(200),
        z.looseObject({
          yes: count,
          no: count,
          variants: z
            .record(z.string().min(1).max(200), count)
            .refine((v) => Object.keys(v).length <= 100, 'at most 100 variants')
            .optional(),
        }),
      )
      .refine((t) => Object.keys(t).length <= 10_000, 'at most 10,000 flags per bucket'),
  }),
});

/** `POST /api/client/register`. */
export const clientRegisterBody = z.looseObject({
  appName: z.string().min(1).max(200),
  instanceId: z.string().min(1).max(200).optional(),
  sdkVersion: z.string().max(100).optional(),
  strategies: z.array(z.string().max(100)).max(100).optional(),
  started: z.string().max(64).optional(),
  interval: z.number().int().min(0).max(86_400_000).optional(),
});

export type ClientMetrics = z.infer<typeof clientMetricsBody>;
export type ClientRegistration = z.infer<typeof clientRegisterBody>;

const hourOf = (t: number) => new Date(Math.floor(t / HOUR_MS) * HOUR_MS);

/** What SDKs count when a flag gives no variant (off, or no variants): Unleash counts it too. */
const NO_VARIANT = 'disabled';

/**
 * Per flag of a snapshot, the variant names a report may count: the flag's own and its
 * strategies', and `disabled`. Built once per snapshot (snapshots are immutable).
 */
const variantNames = new WeakMap<FlagSnapshot, Map<string, ReadonlySet<string>>>();
function variantsOf(snapshot: FlagSnapshot): Map<string, ReadonlySet<string>> {
  let names = variantNames.get(snapshot);
  if (names === undefined) {
    names = new Map();
    for (const f of snapshot.features) {
      const own = new Set([NO_VARIANT]);
      for (const v of f.variants ?? []) own.add(v.name);
      for (const s of f.strategies) for (const v of s.variants ?? []) own.add(v.name);
      names.set(f.name, own);
    }
    variantNames.set(snapshot, names);
  }
  return names;
}

/** A report's variant counts, keeping only names the flag has (made-up names are dropped). */
function knownVariants(
  counts: Readonly<Record<string, number>> | undefined,
  known: ReadonlySet<string> | undefined,
): Record<string, number> {
  const kept: Record<string, number> = {};
  if (counts === undefined || known === undefined) return kept;
  for (const [name, n] of Object.entries(counts)) {
    if (known.has(name)) Object.defineProperty(kept, name, { value: n, enumerable: true, writable: true });
  }
  return kept;
}

/**
 * SDK metrics: evaluation counts summed per flag per hour per org + environment, and the SDK
 * instances that reported. One upsert per report (counts add up in the database, so instances
 * and Steward servers never coordinate).
 */
export function createFlagMetrics({ db, clock }: { db: DbHandle; clock: () => Date }) {
  function bucketHour(start: string): Date {
    const now = clock().getTime();
    const t = Date.parse(start);
    // A client with a wrong clock is counted in the current hour rather than lost or misfiled.
    return Number.isFinite(t) && t <= now + HOUR_MS && t >= now - MAX_BUCKET_AGE_MS ? hourOf(t) : hourOf(now);
  }

  async function touchClient(
    snapshot: FlagSnapshot,
    appName: string,
    instanceId: string,
    registration?: ClientRegistration,
  ): Promise<void> {
    const now = clock();
    const started = registration?.started === undefined ? Number.NaN : Date.parse(registration.started);
    const details = registration
      ? {
          sdkVersion: registration.sdkVersion ?? null,
          strategies: registration.strategies ?? [],
          intervalMs: registration.interval ?? null,
          startedAt: Number.isFinite(started) ? new Date(started) : null,
        }
      : {};
    await db.db
      .insert(flagClients)
      .values({
        orgId: snapshot.orgId,
        environmentId: snapshot.environment.id,
        appName,
        instanceId,
        ...details,
        firstSeenAt: now,
        lastSeenAt: now,
      })
      .onConflictDoUpdate({
        target: [flagClients.orgId, flagClients.environmentId, flagClients.appName, flagClients.instanceId],
        set: { ...details, lastSeenAt: now },
      });
  }

  /**
   * Adds a report's counts; flags the environment does not have are skipped, and so are variant
   * names the flag does not have (but `disabled`). Returns how many flags were stored.
   */
  async function record(snapshot: FlagSnapshot, body: ClientMetrics): Promise<number> {
    const hour = bucketHour(body.bucket.start);
    const now = clock();
    const known = variantsOf(snapshot);
    const rows = Object.entries(body.bucket.toggles)
      .filter(([name]) => snapshot.engine.has(name))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) // one lock order for concurrent reports
      .map(([flagName, c]) => ({
        orgId: snapshot.orgId,
        environmentId: snapshot.environment.id,
        flagName,
        hour,
        yes: c.yes,
        no: c.no,
        variants: knownVariants(c.variants, known.get(flagName)),
        updatedAt: now,
      }));
    await touchClient(snapshot, body.appName, body.instanceId ?? 'unknown');
    if (rows.length === 0) return 0;
    await db.db
      .insert(flagMetrics)
      .values(rows)
      .onConflictDoUpdate({
        target: [flagMetrics.orgId, flagMetrics.environmentId, flagMetrics.flagName, flagMetrics.hour],
        set: {
          yes: sql`flag_metrics.yes + excluded.yes`,
          no: sql`flag_metrics.no + excluded.no`,
          // Sum the two variant maps key by key.
          variants: sql`(select coalesce(jsonb_object_agg(key, total), '{}'::jsonb) from (
            select key, sum(value::bigint) as total from (
              select * from jsonb_each_text(flag_metrics.variants)
              union all select * from jsonb_each_text(excluded.variants)
            ) e group by key) s)`,
          updatedAt: sql`excluded.updated_at`,
        },
      });
    return rows.length;
  }

  async function register(snapshot: FlagSnapshot, body: ClientRegistration): Promise<void> {
    await touchClient(snapshot, body.appName, body.instanceId ?? 'unknown', body);
  }

  /** A flag's hourly counts over the last `hours`, oldest first. */
  async function forFlag(orgId: string, env: Environment, name: string, hours: number) {
    const since = new Date(hourOf(clock().getTime()).getTime() - (hours - 1) * HOUR_MS);
    return db.db
      .select()
      .from(flagMetrics)
      .where(
        and(
          eq(flagMetrics.orgId, orgId),
          eq(flagMetrics.environmentId, env.id),
          eq(flagMetrics.flagName, name),
          gte(flagMetrics.hour, since),
        ),
      )
      .orderBy(asc(flagMetrics.hour));
  }

  async function clients(orgId: string, env: Environment, limit: number) {
    return db.db
      .select()
      .from(flagClients)
      .where(and(eq(flagClients.orgId, orgId), eq(flagClients.environmentId, env.id)))
      .orderBy(desc(flagClients.lastSeenAt))
      .limit(limit);
  }

  /**
   * Deletes hourly counts older than `days`, and SDK instances not seen for as long (the retention
   * an operator sets with FLAG_METRICS_RETENTION_DAYS). Returns how many rows of each went.
   */
  async function purge(days: number): Promise<{ buckets: number; clients: number }> {
    const before = new Date(clock().getTime() - days * 24 * HOUR_MS);
    const buckets = await db.db
      .delete(flagMetrics)
      .where(lt(flagMetrics.hour, before))
      .returning({ hour: flagMetrics.hour });
    const gone = await db.db
      .delete(flagClients)
      .where(lt(flagClients.lastSeenAt, before))
      .returning({ appName: flagClients.appName });
    return { buckets: buckets.length, clients: gone.length };
  }

  return { record, register, forFlag, clients, purge };
}

export type FlagMetrics = ReturnType<typeof createFlagMetrics>;

const bucketSchema = z.object({
  hour: z.string(),
  yes: z.number().int(),
  no: z.number().int(),
  variants: z.record(z.string(), z.number().int()),
});

const clientSchema = z.object({
  app_name: z.string(),
  instance_id: z.string(),
  sdk_version: z.string().nullable(),
  strategies: z.array(z.string()),
  interval_ms: z.number().int().nullable(),
  started_at: z.string().nullable(),
  first_seen_at: z.string(),
  last_seen_at: z.string(),
});

/** `/v1/flags/{env}/{name}/metrics` and `/v1/flag-clients/{env}`: what SDKs reported. */
export const flagMetricsRoutes: FastifyPluginAsyncZod<{
  flags: FlagService;
  metrics: FlagMetrics;
  keyAccess: KeyAccessOf;
}> = async (app, { flags, metrics, keyAccess }) => {
  // A key bound to an environment is refused every other one (403), as on `/v1/flags/{env}`.
  holdKeysToTheirEnvironment(app, keyAccess);
  app.get(
    '/v1/flags/:env/:name/metrics',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', 'flag_not_found', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'Evaluation counts reported by SDKs, per hour (yes, no, variants)',
        params: flagParams,
        querystring: z.strictObject({
          hours: z.coerce
            .number()
            .int()
            .min(1)
            .max(720)
            .default(48)
            .describe('Hours back, this one included.'),
        }),
        response: {
          200: z.object({
            name: z.string(),
            environment: z.string(),
            totals: z.object({ yes: z.number().int(), no: z.number().int() }),
            data: z.array(bucketSchema),
          }),
        },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const { env, name } = request.params;
      await flags.get(caller, env, name); // 404 for an unknown flag or environment
      const environment = (await flags.snapshot(caller.orgId, env)).environment;
      const rows = await metrics.forFlag(caller.orgId, environment, name, request.query.hours);
      const totals = { yes: 0, no: 0 };
      for (const r of rows) {
        totals.yes += r.yes;
        totals.no += r.no;
      }
      return {
        name,
        environment: environment.name,
        totals,
        data: rows.map((r) => ({
          hour: r.hour.toISOString(),
          yes: r.yes,
          no: r.no,
          variants: r.variants,
        })),
      };
    },
  );

  app.get(
    '/v1/flag-clients/:env',
    {
      config: {
        access: { permission: 'flags:read' },
        errors: ['environment_not_found', ...BOUND_KEY_ERRORS],
      },
      schema: {
        tags: ['flags'],
        summary: 'SDK instances that registered or sent metrics, most recently seen first',
        params: envParams,
        querystring: z.strictObject({ limit: z.coerce.number().int().min(1).max(500).default(100) }),
        response: { 200: z.object({ data: z.array(clientSchema) }) },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const environment = (await flags.snapshot(caller.orgId, request.params.env)).environment;
      const rows = await metrics.clients(caller.orgId, environment, request.query.limit);
      return {
        data: rows.map((c) => ({
          app_name: c.appName,
          instance_id: c.instanceId,
          sdk_version: c.sdkVersion,
          strategies: c.strategies,
          interval_ms: c.intervalMs,
          started_at: c.startedAt?.toISOString() ?? null,
          first_seen_at: c.firstSeenAt.toISOString(),
          last_seen_at: c.lastSeenAt.toISOString(),
        })),
      };
    },
  );
};
