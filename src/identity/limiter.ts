import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

/** Failed logins per client IP, across accounts: in memory, or shared by instances through Redis. */
export interface LoginIpLimiter {
  /** Milliseconds until this IP may try again, or 0. */
  blockedFor(ip: string): Promise<number>;
  recordFailure(ip: string): Promise<void>;
  close(): Promise<void>;
}

export interface LoginIpLimiterOptions {
  maxFailures: number;
  windowSeconds: number;
  redisUrl?: string | undefined;
  onError?: (error: Error) => void;
}

/**
 * Counts failures only, so a busy office behind one NAT logging in successfully is never slowed;
 * an IP over the limit is refused until its window ends. Redis errors fail open to an in-memory
 * limiter (the per-account lockout, kept in the database, still applies).
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
  return {
    async blockedFor(ip) {
      const res = await limiter.get(ip);
      return res && res.consumedPoints >= options.maxFailures ? res.msBeforeNext : 0;
    },
    async recordFailure(ip) {
      try {
        await limiter.consume(ip);
      } catch (error) {
        if (!(error instanceof RateLimiterRes)) throw error;
        // Over the limit: blockedFor() answers from now on.
      }
    },
    async close() {
      if (redis) await redis.quit().catch(() => {});
    },
  };
}
