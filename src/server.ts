import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.ts';
import type { Config } from './config.ts';

/**
 * Listens, and shuts down gracefully on SIGTERM/SIGINT: stop accepting, let in-flight
 * requests finish (up to SHUTDOWN_TIMEOUT_MS), flush batched writes, close the
 * database. A second signal exits at once.
 */
export async function serve(config: Config): Promise<FastifyInstance> {
  const app = await buildApp(config);
  await app.listen({ host: config.HOST, port: config.PORT });
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      app.log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    app.log.info({ signal }, 'shutting down');
    const force = setTimeout(() => {
      app.log.warn('in-flight requests did not finish in time: closing their connections');
      app.server.closeAllConnections();
    }, config.SHUTDOWN_TIMEOUT_MS);
    force.unref();
    app.close().then(
      () => process.exit(0),
      (error: unknown) => {
        app.log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return app;
}
