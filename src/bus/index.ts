import { EventEmitter } from 'node:events';
import { Redis } from 'ioredis';

/**
 * Tells every Steward instance that something cached changed (a key revoked, a
 * grant added), so each drops or patches its in-memory copy. With REDIS_URL this
 * is Redis pub/sub; without it, the one process is the only instance.
 * Messages are hints to re-read, never the data itself: losing one costs at most
 * the cache's own refresh interval, and nothing secret crosses the wire.
 */
export interface InvalidationBus {
  readonly kind: 'memory' | 'redis';
  /** Resolves once sent, or once it failed (reported to the bus's `onError`): it never rejects. */
  publish(topic: string, message: string): Promise<void>;
  /** Receives messages of one topic from every instance, this one included. */
  subscribe(topic: string, handler: (message: string) => void): void;
  /**
   * Hands a message to this instance's own subscribers of `topic`, and nobody else's: what an
   * instance learned by other means (a poll that found a change whose message never came).
   */
  deliverLocally(topic: string, message: string): void;
  close(): Promise<void>;
}

export function createMemoryBus(): InvalidationBus {
  const emitter = new EventEmitter();
  emitter.setMaxListeners(0);
  return {
    kind: 'memory',
    async publish(topic, message) {
      emitter.emit(topic, message);
    },
    subscribe(topic, handler) {
      emitter.on(topic, handler);
    },
    deliverLocally(topic, message) {
      emitter.emit(topic, message);
    },
    async close() {
      emitter.removeAllListeners();
    },
  };
}

/**
 * How long a Redis command may go unanswered before it fails (ioredis `commandTimeout`). Redis
 * answers in well under a millisecond here; a command still unanswered after this long means a
 * partition or a stalled server, not load. Callers then take their fallback (the in-memory
 * insurance limiter, the invalidation poll) instead of hanging for as long as the outage lasts:
 * a rate-limited verification waits at most this long, once per command. Kept well under the
 * ~1 s users notice and the poll's 500 ms period, and far above any healthy round trip.
 */
export const REDIS_COMMAND_TIMEOUT_MS = 300;
/** TCP keep-alive on every Redis socket (ioredis `keepAlive`, initial delay): a dead peer is found. */
export const REDIS_KEEPALIVE_MS = 10_000;
/** How often `watchRedis` pings an idle-or-not connection to find one that stopped answering. */
export const REDIS_WATCH_MS = 1_000;

/**
 * ioredis options shared by Steward's command connections (rate limiters, the bus publisher):
 * a command fails after REDIS_COMMAND_TIMEOUT_MS, and while the connection is down it fails at
 * once (no offline queue) rather than wait for a reconnect.
 */
export const REDIS_COMMAND_OPTIONS = {
  lazyConnect: true,
  maxRetriesPerRequest: 2,
  enableOfflineQueue: false,
  commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
  keepAlive: REDIS_KEEPALIVE_MS,
} as const;

/**
 * Pings the connection every REDIS_WATCH_MS; a ping not answered within REDIS_COMMAND_TIMEOUT_MS
 * (the socket is open but nothing comes back: a partition, a paused server) drops the connection
 * and reconnects. Until the reconnect is ready every command fails at once (no offline queue), so
 * callers fall back without paying the command timeout each time, and commands stop piling up on
 * a socket that may not answer for minutes. The timeout is the watch's own, so it also guards the
 * subscriber, which has no command timeout: a silent subscriber socket otherwise stayed deaf until
 * TCP keep-alive gave up on it (minutes with Linux's defaults), every message lost meanwhile.
 * Returns the stop function.
 */
export function watchRedis(
  redis: Redis,
  intervalMs = REDIS_WATCH_MS,
  timeoutMs = REDIS_COMMAND_TIMEOUT_MS,
): () => void {
  let pinging = false;
  const timer = setInterval(() => {
    if (pinging || redis.status !== 'ready') return;
    pinging = true;
    let answered = false;
    redis.ping().then(
      () => {
        answered = true;
      },
      () => {}, // unanswered: decided below
    );
    // Decided after the I/O the loop has waiting: timers run before sockets are read, so after a
    // stall of the event loop (a long synchronous task) the deadline fires before a PONG already
    // received is read. Judged at once, a busy process dropped its healthy subscriber, losing the
    // messages received but not yet read (a regression probe lost 118 of 3,000 with 450 ms stalls).
    setTimeout(() => {
      setImmediate(() => {
        pinging = false;
        if (!answered && redis.status === 'ready') redis.disconnect(true);
      });
    }, timeoutMs).unref();
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * Redis pub/sub needs a connection of its own for subscribing. Channels are
 * `<prefix>:invalidate:<topic>` (REDIS_PREFIX): deployments sharing one Redis stay apart.
 */
export async function createRedisBus(
  url: string,
  onError: (error: Error) => void = () => {},
  prefix = 'steward',
): Promise<InvalidationBus> {
  const channelPrefix = `${prefix}:invalidate:`;
  // Publishing is a hint (the pollers cover a lost message): a publish fails within the command
  // timeout, or at once while the connection is down, instead of waiting in an offline queue for
  // as long as Redis is away — writers no longer wait on it, but other callers still await it.
  const publisher = new Redis(url, REDIS_COMMAND_OPTIONS);
  // The subscriber keeps ioredis's offline queue and no command timeout: a SUBSCRIBE sent while it
  // reconnects must not be lost. Channels are subscribed again on every `ready` by this code, all
  // of them, not by ioredis's autoResubscribe (only channels it had heard confirmed, and its
  // SUBSCRIBE has no rejection handler: a bus closed before Redis answered it raised an unhandled
  // rejection, "Connection is closed.", in the process).
  const subscriber = new Redis(url, {
    lazyConnect: true,
    keepAlive: REDIS_KEEPALIVE_MS,
    autoResubscribe: false,
  });
  publisher.on('error', onError);
  subscriber.on('error', onError);
  await Promise.all([publisher.connect(), subscriber.connect()]);
  const unwatchPublisher = watchRedis(publisher);
  // PING is allowed in subscriber mode; after the reconnect, `ready` below subscribes again.
  const unwatchSubscriber = watchRedis(subscriber);
  const handlers = new Map<string, ((message: string) => void)[]>();
  subscriber.on('ready', () => {
    // After a reconnect (the watch's, or a lost connection): every topic, confirmed or not.
    const channels = [...handlers.keys()].map((topic) => channelPrefix + topic);
    if (channels.length > 0) subscriber.subscribe(...channels).catch(onError);
  });
  subscriber.on('message', (channel: string, message: string) => {
    for (const handler of handlers.get(channel.slice(channelPrefix.length)) ?? []) handler(message);
  });
  return {
    kind: 'redis',
    async publish(topic, message) {
      // Never fails its caller: a lost hint is covered by the receivers' polls and refreshes, and a
      // caller that let it through answered 500 for a change it had committed (a login or a
      // password change while Redis was away; a regression probe's finding).
      await publisher.publish(channelPrefix + topic, message).catch((error: unknown) => {
        onError(error instanceof Error ? error : new Error(String(error)));
      });
    },
    subscribe(topic, handler) {
      const list = handlers.get(topic);
      if (list) {
        list.push(handler);
        return;
      }
      handlers.set(topic, [handler]);
      void subscriber.subscribe(channelPrefix + topic).catch(onError);
    },
    deliverLocally(topic, message) {
      for (const handler of handlers.get(topic) ?? []) handler(message);
    },
    async close() {
      unwatchPublisher();
      unwatchSubscriber();
      subscriber.disconnect();
      await publisher.quit().catch(() => publisher.disconnect());
    },
  };
}

/** The bus this configuration calls for. */
export function openBus(
  redisUrl: string | undefined,
  onError?: (error: Error) => void,
  prefix?: string,
): Promise<InvalidationBus> {
  return redisUrl ? createRedisBus(redisUrl, onError, prefix) : Promise.resolve(createMemoryBus());
}
