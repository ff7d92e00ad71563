// Every error code a settings route answers beyond the shared layer's is in its OpenAPI operation,
// and every one it declares is answered by some request here: the document lists exactly what a
// client can get. Until session 9 no settings operation listed any (`setting_not_found`, 428 …).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eq } from 'drizzle-orm';
import { type DocumentedApi, documentedApi } from '../../../test/helpers/openapi.ts';
import { tenancyErrors } from '../../tenancy/errors.ts';
import { changeErrors } from '../four-eyes.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { settingErrors } from './errors.ts';
import { settingHistory, settings } from './schema.ts';

/** The domain codes a settings route could plausibly answer: what the document is checked for. */
const DOMAIN_CODES = new Set([
  ...Object.keys(settingErrors),
  ...Object.keys(tenancyErrors),
  ...Object.keys(changeErrors),
]);

type Method = 'GET' | 'PUT' | 'DELETE' | 'POST';

/** What a case sends beyond its URL (the developer's token unless it says the manager's). */
type Ask = { token?: 'manager'; body?: unknown; ifMatch?: string };
/** One request answering one code: the route as the document names it, the code, `env/key`. */
type Case = [route: `${Method} ${string}`, code: string, target: string, ask?: Ask];

const ONE = '/v1/settings/{env}/{key}';
const del = (ifMatch?: string): Ask => ({ token: 'manager', ...(ifMatch ? { ifMatch } : {}) });
const CASES: Case[] = [
  ['GET /v1/settings/{env}', 'environment_not_found', 'nowhere'],
  [`GET ${ONE}`, 'environment_not_found', 'nowhere/plain'],
  [`GET ${ONE}`, 'setting_not_found', 'development/absent'],
  [`GET ${ONE}`, 'setting_undecryptable', 'development/sealed'],
  [`PUT ${ONE}`, 'environment_not_found', 'nowhere/plain', { body: { value: 1, value_type: 'int' } }],
  [`PUT ${ONE}`, 'precondition_required', 'development/plain', { body: { value: 2 } }],
  [`PUT ${ONE}`, 'version_conflict', 'development/plain', { body: { value: 2 }, ifMatch: '"9"' }],
  [`DELETE ${ONE}`, 'environment_not_found', 'nowhere/plain', del('"1"')],
  [`DELETE ${ONE}`, 'setting_not_found', 'development/absent', del('"1"')],
  [`DELETE ${ONE}`, 'precondition_required', 'development/plain', del()],
  [`DELETE ${ONE}`, 'version_conflict', 'development/plain', del('"9"')],
  [`GET ${ONE}/history`, 'environment_not_found', 'nowhere/plain'],
  [`GET ${ONE}/history`, 'setting_not_found', 'development/absent'],
  [`POST ${ONE}/rollback`, 'environment_not_found', 'nowhere/plain', { body: { version: 1 } }],
  [`POST ${ONE}/rollback`, 'setting_not_found', 'development/absent', { body: { version: 1 } }],
  [`POST ${ONE}/rollback`, 'setting_version_not_found', 'development/plain', { body: { version: 7 } }],
  [`POST ${ONE}/rollback`, 'version_conflict', 'development/plain', { body: { version: 1 }, ifMatch: '"9"' }],
  [`POST ${ONE}/rollback`, 'setting_undecryptable', 'development/sealed', { body: { version: 1 } }],
];

describe('settings: the OpenAPI document lists the codes each route answers (pglite)', () => {
  let v: VaultTestApp;
  let api: DocumentedApi;
  before(async () => {
    v = await vaultTestApp('pglite');
    api = await documentedApi(v.t.app);
    const put = (key: string, body: unknown, ifMatch?: string) =>
      v.req('PUT', `/v1/settings/development/${key}`, {
        token: v.tokens.developer,
        body,
        headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
      });
    assert.equal((await put('plain', { value: 1, value_type: 'int' })).statusCode, 201);
    assert.equal(
      (await put('sealed', { value: 'one', value_type: 'string', encrypted: true })).statusCode,
      201,
    );
    assert.equal((await put('sealed', { value: 'two' }, '"1"')).statusCode, 200);
    // Version 2's sealed value in version 1's history row, and version 1's in the setting: each
    // bound to another version's AAD, so neither opens.
    const db = v.t.store.db.db;
    const [row] = await db.select().from(settings).where(eq(settings.key, 'sealed'));
    const versions = await db
      .select()
      .from(settingHistory)
      .where(eq(settingHistory.settingId, row?.id ?? ''));
    const sealedAt = (n: number) => versions.find((h) => h.version === n)?.valueSealed ?? '';
    await db
      .update(settings)
      .set({ valueSealed: sealedAt(1) })
      .where(eq(settings.key, 'sealed'));
    await db
      .update(settingHistory)
      .set({ valueSealed: sealedAt(2) })
      .where(eq(settingHistory.settingId, row?.id ?? ''));
  });
  after(() => v?.close());

  test('each case answers its code, and its operation lists that code under the status', async () => {
    for (const [route, code, target, ask = {}] of CASES) {
      const [method, path = ''] = route.split(' ') as [Method, string];
      const url = path.replace(/\{env\}(\/\{key\})?/, target);
      const res = await v.req(method, url, {
        token: v.tokens[ask.token ?? 'developer'],
        ...(ask.body === undefined ? {} : { body: ask.body }),
        headers: ask.ifMatch === undefined ? {} : { 'if-match': ask.ifMatch },
      });
      assert.equal(res.json().code, code, `${method} ${url}: ${res.body}`);
      const listed = api.operation(route).responses[String(res.statusCode)]?.['x-steward-codes'] ?? [];
      assert.ok(listed.includes(code), `${route} lists ${code} under ${res.statusCode}: ${listed}`);
    }
  });

  test('no settings operation lists a domain code that no case answers', () => {
    const routes = api.routes((path) => path.startsWith('/v1/settings'));
    assert.equal(routes.length, 6, String(routes));
    for (const route of routes) {
      const listed = Object.values(api.operation(route).responses)
        .flatMap((r) => r['x-steward-codes'] ?? [])
        .filter((code) => DOMAIN_CODES.has(code));
      const answered = CASES.filter(([r]) => r === route).map(([, code]) => code);
      assert.deepEqual(new Set(listed), new Set(answered), route);
    }
  });
});
