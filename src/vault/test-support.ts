// Shared by the vault tests only (never imported by src/ outside tests): an identity test app
// with users of each system role, a second org, and an HTTP helper that speaks PUT too.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { LightMyRequestResponse } from 'fastify';
import type { StoreKind } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';

const PASS = 'a sturdy vault passphrase';

export interface VaultTestApp {
  t: IdentityTestApp;
  /** Bearer tokens: admin (superuser), manager, developer, viewer, a second manager, another org's admin. */
  tokens: Record<'admin' | 'manager' | 'manager2' | 'developer' | 'viewer' | 'other', string>;
  ids: Record<'manager' | 'manager2' | 'developer' | 'viewer', string>;
  req(
    method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE',
    url: string,
    options?: { token?: string; body?: unknown; headers?: Record<string, string> },
  ): Promise<LightMyRequestResponse>;
  /** Logs everyone in again (after a test moved the clock past the tokens' lifetime). */
  relogin(): Promise<void>;
  close(): Promise<void>;
}

export async function vaultTestApp(kind: StoreKind = 'pglite'): Promise<VaultTestApp> {
  const t = await identityTestApp(kind);
  const admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  const req: VaultTestApp['req'] = (method, url, options = {}) =>
    t.app.inject({
      method,
      url,
      headers: {
        'user-agent': 'vault-test',
        ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
        ...options.headers,
      },
      ...(options.body === undefined ? {} : { payload: options.body as Record<string, unknown> }),
    });
  const ids = {} as VaultTestApp['ids'];
  const tokens = { admin } as VaultTestApp['tokens'];
  for (const [name, role] of [
    ['manager', 'manager'],
    ['manager2', 'manager'],
    ['developer', 'developer'],
    ['viewer', 'viewer'],
  ] as const) {
    const res = await req('POST', '/v1/users', {
      token: admin,
      body: { email: `${name}@example.com`, password: PASS, roles: [role] },
    });
    assert.equal(res.statusCode, 201, res.body);
    ids[name] = res.json().id;
    tokens[name] = (await t.tokensFor(`${name}@example.com`, PASS)).access_token;
  }
  const org = await req('POST', '/v1/orgs', { token: admin, body: { slug: 'globex', name: 'Globex' } });
  assert.equal(org.statusCode, 201, org.body);
  tokens.other = (await t.login(ADMIN.email, ADMIN.password, { org: 'globex' })).json().access_token;
  const relogin = async () => {
    tokens.admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    for (const name of ['manager', 'manager2', 'developer', 'viewer'] as const) {
      tokens[name] = (await t.tokensFor(`${name}@example.com`, PASS)).access_token;
    }
    tokens.other = (await t.login(ADMIN.email, ADMIN.password, { org: 'globex' })).json().access_token;
  };
  return { t, tokens, ids, req, relogin, close: () => t.close() };
}

/** A vault test app with four-eyes switched on for its org (by the superuser). */
export async function fourEyesTestApp(kind: StoreKind = 'pglite'): Promise<VaultTestApp> {
  const v = await vaultTestApp(kind);
  const on = await v.req('PUT', '/v1/vault/policy', { token: v.tokens.admin, body: { four_eyes: true } });
  assert.equal(on.statusCode, 200, on.body);
  return v;
}

/** A key of the manager's scoped to settings (and reading approvals), by a unique name. */
export async function mintSettingsKey(v: VaultTestApp): Promise<{ key: string; id: string }> {
  const res = await v.req('POST', '/v1/keys', {
    token: v.tokens.manager,
    body: { name: `asker-${randomUUID()}`, scopes: ['settings:*', 'approvals:read'] },
  });
  assert.equal(res.statusCode, 201, res.body);
  return { key: res.json().key, id: res.json().id };
}
