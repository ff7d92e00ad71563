import type { Command } from 'commander';
import { openAuditService } from '../audit/service.ts';
import { loadConfig } from '../config.ts';
import { loadKeyring } from '../crypto/keyring.ts';
import { runMigrations } from '../db/migrate.ts';
import { rewrapAll } from '../vault/rewrap.ts';
import { withDatabase } from './database.ts';

/** A one-line progress bar on a terminal; a line per 10% otherwise (logs, CI). */
function progressPrinter(stream: NodeJS.WriteStream) {
  let lastDecile = -1;
  return (done: number, total: number) => {
    const ratio = total === 0 ? 1 : Math.min(1, done / total);
    if (stream.isTTY) {
      const width = 30;
      const filled = Math.round(ratio * width);
      stream.write(
        `\r[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}% ${done}/${total}`,
      );
      if (done >= total) stream.write('\n');
      return;
    }
    const decile = Math.floor(ratio * 10);
    if (decile !== lastDecile) {
      lastDecile = decile;
      stream.write(`rewrap: ${done}/${total}\n`);
    }
  };
}

/** `steward vault …`: operator commands of the vault. */
export function registerVaultCommands(program: Command): void {
  const vault = program.command('vault').description('Operate the vault (secrets and settings).');

  vault
    .command('rewrap')
    .description(
      'Re-wrap every value sealed under an older master key (secrets, settings, pending changes, signing ' +
        'keys, TOTP seeds, webhook secrets) under the current one (STEWARD_MASTER_KEY; the old one must be in ' +
        'STEWARD_MASTER_KEY_PREVIOUS). Runs in small transactions while servers keep serving; audited as ' +
        'secret.rewrapped. Exits 1 when anything is left under another key: do not drop the old key then.',
    )
    .option('--batch-size <n>', 'values per transaction', '200')
    .action(async (options: { batchSize: string }) => {
      const batchSize = Number(options.batchSize);
      if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 10_000) {
        process.stderr.write('steward: --batch-size must be an integer from 1 to 10000\n');
        process.exitCode = 2;
        return;
      }
      const config = loadConfig();
      const keyring = loadKeyring({
        masterKey: config.STEWARD_MASTER_KEY,
        previousKeys: config.STEWARD_MASTER_KEY_PREVIOUS,
        dataDir: config.STEWARD_DATA_DIR,
        embedded: config.DATABASE_URL === undefined,
        warn: (message) => process.stderr.write(`${message}\n`),
      });
      const result = await withDatabase(config, async (db) => {
        await runMigrations(db);
        const audit = await openAuditService({
          db,
          keyring,
          defaultRetentionDays: config.AUDIT_RETENTION_DAYS,
        });
        try {
          return await rewrapAll({ db, keyring, audit, batchSize }, progressPrinter(process.stderr));
        } finally {
          await audit.sequencer.flushAll();
        }
      });
      process.stdout.write(`${JSON.stringify({ to_key_id: keyring.current.id, ...result })}\n`);
      // Values left under a key no server holds cannot be read: make that visible to scripts.
      const left = Object.entries(result.tables).filter(([, t]) => t.failed > 0 || t.remaining > 0);
      for (const [name, t] of left) {
        process.stderr.write(
          `steward: ${name}: ${t.remaining} value(s) still under another master key (${t.failed} could not be re-wrapped); keep the old key\n`,
        );
      }
      process.exitCode = left.length > 0 ? 1 : 0;
    });
}
