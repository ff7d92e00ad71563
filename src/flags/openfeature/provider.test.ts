import assert from 'node:assert/strict';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { type EventDetails, OpenFeature, ProviderEvents, ProviderStatus } from '@openfeature/server-sdk';
import { type VaultTestApp, vaultTestApp } from '../../vault/test-support.ts';
import { StewardProvider } from './provider.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TCP relay to Steward on a fixed port that can be taken down and brought back (Steward "unreachable"). */
async function relayTo(target: string) {
  const { hostname, port: targetPort } = new URL(target);
  // A free port: listened on, then closed, so nothing answers there until `up()`.
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const port = (probe.address() as { port: number }).port;
  await new Promise((resolve) => probe.close(resolve));
  let server: Server | undefined;
  const sockets = new Set<Socket>();
  return {
    url: `http://127.0.0.1:${port}`,
    async up() {
      server = createServer((client) => {
        const upstream = netConnect(Number(targetPort), hostname);

        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => {});
        }
        client.pipe(upstream).pipe(client);
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
      });
      await new Promise<void>((resolve) => server?.listen(port, '127.0.0.1', resolve));
    },
    async down() {
      const closing = new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
      for (const s of sockets) s.destroy();
      await closing;
      server = undefined;
    },
  };
}

// The OpenFeature server SDK with Steward's provider against a live Steward.
describe('OpenFeature provider', () => {
  let v: VaultTestApp;
  let address: string;
  let segmentId: number;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
    const segment = await v.req('POST', '/v1/segments', {
      token: v.tokens.manager,
      body: {
        name: 'beta-testers',
        constraints: [{ contextName: 'plan', operator: 'IN', values: ['beta'] }],
      },
    });
    assert.equal(segment.statusCode, 201, segment.body);
    segmentId = segment.json().id;
    const flags = [
      {
        name: 'bool-on',
        enabled: true,
        strategies: [{ name: 'userWithId', parameters: { userIds: 'alice' } }],
      },
      { name: 'off', enabled: false, strategies: [] },
      {
        name: 'text',
        enabled: true,
        strategies: [],
        variants: [{ name: 'greeting', weight: 1000, payload: { type: 'string', value: 'hi' } }],
      },
      {
        name: 'num',
        enabled: true,
        strategies: [],
        variants: [{ name: 'n', weight: 1000, payload: { type: 'number', value: '42' } }],
      },
      {
        name: 'obj',
        enabled: true,
        strategies: [],
        variants: [{ name: 'o', weight: 1000, payload: { type: 'json', value: '{"a":1}' } }],
      },
      { name: 'for-beta', enabled: true, strategies: [{ name: 'default', segments: [segmentId] }] },
    ];
    for (const body of flags) {
      assert.equal(
        (await v.req('POST', '/v1/flags/development', { token: v.tokens.manager, body })).statusCode,
        201,
      );
    }
  });
  after(async () => {
    await OpenFeature.close();
    await v.close();
  });

  test('evaluates locally, maps reasons, variants and errors, updates from the stream', async () => {
    const provider = new StewardProvider({
      url: address,
      token: v.tokens.viewer,
      environment: 'development',
    });
    await OpenFeature.setProviderAndWait(provider);
    const client = OpenFeature.getClient();

    assert.equal(await client.getBooleanValue('bool-on', false, { targetingKey: 'alice' }), true);
    assert.equal(await client.getBooleanValue('bool-on', true, { targetingKey: 'bob' }), false);
    const off = await client.getBooleanDetails('off', true);
    assert.equal(off.value, false);
    assert.equal(off.reason, 'DISABLED');
    const text = await client.getStringDetails('text', 'default');
    assert.deepEqual([text.value, text.variant, text.reason], ['hi', 'greeting', 'SPLIT']);
    assert.equal(await client.getNumberValue('num', 0), 42);
    assert.deepEqual(await client.getObjectValue('obj', {}), { a: 1 });

    const missing = await client.getBooleanDetails('nope', true);
    assert.deepEqual([missing.value, missing.errorCode, missing.reason], [true, 'FLAG_NOT_FOUND', 'ERROR']);
    const mismatch = await client.getNumberDetails('text', 7);
    assert.deepEqual([mismatch.value, mismatch.errorCode], [7, 'TYPE_MISMATCH']);
    const objMismatch = await client.getObjectDetails('num', { d: 1 });
    assert.equal(objMismatch.errorCode, 'TYPE_MISMATCH');

    const changed = new Promise<string[]>((resolve) =>
      client.addHandler(ProviderEvents.ConfigurationChanged, (details) =>
        resolve(details?.flagsChanged ?? []),
      ),
    );
    const put = await v.req('PUT', '/v1/flags/development/off', {
      token: v.tokens.manager,
      body: { name: 'off', enabled: true, strategies: [] },
    });
    assert.equal(put.statusCode, 200);
    assert.deepEqual(await changed, ['off']);
    const on = await client.getBooleanDetails('off', false);
    assert.deepEqual([on.value, on.reason], [true, 'TARGETING_MATCH']);
  });

  test('boolean and string agree on reasons: an enabled flag no strategy matches is DEFAULT, a disabled one DISABLED', async () => {
    const provider = new StewardProvider({
      url: address,
      token: v.tokens.viewer,
      environment: 'development',
    });
    await OpenFeature.setProviderAndWait('reasons', provider);
    const client = OpenFeature.getClient('reasons');
    const bob = { targetingKey: 'bob' };
    const b = await client.getBooleanDetails('bool-on', true, bob);
    const s = await client.getStringDetails('bool-on', 'dflt', bob);
    assert.deepEqual([b.value, b.reason], [false, 'DEFAULT']);
    assert.deepEqual([s.value, s.reason], ['dflt', 'DEFAULT']);
    const alice = await client.getBooleanDetails('bool-on', false, { targetingKey: 'alice' });
    assert.deepEqual([alice.value, alice.reason], [true, 'TARGETING_MATCH']);
    assert.equal(
      (
        await v.req('PUT', '/v1/flags/development/off', {
          token: v.tokens.manager,
          body: { name: 'off', enabled: false, strategies: [] },
        })
      ).statusCode,
      200,
    );
    for (let i = 0; i < 100 && (await client.getBooleanDetails('off', true)).value; i++) await sleep(20);
    const bOff = await client.getBooleanDetails('off', true);
    const sOff = await client.getStringDetails('off', 'dflt');
    assert.deepEqual([bOff.value, bOff.reason], [false, 'DISABLED']);
    assert.deepEqual([sOff.value, sOff.reason], ['dflt', 'DISABLED']);
  });

  test('a segment update reports the flags using it as changed', async () => {
    const provider = new StewardProvider({
      url: address,
      token: v.tokens.viewer,
      environment: 'development',
    });
    await OpenFeature.setProviderAndWait('segments', provider);
    const client = OpenFeature.getClient('segments');
    assert.equal(await client.getBooleanValue('for-beta', false, { plan: 'pro' }), false);
    const changed = new Promise<string[]>((resolve) =>
      client.addHandler(ProviderEvents.ConfigurationChanged, (details) =>
        resolve(details?.flagsChanged ?? []),
      ),
    );
    const put = await v.req('PUT', `/v1/segments/${segmentId}`, {
      token: v.tokens.manager,
      body: {
        name: 'beta-testers',
        constraints: [{ contextName: 'plan', operator: 'IN', values: ['beta', 'pro'] }],
      },
    });
    assert.equal(put.statusCode, 200, put.body);
    assert.deepEqual(await changed, ['for-beta']);
    assert.equal(await client.getBooleanValue('for-beta', false, { plan: 'pro' }), true);
  });

  test('Steward unreachable at startup: not ready (never FLAG_NOT_FOUND), retries, READY once it answers; a reconnect reports what changed', async () => {
    const relay = await relayTo(address);
    const provider = new StewardProvider({
      url: relay.url,
      token: v.tokens.viewer,
      environment: 'development',
      reconnectMs: 100,
    });
    await assert.rejects(OpenFeature.setProviderAndWait('late', provider));
    const client = OpenFeature.getClient('late');
    // The provider's own events: a domain's client may also hear the default provider's.
    const next = <T = undefined>(event: ProviderEvents, pick: (d?: EventDetails) => T) =>
      new Promise<T>((resolve) => {
        const handler = (d?: EventDetails) => {
          provider.events.removeHandler(event, handler);
          resolve(pick(d));
        };
        provider.events.addHandler(event, handler);
      });
    assert.equal(client.providerStatus, ProviderStatus.ERROR);
    const early = await client.getBooleanDetails('bool-on', true, { targetingKey: 'alice' });
    assert.deepEqual([early.value, early.errorCode], [true, 'PROVIDER_NOT_READY']);

    const ready = next(ProviderEvents.Ready, () => undefined);
    await sleep(300); // a few failed attempts
    const start = Date.now();
    await relay.up();
    await Promise.race([ready, sleep(5000).then(() => assert.fail('not READY within 5 s'))]);
    assert.ok(Date.now() - start < 5000);
    assert.equal(client.providerStatus, ProviderStatus.READY);
    assert.equal(await client.getBooleanValue('bool-on', false, { targetingKey: 'alice' }), true);

    // Down again; a flag changes meanwhile; the reconnect's hydration is diffed.
    const stale = next(ProviderEvents.Stale, () => undefined);
    await relay.down();
    await stale;
    assert.equal(
      (
        await v.req('PUT', '/v1/flags/development/num', {
          token: v.tokens.manager,
          body: {
            name: 'num',
            enabled: true,
            strategies: [],
            variants: [{ name: 'n', weight: 1000, payload: { type: 'number', value: '43' } }],
          },
        })
      ).statusCode,
      200,
    );
    const reconnected = next(ProviderEvents.Ready, () => undefined);
    const changed = next(ProviderEvents.ConfigurationChanged, (d) => d?.flagsChanged ?? []);
    await relay.up();
    await reconnected;
    assert.deepEqual(
      await Promise.race([changed, sleep(5000).then(() => assert.fail('no CONFIGURATION_CHANGED'))]),
      ['num'],
    );
    assert.equal(client.providerStatus, ProviderStatus.READY);
    assert.equal(await client.getNumberValue('num', 0), 43);
    await provider.onClose();
    await relay.down();
  });

  test('a refused token (401) is PROVIDER_FATAL: no retries, evaluations answer the default with that error', async () => {
    let calls = 0;
    const provider = new StewardProvider({
      url: address,
      token: 'not-a-token',
      environment: 'development',
      reconnectMs: 50,
      fetch: (input, init) => {
        calls += 1;
        return fetch(input, init);
      },
    });
    await assert.rejects(OpenFeature.setProviderAndWait('refused', provider), { code: 'PROVIDER_FATAL' });
    const client = OpenFeature.getClient('refused');
    assert.equal(client.providerStatus, ProviderStatus.FATAL);
    const details = await client.getBooleanDetails('bool-on', true);
    assert.deepEqual([details.value, details.errorCode], [true, 'PROVIDER_FATAL']);
    await sleep(400);
    assert.equal(calls, 1, 'no retry after a 401');
  });
});
