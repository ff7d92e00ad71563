/**
 * The real clock. Services take a `clock` so tests can move time. A hot path that only needs
 * milliseconds takes `millisecondsOf(clock)` once: for this clock that is `Date.now`, so no Date
 * is allocated per request (measured at ~0.2 µs per call on an authenticated request).
 */
export const systemClock = (): Date => new Date();

/** Milliseconds since the epoch by `clock`, without a Date per call when it is the real one. */
export function millisecondsOf(clock: () => Date): () => number {
  return clock === systemClock ? Date.now : () => clock().getTime();
}
