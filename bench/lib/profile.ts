// Summarises a V8 CPU profile (`node --cpu-prof`): self time by function and by file, so a
// benchmark run shows where a request's cost goes. With a function name as 4th argument, also the
// call paths that lead to it.
// Run: node --import tsx bench/lib/profile.ts <file.cpuprofile> [top] [window]
// window: a number of milliseconds, for only the samples of the busiest window of that length (the
// load phase of a benchmark, without start-up and migrations), or negative, for the last -window
// ms (beware: in vault-reveal.ts that includes the end-of-run audit verify); `a:b`, the samples
// from a to b seconds after the start; `timeline`, the busy share per half second, in seconds, to
// find a load phase among start-up, other rounds and end-of-run checks.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg, windowText, callersOf] = process.argv.slice(2);
// An empty window argument (to reach callersOf) means the whole profile.
const windowArg = windowText === '' ? undefined : windowText;
if (!file) throw new Error('usage: profile.ts <file.cpuprofile> [top]');
const top = Number(topArg ?? 40);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const selfUs = new Map<number, number>();
const at: number[] = [];
let clock = 0;
for (const delta of profile.timeDeltas) {
  clock += delta;
  at.push(clock);
}
// The load phase: the window of that length with the least idle time (start-up, migrations and
// other servers' rounds fall outside it).
const idleIds = new Set(profile.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id));
let start = 0;
let end = clock;
if (windowArg?.includes(':')) {
  // An explicit range in seconds from the profile's start ("12.5:17.5"), as the timeline shows.
  const [from, to] = windowArg.split(':').map(Number);
  start = (from ?? 0) * 1e6;
  end = to === undefined || Number.isNaN(to) ? clock : to * 1e6;
} else if (windowArg === 'timeline') {
  // Busy share per half second, to find a benchmark's load phase.
  const busyPer = new Map<number, number>();
  profile.samples.forEach((id, i) => {
    if (idleIds.has(id)) return;
    const slot = Math.floor((at[i] ?? 0) / 5e5);
    busyPer.set(slot, (busyPer.get(slot) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  for (let slot = 0; slot <= clock / 5e5; slot++) {
    const share = (busyPer.get(slot) ?? 0) / 5e5;
    console.log(`${(slot / 2).toFixed(1).padStart(6)} s  ${'#'.repeat(Math.round(share * 40))}`);
  }
  process.exit(0);
} else if (windowArg !== undefined && Number(windowArg) < 0) {
  start = clock + Number(windowArg) * 1000;
} else if (windowArg !== undefined) {
  const width = Number(windowArg) * 1000;
  let best = -1;
  let busy = 0;
  let lo = 0;
  for (let hi = 0; hi < at.length; hi++) {
    if (!idleIds.has(profile.samples[hi] as number)) busy += profile.timeDeltas[hi] ?? 0;
    while ((at[hi] ?? 0) - (at[lo] ?? 0) > width) {
      if (!idleIds.has(profile.samples[lo] as number)) busy -= profile.timeDeltas[lo] ?? 0;
      lo++;
    }
    if (busy > best) {
      best = busy;
      start = at[lo] ?? 0;
      end = at[hi] ?? 0;
    }
  }
}
profile.samples.forEach((id, i) => {
  const t = at[i] ?? 0;
  if (t < start || t > end) return;
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
});

const shortUrl = (url: string) =>
  url
    .replace(/^file:\/\/.*?\/node_modules\//, '')
    .replace(/^file:\/\/.*?\/src\//, 'src/')
    .replace(/\?.*$/, '');
const byFunction = new Map<string, number>();
const byFile = new Map<string, number>();
let total = 0;
let idle = 0;
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) continue;
  total += us;
  const { functionName, url, lineNumber } = node.callFrame;
  if (functionName === '(idle)') idle += us;
  const where = shortUrl(url) || '(native)';
  const name = `${functionName || '(anonymous)'} ${where}:${lineNumber + 1}`;
  byFunction.set(name, (byFunction.get(name) ?? 0) + us);
  const pkg = where.startsWith('src/')
    ? where
    : (where
        .split('/')
        .slice(0, where.startsWith('@') ? 2 : 1)
        .join('/') ?? where);
  byFile.set(pkg, (byFile.get(pkg) ?? 0) + us);
}
const busy = total - idle;
if (callersOf !== undefined) {
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const paths = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node || node.callFrame.functionName !== callersOf) continue;
    const chain: string[] = [];
    for (let p = parent.get(id); p !== undefined && chain.length < 6; p = parent.get(p)) {
      const f = byId.get(p)?.callFrame;
      if (f) chain.push(`${f.functionName || '(anonymous)'} ${shortUrl(f.url)}`);
    }
    const key = chain.join(' < ');
    paths.set(key, (paths.get(key) ?? 0) + us);
  }
  console.log(`\nCallers of ${callersOf}`);
  for (const [path, us] of [...paths].sort((a, b) => b[1] - a[1]).slice(0, 12)) {
    console.log(`${((us / busy) * 100).toFixed(2).padStart(6)}%  ${path}`);
  }
}
const print = (title: string, entries: Map<string, number>) => {
  console.log(`\n${title} (self time, % of ${(busy / 1000).toFixed(0)} ms not idle)`);
  for (const [name, us] of [...entries].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`${((us / busy) * 100).toFixed(1).padStart(5)}%  ${name}`);
  }
};
print('By function', byFunction);
print('By file / package', byFile);
