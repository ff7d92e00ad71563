import { Redis } from 'ioredis';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible';

/**
 * One rate limiter per distinct (limit, window) pair, keyed by key id: in memory, or in Redis
 * (shared by every instance) when REDIS_URL is set. A Redis outage falls back to the in-memory
 * insurance limiter, so limits loosen to per-instance instead of failing every request.
 */
export interface KeyRateLimiters {
  forLimit(limit: number, windowSeconds: number): RateLimiterAbstract;
  close(): Promise<void>;
}

export async function createKeyRateLimiters(options: {
  redisUrl?: string | undefined;
  onError?: (error: Error) => void;
}): Promise<KeyRateLimiters> {
  let redis: Redis | undefined;
  if (options.redisUrl) {
    redis = new Redis(options.redisUrl, {
      lazyConnect: true,
      maxRetriesPerRequest: 2,
      enableOfflineQueue: false,
    });
    redis.on('error', (error: Error) => options.onError?.(error));
    await redis.connect();
  }
  const limiters = new Map<string, RateLimiterAbstract>();
  return {
    forLimit(limit, windowSeconds) {
      const name = `${limit}/${windowSeconds}`;
      let limiter = limiters.get(name);
      if (limiter === undefined) {
        const base = { points: limit, duration: windowSeconds, keyPrefix: `steward:key-rl:${name}` };
        const memory = new RateLimiterMemory(base);
        limiter = redis
          ? new RateLimiterRedis({ ...base, storeClient: redis, insuranceLimiter: memory })
          : memory;
        limiters.set(name, limiter);
      }
      return limiter;
    },
    async close() {
      if (redis) await redis.quit().catch(() => {});
    },
  };
}
