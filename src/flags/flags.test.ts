import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { createFlagService } from './service.ts';

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

    test('a held flag change is checked again at approval as a direct write: segments, dependencies, names', async () => {
      const { req, tokens } = v;
      const approve = (id: string) =>
        req('POST', `/v1/vault/changes/${id}/approve`, { token: tokens.manager2, body: {} });
      const statusOf = async (id: string) =>
        (
          await v.t.store.db.query<{ status: string }>('select status from vault_changes where id = $1', [id])
        )[0]?.status;
      const segment = async (name: string) => {
        const res = await req('POST', '/v1/segments', {
          token: tokens.manager,
          body: { name, constraints: [{ contextName: 'role', operator: 'IN', values: ['beta'] }] },
        });
        assert.equal(res.statusCode, 201, res.body);
        return res.json().id as number;
      };
      // Made before four-eyes is on (segments are held too while it covers any environment).
      const gone = await segment('held-gone');
      const kept = await segment('held-kept');
      assert.equal(
        (await req('PUT', '/v1/vault/policy', { token: tokens.admin, body: { four_eyes: true } })).statusCode,
        200,
      );
      try {
        const held = async (method: 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown) => {
          const res = await req(method, url, { token: tokens.manager, body });
          assert.equal(res.statusCode, 202, res.body);
          return res.json().change_id as string;
        };
        const usesSegment = (name: string, id: number) => ({
          name,
          enabled: true,
          strategies: [{ name: 'default', segments: [id] }],
        });
        const create = await held('POST', '/v1/flags/production', usesSegment('held-seg', gone));
        assert.equal(
          (await approve(await held('POST', '/v1/flags/production', { name: 'held-base', enabled: true })))
            .statusCode,
          200,
        );
        const replace = await held('PUT', '/v1/flags/production/held-base', usesSegment('held-base', gone));

        // The reverse: a segment a pending change names is not deleted (held or not).
        const refused = await req('DELETE', `/v1/segments/${gone}`, { token: tokens.manager });
        assert.equal(refused.statusCode, 409, refused.body);
        assert.equal(refused.json().code, 'segment_in_use');
        assert.deepEqual(refused.json().pending_changes.sort(), [create, replace].sort());

        // It goes anyway (a deletion that raced the request): both approvals are refused as a
        // direct write would be, nothing applied, the changes failed.
        await v.t.store.db.query('delete from flag_segments where id = $1', [gone]);
        for (const id of [create, replace]) {
          const res = await approve(id);
          assert.equal(res.statusCode, 400, res.body);
          assert.equal(res.json().code, 'invalid_flag');
          assert.match(res.json().errors[0].path, /^body\.strategies\[0\]\.segments$/);
          assert.equal(await statusOf(id), 'failed');
        }
        assert.equal(
          (await req('GET', '/v1/flags/production/held-seg', { token: tokens.viewer })).statusCode,
          404,
        );
        const base = (await req('GET', '/v1/flags/production/held-base', { token: tokens.viewer })).json();
        assert.deepEqual([base.version, base.strategies], [1, []]);

        // Dependencies: the parent gained a parent meanwhile (one level), or is gone.
        const child = await held('POST', '/v1/flags/production', {
          name: 'held-child',
          enabled: true,
          dependencies: [{ feature: 'held-base' }],
        });
        assert.equal(
          (await approve(await held('POST', '/v1/flags/production', { name: 'held-top', enabled: true })))
            .statusCode,
          200,
        );
        const lifted = await held('PUT', '/v1/flags/production/held-base', {
          name: 'held-base',
          enabled: true,
          dependencies: [{ feature: 'held-top' }],
        });
        assert.equal((await approve(lifted)).statusCode, 200);
        const twoLevels = await approve(child);
        assert.equal(twoLevels.statusCode, 400, twoLevels.body);
        assert.equal(twoLevels.json().code, 'invalid_flag');
        // Names: two held creations of one name, the second fails with the direct write's 409.
        const first = await held('POST', '/v1/flags/production', usesSegment('held-twice', kept));
        const second = await held('POST', '/v1/flags/production', usesSegment('held-twice', kept));
        assert.equal((await approve(first)).statusCode, 200);
        const taken = await approve(second);
        assert.equal(taken.statusCode, 409, taken.body);
        assert.equal(taken.json().code, 'flag_exists');
        assert.equal(await statusOf(second), 'failed');
      } finally {
        await req('PUT', '/v1/vault/policy', { token: tokens.admin, body: { four_eyes: false } });
      }
    });

    test("concurrent edits making two flags each other's parent: one succeeds, the other 400, never both or a 500", {
      timeout: 120_000,
    }, async () => {
      const { req, tokens } = v;
      const put = (name: string, parent: string | null) =>
        req('PUT', `/v1/flags/development/${name}`, {
          token: tokens.manager,
          body: { name, enabled: true, ...(parent ? { dependencies: [{ feature: parent }] } : {}) },
        });
      for (const name of ['mutual-a', 'mutual-b']) {
        const res = await req('POST', '/v1/flags/development', {
          token: tokens.manager,
          body: { name, enabled: true },
        });
        assert.equal(res.statusCode, 201, res.body);
      }
      for (let round = 0; round < 40; round++) {
        const [a, b] = await Promise.all([put('mutual-a', 'mutual-b'), put('mutual-b', 'mutual-a')]);
        const statuses = [a.statusCode, b.statusCode].sort();
        assert.deepEqual(statuses, [200, 400], `round ${round}: ${a.body} ${b.body}`);
        const loser = a.statusCode === 400 ? a : b;
        assert.equal(loser.json().code, 'invalid_flag');
        const flags = await Promise.all(
          ['mutual-a', 'mutual-b'].map(async (n) =>
            (await req('GET', `/v1/flags/development/${n}`, { token: tokens.viewer })).json(),
          ),
        );
        assert.equal(
          flags.filter((f: { dependencies: unknown[] }) => f.dependencies.length > 0).length,
          1,
          'exactly one has a parent',
        );
        // Undo, parent first so the child's parent never has a parent.
        const child = flags.find((f: { dependencies: unknown[] }) => f.dependencies.length > 0) as {
          name: string;
        };
        assert.equal((await put(child.name, null)).statusCode, 200);
      }
      // Deleting a parent while a child is being given it is serialised the same way.
      for (let round = 0; round < 10; round++) {
        const name = `mutual-p${round}`;
        assert.equal(
          (
            await req('POST', '/v1/flags/development', {
              token: tokens.manager,
              body: { name, enabled: true },
            })
          ).statusCode,
          201,
        );
        const [del, dep] = await Promise.all([
          req('DELETE', `/v1/flags/development/${name}`, { token: tokens.manager }),
          put('mutual-a', name),
        ]);
        const pair = [del.statusCode, dep.statusCode].join('/');
        assert.ok(
          pair === '204/400' || pair === '400/200',
          `round ${round}: ${pair} ${del.body} ${dep.body}`,
        );
        if (dep.statusCode === 200) {
          assert.equal((await put('mutual-a', null)).statusCode, 200);
          assert.equal(
            (await req('DELETE', `/v1/flags/development/${name}`, { token: tokens.manager })).statusCode,
            204,
          );
        }
      }
    });

    test("a flag naming a segment and the segment's deletion, concurrently: never both (a dangling reference)", {
      timeout: 60_000,
    }, async () => {
      const { req, tokens } = v;
      for (let round = 0; round < 20; round++) {
        const seg = await req('POST', '/v1/segments', {
          token: tokens.manager,
          body: { name: `racing-${round}`, constraints: [] },
        });
        assert.equal(seg.statusCode, 201, seg.body);
        const id = seg.json().id as number;
        const [flag, del] = await Promise.all([
          req('POST', '/v1/flags/development', {
            token: tokens.manager,
            body: {
              name: `racing-${round}`,
              enabled: true,
              strategies: [{ name: 'default', segments: [id] }],
            },
          }),
          req('DELETE', `/v1/segments/${id}`, { token: tokens.manager }),
        ]);
        const pair = [flag.statusCode, del.statusCode].join('/');
        assert.ok(
          pair === '201/409' || pair === '400/204',
          `round ${round}: ${pair} ${flag.body} ${del.body}`,
        );
      }
    });

    test('a watch whose hydration fails leaves no listener behind', async () => {
      const { req, tokens } = v;
      const ctx = v.t.app.steward;
      // A second service on the same database and bus: it hears the first one's changes.
      const flags = createFlagService({
        db: ctx.db,
        audit: ctx.audit,
        tenancy: ctx.tenancy,
        bus: ctx.bus,
        clock: ctx.clock,
        authz: ctx.authz,
      });
      const orgId = (await req('GET', '/v1/me', { token: tokens.manager })).json().org_id as string;
      let heard = 0;
      await assert.rejects(
        flags.watch(
          orgId,
          'staging',
          () => {
            throw new Error('the stream went away');
          },
          () => {
            heard += 1;
          },
        ),
        /the stream went away/,
      );
      let live = 0;
      const stop = await flags.watch(
        orgId,
        'staging',
        () => {},
        () => {
          live += 1;
        },
      );
      const created = await req('POST', '/v1/flags/staging', {
        token: tokens.manager,
        body: rollout('watched-once', 10),
      });
      assert.equal(created.statusCode, 201, created.body);
      for (let i = 0; i < 200 && live === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(live, 1, 'the healthy watch hears the change');
      assert.equal(heard, 0, 'the failed watch hears nothing');
      stop();
      await flags.stop();
    });

    test("a grant on one flag's id: deny on flags:update/delete/read refuses that flag only; lists leave out unreadable flags", async () => {
      const { req, tokens, ids } = v;
      const ids2: Record<string, string> = {};
      for (const name of ['guarded', 'unguarded']) {
        const res = await req('POST', '/v1/flags/development', {
          token: tokens.manager,
          body: { name, enabled: true, strategies: [] },
        });
        assert.equal(res.statusCode, 201, res.body);
        ids2[name] = res.json().id;
      }
      const deny = async (principal: string, permission: string) => {
        const res = await req('POST', '/v1/authz/grants', {
          token: tokens.admin,
          body: { principal, permission, resource_type: 'flags', resource_id: ids2.guarded, effect: 'deny' },
        });
        assert.equal(res.statusCode, 201, res.body);
      };
      await deny(ids.manager, 'flags:update');
      await deny(ids.manager, 'flags:delete');
      await deny(ids.viewer, 'flags:read');
      const body = (name: string) => ({ name, enabled: false, strategies: [] });
      const put = await req('PUT', '/v1/flags/development/guarded', {
        token: tokens.manager,
        body: body('guarded'),
      });
      assert.equal(put.statusCode, 403, put.body);
      assert.equal(put.json().code, 'permission_denied');
      assert.equal(
        (await req('DELETE', '/v1/flags/development/guarded', { token: tokens.manager })).statusCode,
        403,
      );
      assert.equal(
        (
          await req('PUT', '/v1/flags/development/unguarded', {
            token: tokens.manager,
            body: body('unguarded'),
          })
        ).statusCode,
        200,
      );
      // The manager may still read it; the viewer may not, and does not see it listed.
      assert.equal(
        (await req('GET', '/v1/flags/development/guarded', { token: tokens.manager })).statusCode,
        200,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/guarded', { token: tokens.viewer })).statusCode,
        403,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/guarded/metrics', { token: tokens.viewer })).statusCode,
        403,
      );
      assert.equal(
        (await req('GET', '/v1/flags/development/unguarded', { token: tokens.viewer })).statusCode,
        200,
      );
      const names = async (token: string, limit = 100) => {
        const out: string[] = [];
        let cursor: string | null = null;
        do {
          const res = await req(
            'GET',
            `/v1/flags/development?limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`,
            {
              token,
            },
          );
          assert.equal(res.statusCode, 200, res.body);
          out.push(...res.json().data.map((f: { name: string }) => f.name));
          cursor = res.json().next_cursor;
        } while (cursor !== null);
        return out;
      };
      assert.ok((await names(tokens.manager)).includes('guarded'));
      const seen = await names(tokens.viewer);
      assert.ok(!seen.includes('guarded') && seen.includes('unguarded'), seen.join());
      // Pages of one: the cursor moves past a page whose only flag was left out.
      assert.deepEqual(await names(tokens.viewer, 1), seen);
      // The admin (superuser) passes deny grants.
      assert.equal(
        (await req('PUT', '/v1/flags/development/guarded', { token: tokens.admin, body: body('guarded') }))
          .statusCode,
        200,
      );
    });

    test('GET → PUT round trip: the read-only fields GET returns are accepted and ignored; unknown fields refused', async () => {
      const { req, tokens } = v;
      const created = await req('POST', '/v1/flags/development', {
        token: tokens.manager,
        body: {
          ...rollout('round-trip', 40),
          strategies: [
            { name: 'flexibleRollout', parameters: { rollout: '40', stickiness: 'userId' }, title: 't' },
            { name: 'userWithId', parameters: { userIds: 'a,b' }, disabled: true },
          ],
        },
      });
      assert.equal(created.statusCode, 201, created.body);
      const read = (await req('GET', '/v1/flags/development/round-trip', { token: tokens.manager })).json();
      const put = await req('PUT', '/v1/flags/development/round-trip', {
        token: tokens.manager,
        body: { ...read, description: 'changed', version: 99, id: 'flg_other', environment: 'staging' },
      });
      assert.equal(put.statusCode, 200, put.body);
      const after = put.json();
      assert.equal(after.id, read.id);
      assert.equal(after.environment, 'development');
      assert.equal(after.version, 2);
      assert.equal(after.description, 'changed');
      assert.deepEqual(after.strategies, read.strategies);
      assert.deepEqual(after.variants, read.variants);
      // The same body again is accepted unchanged (what a declarative tool does every run).
      const again = (await req('GET', '/v1/flags/development/round-trip', { token: tokens.manager })).json();
      assert.equal(
        (await req('PUT', '/v1/flags/development/round-trip', { token: tokens.manager, body: again }))
          .statusCode,
        200,
      );
      const unknown = await req('PUT', '/v1/flags/development/round-trip', {
        token: tokens.manager,
        body: { ...again, colour: 'red' },
      });
      assert.equal(unknown.statusCode, 400, unknown.body);
      const renamed = await req('PUT', '/v1/flags/development/round-trip', {
        token: tokens.manager,
        body: { ...again, name: 'other-name' },
      });
      assert.equal(renamed.statusCode, 400, renamed.body);
    });

    test('If-Match: a list matches on any strong tag; weak tags and "06" never match; * passes', async () => {
      const { req, tokens } = v;
      const body = { name: 'conditional', enabled: true, strategies: [] };
      assert.equal(
        (await req('POST', '/v1/flags/development', { token: tokens.manager, body })).statusCode,
        201,
      );
      const bump = () => req('PUT', '/v1/flags/development/conditional', { token: tokens.manager, body });
      for (let i = 0; i < 5; i++) assert.equal((await bump()).statusCode, 200);
      // Version 6 now.
      const put = (ifMatch: string) =>
        req('PUT', '/v1/flags/development/conditional', {
          token: tokens.manager,
          body,
          headers: { 'if-match': ifMatch },
        });
      for (const stale of ['W/"6"', '"06"', '"5", W/"6"', '"x"', '"5"']) {
        const res = await put(stale);
        assert.equal(res.statusCode, 412, `${stale}: ${res.body}`);
      }
      assert.equal((await put('garbage, "6')).statusCode, 400);
      // "6" in a list → 7; * → 8; "8" → 9.
      for (const ok of ['"1", "6"', '*', '"8"']) {
        const res = await put(ok);
        assert.equal(res.statusCode, 200, `${ok}: ${res.body}`);
      }
      // A bare canonical number, for curl users; DELETE reads the header alike.
      assert.equal((await put('9')).statusCode, 200);
      assert.equal(
        (
          await req('DELETE', '/v1/flags/development/conditional', {
            token: tokens.manager,
            headers: { 'if-match': 'W/"10"' },
          })
        ).statusCode,
        412,
      );
      assert.equal(
        (
          await req('DELETE', '/v1/flags/development/conditional', {
            token: tokens.manager,
            headers: { 'if-match': '"3", "10"' },
          })
        ).statusCode,
        204,
      );
    });

    test('evaluate: flags the environment does not have are left out of data and listed in missing', async () => {
      const { req, tokens } = v;
      assert.equal(
        (
          await req('POST', '/v1/flags/development', {
            token: tokens.manager,
            body: { name: 'real-off', enabled: false, strategies: [] },
          })
        ).statusCode,
        201,
      );
      const res = await req('POST', '/v1/flags/development/evaluate', {
        token: tokens.viewer,
        body: { flags: ['real-off', 'nonexistent', 'real-off'] },
      });
      assert.equal(res.statusCode, 200, res.body);
      const out = res.json();
      assert.deepEqual(
        out.data.map((e: { name: string; enabled: boolean }) => [e.name, e.enabled]),
        [['real-off', false]],
      );
      assert.deepEqual(out.missing, ['nonexistent']);
      const all = (
        await req('POST', '/v1/flags/development/evaluate', { token: tokens.viewer, body: {} })
      ).json();
      assert.deepEqual(all.missing, []);
      assert.ok(all.data.some((e: { name: string }) => e.name === 'real-off'));
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
