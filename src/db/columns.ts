import { text, timestamp } from 'drizzle-orm/pg-core';

/** Primary key holding a prefixed id from `newId()`. */
export const idColumn = () => text('id').primaryKey();

/** Timestamps kept in UTC with time zone; `updated_at` is set by the service on change. */
export const timestamps = {
  createdAt: timestamp('created_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
  updatedAt: timestamp('updated_at', { withTimezone: true, mode: 'date' }).notNull().defaultNow(),
};

/** A timestamptz column read as a JS Date. */
export const at = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });
