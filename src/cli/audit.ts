import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import type { Command } from 'commander';
import { exportLines } from '../audit/export.ts';
import type { StoredEvent } from '../audit/queries.ts';
import { openAuditService } from '../audit/service.ts';
import type { Config } from '../config.ts';
import { loadConfig } from '../config.ts';
import { loadKeyring } from '../crypto/keyring.ts';
import type { DbHandle } from '../db/client.ts';
import { runMigrations } from '../db/migrate.ts';
import { createTenancyService } from '../tenancy/service.ts';
import { withDatabase } from './database.ts';

function auditServiceFor(db: DbHandle, config: Config) {
  // The master keys open the audit trail's MAC key, which verify and purge need.
  const keyring = loadKeyring({
    masterKey: config.STEWARD_MASTER_KEY,
    previousKeys: config.STEWARD_MASTER_KEY_PREVIOUS,
    dataDir: config.STEWARD_DATA_DIR,
    embedded: config.DATABASE_URL === undefined,
    warn: (message) => process.stderr.write(`${message}\n`),
  });
  return openAuditService({
    db,
    keyring,
    defaultRetentionDays: config.AUDIT_RETENTION_DAYS,
  });
}

/** Accepts an org id or slug. */
async function resolveOrg(db: DbHandle, config: Config, org: string): Promise<string> {
  if (org.startsWith('org_')) return org;
  const tenancy = createTenancyService({ db, audit: await auditServiceFor(db, config) });
  const found = await tenancy.findOrgBySlug(org);
  if (!found) throw new Error(`No org with slug ${org}`);
  return found.id;
}

export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('Inspect the tamper-evident audit trail.');

  audit
    .command('verify')
    .description('Re-compute the hash chain of one org (or all) and report the first bad sequence.')
    .option('--org <id-or-slug>', 'only this org')
    .action(async (options: { org?: string }) => {
      const config = loadConfig();
      const ok = await withDatabase(config, async (db) => {
        await runMigrations(db);
        const service = await auditServiceFor(db, config);
        const orgs = options.org
          ? [await resolveOrg(db, config, options.org)]
          : await service.orgsWithEvents();
        let allValid = true;
        for (const orgId of orgs) {
          const result = await service.verify(orgId);
          allValid &&= result.valid;
          process.stdout.write(`${JSON.stringify({ org_id: orgId, ...result })}\n`);
        }
        return allValid;
      });
      process.exitCode = ok ? 0 : 1;
    });

  audit
    .command('purge')
    .description('Delete events past their retention, leaving a signed checkpoint per org.')
    .action(async () => {
      const config = loadConfig();
      await withDatabase(config, async (db) => {
        await runMigrations(db);
        for (const result of await (await auditServiceFor(db, config)).purge()) {
          process.stdout.write(`${JSON.stringify(result)}\n`);
        }
      });
    });

  audit
    .command('export')
    .description(
      "Stream one org's events as NDJSON (default) or CSV, newest first; with --after-seq, the linked events after that sequence, oldest first.",
    )
    .requiredOption('--org <id-or-slug>', 'the org to export')
    .option('--format <format>', 'ndjson or csv', 'ndjson')
    .option('--out <file>', 'write to a file instead of stdout')
    .option(
      '--after-seq <n>',
      'read forward by sequence from after n (a forwarder continues from the last one it wrote)',
    )
    .action(async (options: { org: string; format: string; out?: string; afterSeq?: string }) => {
      if (options.format !== 'ndjson' && options.format !== 'csv') {
        throw new Error('--format must be ndjson or csv');
      }
      const afterSeq = options.afterSeq === undefined ? undefined : Number(options.afterSeq);
      if (
        afterSeq !== undefined &&
        !(Number.isSafeInteger(afterSeq) && afterSeq >= 0 && /^\d+$/.test(options.afterSeq ?? ''))
      ) {
        throw new Error('--after-seq must be a whole number, 0 or more');
      }
      const format: 'ndjson' | 'csv' = options.format;
      const config = loadConfig();
      await withDatabase(config, async (db) => {
        await runMigrations(db);
        const service = await auditServiceFor(db, config);
        const orgId = await resolveOrg(db, config, options.org);
        const out = options.out ? createWriteStream(options.out) : process.stdout;
        const progress = process.stderr.isTTY;
        let count = 0;
        for await (const line of exportLines(countEvents(service.stream(orgId, {}, { afterSeq })), format)) {
          if (!out.write(line)) await once(out, 'drain');
        }
        async function* countEvents(events: AsyncIterable<StoredEvent>) {
          for await (const event of events) {
            yield event;
            count++;
            if (progress && count % 1000 === 0) process.stderr.write(`\rexported ${count} events`);
          }
        }
        if (progress) process.stderr.write(`\rexported ${count} events\n`);
        if (options.out) {
          out.end();
          await once(out, 'finish');
        }
      });
    });
}
