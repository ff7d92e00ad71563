import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { type AppDeps, buildApp } from '../../src/app.ts';
import { loadConfig } from '../../src/config.ts';
import { createKeyring } from '../../src/crypto/keyring.ts';
import type { Principal } from '../../src/http/principal.ts';
import { openTestStore, type StoreKind, type TestStore } from './stores.ts';

/**
 * A stand-in authenticator for tests of the foundation, before identity exists:
 * `x-test-principal: <name>` picks one of the principals given to testApp.
 * It lives in test/, never in src/.
 */
export function installTestPrincipals(app: FastifyInstance, principals: Record<string, Principal>): void {
  app.steward.auth.addAuthenticator({
    name: 'test',
    errors: [],
    authenticate: (request) => {
      const name = request.headers['x-test-principal'];
      return typeof name === 'string' ? (principals[name] ?? null) : null;
    },
  });
}

export interface TestApp {
  app: FastifyInstance;
  store: TestStore;
  close(): Promise<void>;
}

/** A full app on a fresh store, with test-only config overrides. */
export async function testApp(
  kind: StoreKind = 'pglite',
  env: Record<string, string> = {},
  extend?: (app: FastifyInstance) => void | Promise<void>,
  deps: Pick<AppDeps, 'logDestination'> = {},
): Promise<TestApp> {
  const store = await openTestStore(kind);
  const config = loadConfig({ LOG_LEVEL: 'silent', ...env });
  const app = await buildApp(config, {
    ...deps,
    db: store.db,
    keyring: createKeyring(randomBytes(32)),
  }).catch(async (error: unknown) => {
    await store.dispose();
    throw error;
  });
  try {
    await extend?.(app);
    await app.ready();
  } catch (error) {
    // A test that expects the build to fail must not leave the app's timers and the database
    // open: the file's process then lingered ~40 s after its last test.
    await app.close().catch(() => {});
    await store.dispose();
    throw error;
  }
  return {
    app,
    store,
    close: async () => {
      await app.close();
      await store.dispose();
    },
  };
}
