import autocannon from 'autocannon';

export interface LoadResult {
  label: string;
  requestsPerSec: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
}

export interface LoadOptions {
  label: string;
  url: string;
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  connections?: number;
  seconds?: number;
}

/** Loads one URL with autocannon; a short warm-up first so JIT and caches settle. */
export async function load(options: LoadOptions): Promise<LoadResult> {
  const base = {
    url: options.url,
    method: options.method ?? 'GET',
    headers: options.headers ?? {},
    body: options.body,
    connections: options.connections ?? 50,
  };
  await autocannon({ ...base, duration: 1 });
  const result = await autocannon({ ...base, duration: options.seconds ?? 5 });
  return {
    label: options.label,
    requestsPerSec: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    non2xx: result.non2xx,
    errors: result.errors,
  };
}

/** Prints a table of results with each one's ratio to the baseline (the first row). */
export function report(title: string, results: LoadResult[]): void {
  const [baseline] = results;
  if (!baseline) return;
  console.log(`\n${title}`);
  console.log('| target | req/s | p50 ms | p99 ms | non-2xx | ratio to baseline |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const r of results) {
    const ratio = ((r.requestsPerSec / baseline.requestsPerSec) * 100).toFixed(1);
    console.log(
      `| ${r.label} | ${Math.round(r.requestsPerSec)} | ${r.p50} | ${r.p99} | ${r.non2xx + r.errors} | ${ratio}% |`,
    );
  }
}
