import { ALWAYS, allOf, anyOf, compileConstraint, NEVER, type Predicate } from './constraints.ts';
import { fieldGetter } from './context.ts';
import { ip4InSubnet, parseIp4, parseIp4Packed } from './ip.ts';
import { createBucketer, STRATEGY_SEED } from './murmur.ts';
import type { FlagContext, Segment, Strategy } from './types.ts';
import { compileVariants, type VariantSelector } from './variants.ts';

/** What evaluation needs from the surroundings; injectable for tests. */
export interface EvalEnvironment {
  /** Uniform in [0, 1), for random stickiness and gradualRolloutRandom. */
  readonly random: () => number;
  /** This process's host name, for applicationHostname. */
  readonly hostname: string;
}

/** A strategy compiled into one predicate plus its own variants, if any. */
export interface StrategyPlan {
  readonly test: Predicate;
  readonly variants: VariantSelector | undefined;
}

type Params = Readonly<Record<string, string | number | boolean>>;

// unleash-client reads parameters with truthiness and String()/Number(); so do we.
const param = (p: Params, key: string): string | undefined => {
  const v = p[key];
  return v === undefined || v === '' || v === false ? undefined : String(v);
};
const splitList = (s: string): string[] => s.split(/\s*,\s*/);

function rollout(percentage: number, bucketOf: (id: string) => number, id: (ctx: FlagContext) => unknown) {
  if (!(percentage > 0)) return NEVER;
  return (ctx: FlagContext) => {
    const v = id(ctx);
    return typeof v === 'string' && v !== '' && bucketOf(v) <= percentage;
  };
}

function flexibleRollout(p: Params, env: EvalEnvironment): Predicate {
  const percentage = Number(p.rollout);
  if (!(percentage > 0)) return NEVER;
  // unleash-client falls back to '' when groupId is missing; Unleash's UI always sets it.
  const bucket = createBucketer(param(p, 'groupId') ?? '', 100, STRATEGY_SEED);
  const randomHit = () => Math.floor(env.random() * 100) + 1 <= percentage;
  const stickiness = param(p, 'stickiness') ?? 'default';
  if (stickiness === 'random') return percentage >= 100 ? ALWAYS : randomHit;
  if (stickiness === 'default') {
    if (percentage >= 100) return ALWAYS;
    return (ctx) => {
      const id = ctx.userId || ctx.sessionId;
      return id ? bucket(id) <= percentage : randomHit();
    };
  }
  const get = fieldGetter(stickiness);
  return rollout(percentage, bucket, get);
}

// As unleash-client: an entry equal to the address as written, or an IPv4 range holding it
// (Address4's isInSubnet). IPv6 entries match only as equal strings: the SDK never parses them.
function remoteAddress(p: Params): Predicate {
  const ips = param(p, 'IPs');
  if (ips === undefined) return NEVER;
  const entries = splitList(ips);
  const exact = new Set(entries);
  const ranges = entries
    .map(parseIp4)
    .filter((r) => r !== undefined)
    .map(ip4InSubnet);
  return (ctx) => {
    const a = ctx.remoteAddress;
    if (typeof a !== 'string') return false;
    if (exact.has(a)) return true;
    if (ranges.length === 0) return false;
    const packed = parseIp4Packed(a);
    return packed >= 0 && anyOf(ranges, packed);
  };
}

function activation(s: Strategy, env: EvalEnvironment): Predicate {
  const p: Params = s.parameters ?? {};
  switch (s.name) {
    case 'default':
      return ALWAYS;
    case 'userWithId': {
      const ids = param(p, 'userIds');
      if (ids === undefined) return NEVER;
      const set = new Set(splitList(ids));
      return (ctx) => typeof ctx.userId === 'string' && set.has(ctx.userId);
    }
    case 'flexibleRollout':
      return flexibleRollout(p, env);
    case 'gradualRolloutUserId':
    case 'gradualRolloutSessionId': {
      const bucket = createBucketer(param(p, 'groupId') ?? '', 100, STRATEGY_SEED);
      const id =
        s.name === 'gradualRolloutUserId' ? (c: FlagContext) => c.userId : (c: FlagContext) => c.sessionId;
      return rollout(Number(p.percentage), bucket, id);
    }
    case 'gradualRolloutRandom': {
      const percentage = Number(p.percentage);
      return (_ctx) => percentage >= Math.floor(env.random() * 100) + 1;
    }
    case 'remoteAddress':
      return remoteAddress(p);
    case 'applicationHostname': {
      const names = param(p, 'hostNames');
      return names !== undefined && splitList(names.toLowerCase()).includes(env.hostname.toLowerCase())
        ? ALWAYS
        : NEVER;
    }
    default:
      return NEVER;
  }
}

/**
 * Compiles a strategy: its constraints, then its segments' constraints (a missing segment
 * fails the strategy), then the activation rule itself.
 */
export function compileStrategy(
  s: Strategy,
  segments: ReadonlyMap<number, Segment>,
  env: EvalEnvironment,
): StrategyPlan {
  const parts: Predicate[] = (s.constraints ?? []).map(compileConstraint);
  for (const id of s.segments ?? []) {
    const segment = segments.get(id);
    if (segment === undefined) parts.push(NEVER);
    else for (const c of segment.constraints) parts.push(compileConstraint(c));
  }
  parts.push(activation(s, env));
  const p: Params = s.parameters ?? {};
  const stickiness = s.variants?.[0]?.stickiness || param(p, 'stickiness') || 'default';
  // `${undefined}` is what unleash-client hashes when a strategy with variants has no groupId.
  const variants = compileVariants(s.variants, String(p.groupId), stickiness, env.random);
  return { test: allOf(parts), variants };
}
