import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';

export interface LoadResult {
  label: string;
  requestsPerSec: number;
  /** Latency percentiles of the 2xx answers, in ms (exact, not autocannon's whole milliseconds). */
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
  /**
   * CPU time (user + system) the server process spent per request, in µs; set when `pid` was
   * given. Unlike req/s it barely moves when other work shares the machine, so it is the figure
   * to compare on a busy one.
   */
  cpuUsPerRequest?: number;
}

export interface LoadOptions {
  label: string;
  url: string;
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  connections?: number;
  seconds?: number;
  /** The server's process id (Linux): measure its CPU time per request as well. */
  pid?: number | undefined;
}

const TICK_US = 10_000; // /proc reports CPU time in clock ticks of 1/100 s (CLK_TCK on Linux)

/** utime + stime of a process (or of one of its threads), in µs; undefined where /proc is not readable. */
export function cpuUs(pid: number | undefined, thread?: number): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(
      thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`,
      'utf8',
    );
    // Fields after the command name (which may contain spaces) are space separated: utime is 14th, stime 15th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICK_US;
  } catch {
    return undefined;
  }
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
  const cpuBefore = cpuUs(options.pid);
  // autocannon's own percentiles are whole milliseconds, truncated (its histogram holds integers):
  // a reported p99 of 3 may be 3.9 ms. The response events carry the exact time.
  const latencies: number[] = [];
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const run = autocannon({ ...base, duration: options.seconds ?? 5 }, (error, out) =>
      error ? reject(error) : resolve(out),
    );
    run.on('response', (_client, status, _bytes, ms) => {
      if (status >= 200 && status < 300) latencies.push(ms);
    });
  });
  const cpuAfter = cpuUs(options.pid);
  const sorted = Float64Array.from(latencies).sort();
  const percentile = (p: number) =>
    sorted.length === 0
      ? Number.NaN
      : (sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] ?? Number.NaN);
  const out: LoadResult = {
    label: options.label,
    requestsPerSec: result.requests.average,
    p50: percentile(0.5),
    p99: percentile(0.99),
    non2xx: result.non2xx,
    errors: result.errors,
  };
  if (cpuBefore !== undefined && cpuAfter !== undefined && result.requests.total > 0) {
    out.cpuUsPerRequest = (cpuAfter - cpuBefore) / result.requests.total;
  }
  return out;
}

/**
 * Runs each load once per round, rounds one after another, so that drift on a shared machine
 * hits every target alike. Returns every round, and the best round of each label (in order).
 */
export async function interleaved(
  rounds: number,
  runs: readonly LoadOptions[],
): Promise<{ all: LoadResult[]; best: LoadResult[] }> {
  const all: LoadResult[] = [];
  for (let i = 0; i < rounds; i++) for (const run of runs) all.push(await load(run));
  const labels = [...new Set(all.map((r) => r.label))];
  const best = labels.flatMap((label) => {
    const [top] = all.filter((r) => r.label === label).sort((a, b) => b.requestsPerSec - a.requestsPerSec);
    return top === undefined ? [] : [top];
  });
  return { all, best };
}

/** Prints a table of results with each one's ratio to the baseline (the first row). */
export function report(title: string, results: LoadResult[]): void {
  const [baseline] = results;
  if (!baseline) return;
  const cpu = results.every((r) => r.cpuUsPerRequest !== undefined);
  console.log(`\n${title}`);
  console.log(
    `| target | req/s | p50 ms | p99 ms | non-2xx | ratio to baseline |${cpu ? ' server CPU µs/req | baseline CPU / this CPU |' : ''}`,
  );
  console.log(`| --- | ---: | ---: | ---: | ---: | ---: |${cpu ? ' ---: | ---: |' : ''}`);
  for (const r of results) {
    const ratio = ((r.requestsPerSec / baseline.requestsPerSec) * 100).toFixed(1);
    const cpuCells = cpu
      ? ` ${(r.cpuUsPerRequest ?? 0).toFixed(1)} | ${(((baseline.cpuUsPerRequest ?? 0) / (r.cpuUsPerRequest ?? 1)) * 100).toFixed(1)}% |`
      : '';
    console.log(
      `| ${r.label} | ${Math.round(r.requestsPerSec)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.non2xx + r.errors} | ${ratio}% |${cpuCells}`,
    );
  }
}

/**
 * Each round's ratio of `label` to `baseline` (rounds as `interleaved` ran them: the two loads of
 * a round ran seconds apart), and their median. On a machine whose speed drifts, the best of each
 * (what `report` shows) can pair a fast round with a slow one; the per-round ratios show the spread.
 */
export function printRoundRatios(all: readonly LoadResult[], baseline: string, label: string): void {
  const bases = all.filter((r) => r.label === baseline);
  const targets = all.filter((r) => r.label === label);
  const line = (what: string, ratios: number[]) => {
    const sorted = [...ratios].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
    console.log(
      `${what}, round by round: ${ratios.map((r) => `${r.toFixed(1)}%`).join(', ')} (median ${median.toFixed(1)}%)`,
    );
  };
  line(
    `${label} / ${baseline}`,
    targets.map((t, i) => (t.requestsPerSec / (bases[i]?.requestsPerSec ?? Number.NaN)) * 100),
  );
  // Server CPU per request, baseline / this: it does not depend on the load generator getting its
  // share of the cores, though it drifts with the machine's speed too (rounds of one run have
  // ranged from 48 % to 83 %).
  line(
    '  server CPU per request, baseline / this',
    targets.map(
      (t, i) => ((bases[i]?.cpuUsPerRequest ?? Number.NaN) / (t.cpuUsPerRequest ?? Number.NaN)) * 100,
    ),
  );
}
