import { BlockList, isIP } from 'node:net';
import { effectiveRateLimit, type RateLimit, type Tier } from './tiers.ts';

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
  return null;
}
