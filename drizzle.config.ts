import { defineConfig } from 'drizzle-kit';

// One schema, one migration history for PGlite and PostgreSQL alike.
// Each domain owns src/<domain>/schema.ts; drizzle-kit collects them all.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/*/schema.ts',
  out: './drizzle',
});
