import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { and, eq } from 'drizzle-orm';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { UNLEASH_FLAG_NAME } from './routes.ts';
import { featureFlags } from './schema.ts';

// Payloads Unleash's admin API accepts are accepted here where that cannot break unleash-client or
// Steward's URLs: its name rule (URL-friendly: what encodeURIComponent leaves as it is), its `type`
// and `project` fields. Before, `-beta`, `.env`, `new(flag)`, a `type` or a `project` were 400,
// while `a:b`, which Unleash refuses, was accepted.
describe('Unleash-valid flag payloads', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v.close());

  const flag = (name: string, extra: Record<string, unknown> = {}) => ({
    name,
    enabled: true,
    strategies: [{ name: 'default' }],
    ...extra,
  });
  const post = (body: Record<string, unknown>, env = 'development') =>
    v.req('POST', `/v1/flags/${env}`, { token: v.tokens.manager, body });
  const path = (name: string) => `/v1/flags/development/${encodeURIComponent(name)}`;
  const refusedName = (res: { statusCode: number; body: string; json(): unknown }, what: string) => {
    assert.equal(res.statusCode, 400, `${what}: ${res.body}`);
    const problem = res.json() as { code: string; errors: { path: string }[] };
    assert.equal(problem.code, 'validation_failed', what);
    assert.deepEqual(
      problem.errors.map((e) => e.path),
      ['body.name'],
      what,
    );
  };

  test("the name rule is Unleash's: a name encodeURIComponent leaves unchanged, 1 to 100 characters", () => {
    for (let c = 0x20; c < 0x7f; c++) {
      const ch = String.fromCharCode(c);
      assert.equal(UNLEASH_FLAG_NAME.test(`a${ch}b`), encodeURIComponent(ch) === ch, JSON.stringify(ch));
    }
    for (const name of ['é', 'a b', 'a/b', 'a%20b', '', 'x'.repeat(101)])
      assert.equal(UNLEASH_FLAG_NAME.test(name), false, name);
    assert.equal(UNLEASH_FLAG_NAME.test('x'.repeat(100)), true);
  });

  test("names Unleash allows are accepted, read, replaced and deleted through Steward's URLs", async () => {
    for (const name of ['-beta', '.env', 'new(flag)', "it's", 'a*b', '!x', '~t', '...', 'a.b-c_d']) {
      const created = await post(flag(name));
      assert.equal(created.statusCode, 201, `${name}: ${created.body}`);
      const got = await v.req('GET', path(name), { token: v.tokens.viewer });
      assert.equal(got.statusCode, 200, `${name}: ${got.body}`);
      assert.equal(got.json().name, name);
      const put = await v.req('PUT', path(name), {
        token: v.tokens.manager,
        body: flag(name, { enabled: false }),
      });
      assert.equal(put.statusCode, 200, `${name}: ${put.body}`);
      const evaluated = await v.req('POST', '/v1/flags/development/evaluate', {
        token: v.tokens.viewer,
        body: { flags: [name] },
      });
      assert.deepEqual(evaluated.json().missing, [], name);
      const del = await v.req('DELETE', path(name), { token: v.tokens.manager });
      assert.equal(del.statusCode, 204, `${name}: ${del.body}`);
    }
  });

  test('names Unleash refuses, or our URLs cannot carry, are refused', async () => {
    for (const name of ['a:b', 'a b', 'a/b', 'é', '.', '..', 'stream', 'x'.repeat(101)])
      refusedName(await post(flag(name)), name);
  });

  test('a flag named with `:` before the rule changed stays editable (PUT), and deletable', async () => {
    assert.equal((await post(flag('team-x'))).statusCode, 201);
    await v.t.app.steward.db.db
      .update(featureFlags)
      .set({ name: 'team:x', definition: flag('team:x') as never })
      .where(and(eq(featureFlags.orgId, v.t.orgId), eq(featureFlags.name, 'team-x')));
    const put = await v.req('PUT', '/v1/flags/development/team:x', {
      token: v.tokens.manager,
      body: flag('team:x', { enabled: false }),
    });
    assert.equal(put.statusCode, 200, put.body);
    assert.equal(put.json().enabled, false);
    // PUT creates nothing: a new `:` name is still 404 there, and refused on POST.
    const absent = await v.req('PUT', '/v1/flags/development/team:y', {
      token: v.tokens.manager,
      body: flag('team:y'),
    });
    assert.equal(absent.statusCode, 404, absent.body);
    assert.equal(
      (await v.req('DELETE', '/v1/flags/development/team:x', { token: v.tokens.manager })).statusCode,
      204,
    );
  });

  test('`type` is stored, shown and served (default release); `project` is accepted and ignored', async () => {
    const created = await post(flag('typed', { type: 'experiment', project: 'default' }), 'staging');
    assert.equal(created.statusCode, 201, created.body);
    assert.equal(created.json().type, 'experiment');
    assert.equal('project' in created.json(), false, 'project is not stored');
    const plain = await post(flag('untyped'), 'staging');
    assert.equal(plain.json().type, 'release');
    for (const type of ['release', 'experiment', 'operational', 'kill-switch', 'permission']) {
      const res = await v.req('PUT', '/v1/flags/staging/typed', {
        token: v.tokens.manager,
        body: flag('typed', { type, project: 'payments' }),
      });
      assert.equal(res.statusCode, 200, `${type}: ${res.body}`);
      assert.equal(res.json().type, type);
    }
    const bad = await post(flag('bad-type', { type: 'toggle' }), 'staging');
    assert.equal(bad.statusCode, 400, bad.body);
    assert.deepEqual(
      bad.json().errors.map((e: { path: string }) => e.path),
      ['body.type'],
    );
    assert.equal((await post(flag('bad-project', { project: '' }), 'staging')).statusCode, 400);
    // What SDKs get carries the type, as Unleash's client API does; no project.
    const keyRes = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name: 'sdk', scopes: ['flags:read'], metadata: { flags_environment: 'staging' } },
    });
    const served = await v.req('GET', '/api/client/features', {
      headers: { authorization: keyRes.json().key },
    });
    const features = served.json().features as { name: string; type?: string; project?: string }[];
    assert.deepEqual(
      features.map((f) => [f.name, f.type, f.project]),
      [
        ['typed', 'permission', undefined],
        ['untyped', 'release', undefined],
      ],
    );
    // GET → PUT round trip keeps it.
    const read = (await v.req('GET', '/v1/flags/staging/typed', { token: v.tokens.viewer })).json();
    const again = await v.req('PUT', '/v1/flags/staging/typed', { token: v.tokens.manager, body: read });
    assert.equal(again.statusCode, 200, again.body);
    assert.equal(again.json().type, 'permission');
  });
});
