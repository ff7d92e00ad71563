import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { REDIS_COMMAND_OPTIONS, watchRedis } from '../bus/index.ts';

/** One attempt's point of its IP's failure budget, taken before the attempt checks a secret. */
export interface IpReservation {
  /** The attempt failed: its point stays taken until the window ends. */
  fail(): void;
  /** The attempt is over: its point goes back unless it failed. Never throws; once is enough. */
  release(): Promise<void>;
}

/**
 * One attempt's place among the proofs of one account in flight (on every instance, with Redis).
 * `count` includes it. Held until the attempt's failure, if any, is written (`holdUntil`).
 */
export interface AccountSlot {
  readonly count: number;
  /** Leaves when `work` settles rather than when the proof returns (a failure written after its answer). */
  holdUntil(work: Promise<unknown>): void;
  /** Leaves now, unless held; never throws; once is enough. */
  leave(): Promise<void>;
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
  /**
   * Enters one proof of the account keyed `key` (a hash of its email) among those in flight. The
   * lockout lets it check a secret only while the account's recorded failures plus the proofs in
   * flight stay within LOGIN_MAX_FAILURES: a burst of logins at once cannot check more passwords
   * than the lock allows (lockout.ts `withAccountSlot`).
   */
  enterAccount(key: string): Promise<AccountSlot>;
  close(): Promise<void>;
}

/** No point left for this IP: how long to wait, and whether attempts in flight are the reason. */
export interface IpRefusal {
  waitMs: number;
  busy: boolean;
}

/** What a refusal because of attempts in flight asks the client to wait (Retry-After: 1). */
export const BUSY_RETRY_MS = 1000;
/**
 * How long a proof of an account stays counted if its end is never seen (a crashed instance, a
 * leave lost in a partition): far above one proof (an Argon2, a few statements), short enough that
 * a leak refuses the right password for half a minute, not five.
 */
const ACCOUNT_PROOF_SECONDS = 30;
/** How long an attempt in flight stays counted if its end is never seen (a crashed instance). */
const IN_FLIGHT_SECONDS = 300;

export interface LoginIpLimiterOptions {
  maxFailures: number;
  windowSeconds: number;
  redisUrl?: string | undefined;
  /** REDIS_PREFIX: the counters are `<prefix>:login-ip…` keys. */
  redisPrefix?: string;
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
    keyPrefix: `${options.redisPrefix ?? 'steward'}:login-ip`,
  };
  // Attempts in flight, counted apart (never refused): what tells a budget full of failures from
  // one full of logins that have not ended yet, which a busy office behind one NAT makes.
  const flight = {
    points: Number.MAX_SAFE_INTEGER,
    duration: IN_FLIGHT_SECONDS,
    keyPrefix: `${options.redisPrefix ?? 'steward'}:login-ip-busy`,
  };
  const accountPrefix = `${options.redisPrefix ?? 'steward'}:login-account-busy:`;
  const memory = new RateLimiterMemory(base);
  const memoryFlight = new RateLimiterMemory(flight);
  const memoryAccounts = new Map<string, Map<string, number>>();
  let redis: Redis | undefined;
  let limiter: RateLimiterMemory | RateLimiterRedis = memory;
  let inFlight: RateLimiterMemory | RateLimiterRedis = memoryFlight;
  let unwatch = () => {};
  if (options.redisUrl) {
    // An unanswered command (a partition that leaves the socket open) fails after
    // REDIS_COMMAND_TIMEOUT_MS and the insurance limiter answers, instead of holding the login for
    // the outage; the watch drops a silent connection, after which commands fail at once until it
    // is back — a login makes up to five limiter calls (src/bus).
    redis = new Redis(options.redisUrl, REDIS_COMMAND_OPTIONS);
    redis.on('error', (error: Error) => options.onError?.(error));
    await redis.connect();
    unwatch = watchRedis(redis);
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
    async enterAccount(key) {
      // Each proof is one member of a set, with its own expiry (a crashed instance's, or one whose
      // leave never reached the store, is gone after ACCOUNT_PROOF_SECONDS), and leaves the store it
      // entered. A count cannot go below zero: a fixed-window counter given back after its window
      // ended went negative, and the next burst checked that many more passwords (a probe's
      // finding); one that entered Redis and left to the insurance during a partition stayed
      // counted for the window's 300 s, refusing the right password.
      const id = randomUUID();
      const now = Date.now();
      const until = now + ACCOUNT_PROOF_SECONDS * 1000;
      let store: 'redis' | 'memory' = 'memory';
      let count = 0;
      if (redis) {
        try {
          const result = await redis
            .multi()
            .zremrangebyscore(accountPrefix + key, '-inf', now)
            .zadd(accountPrefix + key, until, id)
            .zcard(accountPrefix + key)
            .pexpire(accountPrefix + key, ACCOUNT_PROOF_SECONDS * 1000)
            .exec();
          const card = result?.[2];
          if (!card || card[0] !== null) throw card?.[0] ?? new Error('no answer to the account count');
          count = Number(card[1]);
          store = 'redis';
        } catch (error) {
          report(error);
        }
      }
      if (store === 'memory') {
        const members = memoryAccounts.get(key) ?? new Map<string, number>();
        for (const [other, expires] of members) if (expires <= now) members.delete(other);
        members.set(id, until);
        memoryAccounts.set(key, members);
        count = members.size;
      }
      let left = false;
      let held = false;
      const leave = async () => {
        if (left) return;
        left = true;
        if (store === 'memory') {
          const members = memoryAccounts.get(key);
          members?.delete(id);
          if (members?.size === 0) memoryAccounts.delete(key);
          return;
        }
        try {
          await redis?.zrem(accountPrefix + key, id);
        } catch (error) {
          report(error); // the member expires on its own
        }
      };
      return {
        count,
        holdUntil(work) {
          held = true;
          void work.then(leave, leave);
        },
        leave: () => (held ? Promise.resolve() : leave()),
      };
    },
    async close() {
      unwatch();
      if (redis) await redis.quit().catch(() => redis?.disconnect());
    },
  };
}
