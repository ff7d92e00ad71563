import { readFileSync, writeFileSync } from 'node:fs';
// Prints the README's configuration table from the config schema, so the two never
// drift apart (src/config.test.ts fails when they do). Print it with
// `node --import tsx scripts/config-table.ts`, or rewrite README.md's with `--write`.
import { configSchema } from '../src/config.ts';

function defaultOf(schema: unknown): string {
  const def = (schema as { def?: { type?: string; defaultValue?: unknown; innerType?: unknown } }).def;
  if (!def) return '—';
  if (def.type === 'default') {
    const value = def.defaultValue;
    const shown = Array.isArray(value) ? value.join(',') : String(value);
    return shown === '' ? '(empty)' : `\`${shown}\``;
  }
  if (def.type === 'optional') return '—';
  return def.innerType ? defaultOf(def.innerType) : '—';
}

export function configTable(): string {
  const rows = Object.entries(configSchema.shape).map(
    ([name, schema]) =>
      `| \`${name}\` | ${defaultOf(schema)} | ${(schema.description ?? '').replaceAll('|', '\\|')} |`,
  );
  return ['| Variable | Default | Meaning |', '| --- | --- | --- |', ...rows].join('\n');
}

/** Replaces the table in README.md (from its header row to the first blank line). */
function writeReadme(): void {
  const readme = readFileSync('README.md', 'utf8');
  const start = readme.indexOf('| Variable | Default | Meaning |');
  const end = readme.indexOf('\n\n', start) < 0 ? readme.length : readme.indexOf('\n\n', start);
  if (start < 0 || end < 0) throw new Error('README.md has no configuration table');
  writeFileSync('README.md', readme.slice(0, start) + configTable() + readme.slice(end));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv.includes('--write')) writeReadme();
  else process.stdout.write(`${configTable()}\n`);
}
