import { z } from 'zod';

const EARLIEST = Date.parse('0100-01-01T00:00:00Z');
const LATEST = Date.parse('9999-12-31T23:59:59.999Z');

/**
 * An ISO 8601 date-time with an offset, whose instant falls in years 100 to 9999 (UTC). The format
 * alone lets through instants the database cannot store: `0000-01-01T00:00:00Z`, or
 * `9999-12-31T23:59:59-14:00` (year 10000 in UTC), which answered 500 where they were stored.
 * Years 1–99 are stored but read back wrong: the database's text (`0049-01-01 00:00:00+00`) is
 * read by `new Date()` as 2049 (and `0030-…` as Invalid Date, a 500).
 */
export const isoDateTime = z.iso.datetime({ offset: true }).refine(
  (value) => {
    const ms = Date.parse(value);
    return ms >= EARLIEST && ms <= LATEST;
  },
  { message: 'Must fall between 0100-01-01T00:00:00Z and 9999-12-31T23:59:59Z' },
);
