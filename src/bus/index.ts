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
  publish(topic: string, message: string): Promise<void>;
  /** Receives messages of one topic from every instance, this one included. */
  subscribe(topic: string, handler: (message: string) => void): void;
  close(): Promise<void>;
}

const CHANNEL_PREFIX = 'steward:invalidate:';

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
    async close() {
      emitter.removeAllListeners();
    },
  };
}

/** Redis pub/sub needs a connection of its own for subscribing. */
export async function createRedisBus(
  url: string,
  onError: (error: Error) => void = () => {},
): Promise<InvalidationBus> {
  const publisher = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 2 });
  const subscriber = publisher.duplicate();
  publisher.on('error', onError);
  subscriber.on('error', onError);
  await Promise.all([publisher.connect(), subscriber.connect()]);
  const handlers = new Map<string, ((message: string) => void)[]>();
  subscriber.on('message', (channel: string, message: string) => {
    for (const handler of handlers.get(channel.slice(CHANNEL_PREFIX.length)) ?? []) handler(message);
  });
  return {
    kind: 'redis',
    async publish(topic, message) {
      await publisher.publish(CHANNEL_PREFIX + topic, message);
    },
    subscribe(topic, handler) {
      const list = handlers.get(topic);
      if (list) {
        list.push(handler);
        return;
      }
      handlers.set(topic, [handler]);
      void subscriber.subscribe(CHANNEL_PREFIX + topic).catch(onError);
    },
    async close() {
      subscriber.disconnect();
      await publisher.quit();
    },
  };
}

/** The bus this configuration calls for. */
export function openBus(
  redisUrl: string | undefined,
  onError?: (error: Error) => void,
): Promise<InvalidationBus> {
  return redisUrl ? createRedisBus(redisUrl, onError) : Promise.resolve(createMemoryBus());
}
