// Shared by the identity tests only (never imported by src/): an app on a real store with a
// clock the test moves, a bootstrapped superuser, and small HTTP helpers.
import { randomBytes } from 'node:crypto';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { TOTP } from 'otpauth';
import { openTestStore, type StoreKind, type TestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';

export const ADMIN = { email: 'root@example.com', password: 'correct horse battery staple' };

export interface IdentityTestApp {
  app: FastifyInstance;
  store: TestStore;
  /** Milliseconds since the epoch that the app's clock reads; tests move it. */
  now: { ms: number };
  orgId: string;
  adminId: string;
  close(): Promise<void>;
  call(
    method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
    url: string,
    options?: { token?: string; body?: unknown; headers?: Record<string, string> },
  ): Promise<LightMyRequestResponse>;
  login(email: string, password: string, extra?: Record<string, unknown>): Promise<LightMyRequestResponse>;
  tokensFor(email: string, password: string): Promise<{ access_token: string; refresh_token: string }>;
}

export async function identityTestApp(
  kind: StoreKind = 'pglite',
  env: Record<string, string> = {},
): Promise<IdentityTestApp> {
  const store = await openTestStore(kind);
  const now = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
  const config = loadConfig({ LOG_LEVEL: 'silent', SESSION_REVOCATION_POLL_MS: '100', ...env });
  const app = await buildApp(config, {
    db: store.db,
    keyring: createKeyring(randomBytes(32)),
    clock: () => new Date(now.ms),
  });
  await app.ready();
  const boot = await app.steward.identity.bootstrap(ADMIN);
  const call: IdentityTestApp['call'] = (method, url, options = {}) =>
    app.inject({
      method,
      url,
      headers: {
        'user-agent': 'identity-test',
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        ...options.headers,
      },
      ...(options.body === undefined ? {} : { payload: options.body as Record<string, unknown> }),
    });
  const login: IdentityTestApp['login'] = (email, password, extra = {}) =>
    call('POST', '/v1/auth/login', { body: { email, password, ...extra } });
  return {
    app,
    store,
    now,
    orgId: boot.org.id,
    adminId: boot.user.id,
    call,
    login,
    async tokensFor(email, password) {
      const res = await login(email, password);
      if (res.statusCode !== 200) throw new Error(`login failed: ${res.statusCode} ${res.body}`);
      return res.json();
    },
    close: async () => {
      await app.close();
      await store.dispose();
    },
  };
}

/** The TOTP code an authenticator app shows at `ms`. */
export function totpAt(secret: string, ms: number): string {
  return new TOTP({ secret, algorithm: 'SHA1', digits: 6, period: 30 }).generate({ timestamp: ms });
}
