import { randomBytes } from 'node:crypto';

// Accept a caller's request id only if it is short and plain; otherwise make one.
const GIVEN = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * Request ids: the caller's `X-Request-Id` when it is plain, else `<instance>-<counter>`. The
 * instance part is 64 random bits drawn once per process (base32, 13 characters), so ids are
 * unique across instances and restarts; the counter makes them unique within one. A request id
 * correlates logs and audit events and is no secret, so it need not be unguessable: a random UUID
 * per request measured ~1 µs of an authenticated request (buffer refills included), this ~50 ns.
 */
export function requestIdGenerator(): (given: string | string[] | undefined) => string {
  const instance = randomBytes(8).readBigUInt64BE().toString(32).padStart(13, '0');
  let counter = 0;
  return (given) => {
    if (typeof given === 'string' && GIVEN.test(given)) return given;
    counter++;
    return `${instance}-${counter.toString(36)}`;
  };
}
