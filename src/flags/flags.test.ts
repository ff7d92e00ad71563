import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

const rollout = (name: string, pct: number) => ({
  name,
  description: 'gradual',
  enabled: true,
  strategies: [{ name: 'flexibleRollout', parameters: { rollout: String(pct), stickiness: 'userId' } }],
  variants: [
    { name: 'blue', weight: 500, stickiness: 'userId', payload: { type: 'string', value: 'b' } },
    { name: 'green', weight: 500, stickiness: 'userId', payload: { type: 'string', value: 'g' } },
  ],
});

for (const { kind, skip } of STORES) {
  describe(`flags (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(kind);
    });
    after(() => v.close());

    test('create, get, list with cursor, replace, delete; audited with before/after', async () => {
      const { req, tokens } = v;
      const created = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: rollout('checkout', 50),
      });
      assert.equal(created.statusCode, 201, created.body);
      const flag = created.json();
      assert.match(flag.id, /^flg_/);
      assert.equal(flag.version, 1);
      // The service stores a groupId (Unleash's UI uses the flag name).
      assert.equal(flag.strategies[0].parameters.groupId, 'checkout');
      assert.equal(
        (await req('POST', '/v1/flags/development', { token: tokens.manager, body: rollout('checkout', 5) }))
          .statusCode,
        409,
      );
      for (const n of ['a-one', 'b-two']) {
        assert.equal(
          (
            await req('POST', '/v1/flags/development', {
              token: tokens.manager,
              body: { name: n, enabled: false, strategies: [] },
            })
          ).statusCode,
          201,
        );
      }
      const page1 = (await req('GET', '/v1/flags/development?limit=2', { token: tokens.viewer })).json();
      assert.deepEqual(
        page1.data.map((f: { name: string }) => f.name),
        ['a-one', 'b-two'],
      );
      const page2 = (
        await req('GET', `/v1/flags/development?limit=2&cursor=${page1.next_cursor}`, {
          token: tokens.viewer,
        })
      ).json();
      assert.deepEqual(
        page2.data.map((f: { name: string }) => f.name),
        ['checkout'],
      );
      assert.equal(page2.next_cursor, null);

      const got = await req('GET', '/v1/flags/development/checkout', { token: tokens.viewer });
      assert.equal(got.statusCode, 200);
      assert.equal(got.headers.etag, '"1"');
      const replaced = await req('PUT', '/v1/flags/development/checkout', {
        token: tokens.manager,
        headers: { 'if-match': '"1"' },
        body: { ...rollout('checkout', 100), enabled: false },
      });
      assert.equal(replaced.statusCode, 200, replaced.body);
      assert.equal(replaced.json().version, 2);
      const stale = await req('PUT', '/v1/flags/development/checkout', {
        token: tokens.manager,
        headers: { 'if-match': '"1"' },
        body: rollout('checkout', 10),
      });
      assert.equal(stale.statusCode, 412);
      assert.equal(
        (await req('DELETE', '/v1/flags/development/a-one', { token: tokens.manager })).statusCode,
        204,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/a-one', { token: tokens.viewer })).statusCode,
        404,
      );

      const rows = (await v.t.app.steward.audit.list(v.t.orgId, {}, { limit: 200 })) as unknown as {
        action: string;
        changes?: { before?: { enabled?: boolean }; after?: { enabled?: boolean } };
      }[];
      const updated = rows.find((e) => e.action === 'flag.updated');
      assert.equal(updated?.changes?.before?.enabled, true);
      assert.equal(updated?.changes?.after?.enabled, false);
      assert.ok(rows.some((e) => e.action === 'flag.deleted'));
    });

    test('validation: strict bodies, segments must exist, dependencies, permissions, other org 404', async () => {
      const { req, tokens } = v;
      const bad = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: { name: 'x', enabled: true, strategies: [], extra: 1 },
      });
      assert.equal(bad.statusCode, 400);
      const badName = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: { name: 'has space', enabled: true },
      });
      assert.equal(badName.statusCode, 400);
      const seg = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: { name: 'segged', enabled: true, strategies: [{ name: 'default', segments: [999999] }] },
      });
      assert.equal(seg.statusCode, 400);
      assert.equal(seg.json().code, 'invalid_flag');
      const dep = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: { name: 'child', enabled: true, strategies: [], dependencies: [{ feature: 'nope' }] },
      });
      assert.equal(dep.statusCode, 400);
      assert.equal(
        (
          await req('POST', '/v1/flags/development', {
            token: tokens.viewer,
            body: { name: 'v', enabled: true },
          })
        ).statusCode,
        403,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/b-two', { token: tokens.other })).statusCode,
        404,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development', { token: tokens.other })).json().data.length,
        0,
      );
      assert.equal((await req('GET', '/v1/flags/development')).statusCode, 401);
      assert.equal((await req('GET', '/v1/flags/nowhere', { token: tokens.viewer })).statusCode, 404);
    });

    test('segments CRUD, used by a strategy, evaluate from memory', async () => {
      const { req, tokens } = v;
      const s = await req('POST', '/v1/segments', {
        token: tokens.manager,
        body: {
          name: 'beta-testers',
          constraints: [{ contextName: 'email', operator: 'STR_ENDS_WITH', values: ['@beta.test'] }],
        },
      });
      assert.equal(s.statusCode, 201, s.body);
      const id = s.json().id as number;
      assert.equal((await req('GET', `/v1/segments/${id}`, { token: tokens.other })).statusCode, 404);
      const f = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: { name: 'beta', enabled: true, strategies: [{ name: 'default', segments: [id] }] },
      });
      assert.equal(f.statusCode, 201, f.body);
      const evaluate = async (context: Record<string, unknown>) =>
        (
          await req('POST', '/v1/flags/development/evaluate', { token: tokens.viewer, body: { context } })
        ).json().data as {
          name: string;
          enabled: boolean;
          variant: { name: string };
        }[];
      assert.equal(
        (await evaluate({ properties: { email: 'a@beta.test' } })).find((e) => e.name === 'beta')?.enabled,
        true,
      );
      assert.equal(
        (await evaluate({ properties: { email: 'a@else.test' } })).find((e) => e.name === 'beta')?.enabled,
        false,
      );
      assert.equal((await req('DELETE', `/v1/segments/${id}`, { token: tokens.manager })).statusCode, 409);
      // A segment change reaches compiled engines at once.
      const put = await req('PUT', `/v1/segments/${id}`, {
        token: tokens.manager,
        body: {
          name: 'beta-testers',
          constraints: [{ contextName: 'email', operator: 'STR_ENDS_WITH', values: ['@else.test'] }],
        },
      });
      assert.equal(put.statusCode, 200);
      assert.equal(
        (await evaluate({ properties: { email: 'a@else.test' } })).find((e) => e.name === 'beta')?.enabled,
        true,
      );

      // Warm evaluation does not query the database.
      await evaluate({ userId: 'u1' });
      const db = v.t.app.steward.db;
      let queries = 0;
      const pool = (db as unknown as { db: { $client: { query: (...a: unknown[]) => unknown } } }).db.$client;
      const original = pool.query.bind(pool);
      // Other domains poll in the background (sessions, the audit sequencer): count ours only.
      pool.query = (...a: unknown[]) => {
        const sql = typeof a[0] === 'string' ? a[0] : JSON.stringify(a[0]);
        if (/feature_flags|flag_segments|"environments"/.test(sql)) queries++;
        return original(...a);
      };
      try {
        // Sanity: a cold engine (after a change) is counted…
        await req('POST', '/v1/flags/development', {
          token: tokens.manager,
          body: { name: 'cold', enabled: true },
        });
        await evaluate({ userId: 'u0' });
        assert.ok(queries > 0);
        queries = 0;
        // …a warm one is not.
        for (let i = 0; i < 5; i++) await evaluate({ userId: `u${i}` });
      } finally {
        pool.query = original;
      }
      assert.equal(queries, 0);
    });

    test('four-eyes holds production changes; another person approves', async () => {
      const { req, tokens } = v;
      assert.equal(
        (await req('PUT', '/v1/vault/policy', { token: tokens.admin, body: { four_eyes: true } })).statusCode,
        200,
      );
      const held = await req('POST', '/v1/flags/production', {
        token: tokens.manager,
        body: rollout('prod-flag', 30),
      });
      assert.equal(held.statusCode, 202, held.body);
      const changeId = held.json().change_id;
      assert.equal(
        (await req('GET', '/v1/flags/production/prod-flag', { token: tokens.viewer })).statusCode,
        404,
      );
      assert.equal(
        (await req('POST', `/v1/vault/changes/${changeId}/approve`, { token: tokens.manager, body: {} }))
          .statusCode,
        403,
      );
      const ok = await req('POST', `/v1/vault/changes/${changeId}/approve`, {
        token: tokens.manager2,
        body: {},
      });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().status, 'applied');
      const flag = (await req('GET', '/v1/flags/production/prod-flag', { token: tokens.viewer })).json();
      assert.equal(flag.created_by, v.ids.manager);
      // Replace and delete are held too; development is not.
      const put = await req('PUT', '/v1/flags/production/prod-flag', {
        token: tokens.manager,
        body: { ...rollout('prod-flag', 30), enabled: false },
      });
      assert.equal(put.statusCode, 202);
      assert.equal(
        (
          await req('POST', `/v1/vault/changes/${put.json().change_id}/approve`, {
            token: tokens.manager2,
            body: {},
          })
        ).json().status,
        'applied',
      );
      assert.equal(
        (await req('GET', '/v1/flags/production/prod-flag', { token: tokens.viewer })).json().enabled,
        false,
      );
      const del = await req('DELETE', '/v1/flags/production/prod-flag', { token: tokens.manager });
      assert.equal(del.statusCode, 202);
      assert.equal(
        (
          await req('POST', `/v1/vault/changes/${del.json().change_id}/approve`, {
            token: tokens.manager2,
            body: {},
          })
        ).json().status,
        'applied',
      );
      assert.equal(
        (await req('GET', '/v1/flags/production/prod-flag', { token: tokens.viewer })).statusCode,
        404,
      );
      assert.equal(
        (await req('POST', '/v1/flags/development', { token: tokens.manager, body: rollout('dev-free', 30) }))
          .statusCode,
        201,
      );
      await req('PUT', '/v1/vault/policy', { token: tokens.admin, body: { four_eyes: false } });
    });

    test('event stream: hydration, change events, closes on shutdown', async () => {
      const { req, tokens } = v;
      const address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
      const controller = new AbortController();
      const res = await fetch(`${address}/v1/flags/staging/stream`, {
        headers: { authorization: `Bearer ${tokens.viewer}` },
        signal: controller.signal,
      });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const decoder = new TextDecoder();
      let text = '';
      const until = async (pattern: RegExp) => {
        while (!pattern.test(text)) {
          const { value, done } = await reader.read();
          if (done) return false;
          text += decoder.decode(value, { stream: true });
        }
        return true;
      };
      assert.ok(await until(/event: unleash-connected\ndata: .*"hydration"/));
      assert.equal(
        (await req('POST', '/v1/flags/staging', { token: tokens.manager, body: rollout('streamed', 20) }))
          .statusCode,
        201,
      );
      assert.ok(await until(/event: unleash-updated\n[\s\S]*"feature-updated"[\s\S]*"streamed"/));
      assert.equal(
        (await req('DELETE', '/v1/flags/staging/streamed', { token: tokens.manager })).statusCode,
        204,
      );
      assert.ok(await until(/"feature-removed","eventId":\d+,"featureName":"streamed"/));
      const closing = v.t.app.close();
      // The server ends the stream itself: the reader sees the end, shutdown does not hang.
      while (!(await reader.read()).done) {}
      await closing;
    });
  });
}
