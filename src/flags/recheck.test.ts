// A lost bus message must not leave another instance's flags stale: every instance on PostgreSQL
// compares the environments it holds with the database every few seconds (`recheck`), and sends
// what changed down the bus message's path (evaluation, client API ETags, streams).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { type TwoInstances, twoInstances } from '../../test/helpers/instances.ts';
import { postgresSkip } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { createMemoryBus } from '../bus/index.ts';
import { openDatabase } from '../db/client.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { createFlagService, type FlagService } from './service.ts';
import type { DeltaEvent } from './types.ts';

type Body = Record<string, unknown>;
const on = (name: string, extra: Body = {}): Body => ({
  name,
  enabled: true,
  strategies: [{ name: 'default' }],
  ...extra,
});

/** Asks `read` until `done` holds of its answer; generous, so a slow machine only waits longer. */
async function eventually<T>(read: () => Promise<T>, done: (value: T) => boolean, what: string): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > deadline) assert.fail(`${what}: still ${JSON.stringify(value)} after 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

// Two full instances on one database, each with a bus of its own: every message is lost.
describe('two instances on one PostgreSQL database, no shared bus', { skip: postgresSkip }, () => {
  let url: string;
  let a: FastifyInstance;
  let b: FastifyInstance;
  let token: string;
  let key: string;
  let instances: TwoInstances | undefined;

  before(async () => {
    instances = await twoInstances({ separateBuses: true });
    ({ a, b, token, url } = instances);
    const created = await send(a, 'POST', '/v1/keys', {
      name: 'sdk',
      scopes: ['flags:read'],
      metadata: { flags_environment: 'development' },
    });
    assert.equal(created.statusCode, 201, created.body);
    key = created.json().key;
  });
  after(() => instances?.close());

  const send = (app: FastifyInstance, method: 'POST' | 'PUT' | 'DELETE', url: string, body?: Body) =>
    app.inject({
      method,
      url,
      headers: { authorization: `Bearer ${token}` },
      ...(body === undefined ? {} : { payload: body }),
    });
  const evaluateOn = async (app: FastifyInstance, name: string, context: Body = {}) => {
    const res = await send(app, 'POST', '/v1/flags/development/evaluate', { context, flags: [name] });
    assert.equal(res.statusCode, 200, res.body);
    const { data, missing } = res.json() as { data: { enabled: boolean }[]; missing: string[] };
    return missing.includes(name) ? 'missing' : data[0]?.enabled;
  };
  const clientFeatures = (app: FastifyInstance): Promise<LightMyRequestResponse> =>
    app.inject({ method: 'GET', url: '/api/client/features', headers: { authorization: key } });

  test('a flag disabled on A is disabled on B: evaluation and the client API ETag', async () => {
    assert.equal((await send(a, 'POST', '/v1/flags/development', on('lost'))).statusCode, 201);
    assert.equal(await evaluateOn(b, 'lost'), true);
    const before = await clientFeatures(b);
    assert.equal(before.statusCode, 200, before.body);

    const disabled = await send(a, 'PUT', '/v1/flags/development/lost', on('lost', { enabled: false }));
    assert.equal(disabled.statusCode, 200, disabled.body);
    assert.equal(await evaluateOn(a, 'lost'), false);

    await eventually(
      () => evaluateOn(b, 'lost'),
      (enabled) => enabled === false,
      "B's evaluation",
    );
    const now = await clientFeatures(b);
    assert.notEqual(now.headers.etag, before.headers.etag);
    assert.equal(now.headers.etag, (await clientFeatures(a)).headers.etag, 'one state, one ETag');
    const stale = await b.inject({
      method: 'GET',
      url: '/api/client/features',
      headers: { authorization: key, 'if-none-match': String(before.headers.etag) },
    });
    assert.equal(stale.statusCode, 200, 'the old ETag no longer validates on B');
  });

  test('a recheck that fails is reported; what is held keeps serving', async () => {
    assert.equal((await send(a, 'POST', '/v1/flags/development', on('kept'))).statusCode, 201);
    const ctx = a.steward;
    const own = await openDatabase({ dataDir: 'unused', databaseUrl: url, poolSize: 1 });
    const failures: string[] = [];
    const flags = createFlagService({
      db: own,
      audit: ctx.audit,
      tenancy: ctx.tenancy,
      bus: createMemoryBus(),
      clock: ctx.clock,
      authz: ctx.authz,
      recheckMs: 20,
      onError: (_error, what) => failures.push(what),
    });
    try {
      const me = await a.inject({
        method: 'GET',
        url: '/v1/me',
        headers: { authorization: `Bearer ${token}` },
      });
      const orgId = me.json().org_id as string;
      const held = await flags.snapshot(orgId, 'development');
      await own.close();
      await eventually(
        async () => failures,
        (seen) => seen.includes('flag snapshot recheck'),
        'the failed recheck reported',
      );
      assert.equal(await flags.snapshot(orgId, 'development'), held, 'the held state still serves');
      assert.equal((await flags.evaluate(orgId, 'development', {}, ['kept'])).data[0]?.enabled, true);
    } finally {
      await flags.stop();
    }
  });

  test('a segment changed and a flag deleted on A reach B', async () => {
    const segment = await send(a, 'POST', '/v1/segments', {
      name: 'plans',
      constraints: [{ contextName: 'plan', operator: 'IN', values: ['pro'] }],
    });
    assert.equal(segment.statusCode, 201, segment.body);
    const id = segment.json().id as number;
    const flag = on('by-plan', { strategies: [{ name: 'default', segments: [id] }] });
    assert.equal((await send(a, 'POST', '/v1/flags/development', flag)).statusCode, 201);
    const pro = { properties: { plan: 'pro' } };
    // B holds development from the tests before: the new flag reaches it the same way.
    await eventually(
      () => evaluateOn(b, 'by-plan', pro),
      (enabled) => enabled === true,
      "B's evaluation of the new flag",
    );

    const changed = await send(a, 'PUT', `/v1/segments/${id}`, {
      name: 'plans',
      constraints: [{ contextName: 'plan', operator: 'IN', values: ['enterprise'] }],
    });
    assert.equal(changed.statusCode, 200, changed.body);
    await eventually(
      () => evaluateOn(b, 'by-plan', pro),
      (enabled) => enabled === false,
      "B's evaluation after the segment change",
    );

    assert.equal((await send(a, 'DELETE', '/v1/flags/development/by-plan')).statusCode, 204);
    await eventually(
      () => evaluateOn(b, 'by-plan', pro),
      (enabled) => enabled === 'missing',
      "B's evaluation after the deletion",
    );
  });
});

// The recheck itself, called directly on a second service that hears nothing (a bus of its own),
// on both stores: the query is the same SQL everywhere, only the timer is PostgreSQL's.
for (const { kind, skip } of STORES) {
  describe(`flag recheck (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    let deaf: FlagService;
    let orgId: string;
    before(async () => {
      v = await vaultTestApp(kind);
      const ctx = v.t.app.steward;
      deaf = createFlagService({
        db: ctx.db,
        audit: ctx.audit,
        tenancy: ctx.tenancy,
        bus: createMemoryBus(),
        clock: ctx.clock,
        authz: ctx.authz,
        recheckMs: 0,
      });
      orgId = (await v.req('GET', '/v1/me', { token: v.tokens.manager })).json().org_id;
    });
    after(async () => {
      await deaf.stop();
      await v.close();
    });

    const write = async (method: 'POST' | 'PUT' | 'DELETE', url: string, body?: Body) => {
      const res = await v.req(method, url, { token: v.tokens.manager, body });
      assert.ok(res.statusCode < 300, `${method} ${url}: ${res.statusCode} ${res.body}`);
      return res;
    };
    const enabled = async (name: string, env = 'staging') =>
      (await deaf.evaluate(orgId, env, {}, [name])).data[0]?.enabled;

    test('nothing changed: nothing is rebuilt (the stamps of memory and database agree)', async () => {
      assert.equal(await deaf.recheck(), 0, 'nothing held, nothing asked');
      // Names in another order than ids, a segment, and an empty environment.
      for (const name of ['zeta', 'alpha', 'Mid', '0-first'])
        await write('POST', '/v1/flags/staging', on(name));
      await write('POST', '/v1/segments', {
        name: 'quiet',
        constraints: [{ contextName: 'plan', operator: 'IN', values: ['pro'] }],
      });
      await write('PUT', '/v1/flags/staging/alpha', on('alpha', { description: 'v2' }));
      const held = await deaf.snapshot(orgId, 'staging');
      await deaf.snapshot(orgId, 'development');
      assert.equal(await deaf.recheck(), 0);
      assert.equal(await deaf.recheck(), 0);
      assert.equal(await deaf.snapshot(orgId, 'staging'), held, 'the same snapshot still serves');
    });

    test('a change it did not hear is found: streams get the events, evaluation the new state', async () => {
      await write('POST', '/v1/flags/staging', on('heard-late'));
      await deaf.recheck(); // catches up with what the tests before changed
      const heard: DeltaEvent[][] = [];
      const stop = await deaf.watch(
        orgId,
        'staging',
        () => {},
        (events) => heard.push(events),
      );
      try {
        assert.equal(await enabled('heard-late'), true);
        const etag = (await deaf.snapshot(orgId, 'staging')).etag;
        await write('PUT', '/v1/flags/staging/heard-late', on('heard-late', { enabled: false }));
        assert.equal(await enabled('heard-late'), true, 'stale: the message was lost');

        assert.equal(await deaf.recheck(), 1, 'only staging changed');
        assert.equal(await enabled('heard-late'), false);
        assert.notEqual((await deaf.snapshot(orgId, 'staging')).etag, etag);
        assert.deepEqual(
          heard
            .flat()
            .map((e) => e.type === 'feature-updated' && [e.type, e.feature.name, e.feature.enabled]),
          [['feature-updated', 'heard-late', false]],
        );
        assert.equal(await deaf.recheck(), 0, 'found once');

        await write('DELETE', '/v1/flags/staging/heard-late');
        assert.equal(await deaf.recheck(), 1);
        assert.deepEqual(heard.at(-1), [
          {
            type: 'feature-removed',
            eventId: (await deaf.snapshot(orgId, 'staging')).revision,
            featureName: 'heard-late',
          },
        ]);
      } finally {
        stop();
      }
    });

    test('a segment change refreshes every environment of the org it holds', async () => {
      const created = await write('POST', '/v1/segments', {
        name: 'tiers',
        constraints: [{ contextName: 'tier', operator: 'IN', values: ['gold'] }],
      });
      const id = created.json().id as number;
      for (const env of ['staging', 'development'])
        await write(
          'POST',
          `/v1/flags/${env}`,
          on('tiered', { strategies: [{ name: 'default', segments: [id] }] }),
        );
      await deaf.recheck(); // catches up with what the tests before changed
      await deaf.snapshot(orgId, 'staging');
      await deaf.snapshot(orgId, 'development');
      assert.equal(await deaf.recheck(), 0);
      await write('PUT', `/v1/segments/${id}`, {
        name: 'tiers',
        constraints: [{ contextName: 'tier', operator: 'IN', values: ['silver'] }],
      });
      assert.equal(await deaf.recheck(), 2);
      const gold = { properties: { tier: 'gold' } };
      for (const env of ['staging', 'development'])
        assert.equal((await deaf.evaluate(orgId, env, gold, ['tiered'])).data[0]?.enabled, false, env);
    });
  });
}
