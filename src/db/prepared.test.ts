import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { prepared, runPrepared } from './prepared.ts';

const INSERT = prepared(
  'test_probe_insert',
  'insert into prepared_probe (id, at, flag, doc, n) values ($1, $2, $3, $4, $5) returning id, at, flag, doc, n',
);
const BY_ID = prepared('test_probe_by_id', 'select id, at, flag, doc, n from prepared_probe where id = $1');
const FAIL = prepared('test_probe_fail', 'select 1 / $1::int as x');

for (const { kind, skip } of STORES) {
  describe(`prepared statements (${kind})`, { skip }, () => {
    let store: TestStore;
    before(async () => {
      store = await openTestStore(kind);
      await store.db.query(
        'create table prepared_probe (id text primary key, at timestamptz not null, flag boolean not null, doc jsonb, n bigint)',
      );
    });
    after(() => store.dispose());

    test('typed parameters in, typed rows out, the same on every call', async () => {
      const at = new Date('2026-11-22T10:00:00.123Z');
      const doc = { nested: { list: [1, 'two', null], quote: 'it\'s "here"' } };
      for (const id of ['a', 'b']) {
        const [row] = await runPrepared(store.db.db, INSERT, [id, at, id === 'a', doc, 9_007_199_254]);
        assert.equal(row?.id, id);
        assert.deepEqual(row?.at, at);
        assert.equal(row?.flag, id === 'a');
        assert.deepEqual(row?.doc, doc);
      }
      const [b] = await runPrepared<{ flag: boolean; n: unknown }>(store.db.db, BY_ID, ['b']);
      assert.equal(b?.flag, false);
      assert.equal(Number(b?.n), 9_007_199_254);
      assert.deepEqual(await runPrepared(store.db.db, BY_ID, ['missing']), []);
      assert.deepEqual(await runPrepared(store.db.db, BY_ID, [null]), [], 'null binds as NULL');
    });

    test('inside a transaction: part of it, rolled back with it', async () => {
      await assert.rejects(
        store.db.db.transaction(async (tx) => {
          await runPrepared(tx, INSERT, ['in-tx', new Date(), true, null, null]);
          assert.equal((await runPrepared(tx, BY_ID, ['in-tx'])).length, 1, 'visible inside');
          throw new Error('roll back');
        }),
        /roll back/,
      );
      assert.deepEqual(await runPrepared(store.db.db, BY_ID, ['in-tx']), [], 'gone with the rollback');
      await store.db.db.transaction(async (tx) => {
        await runPrepared(tx, INSERT, ['kept', new Date(), true, null, null]);
      });
      assert.equal((await store.db.query('select id from prepared_probe where id = $1', ['kept'])).length, 1);
    });

    test('concurrent calls outside a transaction never land inside another one', async () => {
      let release: () => void = () => {};
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      const tx = store.db.db.transaction(async (t) => {
        await runPrepared(t, INSERT, ['held', new Date(), true, null, null]);
        await held;
        throw new Error('abandon');
      });
      // Issued while the transaction is open: it must wait for it, not join it.
      const outside = runPrepared(store.db.db, INSERT, ['outside', new Date(), false, null, null]);
      await new Promise((resolve) => setTimeout(resolve, 20));
      release();
      await assert.rejects(tx, /abandon/);
      await outside;
      assert.deepEqual(await runPrepared(store.db.db, BY_ID, ['held']), []);
      assert.equal((await runPrepared(store.db.db, BY_ID, ['outside'])).length, 1);
    });

    test('a failing call reports the database error and leaves the statement usable', async () => {
      await assert.rejects(runPrepared(store.db.db, FAIL, [0]), /division by zero/);
      assert.deepEqual(await runPrepared(store.db.db, FAIL, [1]), [{ x: 1 }]);
      await assert.rejects(runPrepared(store.db.db, FAIL, ['not a number']), /invalid input syntax/);
      assert.deepEqual(await runPrepared(store.db.db, FAIL, [2]), [{ x: 0 }]);
    });

    test('a name declared twice is refused at once', () => {
      assert.throws(() => prepared('test_probe_by_id', 'select 1'), /declared twice/);
    });
  });
}
