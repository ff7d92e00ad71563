// Runs every *.test.ts under src/ and test/ with node:test. Node 20's runner takes no globs,
// so the files are collected here; extra arguments are passed through (e.g. a file filter).
//
// It also checks that the OpenAPI document tells the truth about errors: every server the tests
// start appends to one file each problem a route answered with a code the route does not declare
// (`config.errors`, src/http/documented-errors.ts), and the run fails listing them.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const filter = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const passThrough = process.argv.slice(2).filter((a) => a.startsWith('-'));
const files = ['src', 'test']
  .flatMap((dir) => readdirSync(dir, { recursive: true, encoding: 'utf8' }).map((f) => join(dir, f)))
  .filter((f) => f.endsWith('.test.ts') && !f.includes('node_modules'))
  .filter((f) => filter.length === 0 || filter.some((p) => f.includes(p)))
  .sort();

const scratch = mkdtempSync(join(tmpdir(), 'steward-test-'));
const undocumentedFile = join(scratch, 'undocumented-errors.txt');
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-reporter=spec', ...passThrough, ...files],
  { stdio: 'inherit', env: { ...process.env, STEWARD_UNDOCUMENTED_ERRORS_FILE: undocumentedFile } },
);

let undocumented: string[] = [];
try {
  undocumented = [...new Set(readFileSync(undocumentedFile, 'utf8').split('\n').filter(Boolean))].sort();
} catch {
  // No file: no server answered an undeclared code.
}
rmSync(scratch, { recursive: true, force: true });
if (undocumented.length > 0) {
  console.error(
    `\n✖ ${undocumented.length} error code(s) answered by a route that does not declare them ` +
      '(config.errors), so missing from the OpenAPI document:',
  );
  for (const line of undocumented) console.error(`  ${line}`);
  process.exit(1);
}
process.exit(result.status ?? 1);
