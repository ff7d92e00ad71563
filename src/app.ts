import { readFileSync } from 'node:fs';
import cors from '@fastify/cors';
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import { validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { type DestinationStream, pino } from 'pino';
import { auditRoutes } from './audit/routes.ts';
import { openAuditService } from './audit/service.ts';
import { authzRoutes } from './authz/routes.ts';
import { createAuthzService } from './authz/service.ts';
import { type InvalidationBus, openBus } from './bus/index.ts';
import { systemClock } from './clock.ts';
import type { Config } from './config.ts';
import type { StewardContext } from './context.ts';
import { type Keyring, loadKeyring } from './crypto/keyring.ts';
import { type DbHandle, openDatabase } from './db/client.ts';
import { startEmbeddedMaintenance } from './db/maintenance.ts';
import { runMigrations } from './db/migrate.ts';
import { AuthRegistry, installAccessControl } from './http/auth.ts';
import { installJsonOnlyBodies } from './http/body.ts';
import { serializeError } from './http/log.ts';
import { createRequestMetrics, installMetricsRoute } from './http/metrics.ts';
import { installOpenApi } from './http/openapi.ts';
import { installOpsRoutes } from './http/ops.ts';
import { clientErrorResponder, type FrameworkErrorHandler, installProblemHandlers } from './http/problem.ts';
import { requestIdGenerator } from './http/request-id.ts';
import { installResponseHook, markArrival, unroutedResponse } from './http/response.ts';
import { responseSerializerCompiler } from './http/serializer.ts';
import { refusingUnstorable } from './http/validation.ts';
import { identityPlugin, openIdentityService } from './identity/index.ts';
import { keysPlugin, openKeys } from './keys/index.ts';
import { tenancyRoutes } from './tenancy/routes.ts';
import { createTenancyService } from './tenancy/service.ts';
import { vaultPlugin } from './vault/index.ts';

const VERSION = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

/** What tests and the server may hand in instead of letting buildApp make it. */
export interface AppDeps {
  /** An open, migrated database; the app then leaves closing it to the caller. */
  db?: DbHandle;
  clock?: () => Date;
  /** Master keys; loaded from STEWARD_MASTER_KEY (or the data folder) when omitted. */
  keyring?: Keyring;
  /** Cross-instance invalidation; opened from REDIS_URL when omitted. */
  bus?: InvalidationBus;
  /** Where log lines go (tests read them); stdout when omitted. */
  logDestination?: DestinationStream;
}

/** Builds the Steward app: plumbing first, then each domain as a plugin. Does not listen. */
export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const ownsDb = deps.db === undefined;
  const db =
    deps.db ??
    (await openDatabase({
      databaseUrl: config.DATABASE_URL,
      dataDir: config.STEWARD_DATA_DIR,
      poolSize: config.DATABASE_POOL_SIZE,
    }));
  const shutdownTasks: (() => Promise<void>)[] = [];

  try {
    if (ownsDb) await runMigrations(db);

    const requestId = requestIdGenerator();
    let frameworkErrors: FrameworkErrorHandler | undefined;
    const logOptions = {
      level: config.LOG_LEVEL,
      redact: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers.cookie'],
      // A failed query's parameters never reach the log (log.ts).
      serializers: { err: serializeError },
    };
    const log = deps.logDestination ? pino(logOptions, deps.logDestination) : pino(logOptions);
    const app = Fastify({
      // Fastify gets no logger of its own: with one, it hangs 'finish' and 'error' listeners on
      // every response to time it for the request log we switch off anyway (~1–3 µs of a ~38 µs
      // verification, measured). Requests still log through `log` (the factory below: no child
      // per request, the few lines logged carry the request id explicitly), the app through
      // `app.log`, set just below; response timing is response.ts's.
      logger: false,
      childLoggerFactory: () => log,
      // One log line per request halves throughput; errors and 5xx are logged instead.
      logController: new LogController({ disableRequestLogging: true }),
      requestIdHeader: false,
      // The first thing Fastify does with every request (routed, 404 or refused): the clock starts.
      genReqId: (req) => {
        markArrival(req);
        return requestId(req.headers['x-request-id']);
      },
      bodyLimit: config.BODY_LIMIT_BYTES,
      // The router's default (100 characters per path parameter) is below what routes accept: a
      // setting's key may be 200 characters. Longer is 414 uri_too_long; each route's schema still
      // bounds its own parameters.
      routerOptions: { maxParamLength: 256 },
      trustProxy: config.TRUST_PROXY.length > 0 ? config.TRUST_PROXY : false,
      return503OnClosing: true,
      // The router's refusals (an over-long path parameter, a malformed URL) and the HTTP
      // parser's (headers too large, not HTTP) leave as problem+json like every other error.
      frameworkErrors: (error, request, reply) => frameworkErrors?.(error, request, reply),
      clientErrorHandler: clientErrorResponder(() => requestId(undefined)),
    }).withTypeProvider<ZodTypeProvider>();
    app.log = log;
    app.setValidatorCompiler(refusingUnstorable(validatorCompiler));
    app.setSerializerCompiler(responseSerializerCompiler);

    const clock = deps.clock ?? systemClock;
    const keyring =
      deps.keyring ??
      loadKeyring({
        masterKey: config.STEWARD_MASTER_KEY,
        previousKeys: config.STEWARD_MASTER_KEY_PREVIOUS,
        dataDir: config.STEWARD_DATA_DIR,
        embedded: config.DATABASE_URL === undefined,
        warn: (message) => app.log.warn(message),
      });
    const audit = await openAuditService({
      db,
      keyring,
      defaultRetentionDays: config.AUDIT_RETENTION_DAYS,
      clock,
    });
    audit.sequencer.start();
    shutdownTasks.push(() => audit.sequencer.stop());
    // Retention runs hourly in every instance; the purge serialises per org, so instances do not collide.
    const purgeTimer = setInterval(() => {
      audit.purge().catch((error: unknown) => app.log.error({ err: error }, 'audit purge failed'));
    }, 3_600_000);
    purgeTimer.unref();
    shutdownTasks.unshift(async () => clearInterval(purgeTimer));
    const stopMaintenance = startEmbeddedMaintenance({
      db,
      intervalMs: config.PGLITE_VACUUM_INTERVAL_MINUTES * 60_000,
      onPass: (pass) => {
        const details = {
          tables: pass.tables,
          analyzed: pass.analyzed,
          ms: Math.round(pass.ms),
          slowest: pass.slowest,
        };
        // A table that held PGlite's thread this long held every request waiting on it too.
        if ((pass.slowest?.ms ?? 0) > 500) app.log.warn(details, 'embedded vacuum: a table took over 500 ms');
        else app.log.debug(details, 'embedded vacuum');
      },
      onError: (error) => app.log.error({ err: error }, 'embedded vacuum failed'),
    });
    shutdownTasks.unshift(stopMaintenance);
    const bus =
      deps.bus ??
      (await openBus(
        config.REDIS_URL,
        (error) => app.log.error({ err: error }, 'redis'),
        config.REDIS_PREFIX,
      ));
    if (!deps.bus) shutdownTasks.push(() => bus.close());
    const auth = new AuthRegistry();
    const authz = createAuthzService({
      db,
      audit,
      bus,
      clock,
      onError: (error, what) => app.log.error({ err: error }, what),
    });
    auth.authorizer = authz.authorizer;
    shutdownTasks.unshift(() => authz.stop());
    const tenancy = createTenancyService({ db, audit });
    const identity = await openIdentityService({
      config,
      db,
      keyring,
      bus,
      audit,
      authz,
      tenancy,
      clock,
      // The Redis limiter's failures and the login bookkeeping done after the answer (the message says which).
      onError: (error) => app.log.error({ err: error }, `identity: ${error.message}`),
    });
    const keys = await openKeys({
      config,
      db,
      bus,
      audit,
      authz,
      identity,
      keyring,
      clock,
      onError: (error, what) => app.log.error({ err: error }, what),
      onWarn: (details, message) => app.log.warn(details, message),
    });
    const ctx: StewardContext = {
      config,
      db,
      keyring,
      bus,
      audit,
      tenancy,
      identity,
      keys,
      auth,
      authz,
      clock,
      onShutdown: (task) => shutdownTasks.push(task),
    };

    app.decorate('steward', ctx);
    const metrics = createRequestMetrics(app);
    frameworkErrors = installProblemHandlers(app, unroutedResponse(metrics));
    installJsonOnlyBodies(app);
    installAccessControl(app, auth);
    installResponseHook(app, metrics);
    installMetricsRoute(app, metrics);
    if (config.CORS_ORIGINS.length > 0) {
      await app.register(cors, {
        origin: config.CORS_ORIGINS.includes('*') ? '*' : config.CORS_ORIGINS,
        exposedHeaders: ['x-request-id', 'etag', 'retry-after'],
      });
    }
    await installOpenApi(app, VERSION, () => auth.accessCodes());
    installOpsRoutes(app, db, bus);

    // The domains. Each registers its own routes and services.
    await app.register(tenancyRoutes, { ctx });
    await app.register(auditRoutes, { ctx });
    await app.register(authzRoutes, { ctx });
    await app.register(identityPlugin, { ctx });
    await app.register(keysPlugin, { ctx });
    await app.register(vaultPlugin, { ctx });

    // Connections busy when close() begins turn idle later; without another sweep they
    // would hold shutdown open for the whole keep-alive timeout.
    let sweeper: NodeJS.Timeout | undefined;
    app.addHook('preClose', (done) => {
      sweeper = setInterval(() => app.server.closeIdleConnections(), 25);
      sweeper.unref();
      done();
    });
    app.addHook('onClose', async () => {
      clearInterval(sweeper);
      for (const task of shutdownTasks) await task();
      if (ownsDb) await db.close();
    });
    return app;
  } catch (error) {
    if (ownsDb) await db.close();
    throw error;
  }
}
