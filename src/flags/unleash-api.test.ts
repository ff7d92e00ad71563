import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { initialize, type Unleash } from 'unleash-client';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { createFlagEngine } from './engine.ts';

// The official unleash-client package, pointed at a live Steward, evaluates Steward's flags.
describe('Unleash client API with unleash-client', () => {
  let v: VaultTestApp;
  let address: string;
  let key: string;
  let unleash: Unleash | undefined;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
    const created = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name: 'sdk', scopes: ['flags:read'], metadata: { flags_environment: 'staging' } },
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
    await v.close();
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
    for (const path of ['register', 'metrics']) {
      const r = await fetch(`${address}/api/client/${path}`, {
        method: 'POST',
        headers: { authorization: key, 'content-type': 'application/json' },
        body: JSON.stringify({ appName: 'x', instanceId: 'y' }),
      });
      assert.equal(r.status, 202);
    }
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
      customHeaders: { Authorization: key },
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
});
