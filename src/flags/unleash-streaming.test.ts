import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { InMemStorageProvider, Unleash } from 'unleash-client';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { MAX_STREAMS_PER_KEY } from './unleash-streaming.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 20 ms until it holds or `ms` pass; returns how long it took. */
async function within(ms: number, check: () => boolean | Promise<boolean>, what: string): Promise<number> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > ms) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
  return Date.now() - start;
}

/** A raw SSE connection (node:http, as unleash-client's eventsource library makes it). */
interface RawStream {
  res: IncomingMessage;
  text(): string;
  ended: Promise<void>;
  close(): void;
}

function openStream(address: string, headers: Record<string, string>): Promise<RawStream> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      `${address}/api/client/streaming`,
      { headers: { accept: 'text/event-stream', ...headers }, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
        });
        const ended = new Promise<void>((done) => res.on('close', () => done()));
        resolve({ res, text: () => text, ended, close: () => req.destroy() });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The SSE events in a stream's text so far. */
function eventsOf(
  text: string,
): { event: string; id?: string; data: { events: Record<string, unknown>[] } }[] {
  return text
    .split('\n\n')
    .filter((block) => block.includes('\ndata: ') || block.startsWith('data: '))
    .map((block) => {
      const field = (name: string) =>
        block
          .split('\n')
          .find((l) => l.startsWith(`${name}: `))
          ?.slice(name.length + 2);
      const id = field('id');
      return {
        event: field('event') ?? 'message',
        ...(id ? { id } : {}),
        data: JSON.parse(field('data') ?? ''),
      };
    });
}

// unleash-client in its streaming mode, against a live Steward on a real socket.
for (const { kind, skip } of STORES)
  describe(`Unleash streaming client API (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    let address: string;
    let key: string;
    let segmentId: number;
    let closed = false;
    const clients: Unleash[] = [];

    before(async () => {
      v = await vaultTestApp(kind);
      address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
      key = await newKey('sdk-stream', 'staging');
      const segment = await v.req('POST', '/v1/segments', {
        token: v.tokens.manager,
        body: { name: 'pro-plan', constraints: [{ contextName: 'plan', operator: 'IN', values: ['pro'] }] },
      });
      assert.equal(segment.statusCode, 201, segment.body);
      segmentId = segment.json().id;
      for (const body of [
        { name: 'on', enabled: true, strategies: [{ name: 'default' }] },
        { name: 'off', enabled: false, strategies: [{ name: 'default' }] },
        {
          name: 'paused',
          enabled: true,
          strategies: [
            { name: 'userWithId', disabled: true, parameters: { userIds: 'u1' } },
            { name: 'userWithId', parameters: { userIds: 'u2' } },
          ],
        },
        { name: 'for-pro', enabled: true, strategies: [{ name: 'default', segments: [segmentId] }] },
        { name: 'doomed', enabled: true, strategies: [{ name: 'default' }] },
      ]) {
        const res = await v.req('POST', '/v1/flags/staging', { token: v.tokens.manager, body });
        assert.equal(res.statusCode, 201, res.body);
      }
    });
    after(async () => {
      for (const sdk of clients) sdk.destroy();
      if (!closed) await v.close();
    });

    async function newKey(name: string, environment: string, extra: Record<string, unknown> = {}) {
      const created = await v.req('POST', '/v1/keys', {
        token: v.tokens.manager,
        body: { name, scopes: ['flags:read'], metadata: { flags_environment: environment }, ...extra },
      });
      assert.equal(created.statusCode, 201, created.body);
      return created.json().key as string;
    }

    const write = async (
      method: 'POST' | 'PUT' | 'PATCH' | 'DELETE',
      url: string,
      body?: unknown,
      token = v.tokens.manager,
    ) => {
      const res = await v.req(method, url, { token, body });
      assert.ok(res.statusCode < 300, `${method} ${url}: ${res.statusCode} ${res.body}`);
      return res;
    };

    /** A value of /metrics: a gauge by name, or the sum of a route's request counts (all statuses). */
    const metric = async (series: string): Promise<number> => {
      const text = await (await fetch(`${address}/metrics`)).text();
      let sum = 0;
      for (const line of text.split('\n')) {
        if (line.startsWith(`${series} `) || line.startsWith(`${series},`) || line.startsWith(`${series}}`))
          sum += Number(line.slice(line.lastIndexOf(' ') + 1));
      }
      return sum;
    };
    const requests = (route: string) => metric(`steward_http_requests_total{method="GET",route="${route}"`);
    const streams = () => metric('steward_flags_client_streams');
    const listeners = () => metric('steward_flags_client_stream_listeners');

    /** unleash-client in streaming mode; polling would wait an hour, so anything seen was pushed. */
    function streamingClient(appName: string, auth = key) {
      const sdk = new Unleash({
        url: `${address}/api/`,
        appName,
        customHeaders: { Authorization: auth },
        refreshInterval: 3_600_000,
        disableMetrics: true,
        storageProvider: new InMemStorageProvider(),
        experimentalMode: { type: 'streaming' },
      });
      clients.push(sdk);
      const errors: Error[] = [];
      const warnings: unknown[] = [];
      sdk.on('error', (e: Error) => errors.push(e));
      sdk.on('warn', (w: unknown) => warnings.push(w));
      return { sdk, errors, warnings };
    }
    /** The SDK's fetching mode (the Unleash class does not forward the repository's `mode` event). */
    const modeOf = (sdk: Unleash) =>
      (sdk as unknown as { repository: { getMode(): 'streaming' | 'polling' } }).repository.getMode();

    test('unleash-client hydrates at connect, then every change is pushed within 2 s, without polling', async () => {
      const baseline = { streams: await streams(), listeners: await listeners() };
      const features = await requests('/api/client/features');
      const deltas = await requests('/api/client/delta');
      const { sdk, errors, warnings } = streamingClient('steward-streaming');
      await once(sdk, 'synchronized');
      assert.equal(await streams(), baseline.streams + 1);
      assert.equal(await listeners(), baseline.listeners + 1);

      // The current flags, in the client view: a disabled strategy is left out.
      assert.equal(sdk.isEnabled('on'), true);
      assert.equal(sdk.isEnabled('off'), false);
      assert.deepEqual(
        ['u1', 'u2'].map((userId) => sdk.isEnabled('paused', { userId })),
        [false, true],
      );
      assert.equal(sdk.isEnabled('for-pro', { properties: { plan: 'pro' } }), true);
      assert.equal(sdk.isEnabled('for-pro', { properties: { plan: 'free' } }), false);
      assert.equal(
        sdk.getFeatureToggleDefinition('paused')?.strategies?.length,
        1,
        'disabled strategies are not served',
      );

      const took: Record<string, number> = {};
      await write('PUT', '/v1/flags/staging/off', {
        name: 'off',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      took.enable = await within(2000, () => sdk.isEnabled('off'), 'enabled flag');
      await write('PUT', '/v1/flags/staging/on', {
        name: 'on',
        enabled: false,
        strategies: [{ name: 'default' }],
      });
      took.disable = await within(2000, () => !sdk.isEnabled('on'), 'disabled flag');
      await write('POST', '/v1/flags/staging', {
        name: 'born',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      took.create = await within(2000, () => sdk.isEnabled('born'), 'created flag');
      await write('PUT', '/v1/flags/staging/paused', {
        name: 'paused',
        enabled: true,
        strategies: [
          { name: 'userWithId', parameters: { userIds: 'u1' } },
          { name: 'userWithId', disabled: true, parameters: { userIds: 'u2' } },
        ],
      });
      took.update = await within(
        2000,
        () => sdk.isEnabled('paused', { userId: 'u1' }) && !sdk.isEnabled('paused', { userId: 'u2' }),
        'updated strategies',
      );
      await write('PUT', `/v1/segments/${segmentId}`, {
        name: 'pro-plan',
        constraints: [{ contextName: 'plan', operator: 'IN', values: ['free'] }],
      });
      took.segment = await within(
        2000,
        () =>
          sdk.isEnabled('for-pro', { properties: { plan: 'free' } }) &&
          !sdk.isEnabled('for-pro', { properties: { plan: 'pro' } }),
        'segment change',
      );
      await write('DELETE', '/v1/flags/staging/doomed');
      took.delete = await within(
        2000,
        () => !sdk.isEnabled('doomed') && sdk.getFeatureToggleDefinition('doomed') === undefined,
        'deleted flag',
      );

      // Another org's and another environment's changes never reach this stream.
      await write(
        'POST',
        '/v1/flags/staging',
        { name: 'elsewhere', enabled: true, strategies: [{ name: 'default' }] },
        v.tokens.other,
      );
      await write('POST', '/v1/flags/development', {
        name: 'elsewhere',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      await write('POST', '/v1/flags/staging', {
        name: 'marker',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      await within(2000, () => sdk.isEnabled('marker'), 'marker flag');
      assert.equal(sdk.getFeatureToggleDefinition('elsewhere'), undefined);

      assert.equal(await requests('/api/client/features'), features, 'no polling');
      assert.equal(await requests('/api/client/delta'), deltas, 'no delta polling');
      assert.equal(modeOf(sdk), 'streaming');
      assert.deepEqual(warnings, []);
      assert.deepEqual(errors, []);
      assert.ok(
        Object.values(took).every((ms) => ms < 2000),
        JSON.stringify(took),
      );

      sdk.destroy();
      await within(2000, async () => (await streams()) === baseline.streams, 'streams back to baseline');
      assert.equal(await listeners(), baseline.listeners, 'no listener left behind');
    });

    test('unleash-client reconnects when Steward ends its stream: a key change applies, a resume sends nothing again', async () => {
      const own = await newKey('sdk-reconnect', 'staging');
      const id = (await v.req('GET', '/v1/keys?limit=100', { token: v.tokens.manager }))
        .json()
        .data.find((k: { name: string }) => k.name === 'sdk-reconnect')?.id;
      await write('POST', '/v1/flags/development', {
        name: 'dev-only',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      const { sdk, errors, warnings } = streamingClient('steward-reconnect', own);
      let changes = 0;
      sdk.on('changed', () => {
        changes += 1;
      });
      await once(sdk, 'synchronized');
      assert.equal(changes, 1);
      const open = await streams();

      // Any change to the key ends its streams; the SDK comes back (after 1–2 s) with
      // Last-Event-ID naming the state it holds, and is sent nothing again.
      await write('PATCH', `/v1/keys/${id}`, { name: 'sdk-reconnect-2' });
      await within(2000, async () => (await streams()) === open - 1, 'stream ended');
      await within(5000, async () => (await streams()) === open, 'SDK reconnected');
      await sleep(100);
      assert.equal(changes, 1, 'no second hydration after a resume');
      await write('POST', '/v1/flags/staging', {
        name: 'after-resume',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      await within(2000, () => sdk.isEnabled('after-resume'), 'change after the resume');

      // The key now reads another environment: the reconnected stream hydrates with its flags.
      await write('PATCH', `/v1/keys/${id}`, { metadata: { flags_environment: 'development' } });
      await within(
        5000,
        () => sdk.isEnabled('dev-only') && !sdk.isEnabled('after-resume'),
        'development flags',
      );
      assert.equal(modeOf(sdk), 'streaming');
      assert.deepEqual(errors, []);
      assert.deepEqual(warnings, []);
      sdk.destroy();
    });

    test('wire format: event names, ids = ETag of /features, Last-Event-ID, user token and key refusals', async () => {
      const etag = (
        await fetch(`${address}/api/client/features`, { headers: { authorization: key } })
      ).headers.get('etag');
      const first = await openStream(address, { authorization: key });
      assert.equal(first.res.statusCode, 200);
      assert.match(String(first.res.headers['content-type']), /^text\/event-stream/);
      await within(2000, () => eventsOf(first.text()).length === 1, 'hydration');
      const [connected] = eventsOf(first.text());
      assert.equal(connected?.event, 'unleash-connected');
      assert.equal(connected?.id, etag);
      const [hydration] = connected?.data.events ?? [];
      assert.equal(hydration?.type, 'hydration');
      assert.ok(Array.isArray(hydration?.segments));
      const names = ((hydration?.features ?? []) as { name: string }[]).map((f) => f.name).sort();
      assert.ok(names.includes('on') && !names.includes('elsewhere'), names.join());

      await write('POST', '/v1/flags/staging', {
        name: 'wire',
        enabled: true,
        strategies: [{ name: 'default' }],
      });
      await within(2000, () => eventsOf(first.text()).length === 2, 'update');
      const updated = eventsOf(first.text())[1];
      assert.equal(updated?.event, 'unleash-updated');
      assert.deepEqual(
        updated?.data.events.map((e) => [e.type, (e.feature as { name: string }).name]),
        [['feature-updated', 'wire']],
      );
      const now = (
        await fetch(`${address}/api/client/features`, { headers: { authorization: key } })
      ).headers.get('etag');
      assert.equal(updated?.id, now);
      first.close();

      // Reconnecting with the current state: nothing is sent again. With an older one: a hydration.
      const resumed = await openStream(address, { authorization: key, 'last-event-id': now ?? '' });
      const stale = await openStream(address, { authorization: key, 'last-event-id': etag ?? '' });
      await within(2000, () => eventsOf(stale.text()).length === 1, 'hydration of a stale client');
      assert.equal(eventsOf(stale.text())[0]?.data.events[0]?.type, 'hydration');
      await sleep(100);
      assert.deepEqual(eventsOf(resumed.text()), []);
      assert.match(resumed.text(), /^: connected\n\n/);
      await write('DELETE', '/v1/flags/staging/wire');
      await within(2000, () => eventsOf(resumed.text()).length === 1, 'change after a resume');
      assert.equal(eventsOf(resumed.text())[0]?.data.events[0]?.type, 'feature-removed');
      resumed.close();
      stale.close();

      // Authentication as /api/client/features: a key, raw or Bearer; nothing else.
      const status = async (headers: Record<string, string>) =>
        (await fetch(`${address}/api/client/streaming`, { headers })).status;
      assert.equal(await status({}), 401);
      assert.equal(await status({ authorization: 'stw_live_nope_abcdef' }), 401);
      assert.equal(await status({ authorization: `Bearer ${v.tokens.viewer}` }), 403, 'a user token');
      const noScope = await v.req('POST', '/v1/keys', {
        token: v.tokens.manager,
        body: { name: 'no-flags', scopes: ['secrets:read'] },
      });
      assert.equal(noScope.statusCode, 201, noScope.body);
      assert.equal(await status({ authorization: noScope.json().key }), 403, 'a key without flags:read');
      const nowhere = await newKey('nowhere', 'no-such-env');
      assert.equal(await status({ authorization: nowhere }), 404, 'an unknown environment');
    });

    test('unleash-client with a wrong key: 401, it falls back to polling (as against Unleash), no stream held', async () => {
      const baseline = await streams();
      const { sdk, errors } = streamingClient('steward-bad-key', 'stw_live_nope_abcdef');
      await within(5000, () => errors.length > 0, 'an error');
      // A 401 on the stream is a "hard failover" for the SDK: it polls /features, which 401s too.
      assert.equal(modeOf(sdk), 'polling');
      assert.match(errors[0]?.message ?? '', /client\/features responded 401/);
      assert.equal(sdk.isSynchronized(), false);
      assert.equal(await streams(), baseline);
      sdk.destroy();
    });

    test('a revoked key: its streams end, reconnecting is refused', async () => {
      const doomed = await newKey('sdk-revoked', 'staging');
      const s = await openStream(address, { authorization: doomed });
      await within(2000, () => eventsOf(s.text()).length === 1, 'hydration');
      const id = (await v.req('GET', '/v1/keys?limit=100', { token: v.tokens.manager }))
        .json()
        .data.find((k: { name: string }) => k.name === 'sdk-revoked')?.id;
      await write('DELETE', `/v1/keys/${id}`);
      await Promise.race([s.ended, sleep(2000).then(() => assert.fail('stream not ended'))]);
      assert.equal(
        (await fetch(`${address}/api/client/streaming`, { headers: { authorization: doomed } })).status,
        401,
      );
    });

    test("the key's owner deactivated: the stream ends, reconnecting is refused", async () => {
      const created = await v.req('POST', '/v1/keys', {
        token: v.tokens.manager2,
        body: { name: 'sdk-owned', scopes: ['flags:read'], metadata: { flags_environment: 'staging' } },
      });
      assert.equal(created.statusCode, 201, created.body);
      const owned = created.json().key as string;
      const s = await openStream(address, { authorization: owned });
      await within(2000, () => eventsOf(s.text()).length === 1, 'hydration');
      await write('PATCH', `/v1/users/${v.ids.manager2}`, { active: false }, v.tokens.admin);
      await Promise.race([s.ended, sleep(2000).then(() => assert.fail('stream not ended'))]);
      const again = await openStream(address, { authorization: owned });
      await again.ended;
      assert.equal(again.res.statusCode, 401);
    });

    test("a key's stream ends when the key expires (Steward's clock); reconnecting then is refused", async () => {
      const expiring = await newKey('sdk-expiring', 'staging', {
        expires_at: new Date(v.t.now.ms + 1500).toISOString(),
      });
      const s = await openStream(address, { authorization: expiring });
      await within(2000, () => eventsOf(s.text()).length === 1, 'hydration');
      const start = Date.now();
      await Promise.race([s.ended, sleep(4000).then(() => assert.fail('stream not ended at expiry'))]);
      assert.ok(Date.now() - start < 2500, `ended after ${Date.now() - start} ms`);
      v.t.now.ms += 2000;
      assert.equal(
        (await fetch(`${address}/api/client/streaming`, { headers: { authorization: expiring } })).status,
        401,
      );
    });

    test(`at most ${MAX_STREAMS_PER_KEY} streams per key: 429 beyond, another key unaffected, room again after one closes`, async () => {
      const fleet = await newKey('sdk-fleet', 'staging', { tier: 'enterprise' });
      const open: RawStream[] = [];
      try {
        for (let i = 0; i < MAX_STREAMS_PER_KEY; i += 50) {
          const batch = await Promise.all(
            Array.from({ length: Math.min(50, MAX_STREAMS_PER_KEY - i) }, () =>
              openStream(address, { authorization: fleet }),
            ),
          );
          open.push(...batch);
        }
        assert.ok(open.every((s) => s.res.statusCode === 200));
        const refused = await openStream(address, { authorization: fleet });
        await refused.ended;
        assert.equal(refused.res.statusCode, 429);
        assert.equal(refused.res.headers['retry-after'], '60');
        assert.match((JSON.parse(refused.text()) as { detail: string }).detail, /streams per key/);
        const other = await openStream(address, { authorization: key });
        assert.equal(other.res.statusCode, 200, 'another key');
        other.close();
        open.pop()?.close();
        await within(
          2000,
          async () => {
            const again = await openStream(address, { authorization: fleet });
            if (again.res.statusCode === 200) open.push(again);
            return again.res.statusCode === 200;
          },
          'a free slot',
        );
      } finally {
        for (const s of open) s.close();
      }
    });

    test('shutdown ends open streams at once', async () => {
      const s = await openStream(address, { authorization: key });
      await within(2000, () => eventsOf(s.text()).length === 1, 'hydration');
      const start = Date.now();
      let endedAfter = -1;
      void s.ended.then(() => {
        endedAfter = Date.now() - start;
      });
      closed = true;
      await v.close();
      await s.ended;
      assert.ok(endedAfter >= 0 && endedAfter < 1000, `ended after ${endedAfter} ms`);
    });
  });
