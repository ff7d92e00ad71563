import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

/** One attempt's point of its IP's failure budget, taken before the attempt checks a secret. */
export interface IpReservation {
  /** The attempt failed: its point stays taken until the window ends. */
  fail(): void;
  /** The attempt is over: its point goes back unless it failed. Never throws; once is enough. */
  release(): Promise<void>;
}

/** Failed logins per client IP, across accounts: in memory, or shared by instances through Redis. */
export interface LoginIpLimiter {
  /**
   * Takes one of the IP's points for an attempt about to check a password or a code, in one
   * atomic step: an attempt counts as a failure from before its check until it ends, so however
   * many arrive at once, at most LOGIN_IP_MAX_FAILURES checks (failed ones, and ones in flight)
   * run per window. `{ waitMs }`: none left, nothing taken.
   */
  reserve(ip: string): Promise<IpReservation | { waitMs: number }>;
  close(): Promise<void>;
}

export interface LoginIpLimiterOptions {
  maxFailures: number;
  windowSeconds: number;
  redisUrl?: string | undefined;
  onError?: (error: Error) => void;
}

/**
 * Counts failures only, so a busy office behind one NAT logging in successfully is never slowed
 * (its points come back as each login succeeds; only more than LOGIN_IP_MAX_FAILURES logins in
 * flight at the same moment would wait); an IP over the limit is refused until its window ends.
 * Redis errors fail open to an in-memory limiter (the per-account lockout, kept in the database,
 * still applies).
 */
export async function createLoginIpLimiter(options: LoginIpLimiterOptions): Promise<LoginIpLimiter> {
  const base = {
    points: options.maxFailures,
    duration: options.windowSeconds,
    keyPrefix: 'steward:login-ip',
  };
  const memory = new RateLimiterMemory(base);
  let redis: Redis | undefined;
  let limiter: RateLimiterMemory | RateLimiterRedis = memory;
  if (options.redisUrl) {
    redis = new Redis(options.redisUrl, {
      lazyConnect: true,
      maxRetriesPerRequest: 2,
      enableOfflineQueue: false,
    });
    redis.on('error', (error: Error) => options.onError?.(error));
    await redis.connect();
    limiter = new RateLimiterRedis({ ...base, storeClient: redis, insuranceLimiter: memory });
  }

  // Giving a point back; an attempt that outlived its window gives it to the next one (one
  // failure more allowed there), which is cheaper than a second round trip to prevent.
  const giveBack = async (ip: string): Promise<void> => {
    try {
      await limiter.reward(ip, 1);
    } catch (error) {
      options.onError?.(error instanceof Error ? error : new Error(String(error)));
    }
  };

  return {
    async reserve(ip) {
      try {
        await limiter.consume(ip, 1);
      } catch (error) {
        if (!(error instanceof RateLimiterRes)) throw error;
        // Refused: the consume counted all the same, and a refusal is no failure (it may be
        // attempts still in flight that fill the budget, and they may all succeed).
        await giveBack(ip);
        return { waitMs: Math.max(error.msBeforeNext, 1) };
      }
      let failed = false;
      let released = false;
      return {
        fail() {
          failed = true;
        },
        async release() {
          if (released || failed) return;
          released = true;
          await giveBack(ip);
        },
      };
    },
    async close() {
      if (redis) await redis.quit().catch(() => {});
    },
  };
}
