import { z } from 'zod';

const EARLIEST = Date.parse('0001-01-01T00:00:00Z');
const LATEST = Date.parse('9999-12-31T23:59:59.999Z');

/**
 * An ISO 8601 date-time with an offset, whose instant falls in years 1 to 9999 (UTC). The format
 * alone lets through instants the database cannot store: `0000-01-01T00:00:00Z`, or
 * `9999-12-31T23:59:59-14:00` (year 10000 in UTC), which answered 500 where they were stored.
 */
export const isoDateTime = z.iso.datetime({ offset: true }).refine(
  (value) => {
    const ms = Date.parse(value);
    return ms >= EARLIEST && ms <= LATEST;
  },
  { message: 'Must fall between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z' },
);
