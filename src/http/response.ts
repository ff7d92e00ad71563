import type { IncomingMessage } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest, onSendHookHandler } from 'fastify';
import type { RequestMetrics, RouteSeries } from './metrics.ts';
import { securityHeadersFor } from './security.ts';

const ARRIVED = Symbol('steward.arrivedAt');
type Stamped = IncomingMessage & { [ARRIVED]?: number };

/**
 * Notes when a request reached the app; call it first thing for every request (app.ts does, from
 * genReqId). Fastify times replies only when it has a logger of its own, which Steward does not
 * give it (app.ts says why).
 */
export function markArrival(req: IncomingMessage): void {
  (req as Stamped)[ARRIVED] = performance.now();
}

/** Milliseconds since `markArrival` for this request (0 when it was never marked). */
function elapsedMs(request: FastifyRequest): number {
  const arrived = (request.raw as Stamped)[ARRIVED];
  return arrived === undefined ? 0 : performance.now() - arrived;
}

/**
 * What every response gets — security headers, the request id, a metrics sample. Each route gets
 * one onSend hook of its own (onSend runs for every reply of the route, errors included) that
 * already holds the route's headers and metrics series: looking them up per request (the route
 * template through `request.routeOptions`, which builds an object per call) measured ~1 µs of a
 * hot route. One hook per reply, as before: each hook Fastify runs is a measurable share of a hot
 * route's cost (docs/adr/0003). Routes registered before this call get nothing, so call it first.
 */
export function installResponseHook(app: FastifyInstance, metrics: RequestMetrics): void {
  app.addHook('onRoute', (route) => {
    const hook = responseHook(metrics, route.url, securityHeadersFor(route.url));
    const existing = route.onSend;
    route.onSend =
      existing === undefined ? [hook] : [...(Array.isArray(existing) ? existing : [existing]), hook];
  });
}

/**
 * The same for a reply that has no route, labelled `(unmatched)`: the not-found handler calls it
 * just before it sends, since Fastify gives that handler no onSend hook of its own.
 */
export function unroutedResponse(
  metrics: RequestMetrics,
): (request: FastifyRequest, reply: FastifyReply, statusCode: number) => void {
  const bySeries = seriesByMethod(metrics, '(unmatched)');
  return (request, reply, statusCode) => {
    reply.headers(securityHeadersFor(request.url));
    reply.header('x-request-id', request.id);
    metrics.observe(bySeries(request.method), statusCode, elapsedMs(request));
  };
}

/**
 * A route usually answers one method; HEAD (exposed for GET routes) and multi-method routes find
 * theirs in this small map.
 */
function seriesByMethod(metrics: RequestMetrics, route: string): (method: string) => RouteSeries {
  const byMethod = new Map<string, RouteSeries>();
  return (method) => {
    let series = byMethod.get(method);
    if (series === undefined) {
      series = metrics.series(method, route);
      byMethod.set(method, series);
    }
    return series;
  };
}

function responseHook(
  metrics: RequestMetrics,
  route: string,
  headers: Readonly<Record<string, string>>,
): onSendHookHandler {
  const seriesOf = seriesByMethod(metrics, route);
  return (request, reply, payload, done) => {
    reply.headers(headers);
    reply.header('x-request-id', request.id);
    metrics.observe(seriesOf(request.method), reply.statusCode, elapsedMs(request));
    done(null, payload);
  };
}
