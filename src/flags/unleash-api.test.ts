import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { initialize, Unleash } from 'unleash-client';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { createFlagEngine } from './engine.ts';
import { createFlagMetrics } from './metrics.ts';

// The official unleash-client package, pointed at a live Steward, evaluates Steward's flags.
describe('Unleash client API with unleash-client', () => {
  let v: VaultTestApp;
  let address: string;
  let key: string;
  let unleash: Unleash | undefined;
  let traffic: SdkTraffic;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
    traffic = new SdkTraffic(v.t.app.server);
    const created = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      // Unlimited: clients polling every 200 ms outrun the free tier's 60 a minute on a slow run,
      // and unleash-client retries a 429 a second later, when the server may be closed.
      body: {
        name: 'sdk',
        scopes: ['flags:read'],
        tier: 'enterprise',
        metadata: { flags_environment: 'staging' },
      },
    });
    assert.equal(created.statusCode, 201, created.body);
    key = created.json().key;
    const flags = [
      {
        name: 'rollout-30',
        enabled: true,
        strategies: [{ name: 'flexibleRollout', parameters: { rollout: '30', stickiness: 'userId' } }],
      },
      {
        name: 'colours',
        enabled: true,
        strategies: [{ name: 'default' }],
        variants: [
          { name: 'red', weight: 300, stickiness: 'userId', payload: { type: 'string', value: 'r' } },
          { name: 'blue', weight: 700, stickiness: 'userId', payload: { type: 'string', value: 'b' } },
        ],
      },
      { name: 'kill-switch', enabled: false, strategies: [{ name: 'default' }] },
    ];
    for (const body of flags) {
      const res = await v.req('POST', '/v1/flags/staging', { token: v.tokens.manager, body });
      assert.equal(res.statusCode, 201, res.body);
    }
  });
  after(async () => {
    unleash?.destroy();
    // A poll already under way when a client is destroyed still completes. Should it fail (a
    // connection refused after close()), unleash-client 6.12 throws from an emitter whose
    // listeners destroy() removed: an unhandled rejection that fails the file (CI, session 10,
    // where a fixed 500 ms wait was not enough). So close only once every poll started is answered.
    await traffic.settled();
    await v.close();
  });
  /** A key reading the development environment's flags (the tests above use staging). */
  const developmentKey = async (name: string): Promise<string> => {
    const created = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name, scopes: ['flags:read'], metadata: { flags_environment: 'development' } },
    });
    assert.equal(created.statusCode, 201, created.body);
    return created.json().key as string;
  };

  const metricsOf = async (name: string, token = v.tokens.viewer) =>
    v.req('GET', `/v1/flags/staging/${name}/metrics`, { token });

  test('raw metrics are summed per flag per hour; unknown flags skipped; other orgs 404', async () => {
    const report = (toggles: Record<string, unknown>, start = new Date().toISOString()) =>
      fetch(`${address}/api/client/metrics`, {
        method: 'POST',
        headers: { authorization: key, 'content-type': 'application/json' },
        body: JSON.stringify({ appName: 'raw', instanceId: 'i1', bucket: { start, stop: start, toggles } }),
      });
    const before = (await metricsOf('colours')).json().totals;
    assert.equal((await report({ colours: { yes: 3, no: 1, variants: { red: 1, blue: 2 } } })).status, 202);
    assert.equal(
      (await report({ colours: { yes: 2, no: 0, variants: { red: 2 } }, 'no-such-flag': { yes: 9, no: 9 } }))
        .status,
      202,
    );
    const got = await metricsOf('colours');
    assert.equal(got.statusCode, 200, got.body);
    const m = got.json();
    assert.deepEqual(m.totals, { yes: before.yes + 5, no: before.no + 1 });
    const hour = m.data.at(-1);
    assert.equal(new Date(hour.hour).getTime() % 3_600_000, 0, 'hour buckets');
    assert.ok(hour.variants.red >= 3 && hour.variants.blue >= 2, JSON.stringify(hour));
    const unknown = await v.t.store.db.query<{ n: number }>(
      `select count(*)::int as n from flag_metrics where flag_name = 'no-such-flag'`,
    );
    assert.equal(unknown[0]?.n, 0, 'counts for flags the environment lacks are not stored');
    assert.equal((await metricsOf('no-such-flag')).statusCode, 404);
    assert.equal((await metricsOf('colours', v.tokens.other)).statusCode, 404, 'another org: 404');
    assert.equal(
      (await v.req('GET', '/v1/flags/staging/colours/metrics?hours=abc', { token: v.tokens.viewer }))
        .statusCode,
      400,
    );
    assert.equal(
      (await v.req('GET', '/v1/flags/staging/colours/metrics?extra=1', { token: v.tokens.viewer }))
        .statusCode,
      400,
    );
    assert.equal((await v.req('GET', '/v1/flags/staging/colours/metrics')).statusCode, 401);
  });

  test("metrics keep only the flag's own variant names and `disabled`; made-up names are dropped", async () => {
    // Development, so that staging keeps the three flags the tests below expect.
    const devKey = await developmentKey('sdk-made-up');
    const created = await v.req('POST', '/v1/flags/development', {
      token: v.tokens.manager,
      body: {
        name: 'metric-variants',
        enabled: true,
        strategies: [{ name: 'default', variants: [{ name: 'strat', weight: 1000 }] }],
        variants: [{ name: 'only', weight: 1000 }],
      },
    });
    assert.equal(created.statusCode, 201, created.body);
    const start = new Date().toISOString();
    for (let r = 0; r < 20; r++) {
      const variants: Record<string, number> = { only: 1, strat: 2, disabled: 3 };
      for (let i = 0; i < 97; i++) variants[`made-up-${r}-${i}`] = 1;
      const res = await fetch(`${address}/api/client/metrics`, {
        method: 'POST',
        headers: { authorization: devKey, 'content-type': 'application/json' },
        body: JSON.stringify({
          appName: 'made-up',
          instanceId: 'i1',
          bucket: { start, stop: start, toggles: { 'metric-variants': { yes: 1, no: 0, variants } } },
        }),
      });
      assert.equal(res.status, 202, 'dropped silently: the report is accepted');
    }
    const m = (
      await v.req('GET', '/v1/flags/development/metric-variants/metrics', { token: v.tokens.viewer })
    ).json();
    assert.equal(m.totals.yes, 20);
    const stored: Record<string, number> = {};
    for (const b of m.data as { variants: Record<string, number> }[])
      for (const [name, n] of Object.entries(b.variants)) stored[name] = (stored[name] ?? 0) + n;
    assert.deepEqual(stored, { only: 20, strat: 40, disabled: 60 });
    const rows = await v.t.store.db.query<{ n: number }>(
      `select max(jsonb_array_length(jsonb_path_query_array(variants, '$.keyvalue()')))::int as n
         from flag_metrics where flag_name = 'metric-variants'`,
    );
    assert.equal(rows[0]?.n, 3, 'three keys stored, not 1,943');
  });

  test('metrics and SDK instances past their retention are purged, nothing younger', async () => {
    const count = async (table: 'flag_metrics' | 'flag_clients') =>
      (await v.t.store.db.query<{ n: number }>(`select count(*)::int as n from ${table}`))[0]?.n ?? 0;
    const stored = await count('flag_metrics');
    assert.ok(stored > 0 && (await count('flag_clients')) > 0, 'the test above left counts');
    const at = (ms: number) => createFlagMetrics({ db: v.t.store.db, clock: () => new Date(ms) });
    assert.deepEqual(await at(v.t.now.ms).purge(90), { buckets: 0, clients: 0 });
    assert.equal(await count('flag_metrics'), stored);
    const later = await at(v.t.now.ms + 91 * 86_400_000).purge(90);
    assert.equal(later.buckets, stored);
    assert.ok(later.clients > 0);
    assert.equal(await count('flag_metrics'), 0);
    assert.equal(await count('flag_clients'), 0);
  });

  test('delta API: hydration, 304 when current, the difference after a change', async () => {
    const get = (etag?: string, query = '') =>
      fetch(`${address}/api/client/delta${query}`, {
        headers: { authorization: key, ...(etag ? { 'if-none-match': etag } : {}) },
      });
    const first = await get();
    assert.equal(first.status, 200);
    const body = (await first.json()) as { events: { type: string; features: { name: string }[] }[] };
    assert.equal(body.events.length, 1);
    assert.equal(body.events[0]?.type, 'hydration');
    assert.ok(body.events[0]?.features.some((f) => f.name === 'colours'));
    const etag = first.headers.get('etag') ?? '';
    assert.equal((await get(etag)).status, 304);
    const prefixedEtag = (await get(undefined, '?namePrefix=col')).headers.get('etag') ?? '';
    const created = await v.req('POST', '/v1/flags/staging', {
      token: v.tokens.manager,
      body: { name: 'delta-new', enabled: true, strategies: [{ name: 'default' }] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const next = await get(etag);
    assert.equal(next.status, 200);
    const changes = (await next.json()) as { events: { type: string; feature?: { name: string } }[] };
    assert.deepEqual(
      changes.events.map((e) => [e.type, e.feature?.name]),
      [['feature-updated', 'delta-new']],
    );
    assert.notEqual(next.headers.get('etag'), etag);
    // namePrefix: only the flags (and flag events) it names.
    const prefixed = (await (await get(undefined, '?namePrefix=col')).json()) as {
      events: { type: string; features: { name: string }[] }[];
    };
    assert.deepEqual(
      prefixed.events[0]?.features.map((f) => f.name),
      ['colours'],
    );
    const elsewhere = (await (await get(prefixedEtag, '?namePrefix=col')).json()) as { events: unknown[] };
    assert.deepEqual(elsewhere.events, [], 'delta-new is not under col…');
    const unknown = await get('"not-a-state-we-know"');
    assert.equal(((await unknown.json()) as { events: { type: string }[] }).events[0]?.type, 'hydration');
    const del = await v.req('DELETE', '/v1/flags/staging/delta-new', { token: v.tokens.manager });
    assert.equal(del.statusCode, 204, del.body);
    const removed = (await (await get(next.headers.get('etag') ?? '')).json()) as {
      events: { type: string; featureName?: string }[];
    };
    assert.deepEqual(
      removed.events.map((e) => [e.type, e.featureName]),
      [['feature-removed', 'delta-new']],
    );
    assert.equal((await fetch(`${address}/api/client/delta`)).status, 401);
  });

  test('If-None-Match uses the weak comparison: W/"etag", a list naming it and * answer 304 (features, delta)', async () => {
    const get = (path: string, ifNoneMatch?: string) =>
      fetch(`${address}/api/client/${path}`, {
        headers: { authorization: key, ...(ifNoneMatch ? { 'if-none-match': ifNoneMatch } : {}) },
      });
    const etag = (await get('features')).headers.get('etag') ?? '';
    assert.match(etag, /^"[^"]+"$/);
    for (const path of ['features', 'delta']) {
      for (const header of [etag, `W/${etag}`, `"x", ${etag}`, `"x",W/${etag}`, '*']) {
        const res = await get(path, header);
        assert.equal(res.status, 304, `${path} If-None-Match: ${header}`);
      }
      for (const header of ['"x"', `"${etag}"`, `${etag.slice(0, -2)}"`, 'not a tag']) {
        const res = await get(path, header);
        assert.equal(res.status, 200, `${path} If-None-Match: ${header}`);
      }
    }
    // A delta from a state named weakly, in a list, is the difference, not a hydration.
    const created = await v.req('POST', '/v1/flags/staging', {
      token: v.tokens.manager,
      body: { name: 'weak-delta', enabled: true, strategies: [{ name: 'default' }] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const next = (await (await get('delta', `"unknown", W/${etag}`)).json()) as {
      events: { type: string; feature?: { name: string } }[];
    };
    assert.deepEqual(
      next.events.map((e) => [e.type, e.feature?.name]),
      [['feature-updated', 'weak-delta']],
    );
    assert.equal(
      (await v.req('DELETE', '/v1/flags/staging/weak-delta', { token: v.tokens.manager })).statusCode,
      204,
    );
  });

  test('namePrefix: each representation has its own strong ETag, 304 works with it, none validates another', async () => {
    // A key of its own: this test sends more requests than the shared key's rate limit leaves.
    const made = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: {
        name: 'sdk-prefix',
        scopes: ['flags:read'],
        metadata: { flags_environment: 'staging' },
        ratelimit: { limit: 1000, window_seconds: 60 },
      },
    });
    assert.equal(made.statusCode, 201, made.body);
    const own = made.json().key as string;
    const get = (path: string, query: string, ifNoneMatch?: string) =>
      fetch(`${address}/api/client/${path}${query}`, {
        headers: { authorization: own, ...(ifNoneMatch ? { 'if-none-match': ifNoneMatch } : {}) },
      });
    const queries = ['', '?namePrefix=col', '?namePrefix=co', '?namePrefix=', '?namePrefix=%22%2C%20x'];
    for (const path of ['features', 'delta']) {
      const tags: string[] = [];
      for (const query of queries) {
        const res = await get(path, query);
        assert.equal(res.status, 200, `${path}${query}`);
        const etag = res.headers.get('etag') ?? '';
        assert.match(etag, /^"[\x21\x23-\x7e]+"$/, `${path}${query}: a strong, well-formed tag`);
        tags.push(etag);
        // The same request gives the same tag: it names this representation of this state.
        assert.equal((await get(path, query)).headers.get('etag'), etag);
        for (const header of [etag, `W/${etag}`, `"x", ${etag}`]) {
          const again = await get(path, query, header);
          assert.equal(again.status, 304, `${path}${query} If-None-Match: ${header}`);
          assert.equal(again.headers.get('etag'), etag);
        }
      }
      assert.equal(new Set(tags).size, queries.length, `${path}: one tag per representation`);
      // A tag issued for one representation validates no other: 200 with the full body.
      for (const [i, query] of queries.entries()) {
        for (const [j, tag] of tags.entries()) {
          if (i === j) continue;
          const res = await get(path, query, tag);
          assert.equal(res.status, 200, `${path}${query} with the tag of ${queries[j]}`);
          if (path === 'delta') {
            const body = (await res.json()) as { events: { type: string }[] };
            assert.equal(body.events[0]?.type, 'hydration', `${path}${query} with the tag of ${queries[j]}`);
          }
        }
      }
    }
    // Filtered by prefix, the body is that prefix's and says so.
    const filtered = (await (await get('features', '?namePrefix=col')).json()) as {
      features: { name: string }[];
      query: unknown;
    };
    assert.deepEqual(
      filtered.features.map((f) => f.name),
      ['colours'],
    );
    assert.deepEqual(filtered.query, { namePrefix: 'col' });
    // After a change every filtered tag moves on, whether or not the change is under the prefix.
    const before = (await get('features', '?namePrefix=col')).headers.get('etag') ?? '';
    const created = await v.req('POST', '/v1/flags/staging', {
      token: v.tokens.manager,
      body: { name: 'prefix-etag-other', enabled: true, strategies: [{ name: 'default' }] },
    });
    assert.equal(created.statusCode, 201, created.body);
    const after = await get('features', '?namePrefix=col', before);
    assert.equal(after.status, 200);
    assert.notEqual(after.headers.get('etag'), before);
    assert.equal(
      (await v.req('DELETE', '/v1/flags/staging/prefix-etag-other', { token: v.tokens.manager })).statusCode,
      204,
    );
  });

  test('a 304 carries the ETag and Cache-Control a 200 would (features, delta; RFC 9110 §15.4.5)', async () => {
    const get = (path: string, ifNoneMatch?: string) =>
      fetch(`${address}/api/client/${path}`, {
        headers: { authorization: key, ...(ifNoneMatch ? { 'if-none-match': ifNoneMatch } : {}) },
      });
    for (const path of ['features', 'delta']) {
      const full = await get(path);
      assert.equal(full.status, 200);
      const etag = full.headers.get('etag') ?? '';
      assert.match(etag, /^"[^"]+"$/);
      // Whatever the 200 says (the API's \`no-store\` from src/http wins over the route's \`no-cache\`).
      const caching = full.headers.get('cache-control');
      assert.ok(caching);
      for (const header of [etag, `W/${etag}`, `"x", ${etag}`, '*']) {
        const res = await get(path, header);
        assert.equal(res.status, 304, `${path} If-None-Match: ${header}`);
        assert.equal(res.headers.get('etag'), etag, `${path} If-None-Match: ${header}`);
        assert.equal(res.headers.get('cache-control'), caching, `${path} If-None-Match: ${header}`);
      }
    }
  });

  test('unleash-client in delta mode evaluates and follows changes', async () => {
    const sdk = initialize({
      url: `${address}/api/`,
      appName: 'steward-delta',
      customHeadersFunction: traffic.headers(key),
      refreshInterval: 200,
      disableMetrics: true,
      experimentalMode: { type: 'polling', format: 'delta' },
    });
    try {
      await once(sdk, 'synchronized');
      assert.equal(sdk.isEnabled('colours', { userId: 'u1' }), true);
      const put = await v.req('PUT', '/v1/flags/staging/colours', {
        token: v.tokens.manager,
        body: { name: 'colours', enabled: false, strategies: [{ name: 'default' }] },
      });
      assert.equal(put.statusCode, 200, put.body);
      const deadline = Date.now() + 5000;
      while (sdk.isEnabled('colours', { userId: 'u1' }) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      assert.equal(sdk.isEnabled('colours', { userId: 'u1' }), false);
      const back = await v.req('PUT', '/v1/flags/staging/colours', {
        token: v.tokens.manager,
        body: {
          name: 'colours',
          enabled: true,
          strategies: [{ name: 'default' }],
          variants: [
            { name: 'red', weight: 300, stickiness: 'userId', payload: { type: 'string', value: 'r' } },
            { name: 'blue', weight: 700, stickiness: 'userId', payload: { type: 'string', value: 'b' } },
          ],
        },
      });
      assert.equal(back.statusCode, 200, back.body);
    } finally {
      sdk.destroy();
    }
  });

  test('metrics and registration sent by unleash-client are counted', async () => {
    const sdk = initialize({
      url: `${address}/api/`,
      appName: 'steward-metrics',
      instanceId: 'sdk-instance-1',
      customHeadersFunction: traffic.headers(key),
      refreshInterval: 60_000,
      // Sent by flushMetrics() below, not by a timer.
      metricsInterval: 3_600_000,
    });
    try {
      const registered = once(sdk, 'registered');
      await once(sdk, 'synchronized');
      await registered;
      const before = (await metricsOf('rollout-30')).json().totals;
      const beforeColours = (await metricsOf('colours')).json();
      let on = 0;
      for (let i = 0; i < 200; i++) {
        if (sdk.isEnabled('rollout-30', { userId: `m-${i}` })) on++;
        sdk.getVariant('colours', { userId: `m-${i}` });
      }
      await sdk.flushMetrics();
      const after = (await metricsOf('rollout-30')).json().totals;
      assert.deepEqual(after, { yes: before.yes + on, no: before.no + (200 - on) });
      const colours = (await metricsOf('colours')).json();
      const sum = (d: { variants: Record<string, number> }[]) =>
        d.reduce((n, b) => n + Object.values(b.variants).reduce((x, y) => x + y, 0), 0);
      assert.equal(sum(colours.data) - sum(beforeColours.data), 200, 'every variant counted');
      const clients = await v.req('GET', '/v1/flag-clients/staging', { token: v.tokens.viewer });
      assert.equal(clients.statusCode, 200, clients.body);
      const mine = clients
        .json()
        .data.find((c: { instance_id: string }) => c.instance_id === 'sdk-instance-1');
      assert.equal(mine?.app_name, 'steward-metrics');
      assert.match(mine?.sdk_version ?? '', /^unleash-node-sdk:/);
      const other = await v.req('GET', '/v1/flag-clients/staging', { token: v.tokens.other });
      assert.equal(other.statusCode, 200);
      assert.equal(other.json().data.length, 0, "another org sees none of this org's clients");
    } finally {
      sdk.destroy();
    }
  });

  test('raw Authorization key, Unleash shape, ETag 304, register/metrics 202, refusals', async () => {
    const res = await fetch(`${address}/api/client/features`, { headers: { authorization: key } });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { version: number; features: { name: string }[] };
    assert.equal(body.version, 2);
    assert.deepEqual(body.features.map((f) => f.name).sort(), ['colours', 'kill-switch', 'rollout-30']);
    const etag = res.headers.get('etag') ?? '';
    const again = await fetch(`${address}/api/client/features`, {
      headers: { authorization: key, 'if-none-match': etag },
    });
    assert.equal(again.status, 304);
    const post = (path: string, body: unknown, auth = key) =>
      fetch(`${address}/api/client/${path}`, {
        method: 'POST',
        headers: { authorization: auth, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    assert.equal(
      (await post('register', { appName: 'x', instanceId: 'y', sdkVersion: 'raw:1' })).status,
      202,
    );
    const bucket = { start: new Date().toISOString(), stop: new Date().toISOString() };
    assert.equal(
      (await post('metrics', { appName: 'x', instanceId: 'y', bucket: { ...bucket, toggles: {} } })).status,
      202,
    );
    // Wrong types, a missing bucket, negative counts: 400, nothing stored.
    for (const bad of [
      { appName: 'x' },
      { appName: 'x', bucket: { ...bucket, toggles: { 'kill-switch': { yes: '1', no: 0 } } } },
      { appName: 'x', bucket: { ...bucket, toggles: { 'kill-switch': { yes: -1, no: 0 } } } },
      { appName: 7, bucket: { ...bucket, toggles: {} } },
    ]) {
      assert.equal((await post('metrics', bad)).status, 400, JSON.stringify(bad));
    }
    assert.equal((await post('register', { instanceId: 'no-app' })).status, 400);
    assert.equal(
      (await post('metrics', { appName: 'x', bucket: { ...bucket, toggles: {} } }, '')).status,
      401,
    );
    assert.equal((await fetch(`${address}/api/client/features`)).status, 401);
    assert.equal(
      (await fetch(`${address}/api/client/features`, { headers: { authorization: 'stw_live_nope_abcdef' } }))
        .status,
      401,
    );
  });

  test('unleash-client evaluates a gradual rollout and a variant, and picks up a change', async () => {
    unleash = initialize({
      url: `${address}/api/`,
      appName: 'steward-test',
      customHeadersFunction: traffic.headers(key),
      refreshInterval: 200,
      metricsInterval: 0,
      disableMetrics: true,
    });
    await once(unleash, 'synchronized');
    const state = (await (
      await fetch(`${address}/api/client/features`, { headers: { authorization: key } })
    ).json()) as never;
    const engine = createFlagEngine(state);
    let on = 0;
    for (let i = 0; i < 1000; i++) {
      const ctx = { userId: `user-${i}` };
      const theirs: boolean = unleash.isEnabled('rollout-30', ctx);
      assert.equal(theirs, engine.isEnabled('rollout-30', ctx));
      if (theirs) on++;
      const variant = unleash.getVariant('colours', ctx);
      assert.equal(variant.name, engine.getVariant('colours', ctx).name);
    }
    assert.ok(on > 250 && on < 350, `30 % rollout gave ${on}/1000`);
    assert.equal(unleash.isEnabled('kill-switch'), false);

    const put = await v.req('PUT', '/v1/flags/staging/kill-switch', {
      token: v.tokens.manager,
      body: { name: 'kill-switch', enabled: true, strategies: [{ name: 'default' }] },
    });
    assert.equal(put.statusCode, 200, put.body);
    const deadline = Date.now() + 5000;
    while (!unleash.isEnabled('kill-switch') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    assert.equal(unleash.isEnabled('kill-switch'), true);
  });
  test('disabled strategies: kept for the admin API, left out for clients; all disabled serves the flag off', async () => {
    const devKey = await developmentKey('sdk-paused');
    const flags = [
      {
        name: 'paused-one',
        enabled: true,
        strategies: [
          { name: 'userWithId', title: 'early users', disabled: true, parameters: { userIds: 'u1' } },
          { name: 'userWithId', parameters: { userIds: 'u2' } },
        ],
      },
      { name: 'paused-all', enabled: true, strategies: [{ name: 'default', disabled: true }] },
    ];
    for (const body of flags) {
      const res = await v.req('POST', '/v1/flags/development', { token: v.tokens.manager, body });
      assert.equal(res.statusCode, 201, res.body);
    }
    const admin = (await v.req('GET', '/v1/flags/development/paused-one', { token: v.tokens.viewer })).json();
    assert.deepEqual(
      admin.strategies.map((s: { title?: string; disabled?: boolean }) => [s.title, s.disabled]),
      [
        ['early users', true],
        [undefined, undefined],
      ],
    );
    const served = (await (
      await fetch(`${address}/api/client/features`, { headers: { authorization: devKey } })
    ).json()) as { features: { name: string; enabled: boolean; strategies: unknown[] }[] };
    const one = served.features.find((f) => f.name === 'paused-one');
    const all = served.features.find((f) => f.name === 'paused-all');
    assert.equal(one?.strategies.length, 1);
    assert.deepEqual([all?.enabled, all?.strategies.length], [false, 0]);
    const evaluate = async (userId: string) =>
      (
        await v.req('POST', '/v1/flags/development/evaluate', {
          token: v.tokens.viewer,
          body: { context: { userId } },
        })
      )
        .json()
        .data.filter((e: { name: string }) => e.name.startsWith('paused-'))
        .map((e: { name: string; enabled: boolean }) => `${e.name}:${e.enabled}`);
    assert.deepEqual(await evaluate('u1'), ['paused-all:false', 'paused-one:false']);
    assert.deepEqual(await evaluate('u2'), ['paused-all:false', 'paused-one:true']);
    const sdk = await syncedClient(address, 'steward-paused', devKey, traffic);
    try {
      assert.deepEqual(
        ['u1', 'u2'].map((userId) => [
          sdk.isEnabled('paused-one', { userId }),
          sdk.isEnabled('paused-all', { userId }),
        ]),
        [
          [false, false],
          [true, false],
        ],
      );
    } finally {
      sdk.destroy();
    }
  });
  test("Unleash's names (-beta, .env, new(flag)…) and a `type` reach unleash-client, which agrees with us", async () => {
    const devKey = await developmentKey('sdk-names');
    const names = ['-beta', '.env', 'new(flag)', "it's", 'a*b', '!x', '~t'];
    for (const name of names) {
      const res = await v.req('POST', '/v1/flags/development', {
        token: v.tokens.manager,
        body: {
          name,
          type: 'experiment',
          project: 'default',
          enabled: true,
          strategies: [{ name: 'flexibleRollout', parameters: { rollout: '50', stickiness: 'userId' } }],
          variants: [
            { name: 'on', weight: 500, stickiness: 'userId' },
            { name: 'off', weight: 500, stickiness: 'userId' },
          ],
        },
      });
      assert.equal(res.statusCode, 201, `${name}: ${res.body}`);
    }
    const sdk = await syncedClient(address, 'steward-names', devKey, traffic);
    try {
      const state = (await (
        await fetch(`${address}/api/client/features`, { headers: { authorization: devKey } })
      ).json()) as { features: { name: string; type?: string }[] };
      const engine = createFlagEngine(state as never);
      for (const name of names) {
        assert.equal(state.features.find((f) => f.name === name)?.type, 'experiment', name);
        assert.equal(sdk.getFeatureToggleDefinition(name)?.name, name);
        for (let i = 0; i < 50; i++) {
          const ctx = { userId: `n-${i}` };
          assert.equal(sdk.isEnabled(name, ctx), engine.isEnabled(name, ctx), `${name} ${i}`);
          assert.equal(sdk.getVariant(name, ctx).name, engine.getVariant(name, ctx).name, `${name} ${i}`);
        }
      }
    } finally {
      sdk.destroy();
    }
  });
  test('flags at the edges of validation never make unleash-client throw, and it agrees with us', async () => {
    // Another environment, so the flags above are untouched.
    const devKey = await developmentKey('sdk-dev');
    const segment = await v.req('POST', '/v1/segments', {
      token: v.tokens.manager,
      body: {
        name: 'edge-plans',
        constraints: [{ contextName: 'plan', operator: 'IN', values: ['pro', ''] }],
      },
    });
    assert.equal(segment.statusCode, 201, segment.body);
    for (const body of edgeFlags(segment.json().id)) {
      const res = await v.req('POST', '/v1/flags/development', { token: v.tokens.manager, body });
      assert.equal(res.statusCode, 201, `${body.name}: ${res.body}`);
    }
    const sdk = await syncedClient(address, 'steward-edges', devKey, traffic);
    try {
      const state = (await (
        await fetch(`${address}/api/client/features`, { headers: { authorization: devKey } })
      ).json()) as never;
      const engine = createFlagEngine(state);
      const { names } = engine;
      assert.ok(names.length >= 20, `${names.length} flags`);
      for (const ctx of EDGE_CONTEXTS) {
        for (const name of names) {
          const what = `${name} ${JSON.stringify(ctx)}`;
          // A throw here is what the write validation exists to prevent.
          assert.equal(sdk.isEnabled(name, ctx), engine.isEnabled(name, ctx), what);
          assert.equal(sdk.getVariant(name, ctx).name, engine.getVariant(name, ctx).name, what);
        }
      }
    } finally {
      sdk.destroy();
    }
  });
});

/**
 * Counts the requests unleash-client starts (it calls customHeadersFunction first in each poll and
 * metrics post) and the ones the server has answered, so the server is closed only once none is
 * in flight.
 */
class SdkTraffic {
  private started = 0;
  private answered = 0;
  /** Answers unleash-client's GET retries (make-fetch-happen, twice, 1 s apart): none expected. */
  private retried: string[] = [];
  constructor(server: Server) {
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      if (req.headers[SDK_HEADER] !== undefined)
        res.once('close', () => {
          this.answered++;
          if (RETRIED.has(res.statusCode) || res.statusCode >= 500)
            this.retried.push(`${req.url} ${res.statusCode}`);
        });
    });
  }
  headers(key: string): () => Promise<Record<string, string>> {
    return async () => {
      this.started++;
      return { Authorization: key, [SDK_HEADER]: '1' };
    };
  }
  async settled(): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (this.answered < this.started) {
      if (Date.now() > deadline) throw new Error(`${this.started - this.answered} SDK requests unanswered`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.deepEqual(this.retried, [], 'answers unleash-client retries after the server is closed');
  }
}
const SDK_HEADER = 'x-steward-test-sdk';
const RETRIED = new Set([408, 420, 429]);

/**
 * A second unleash-client (not initialize(): it keeps one instance per process, and the first
 * test's is still up), synchronised with Steward.
 */
async function syncedClient(
  address: string,
  appName: string,
  key: string,
  traffic: SdkTraffic,
): Promise<Unleash> {
  const sdk = new Unleash({
    url: `${address}/api/`,
    appName,
    customHeadersFunction: traffic.headers(key),
    refreshInterval: 60_000,
    disableMetrics: true,
  });
  await once(sdk, 'synchronized');
  return sdk;
}

// Contexts with a stickiness value (variants hash it; without one both sides draw at random).
const EDGE_CONTEXTS = [
  { userId: 'alice' },
  { userId: 'bob', sessionId: 's-1', remoteAddress: '10.1.2.3' },
  {
    userId: 'u-7',
    remoteAddress: '::1',
    properties: { plan: 'pro', tenant: 't1', email: 'ADMIN@Example.test' },
  },
  { userId: 'u-8', remoteAddress: 'junk', properties: { appVersion: '1.0.0-rc.2', tier: '1000', plan: '' } },
  { userId: 'u-9', properties: { appVersion: 'v2.0.0', tier: 'x', email: `${'a'.repeat(40)}!` } },
  {
    userId: 'u-10',
    currentTime: new Date('2031-01-01T00:00:00Z'),
    properties: { appVersion: '2.0.0', tenant: '' },
  },
  { userId: 'u-11', remoteAddress: '2001:db8::1', properties: { ip: '2001:db8::5' } },
];

const strategy = (name: string, parameters: Record<string, string> = {}, extra = {}) => ({
  name,
  parameters,
  ...extra,
});
const constrained = (constraint: Record<string, unknown>) =>
  strategy('default', {}, { constraints: [{ contextName: 'appVersion', ...constraint }] });

/** Valid flags at the edges of every rule `validate.ts` enforces. */
function edgeFlags(segmentId: number) {
  const flag = (name: string, strategies: unknown[], extra = {}) => ({
    name: `edge-${name}`,
    enabled: true,
    strategies,
    ...extra,
  });
  return [
    flag('users', [strategy('userWithId', { userIds: 'alice, bob ,,carol' })]),
    flag('rollout-0', [strategy('flexibleRollout', { rollout: '0' })]),
    flag('rollout-100', [strategy('flexibleRollout', { rollout: '100', stickiness: 'default' })]),
    flag('rollout-field', [
      strategy('flexibleRollout', { rollout: '37', stickiness: 'tenant', groupId: '' }),
    ]),
    flag('gradual', [
      strategy('gradualRolloutUserId', { percentage: '50' }),
      strategy('gradualRolloutSessionId', { percentage: '100', groupId: 'g' }),
    ]),
    flag('random', [strategy('gradualRolloutRandom', { percentage: '0' })]),
    flag('random-all', [strategy('gradualRolloutRandom', { percentage: '100' })]),
    flag('ips', [strategy('remoteAddress', { IPs: '10.0.0.0/8, 192.168.1.10, ::1' })]),
    flag('hosts', [strategy('applicationHostname', { hostNames: 'build-host-1, build-host-2' })]),
    flag('segment', [strategy('default', {}, { segments: [segmentId] })]),
    flag('in', [
      strategy(
        'default',
        {},
        { constraints: [{ contextName: 'plan', operator: 'NOT_IN', values: ['', 'free'] }] },
      ),
    ]),
    flag('strings', [
      strategy(
        'default',
        {},
        {
          constraints: [
            {
              contextName: 'email',
              operator: 'STR_ENDS_WITH',
              values: ['@example.test'],
              caseInsensitive: true,
            },
            { contextName: 'email', operator: 'STR_STARTS_WITH', values: ['admin'], inverted: true },
          ],
        },
      ),
    ]),
    flag('numbers', [
      strategy('default', {}, { constraints: [{ contextName: 'tier', operator: 'NUM_GTE', value: '1e3' }] }),
    ]),
    flag('semver', [constrained({ operator: 'SEMVER_LT', value: '1.0.0-rc.10+build.5' })]),
    flag('semver-eq', [constrained({ operator: 'SEMVER_EQ', value: '2.0.0', inverted: true })]),
    flag('dates', [
      strategy(
        'default',
        {},
        {
          constraints: [
            { contextName: 'currentTime', operator: 'DATE_AFTER', value: '2030-02-28T23:59:59.5+02:00' },
          ],
        },
      ),
    ]),
    flag('regex', [
      strategy(
        'default',
        {},
        {
          constraints: [
            {
              contextName: 'email',
              operator: 'REGEX',
              value: '^\\Qadmin\\E@[[:alpha:].]+$',
              caseInsensitive: true,
            },
          ],
        },
      ),
    ]),
    flag('regex-evil', [
      strategy(
        'default',
        {},
        { constraints: [{ contextName: 'email', operator: 'REGEX', value: '(a+)+$' }] },
      ),
    ]),
    flag('cidr', [
      strategy(
        'default',
        {},
        {
          constraints: [{ contextName: 'ip', operator: 'IN_CIDR', values: ['2001:db8::/32', ' 10.0.0.0/8'] }],
        },
      ),
    ]),
    flag('variants', [strategy('default')], {
      variants: [
        { name: 'fixed', weight: 200, weightType: 'fix', payload: { type: 'json', value: '{"a":[1]}' } },
        { name: 'rest', weight: 800, weightType: 'variable', payload: { type: 'number', value: '-0.5' } },
        { name: 'never', weight: 0, stickiness: 'default', payload: { type: 'csv', value: 'a,b' } },
      ],
    }),
    flag('variants-fixed', [strategy('default')], {
      variants: [
        { name: 'x', weight: 250, weightType: 'fix', overrides: [{ contextName: 'tenant', values: ['t1'] }] },
        { name: 'y', weight: 750, weightType: 'fix' },
      ],
    }),
    flag('strategy-variants', [
      strategy(
        'flexibleRollout',
        { rollout: '100', stickiness: 'userId' },
        {
          variants: [
            { name: 'one', weight: 1, stickiness: 'userId' },
            { name: 'three', weight: 3, stickiness: 'userId' },
          ],
        },
      ),
    ]),
    flag('parent', [strategy('userWithId', { userIds: 'alice,u-7' })], {
      variants: [{ name: 'p', weight: 1000 }],
    }),
    flag('child-on', [strategy('default')], { dependencies: [{ feature: 'edge-parent', variants: ['p'] }] }),
    flag('child-off', [strategy('default')], { dependencies: [{ feature: 'edge-parent', enabled: false }] }),
    flag('no-strategies', []),
  ];
}
