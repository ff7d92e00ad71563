import type { FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Registry } from 'prom-client';

/** Latency buckets (seconds) of steward_http_request_duration_seconds. */
const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** One (method, route) pair: counts by status and a latency histogram, as plain numbers. */
export interface RouteSeries {
  labels: string;
  byStatus: Map<number, number>;
  /** Non-cumulative counts per bucket; the last slot is +Inf. Cumulated when scraped. */
  buckets: Float64Array;
  sum: number;
  count: number;
}

// Prometheus label values: backslash, double quote and newline are escaped.
const labelValue = (s: string) => s.replaceAll('\\', '\\\\').replaceAll('"', '\\"').replaceAll('\n', '\\n');

function render(series: Iterable<RouteSeries>): string {
  const counts: string[] = [];
  const histogram: string[] = [];
  for (const s of series) {
    for (const [status, n] of s.byStatus) {
      counts.push(`steward_http_requests_total{${s.labels},status_code="${status}"} ${n}`);
    }
    let cumulative = 0;
    BUCKETS.forEach((le, i) => {
      cumulative += s.buckets[i] ?? 0;
      histogram.push(`steward_http_request_duration_seconds_bucket{le="${le}",${s.labels}} ${cumulative}`);
    });
    histogram.push(`steward_http_request_duration_seconds_bucket{le="+Inf",${s.labels}} ${s.count}`);
    histogram.push(`steward_http_request_duration_seconds_sum{${s.labels}} ${s.sum}`);
    histogram.push(`steward_http_request_duration_seconds_count{${s.labels}} ${s.count}`);
  }
  return [
    '# HELP steward_http_requests_total HTTP requests by method, route and status',
    '# TYPE steward_http_requests_total counter',
    ...counts,
    '# HELP steward_http_request_duration_seconds HTTP request latency by method and route',
    '# TYPE steward_http_request_duration_seconds histogram',
    ...histogram,
    '',
  ].join('\n');
}

/**
 * Renders a domain's own series as Prometheus text (with `# HELP` and `# TYPE` lines, ending in
 * a newline), from counters it keeps as plain numbers: called when /metrics is scraped, never per request.
 */
export type SeriesRenderer = () => string;

/** The app's metrics: the registry of process metrics, and the per-request series. */
export interface RequestMetrics {
  registry: Registry;
  /**
   * The series of one (method, route template) pair, made on first ask. Looked up once per route
   * when it is registered, not per request (see response.ts).
   */
  series(method: string, route: string): RouteSeries;
  /** Counts a response and observes its latency (time to send, as the server sees it). */
  observe(series: RouteSeries, statusCode: number, elapsedMs: number): void;
  /** Adds a domain's series to /metrics (the keys domain: verifications by code). */
  addSeries(render: SeriesRenderer): void;
  /** Everything, as Prometheus text. */
  render(): Promise<string>;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The app's metrics (createRequestMetrics), so domain plugins can add their series. */
    stewardMetrics: RequestMetrics;
  }
}

/** One counter with a single label, every value listed (zeros included, so rates start at once). */
export function renderCounter(
  name: string,
  help: string,
  label: string,
  values: Readonly<Record<string, number>>,
): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} counter`];
  for (const [value, n] of Object.entries(values))
    lines.push(`${name}{${label}="${labelValue(value)}"} ${n}`);
  return `${lines.join('\n')}\n`;
}

/**
 * Prometheus metrics. Process metrics come from prom-client; the two HTTP series are kept as plain
 * counters per route and rendered when scraped, because prom-client's per-call label handling was
 * a measurable share of a hot route (docs/adr/0003). Labels use the route template
 * (`/v1/keys/:id`), never the raw URL. Serve them with installMetricsRoute.
 */
export function createRequestMetrics(app: FastifyInstance): RequestMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'steward_' });
  const byRoute = new Map<string, RouteSeries>();
  const extra: SeriesRenderer[] = [];

  const metrics: RequestMetrics = {
    registry,
    series(method, route) {
      const key = `${method} ${route}`;
      let series = byRoute.get(key);
      if (!series) {
        series = {
          labels: `method="${labelValue(method)}",route="${labelValue(route)}"`,
          byStatus: new Map(),
          buckets: new Float64Array(BUCKETS.length + 1),
          sum: 0,
          count: 0,
        };
        byRoute.set(key, series);
      }
      return series;
    },
    observe(series, statusCode, elapsedMs) {
      series.byStatus.set(statusCode, (series.byStatus.get(statusCode) ?? 0) + 1);
      const seconds = elapsedMs / 1000;
      let bucket = 0;
      while (bucket < BUCKETS.length && seconds > (BUCKETS[bucket] as number)) bucket++;
      series.buckets[bucket] = (series.buckets[bucket] ?? 0) + 1;
      series.sum += seconds;
      series.count++;
    },
    addSeries: (renderer) => extra.push(renderer),
    async render() {
      let text = (await registry.metrics()) + render(byRoute.values());
      for (const series of extra) text += series();
      return text;
    },
  };
  app.decorate('stewardMetrics', metrics);
  return metrics;
}

/** GET /metrics (register after installResponseHook, so its own requests are counted too). */
export function installMetricsRoute(app: FastifyInstance, metrics: RequestMetrics): void {
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.render();
  });
}
