import { BlockList, isIP } from 'node:net';
import { effectiveRateLimit, type RateLimit, type Tier } from './tiers.ts';

/**
 * The metadata field that binds a key to one flags environment (the flags domain reads it:
 * `src/flags/unleash-api.ts`, same name). Here it is only a bound like the others: compared, never
 * interpreted.
 */
export const FLAGS_ENVIRONMENT_METADATA = 'flags_environment';

/** The flags environment a `stw_test_…` key naming none is bound to (as the flags domain reads it). */
export const TEST_KEY_FLAGS_ENVIRONMENT = 'development';

/**
 * The flags environment a key is bound to, as the flags domain reads it: a non-empty
 * `metadata.flags_environment`, else `development` for a test key; null: unbound (any environment).
 */
export function flagsEnvironmentOf(key: {
  environment: string;
  metadata: Readonly<Record<string, unknown>>;
}): string | null {
  const named = key.metadata[FLAGS_ENVIRONMENT_METADATA];
  if (typeof named === 'string' && named.length > 0) return named;
  return key.environment === 'test' ? TEST_KEY_FLAGS_ENVIRONMENT : null;
}

/**
 * What limits a key as a credential, apart from its scopes: where it may be used from, until
 * when, how fast and how much. A key that creates, changes or rolls keys must not produce one
 * with looser bounds than its own — else a key pinned to one network, or expiring tonight, could
 * mint an unpinned, everlasting sibling and use that instead.
 */
export interface KeyBounds {
  /** Normalised CIDRs or addresses (`parseCidr`); empty: any address. */
  allowedIps: readonly string[];
  expiresAt: Date | null;
  /** The effective rate limit: the key's own, else its tier's; null: none. */
  ratelimit: RateLimit | null;
  /** The tier's quota per period; null: unlimited. */
  quota: number | null;
  periodDays: number;
  /** The flags environment it is bound to (`flagsEnvironmentOf`); null: none. */
  flagsEnvironment: string | null;
}

/** The bounds of a key from its stored settings and the configured tiers. */
export function boundsOf(
  key: {
    allowedIps: readonly string[];
    expiresAt: Date | null;
    ratelimitLimit: number | null;
    ratelimitWindowSeconds: number | null;
    tier: string;
    periodDays: number;
    environment: string;
    metadata: Readonly<Record<string, unknown>>;
  },
  tiers: ReadonlyMap<string, Tier>,
): KeyBounds {
  return {
    allowedIps: key.allowedIps,
    expiresAt: key.expiresAt,
    ratelimit: effectiveRateLimit(key, tiers),
    // An unknown tier (removed from the configuration) grants no quota limit, as in verification.
    quota: tiers.get(key.tier)?.quota ?? null,
    periodDays: key.periodDays,
    flagsEnvironment: flagsEnvironmentOf(key),
  };
}

/** `inner` (a CIDR or address) lies wholly inside `outer`. */
function cidrWithin(inner: string, outer: string): boolean {
  const [innerAddress = '', innerBits] = inner.split('/');
  const [outerAddress = '', outerBits] = outer.split('/');
  const family = isIP(innerAddress);
  if (family === 0 || family !== isIP(outerAddress)) return false;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  const full = family === 4 ? 32 : 128;
  const innerPrefix = innerBits === undefined ? full : Number(innerBits);
  const outerPrefix = outerBits === undefined ? full : Number(outerBits);
  if (innerPrefix < outerPrefix) return false;
  const list = new BlockList();
  list.addSubnet(outerAddress, outerPrefix, type);
  return list.check(innerAddress, type);
}

/** Requests per second a rate limit allows on average. */
const rate = (r: RateLimit) => r.limit / r.windowSeconds;

/**
 * The first bound of `inner` looser than `outer`'s, by the name of the field that sets it, or null
 * when `inner` is as tight or tighter everywhere.
 */
export function looserBound(inner: KeyBounds, outer: KeyBounds): string | null {
  if (
    outer.allowedIps.length > 0 &&
    (inner.allowedIps.length === 0 ||
      !inner.allowedIps.every((entry) => outer.allowedIps.some((o) => cidrWithin(entry, o))))
  ) {
    return 'allowed_ips';
  }
  if (outer.expiresAt !== null && (inner.expiresAt === null || inner.expiresAt > outer.expiresAt)) {
    return 'expires_at';
  }
  if (
    outer.ratelimit !== null &&
    (inner.ratelimit === null ||
      inner.ratelimit.limit > outer.ratelimit.limit ||
      rate(inner.ratelimit) > rate(outer.ratelimit))
  ) {
    return 'ratelimit';
  }
  // The same quota over a shorter period refills sooner.
  if (
    outer.quota !== null &&
    (inner.quota === null || inner.quota > outer.quota || inner.periodDays < outer.periodDays)
  ) {
    return 'tier';
  }
  // A key bound to a flags environment is bound to that one only: unbound, or bound to another, is
  // looser (another environment is not tighter, just elsewhere).
  if (outer.flagsEnvironment !== null && inner.flagsEnvironment !== outer.flagsEnvironment) {
    return `metadata.${FLAGS_ENVIRONMENT_METADATA}`;
  }
  return null;
}
