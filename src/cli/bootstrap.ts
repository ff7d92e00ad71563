import type { Command } from 'commander';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { StewardError } from '../http/errors.ts';
import { runBootstrap } from '../identity/bootstrap.ts';

/** `steward bootstrap`: the org `default` and the first superuser; refuses when a superuser exists. */
export function registerBootstrapCommand(program: Command): void {
  program
    .command('bootstrap')
    .description(
      'Create the org "default" and the first superuser (STEWARD_ADMIN_EMAIL / STEWARD_ADMIN_PASSWORD; a password is generated and printed once when unset). Refuses when a superuser exists.',
    )
    .option('--email <email>', 'superuser email (default: STEWARD_ADMIN_EMAIL)')
    .action(async (options: { email?: string }) => {
      const config = loadConfig();
      const app = await buildApp({
        ...config,
        LOG_LEVEL: config.LOG_LEVEL === 'info' ? 'warn' : config.LOG_LEVEL,
      });
      try {
        await runBootstrap(app.steward.identity, {
          ...config,
          STEWARD_ADMIN_EMAIL: options.email ?? config.STEWARD_ADMIN_EMAIL,
        });
      } catch (error) {
        if (error instanceof StewardError) {
          process.stderr.write(`steward: ${error.detail}\n`);
          process.exitCode = 1;
          return;
        }
        throw error;
      } finally {
        await app.close();
      }
    });
}
