import { z } from 'zod';
import { mayHoldUnstorable, unstorableIn } from './body.ts';
import { defineErrors } from './errors.ts';

export const paginationErrors = defineErrors({
  invalid_cursor: { status: 400, title: 'Invalid pagination cursor' },
});

/** `?limit=&cursor=` of every list endpoint. */
export const pageQuery = {
  limit: z.coerce.number().int().min(1).max(500).default(50).describe('Page size (1–500).'),
  cursor: z.string().max(200).optional().describe('`next_cursor` from the previous page.'),
};

/** Opaque cursors: base64url JSON, so clients do not build them by hand. */
export function encodeCursor(value: Record<string, string | number>): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

export function decodeCursor<T>(cursor: string | undefined, schema: z.ZodType<T>): T | undefined {
  if (cursor === undefined) return undefined;
  try {
    const text = Buffer.from(cursor, 'base64url').toString('utf8');
    // A cursor is the client's input too: a NUL (or lone surrogate) in it would reach SQL as a 500.
    // One this API issued never holds one; the escape check clears every other cursor at once.
    const value: unknown = JSON.parse(text);
    if (!mayHoldUnstorable(text) || unstorableIn(value, 'cursor') === undefined) {
      const parsed = schema.safeParse(value);
      if (parsed.success) return parsed.data;
    }
  } catch {
    // fall through: not base64url JSON
  }
  throw paginationErrors.invalid_cursor('The cursor is not one this API issued');
}

/** The envelope of every list response. */
export const listResponse = <T extends z.ZodType>(item: T) =>
  z.object({
    data: z.array(item),
    next_cursor: z.string().nullable().describe('Pass as `cursor` for the next page; null on the last page.'),
  });
