import type { FastifyInstance } from 'fastify';
import type { InvalidationBus } from '../bus/index.ts';
import type { DbHandle } from '../db/client.ts';
import { migrationStatus } from '../db/migrate.ts';

const ALIVE = JSON.stringify({ status: 'ok' });

/** Liveness and readiness, for load balancers and orchestrators. */
export function installOpsRoutes(app: FastifyInstance, db: DbHandle, bus: InvalidationBus): void {
  // Liveness says only that the process answers: no I/O, pre-serialised body.
  app.get('/healthz', { schema: { hide: true } }, (_request, reply) => {
    reply.type('application/json').send(ALIVE);
  });

  // Readiness: the database answers and its schema is the one this build expects.
  app.get('/readyz', { schema: { hide: true } }, async (request, reply) => {
    try {
      await db.query('select 1');
      const migrations = await migrationStatus(db);
      const ready = migrations.current;
      return reply.code(ready ? 200 : 503).send({
        status: ready ? 'ready' : 'migrations_pending',
        database: db.kind,
        migrations,
        bus: bus.kind,
      });
    } catch (error) {
      request.log.error({ err: error }, 'readiness check failed');
      return reply.code(503).send({ status: 'database_unreachable', database: db.kind });
    }
  });
}
