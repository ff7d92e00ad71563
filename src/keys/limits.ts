import { Redis } from 'ioredis';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible';
import { REDIS_COMMAND_OPTIONS, watchRedis } from '../bus/index.ts';

/**
 * One rate limiter per distinct (limit, window) pair, keyed by key id: in memory, or in Redis
 * (shared by every instance) when REDIS_URL is set. A Redis outage — an error, or no answer within
 * REDIS_COMMAND_TIMEOUT_MS — falls back to the in-memory insurance limiter, so limits loosen to
 * per-instance instead of failing (or holding) every request.
 */
export interface KeyRateLimiters {
  forLimit(limit: number, windowSeconds: number): RateLimiterAbstract;
  close(): Promise<void>;
}

export async function createKeyRateLimiters(options: {
  redisUrl?: string | undefined;
  /** REDIS_PREFIX: the counters are `<prefix>:key-rl:…` keys. */
  redisPrefix?: string;
  onError?: (error: Error) => void;
}): Promise<KeyRateLimiters> {
  let redis: Redis | undefined;
  let unwatch = () => {};
  if (options.redisUrl) {
    // A command unanswered after REDIS_COMMAND_TIMEOUT_MS fails, and the limiter answers from its
    // insurance; a connection that stops answering is dropped by the watch, after which commands
    // fail at once until it is back (see src/bus). Without the timeout a partition that left the
    // socket open held every rate-limited verification for as long as it lasted.
    redis = new Redis(options.redisUrl, REDIS_COMMAND_OPTIONS);
    redis.on('error', (error: Error) => options.onError?.(error));
    await redis.connect();
    unwatch = watchRedis(redis);
  }
  const limiters = new Map<string, RateLimiterAbstract>();
  return {
    forLimit(limit, windowSeconds) {
      const name = `${limit}/${windowSeconds}`;
      let limiter = limiters.get(name);
      if (limiter === undefined) {
        const base = {
          points: limit,
          duration: windowSeconds,
          keyPrefix: `${options.redisPrefix ?? 'steward'}:key-rl:${name}`,
        };
        const memory = new RateLimiterMemory(base);
        limiter = redis
          ? new RateLimiterRedis({ ...base, storeClient: redis, insuranceLimiter: memory })
          : memory;
        limiters.set(name, limiter);
      }
      return limiter;
    },
    async close() {
      unwatch();
      if (redis) await redis.quit().catch(() => redis?.disconnect());
    },
  };
}
