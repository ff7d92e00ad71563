import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { OpenFeature, ProviderEvents } from '@openfeature/server-sdk';
import { type VaultTestApp, vaultTestApp } from '../../vault/test-support.ts';
import { StewardProvider } from './provider.ts';

// The OpenFeature server SDK with Steward's provider against a live Steward.
describe('OpenFeature provider', () => {
  let v: VaultTestApp;
  let address: string;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
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
});
