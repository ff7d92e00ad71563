import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { openTestStore, type TestStore } from '../../test/helpers/stores.ts';
import { startEmbeddedMaintenance, vacuumAll } from './maintenance.ts';

describe('embedded maintenance (PGlite has no autovacuum)', () => {
  let store: TestStore;
  before(async () => {
    store = await openTestStore('pglite');
    await store.db.query('create table churn (id int primary key, h text unique)');
    await store.db.query('insert into churn select g, md5(g::text) from generate_series(1, 2000) g');
  });
  after(() => store.dispose());

  const size = async () =>
    Number(
      (await store.db.query<{ bytes: string | number }>("select pg_total_relation_size('churn') as bytes"))[0]
        ?.bytes,
    );
  const churn = async (rounds: number, tag: string) => {
    for (let i = 0; i < rounds; i++) await store.db.query(`update churn set h = md5(h || '${tag}${i}')`);
  };

  test('without a pass, updated rows pile up; after one, their space is reused', async () => {
    const start = await size();
    await churn(10, 'a');
    const bloated = await size();
    assert.ok(bloated > start * 5, `10 full updates: ${start} → ${bloated} bytes (nothing reclaims them)`);

    const pass = await vacuumAll(store.db);
    assert.ok(pass.tables >= 2, `every table, Steward's and this one: ${pass.tables}`);
    assert.ok(pass.slowest !== null && pass.slowest.ms >= 0);
    const [stats] = await store.db.query<{ vacuumed: boolean; analyzed: boolean }>(
      "select last_vacuum is not null as vacuumed, last_analyze is not null as analyzed from pg_stat_user_tables where relname = 'churn'",
    );
    assert.deepEqual(stats, { vacuumed: true, analyzed: true });

    await churn(5, 'b');
    const after = await size();
    assert.ok(after <= bloated * 1.1, `5 more full updates reuse the space: ${bloated} → ${after} bytes`);
  });

  test('analyses a table when its size moved, was never analysed, or not for a day', async () => {
    const memory = new Map<string, number>();
    await store.db.query('create table grows (id int primary key)');
    const first = await vacuumAll(store.db, memory);
    assert.ok(first.analyzed.includes('grows'), 'never analysed');
    const quiet = await vacuumAll(store.db, memory);
    assert.deepEqual(quiet.analyzed, [], 'nothing moved: vacuum only');
    await store.db.query('insert into grows select g from generate_series(1, 40) g');
    assert.ok(!(await vacuumAll(store.db, memory)).analyzed.includes('grows'), '40 rows: under 50 + 10 %');
    await store.db.query('insert into grows select g from generate_series(41, 500) g');
    assert.ok((await vacuumAll(store.db, memory)).analyzed.includes('grows'), '500 rows: over the threshold');
    const tomorrow = Date.now() + 86_400_000 + 60_000;
    const stale = await vacuumAll(store.db, memory, tomorrow);
    assert.ok(
      stale.analyzed.includes('grows') && stale.analyzed.includes('churn'),
      'a day later: all of them',
    );
    // A new process (empty memory) takes the current estimates as its baseline.
    assert.deepEqual((await vacuumAll(store.db, new Map())).analyzed, []);
  });

  test('the timer runs passes on PGlite, and stops cleanly', async () => {
    let passes = 0;
    const stop = startEmbeddedMaintenance({
      db: store.db,
      intervalMs: 20,
      onPass: () => {
        passes++;
      },
      onError: (error) => assert.fail(String(error)),
    });
    while (passes < 2) await new Promise((resolve) => setTimeout(resolve, 10));
    await stop();
    const stopped = passes;
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.equal(passes, stopped, 'no pass after stop');
  });

  test('does nothing on PostgreSQL or with an interval of 0', async () => {
    let passes = 0;
    const count = () => {
      passes++;
    };
    const onPostgres = startEmbeddedMaintenance({
      db: { ...store.db, kind: 'postgres' },
      intervalMs: 5,
      onPass: count,
      onError: count,
    });
    const off = startEmbeddedMaintenance({ db: store.db, intervalMs: 0, onPass: count, onError: count });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await onPostgres();
    await off();
    assert.equal(passes, 0);
  });
});
