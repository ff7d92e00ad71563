import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { and, eq } from 'drizzle-orm';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { featureFlags } from './schema.ts';
import { flagIssues, segmentIssues } from './validate.ts';

// unleash-client keeps flags and metric counts in plain `{}` objects: a flag `constructor` makes
// getVariant throw, a flag `__proto__` rewrites Object.prototype in the application, a variant
// `constructor` spoils its metrics report. Such names are refused on write.
const RESERVED = [...new Set([...Object.getOwnPropertyNames(Object.prototype), '__proto__'])];

type Body = Record<string, unknown>;
const flag = (name: string, extra: Body = {}): Body => ({
  name,
  enabled: true,
  strategies: [{ name: 'default' }],
  ...extra,
});
const variants = (name: string) => [
  { name, weight: 500 },
  { name: 'other', weight: 500 },
];

describe('names that are members of Object.prototype', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v.close());

  const send = (method: 'POST' | 'PUT', url: string, body: Body) =>
    v.req(method, url, { token: v.tokens.manager, body });
  /** 400 validation_failed naming `path` (and only it). */
  const refused = (
    res: { statusCode: number; body: string; json(): unknown },
    path: string,
    what: string,
  ) => {
    assert.equal(res.statusCode, 400, `${what}: ${res.body}`);
    const problem = res.json() as { code: string; errors: { path: string; message: string }[] };
    assert.equal(problem.code, 'validation_failed', `${what}: ${res.body}`);
    assert.deepEqual(
      problem.errors.map((e) => e.path),
      [path],
      what,
    );
    assert.match(problem.errors[0]?.message ?? '', /Object\.prototype/, what);
  };

  test('the list: every own member of Object.prototype, __proto__ included', () => {
    for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', 'isPrototypeOf'])
      assert.ok(RESERVED.includes(name), name);
  });

  test('refused as a flag, flag variant, strategy variant, parent or segment name; create and replace', async () => {
    assert.equal((await send('POST', '/v1/flags/development', flag('host'))).statusCode, 201);
    const seg = await send('POST', '/v1/segments', { name: 'plain', constraints: [] });
    assert.equal(seg.statusCode, 201, seg.body);
    for (const name of RESERVED) {
      refused(await send('POST', '/v1/flags/development', flag(name)), 'body.name', `flag ${name}`);
      for (const [method, url] of [
        ['POST', '/v1/flags/development'],
        ['PUT', '/v1/flags/development/host'],
      ] as const) {
        refused(
          await send(method, url, flag('host', { variants: variants(name) })),
          'body.variants.0.name',
          `${method} variant ${name}`,
        );
        refused(
          await send(
            method,
            url,
            flag('host', { strategies: [{ name: 'default', variants: variants(name) }] }),
          ),
          'body.strategies.0.variants.0.name',
          `${method} strategy variant ${name}`,
        );
        refused(
          await send(method, url, flag('host', { dependencies: [{ feature: name }] })),
          'body.dependencies.0.feature',
          `${method} parent ${name}`,
        );
      }
      refused(await send('POST', '/v1/segments', { name, constraints: [] }), 'body.name', `segment ${name}`);
      refused(
        await send('PUT', `/v1/segments/${seg.json().id}`, { name, constraints: [] }),
        'body.name',
        `segment replace ${name}`,
      );
    }
    // Nothing was written.
    const list = await v.req('GET', '/v1/flags/development', { token: v.tokens.viewer });
    assert.deepEqual(
      list.json().data.map((f: { name: string }) => f.name),
      ['host'],
    );
  });

  test('names that only look alike are accepted', async () => {
    for (const name of ['Constructor', 'toString2', '__proto', 'proto__', 'value-of', 'hasOwnProperty_']) {
      const res = await send('POST', '/v1/flags/staging', flag(name, { variants: variants(`${name}-v`) }));
      assert.equal(res.statusCode, 201, `${name}: ${res.body}`);
    }
    const seg = await send('POST', '/v1/segments', { name: 'Constructor', constraints: [] });
    assert.equal(seg.statusCode, 201, seg.body);
  });

  test('the service refuses them too (a held change approved later): invalid_flag naming the field', () => {
    const paths = flagIssues({
      name: 'constructor',
      enabled: true,
      strategies: [{ name: 'default', variants: [{ name: 'toString', weight: 1 }] }],
      variants: [{ name: '__proto__', weight: 1 }],
      dependencies: [{ feature: 'valueOf' }],
    }).map((i) => i.path);
    assert.deepEqual(paths, [
      'body.name',
      'body.strategies[0].variants[0].name',
      'body.variants[0].name',
      'body.dependencies[0].feature',
    ]);
    assert.deepEqual(
      segmentIssues({ name: 'hasOwnProperty', constraints: [] }).map((i) => i.path),
      ['body.name'],
    );
  });

  test('a row stored before the rule is still read, evaluated and deleted; replacing it is refused', async () => {
    assert.equal((await send('POST', '/v1/flags/development', flag('soon-constructor'))).statusCode, 201);
    await v.t.app.steward.db.db
      .update(featureFlags)
      .set({ name: 'constructor', definition: flag('constructor') as never })
      .where(and(eq(featureFlags.orgId, v.t.orgId), eq(featureFlags.name, 'soon-constructor')));
    const got = await v.req('GET', '/v1/flags/development/constructor', { token: v.tokens.viewer });
    assert.equal(got.statusCode, 200, got.body);
    refused(
      await send('PUT', '/v1/flags/development/constructor', flag('constructor')),
      'body.name',
      'replace a stored constructor',
    );
    const evaluated = await v.req('POST', '/v1/flags/development/evaluate', {
      token: v.tokens.viewer,
      body: { flags: ['constructor'] },
    });
    assert.deepEqual(
      evaluated.json().data.map((e: { name: string; enabled: boolean }) => [e.name, e.enabled]),
      [['constructor', true]],
    );
    const del = await v.req('DELETE', '/v1/flags/development/constructor', { token: v.tokens.manager });
    assert.equal(del.statusCode, 204, del.body);
    const gone = await v.req('GET', '/v1/flags/development/constructor', { token: v.tokens.viewer });
    assert.equal(gone.statusCode, 404);
  });
});
