import type { FastifyInstance } from 'fastify';
import type { RequestMetrics } from './metrics.ts';
import { securityHeadersFor } from './security.ts';

/**
 * What every response gets — security headers, the request id, a metrics sample —
 * in ONE hook: each hook Fastify runs is a measurable share of a hot route's cost
 * (docs/adr/0003). onSend runs for every reply, errors and 404s included.
 */
export function installResponseHook(app: FastifyInstance, metrics: RequestMetrics): void {
  app.addHook('onSend', (request, reply, payload, done) => {
    reply.headers(securityHeadersFor(request.url));
    reply.header('x-request-id', request.id);
    metrics.record(request, reply);
    done(null, payload);
  });
}
