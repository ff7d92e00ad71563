import { Command } from 'commander';
import { ConfigError, loadConfig } from '../config.ts';
import { CryptoError } from '../crypto/errors.ts';
import { DataDirLockedError } from '../db/lock.ts';
import { runMigrations } from '../db/migrate.ts';
import { registerAuditCommands } from './audit.ts';
import { registerBootstrapCommand } from './bootstrap.ts';
import { withDatabase } from './database.ts';
import { registerVaultCommands } from './vault.ts';

const program = new Command()
  .name('steward')
  .description('Steward: identity, keys, permissions, secrets, flags and audit for apps and AI agents.')
  .showHelpAfterError();

program
  .command('serve')
  .description('Run the HTTP API (applies pending migrations first).')
  .action(async () => {
    const { serve } = await import('../server.ts');
    const { bootstrapOnFirstStart } = await import('../identity/bootstrap.ts');
    const config = loadConfig();
    const app = await serve(config);
    await bootstrapOnFirstStart(app.steward.identity, config);
  });

program
  .command('migrate')
  .description('Apply pending database migrations and exit.')
  .action(async () => {
    await withDatabase(loadConfig(), async (db) => {
      await runMigrations(db);
      process.stdout.write(`migrations applied (${db.kind})\n`);
    });
  });

registerAuditCommands(program);
registerBootstrapCommand(program);
registerVaultCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  // Expected failures get one clear line; anything else is a bug and keeps its stack.
  const expected =
    error instanceof ConfigError ||
    error instanceof DataDirLockedError ||
    (error instanceof CryptoError && error.code === 'invalid_master_key');
  if (expected) {
    process.stderr.write(`steward: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}
