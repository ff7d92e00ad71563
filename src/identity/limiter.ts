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
   * run per window. `{ waitMs, busy }`: none left, nothing taken; `busy` when what fills the budget
   * is attempts still in flight rather than failures (they may all succeed: worth a retry in a
   * moment, not at the window's end).
   */
  reserve(ip: string): Promise<IpReservation | IpRefusal>;
  close(): Promise<void>;
}

/** No point left for this IP: how long to wait, and whether attempts in flight are the reason. */
export interface IpRefusal {
  waitMs: number;
  busy: boolean;
}

/** What a refusal because of attempts in flight asks the client to wait (Retry-After: 1). */
export const BUSY_RETRY_MS = 1000;
/** How long an attempt in flight stays counted if its end is never seen (a crashed instance). */
const IN_FLIGHT_SECONDS = 300;

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
  // Attempts in flight, counted apart (never refused): what tells a budget full of failures from
  // one full of logins that have not ended yet, which a busy office behind one NAT makes.
  const flight = {
    points: Number.MAX_SAFE_INTEGER,
    duration: IN_FLIGHT_SECONDS,
    keyPrefix: 'steward:login-ip-busy',
  };
  const memory = new RateLimiterMemory(base);
  const memoryFlight = new RateLimiterMemory(flight);
  let redis: Redis | undefined;
  let limiter: RateLimiterMemory | RateLimiterRedis = memory;
  let inFlight: RateLimiterMemory | RateLimiterRedis = memoryFlight;
  if (options.redisUrl) {
    redis = new Redis(options.redisUrl, {
      lazyConnect: true,
      maxRetriesPerRequest: 2,
      enableOfflineQueue: false,
    });
    redis.on('error', (error: Error) => options.onError?.(error));
    await redis.connect();
    limiter = new RateLimiterRedis({ ...base, storeClient: redis, insuranceLimiter: memory });
    inFlight = new RateLimiterRedis({ ...flight, storeClient: redis, insuranceLimiter: memoryFlight });
  }
  const report = (error: unknown) =>
    options.onError?.(error instanceof Error ? error : new Error(String(error)));
  const moveInFlight = async (ip: string, delta: 1 | -1): Promise<void> => {
    try {
      if (delta > 0) await inFlight.consume(ip, 1);
      else await inFlight.reward(ip, 1);
    } catch (error) {
      report(error);
    }
  };
  const inFlightNow = async (ip: string): Promise<number> => {
    try {
      return Math.max(0, (await inFlight.get(ip))?.consumedPoints ?? 0);
    } catch (error) {
      report(error);
      return 0;
    }
  };

  // Giving a point back; an attempt that outlived its window gives it to the next one (one
  // failure more allowed there), which is cheaper than a second round trip to prevent.
  const giveBack = async (ip: string): Promise<void> => {
    try {
      await limiter.reward(ip, 1);
    } catch (error) {
      report(error);
    }
  };

  return {
    async reserve(ip) {
      try {
        await limiter.consume(ip, 1);
      } catch (error) {
        if (!(error instanceof RateLimiterRes)) throw error;
        // Refused: the consume counted all the same, and a refusal is no failure.
        await giveBack(ip);
        // Full of failures: wait for the window. Full (partly) of attempts still in flight, which
        // may all succeed: a moment, and no claim of failed logins.
        const failures = error.consumedPoints - 1 - (await inFlightNow(ip));
        return failures >= options.maxFailures
          ? { waitMs: Math.max(error.msBeforeNext, 1), busy: false }
          : { waitMs: BUSY_RETRY_MS, busy: true };
      }
      await moveInFlight(ip, 1);
      let failed = false;
      let released = false;
      return {
        fail() {
          failed = true;
        },
        async release() {
          if (released) return;
          released = true;
          await moveInFlight(ip, -1);
          if (!failed) await giveBack(ip);
        },
      };
    },
    async close() {
      if (redis) await redis.quit().catch(() => {});
    },
  };
}
