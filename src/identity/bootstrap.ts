import { type Config, ConfigError } from '../config.ts';
import { StewardError } from '../http/errors.ts';
import type { IdentityService } from './service.ts';

/** Where the one-time password goes: stdout, never the logger. */
export type Printer = (text: string) => void;

const stdout: Printer = (text) => process.stdout.write(text);

/**
 * Creates the org `default` and the first superuser from STEWARD_ADMIN_EMAIL /
 * STEWARD_ADMIN_PASSWORD. A generated password is printed once and never stored in clear.
 */
export async function runBootstrap(
  identity: Pick<IdentityService, 'bootstrap'>,
  config: Pick<Config, 'STEWARD_ADMIN_EMAIL' | 'STEWARD_ADMIN_PASSWORD'>,
  print: Printer = stdout,
): Promise<void> {
  const email = config.STEWARD_ADMIN_EMAIL ?? 'admin@steward.local';
  const result = await identity
    .bootstrap({ email, password: config.STEWARD_ADMIN_PASSWORD })
    .catch((error: unknown) => {
      // A refused STEWARD_ADMIN_PASSWORD is a configuration error: one line, without the value.
      if (error instanceof StewardError && error.code.startsWith('password_')) {
        throw new ConfigError(`Invalid STEWARD_ADMIN_PASSWORD: ${error.title}`);
      }
      throw error;
    });
  print(`steward: created org "${result.org.slug}" and superuser ${result.user.email} (${result.user.id})\n`);
  if (result.generatedPassword !== null) {
    print(
      `steward: generated password for ${result.user.email} (shown once, store it now): ${result.generatedPassword}\n`,
    );
  }
}

/** On the first start against an empty database (no user at all), bootstraps; otherwise does nothing. */
export async function bootstrapOnFirstStart(
  identity: Pick<IdentityService, 'bootstrap' | 'isEmpty'>,
  config: Pick<Config, 'STEWARD_ADMIN_EMAIL' | 'STEWARD_ADMIN_PASSWORD'>,
  print: Printer = stdout,
): Promise<boolean> {
  if (!(await identity.isEmpty())) return false;
  try {
    await runBootstrap(identity, config, print);
    return true;
  } catch (error) {
    // Another instance bootstrapped first: nothing to do.
    if ((error as { code?: string }).code === 'superuser_exists') return false;
    throw error;
  }
}
