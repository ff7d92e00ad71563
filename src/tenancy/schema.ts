import { pgTable, text, uniqueIndex } from 'drizzle-orm/pg-core';
import { idColumn, timestamps } from '../db/columns.ts';

/** A tenant. Everything else in Steward belongs to exactly one org. */
export const organizations = pgTable('organizations', {
  id: idColumn(),
  slug: text('slug').notNull().unique(),
  name: text('name').notNull(),
  ...timestamps,
});

/** Per-org environments for settings, flags and secrets (`development`, `staging`, `production`, …). */
export const environments = pgTable(
  'environments',
  {
    id: idColumn(),
    orgId: text('org_id')
      .notNull()
      .references(() => organizations.id, { onDelete: 'cascade' }),
    name: text('name').notNull(),
    description: text('description'),
    ...timestamps,
  },
  (t) => [uniqueIndex('environments_org_name').on(t.orgId, t.name)],
);
