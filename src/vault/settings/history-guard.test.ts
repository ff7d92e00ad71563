// Setting history is kept by the database itself: UPDATE (0003), DELETE and TRUNCATE (0013) are
// refused, except the cascade of the org's own deletion. Until migration 0013 `DELETE FROM
// setting_history` and `TRUNCATE setting_history` succeeded (a tester's finding, session 11).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';

for (const { kind, skip } of STORES) {
  describe(`setting history refuses DELETE and TRUNCATE (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(kind);
    });
    after(() => v?.close());

    const count = async (where = 'true', params: unknown[] = []) =>
      (
        await v.t.store.db.query<{ n: number }>(
          `select count(*)::int as n from setting_history where ${where}`,
          params,
        )
      )[0]?.n;

    /** A setting with two history rows in the org of `token`; returns its org id. */
    const settingWithHistory = async (token: string, key: string): Promise<string> => {
      const created = await v.req('PUT', `/v1/settings/development/${key}`, {
        token,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal(created.statusCode, 201, created.body);
      const updated = await v.req('PUT', `/v1/settings/development/${key}`, {
        token,
        body: { value: 2 },
        headers: { 'if-match': '"1"' },
      });
      assert.equal(updated.statusCode, 200, updated.body);
      const [row] = await v.t.store.db.query<{ org_id: string }>(
        'select org_id from settings where key = $1',
        [key],
      );
      assert.ok(row);
      return row.org_id;
    };

    test('DELETE of a history row, of a setting row (its cascade) and TRUNCATE are refused', async () => {
      const org = await settingWithHistory(v.tokens.developer, 'kept');
      const before = await count('org_id = $1', [org]);
      assert.equal(before, 2);
      await assert.rejects(
        v.t.store.db.query('delete from setting_history where version = 1'),
        /immutable: DELETE/,
      );
      await assert.rejects(v.t.store.db.query('delete from setting_history'), /immutable: DELETE/);
      await assert.rejects(
        v.t.store.db.query(`delete from settings where key = 'kept'`),
        /immutable: DELETE/,
        'deleting the setting row cascades to its history: refused while the org exists',
      );
      await assert.rejects(v.t.store.db.query('truncate setting_history'), /immutable: TRUNCATE/);
      await assert.rejects(v.t.store.db.query('truncate settings cascade'), /immutable: TRUNCATE/);
      await assert.rejects(
        v.t.store.db.query(`update setting_history set value = '99'::jsonb where version = 1`),
        /immutable: UPDATE/,
        'UPDATE stays refused',
      );
      assert.equal(await count('org_id = $1', [org]), before, 'nothing gone');
      const history = await v.req('GET', '/v1/settings/development/kept/history', { token: v.tokens.viewer });
      assert.equal(history.statusCode, 200, history.body);
      assert.equal(history.json().data.length, 2);
    });

    test("the org's own deletion takes its history with it; other orgs' history stays", async () => {
      const kept = await settingWithHistory(v.tokens.developer, 'stays');
      const gone = await settingWithHistory(v.tokens.other, 'goes_with_org');
      assert.notEqual(kept, gone);
      const keptBefore = await count('org_id = $1', [kept]);
      await v.t.store.db.query('delete from organizations where id = $1', [gone]);
      assert.equal(await count('org_id = $1', [gone]), 0);
      assert.equal(await count('org_id = $1', [kept]), keptBefore);
    });
  });
}
