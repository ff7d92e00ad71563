// Shared by the settings tests only (never imported by src/ outside tests).
import { after, before } from 'node:test';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';

/**
 * A PGlite vault app for the enclosing `describe` (opened before its tests, closed after), and
 * `put`: a developer's PUT of a setting of `development`.
 */
export function settingsOverHttp() {
  let v: VaultTestApp | undefined;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v?.close());
  const app = (): VaultTestApp => {
    if (v === undefined) throw new Error('the app opens in before()');
    return v;
  };
  const put = (key: string, body: unknown) =>
    app().req('PUT', `/v1/settings/development/${key}`, { token: app().tokens.developer, body });
  return { app, put };
}
