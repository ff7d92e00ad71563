// Every error code a flags, segments or Unleash client API route answers beyond the shared layer's
// is in its OpenAPI operation, and every one it declares is answered here (or named below as
// reachable only in a race): the document lists what a client can get. Until session 9 no flags
// operation listed any (`invalid_flag`, `flag_exists`, `environment_not_found` …).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eq } from 'drizzle-orm';
import { type DocumentedApi, documentedApi } from '../../test/helpers/openapi.ts';
import { apiKeys } from '../keys/schema.ts';
import { tenancyErrors } from '../tenancy/errors.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { flagErrors } from './errors.ts';

/**
 * The domain codes a flags route could plausibly answer: what the document is checked for. Of the
 * keys domain's, only the client API's key lookup (`api_key_not_found`): the access layer's
 * (`key_revoked` …) are shared by every route that needs a caller.
 */
const DOMAIN_CODES = new Set([
  ...Object.keys(flagErrors),
  ...Object.keys(tenancyErrors),
  'api_key_not_found',
]);

/**
 * Declared codes no single request here can answer: the flag a direct replace or delete read was
 * deleted, and another created under its name, between the read and the write's lock.
 */
const RACES: Record<string, string[]> = {
  'PUT /v1/flags/{env}/{name}': ['flag_target_gone'],
  'DELETE /v1/flags/{env}/{name}': ['flag_target_gone'],
};

type Method = 'GET' | 'PUT' | 'DELETE' | 'POST';
/**
 * Who asks: the manager's token, a key whose environment does not exist, a key deleted since, or
 * a key bound to `staging` (every flags scope) asking for development.
 */
type Caller = 'manager' | 'lostEnvironmentKey' | 'deletedKey' | 'stagingKey';
/** One request answering one code: the route as the document names it, the URL, what it sends. */
type Case = {
  route: `${Method} ${string}`;
  code: string;
  url: string;
  as?: Caller;
  body?: unknown;
  ifMatch?: string;
};

const flag = (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  enabled: true,
  strategies: [{ name: 'default' }],
  ...extra,
});
const badFlag = (name: string) => flag(name, { strategies: [{ name: 'noSuchStrategy' }] });
const segment = (name: string, values = ['pro']) => ({
  name,
  constraints: [{ contextName: 'plan', operator: 'IN', values }],
});
const badSegment = { name: 'bad', constraints: [{ contextName: 'plan', operator: 'IN' }] };
const registration = { appName: 'app', instanceId: 'i-1' };
const report = {
  appName: 'app',
  instanceId: 'i-1',
  bucket: { start: new Date(0).toISOString(), toggles: {} },
};

const ONE = '/v1/flags/{env}/{name}';
const SEG = '/v1/segments/{id}';

/** The cases, once the fixture's segment ids are known (`used` is named by a flag, `free` not). */
function cases(used: number, free: number): Case[] {
  const client: Case[] = (
    [
      ['GET /api/client/features', '/api/client/features'],
      ['GET /api/client/delta', '/api/client/delta'],
      ['POST /api/client/register', '/api/client/register', registration],
      ['POST /api/client/metrics', '/api/client/metrics', report],
      ['GET /api/client/streaming', '/api/client/streaming'],
    ] as const
  ).flatMap(([route, url, body]) => [
    { route, code: 'environment_not_found', url, as: 'lostEnvironmentKey', body },
    { route, code: 'api_key_not_found', url, as: 'deletedKey', body },
  ]);
  // Every route with an {env}: a key bound to another environment (403), a key deleted since (404).
  const bound: Case[] = (
    [
      ['GET /v1/flags/{env}', '/v1/flags/development'],
      ['POST /v1/flags/{env}', '/v1/flags/development', flag('x')],
      ['GET /v1/flags/{env}/stream', '/v1/flags/development/stream'],
      ['POST /v1/flags/{env}/evaluate', '/v1/flags/development/evaluate', {}],
      [`GET ${ONE}`, '/v1/flags/development/parent'],
      [`PUT ${ONE}`, '/v1/flags/development/parent', flag('parent')],
      [`DELETE ${ONE}`, '/v1/flags/development/child'],
      [`GET ${ONE}/metrics`, '/v1/flags/development/parent/metrics'],
      ['GET /v1/flag-clients/{env}', '/v1/flag-clients/development'],
    ] as const
  ).flatMap(([route, url, body]) => [
    { route, code: 'key_environment_mismatch', url, as: 'stagingKey', body },
    { route, code: 'api_key_not_found', url, as: 'deletedKey', body },
  ]);
  return [
    { route: 'GET /v1/flags/{env}', code: 'environment_not_found', url: '/v1/flags/nowhere' },
    {
      route: 'POST /v1/flags/{env}',
      code: 'environment_not_found',
      url: '/v1/flags/nowhere',
      body: flag('x'),
    },
    { route: 'POST /v1/flags/{env}', code: 'invalid_flag', url: '/v1/flags/development', body: badFlag('x') },
    {
      route: 'POST /v1/flags/{env}',
      code: 'flag_exists',
      url: '/v1/flags/development',
      body: flag('parent'),
    },
    { route: 'GET /v1/flags/{env}/stream', code: 'environment_not_found', url: '/v1/flags/nowhere/stream' },
    {
      route: 'POST /v1/flags/{env}/evaluate',
      code: 'environment_not_found',
      url: '/v1/flags/nowhere/evaluate',
      body: {},
    },
    { route: `GET ${ONE}`, code: 'environment_not_found', url: '/v1/flags/nowhere/parent' },
    { route: `GET ${ONE}`, code: 'flag_not_found', url: '/v1/flags/development/absent' },
    { route: `PUT ${ONE}`, code: 'environment_not_found', url: '/v1/flags/nowhere/x', body: flag('x') },
    {
      route: `PUT ${ONE}`,
      code: 'flag_not_found',
      url: '/v1/flags/development/absent',
      body: flag('absent'),
    },
    {
      route: `PUT ${ONE}`,
      code: 'invalid_flag',
      url: '/v1/flags/development/parent',
      body: badFlag('parent'),
    },
    {
      route: `PUT ${ONE}`,
      code: 'version_conflict',
      url: '/v1/flags/development/parent',
      body: flag('parent'),
      ifMatch: '"9"',
    },
    { route: `DELETE ${ONE}`, code: 'environment_not_found', url: '/v1/flags/nowhere/parent' },
    { route: `DELETE ${ONE}`, code: 'flag_not_found', url: '/v1/flags/development/absent' },
    // Flags depend on it.
    { route: `DELETE ${ONE}`, code: 'invalid_flag', url: '/v1/flags/development/parent' },
    { route: `DELETE ${ONE}`, code: 'version_conflict', url: '/v1/flags/development/child', ifMatch: '"9"' },
    { route: 'POST /v1/segments', code: 'invalid_flag', url: '/v1/segments', body: badSegment },
    { route: 'POST /v1/segments', code: 'segment_exists', url: '/v1/segments', body: segment('used') },
    { route: `GET ${SEG}`, code: 'segment_not_found', url: '/v1/segments/999999' },
    { route: `PUT ${SEG}`, code: 'invalid_flag', url: `/v1/segments/${free}`, body: badSegment },
    { route: `PUT ${SEG}`, code: 'segment_not_found', url: '/v1/segments/999999', body: segment('x') },
    { route: `PUT ${SEG}`, code: 'segment_exists', url: `/v1/segments/${free}`, body: segment('used') },
    {
      route: `PUT ${SEG}`,
      code: 'version_conflict',
      url: `/v1/segments/${free}`,
      body: segment('free'),
      ifMatch: '"9"',
    },
    { route: `DELETE ${SEG}`, code: 'segment_not_found', url: '/v1/segments/999999' },
    { route: `DELETE ${SEG}`, code: 'segment_in_use', url: `/v1/segments/${used}` },
    { route: `DELETE ${SEG}`, code: 'version_conflict', url: `/v1/segments/${free}`, ifMatch: '"9"' },
    {
      route: `GET ${ONE}/metrics`,
      code: 'environment_not_found',
      url: '/v1/flags/nowhere/parent/metrics',
    },
    { route: `GET ${ONE}/metrics`, code: 'flag_not_found', url: '/v1/flags/development/absent/metrics' },
    { route: 'GET /v1/flag-clients/{env}', code: 'environment_not_found', url: '/v1/flag-clients/nowhere' },
    ...client,
    ...bound,
  ];
}

describe('flags: the OpenAPI document lists the codes each route answers (pglite)', () => {
  let v: VaultTestApp;
  let api: DocumentedApi;
  let all: Case[];
  const keys = {} as Record<Exclude<Caller, 'manager'>, string>;

  before(async () => {
    v = await vaultTestApp('pglite');
    api = await documentedApi(v.t.app);
    const write = async (method: Method, url: string, body: unknown) => {
      const res = await v.req(method, url, { token: v.tokens.manager, body });
      assert.ok(res.statusCode < 300, `${method} ${url}: ${res.body}`);
      return res.json();
    };
    const used = (await write('POST', '/v1/segments', segment('used'))).id as number;
    const free = (await write('POST', '/v1/segments', segment('free', ['team']))).id as number;
    await write(
      'POST',
      '/v1/flags/development',
      flag('parent', { strategies: [{ name: 'default', segments: [used] }] }),
    );
    await write('POST', '/v1/flags/development', flag('child', { dependencies: [{ feature: 'parent' }] }));
    all = cases(used, free);

    const key = async (name: string, flagsEnvironment: string) =>
      write('POST', '/v1/keys', {
        name,
        scopes: ['flags:read', 'flags:create', 'flags:update', 'flags:delete'],
        tier: 'enterprise',
        metadata: { flags_environment: flagsEnvironment },
      }) as Promise<{ id: string; key: string }>;
    keys.lostEnvironmentKey = (await key('lost-environment', 'nowhere')).key;
    keys.stagingKey = (await key('bound-to-staging', 'staging')).key;
    // Verified once (and so held by the key cache), then its row deleted: the lookup of the key's
    // environment (client API, `{env}` routes) finds no key. Warmed on a route with no `{env}`, so
    // that lookup has not run (and been cached) yet.
    const deleted = await key('deleted', 'development');
    const warm = await v.req('GET', '/v1/segments', { token: deleted.key });
    assert.equal(warm.statusCode, 200, warm.body);
    await v.t.store.db.db.delete(apiKeys).where(eq(apiKeys.id, deleted.id));
    keys.deletedKey = deleted.key;
  });
  after(() => v?.close());

  test('each case answers its code, and its operation lists that code under the status', async () => {
    for (const { route, code, url, as = 'manager', body, ifMatch } of all) {
      const [method] = route.split(' ') as [Method];
      const res = await v.req(method, url, {
        token: as === 'manager' ? v.tokens.manager : keys[as],
        ...(body === undefined ? {} : { body }),
        headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
      });
      assert.equal(res.json().code, code, `${method} ${url}: ${res.body}`);
      const listed = api.operation(route).responses[String(res.statusCode)]?.['x-steward-codes'] ?? [];
      assert.ok(listed.includes(code), `${route} lists ${code} under ${res.statusCode}: ${listed}`);
    }
  });

  test('no flags operation lists a domain code that no case answers', () => {
    const ours = (path: string) =>
      path.startsWith('/v1/flags') ||
      path.startsWith('/v1/segments') ||
      path.startsWith('/v1/flag-clients') ||
      path.startsWith('/api/client');
    const routes = api.routes(ours);
    assert.equal(routes.length, 19, String(routes));
    for (const route of routes) {
      const listed = Object.values(api.operation(route).responses)
        .flatMap((r) => r['x-steward-codes'] ?? [])
        .filter((code) => DOMAIN_CODES.has(code));
      const answered = all.filter((c) => c.route === route).map((c) => c.code);
      assert.deepEqual(new Set(listed), new Set([...answered, ...(RACES[route] ?? [])]), route);
    }
  });
});
