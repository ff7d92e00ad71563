// A held change's summary says what the change does — a setting's new value, a flag's definition.
// Change views withhold it from a caller who may not read the change's target: until session 11
// a viewer denied `settings:read` on one setting (its GET and history answered 403) read its
// pending and applied values through `GET /v1/vault/changes` (a tester's finding).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { fourEyesTestApp, type VaultTestApp } from './test-support.ts';

const MARKER = (n: number) => `DENIED-VALUE-MARKER-${n}`;

interface ChangeView {
  id: string;
  summary: Record<string, unknown>;
  summary_withheld: boolean;
  target_id: string | null;
  result_id: string | null;
}

for (const { kind, skip } of STORES) {
  describe(`four-eyes: change views withhold what the caller may not read (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    let settingId: string;
    /** The applied creation, the pending update, and another setting's pending change. */
    const ids = { created: '', pending: '', other: '' };
    before(async () => {
      v = await fourEyesTestApp(kind);
      const put = async (key: string, value: string, ifMatch?: string) => {
        const res = await v.req('PUT', `/v1/settings/production/${key}`, {
          token: v.tokens.developer,
          body: ifMatch ? { value } : { value, value_type: 'string' },
          headers: ifMatch ? { 'if-match': ifMatch } : {},
        });
        assert.equal(res.statusCode, 202, res.body);
        return res.json().change_id as string;
      };
      ids.created = await put('guarded', MARKER(1));
      const approved = await v.req('POST', `/v1/vault/changes/${ids.created}/approve`, {
        token: v.tokens.manager,
      });
      assert.equal(approved.statusCode, 200, approved.body);
      settingId = approved.json().result_id;
      ids.pending = await put('guarded', MARKER(2), '"1"');
      ids.other = await put('open_to_all', 'visible-value');
      for (const who of [v.ids.viewer, v.ids.manager2]) {
        const deny = await v.req('POST', '/v1/authz/grants', {
          token: v.tokens.admin,
          body: {
            principal: who,
            permission: 'settings:read',
            resource_type: 'settings',
            resource_id: settingId,
            effect: 'deny',
          },
        });
        assert.equal(deny.statusCode, 201, deny.body);
      }
    });
    after(() => v?.close());

    const list = async (token: string, query = '') => {
      const res = await v.req('GET', `/v1/vault/changes${query}`, { token });
      assert.equal(res.statusCode, 200, res.body);
      return { body: res.body, data: res.json().data as ChangeView[] };
    };

    test('a viewer denied the setting sees its changes without their summaries', async () => {
      const direct = await v.req('GET', '/v1/settings/production/guarded', { token: v.tokens.viewer });
      assert.equal(direct.statusCode, 403, 'the setting itself is denied');
      for (const query of ['', '?status=pending', '?status=applied']) {
        const { body, data } = await list(v.tokens.viewer, query);
        assert.ok(!body.includes('DENIED-VALUE-MARKER'), `${query}: ${body}`);
        assert.ok(!body.includes('"guarded"'), `${query}: not even the key`);
        for (const id of [ids.created, ids.pending]) {
          const change = data.find((c) => c.id === id);
          if (query === '?status=applied' && id === ids.pending) continue;
          if (query === '?status=pending' && id === ids.created) continue;
          assert.ok(change, `${query}: the change is listed (its target id is opaque)`);
          assert.deepEqual(change.summary, {});
          assert.equal(change.summary_withheld, true);
        }
      }
      const open = (await list(v.tokens.viewer)).data.find((c) => c.id === ids.other);
      assert.equal(open?.summary.value, 'visible-value', 'a setting the viewer may read keeps its summary');
      assert.equal(open?.summary_withheld, false);
    });

    test('the applied creation is withheld by the id it created (its target was null)', async () => {
      const created = (await list(v.tokens.viewer, '?status=applied')).data.find((c) => c.id === ids.created);
      assert.equal(created?.target_id, null);
      assert.equal(created?.result_id, settingId);
      assert.equal(created?.summary_withheld, true);
    });

    test('a caller who may read it sees the values', async () => {
      const { data } = await list(v.tokens.manager);
      assert.equal(data.find((c) => c.id === ids.pending)?.summary.value, MARKER(2));
      assert.equal(data.find((c) => c.id === ids.created)?.summary.value, MARKER(1));
    });

    test("a decision's answer withholds it too", async () => {
      const rejected = await v.req('POST', `/v1/vault/changes/${ids.pending}/reject`, {
        token: v.tokens.manager2,
      });
      assert.equal(rejected.statusCode, 200, rejected.body);
      assert.ok(!rejected.body.includes('DENIED-VALUE-MARKER'), rejected.body);
      assert.equal(rejected.json().summary_withheld, true);
      assert.equal(rejected.json().status, 'rejected');
    });
  });
}
