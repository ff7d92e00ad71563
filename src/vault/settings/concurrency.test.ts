// Concurrent writes without a version precondition. `If-Match: *` and a rollback without If-Match
// ask for no particular version: on PostgreSQL, where writes run side by side, four of them at once
// answered one 200 and three 412, because each expected the version it had read before taking the
// row lock. Each now applies on whatever version is latest when it holds the lock. (PGlite runs one
// transaction at a time, so the race never showed there; both stores run these tests.)
// Creations without If-Match racing each other: the losers answered 412 or 428 depending on when
// they read; each is now 428 (the key exists and they sent no If-Match), wherever it finds the key.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type SQL, sql } from 'drizzle-orm';
import { STORES } from '../../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';

const WRITERS = 8;

for (const store of STORES) {
  describe(`settings: concurrent writes (${store.kind})`, { skip: store.skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(store.kind);
    });
    after(() => v?.close());

    const put = (key: string, body: unknown, ifMatch?: string) =>
      v.req('PUT', `/v1/settings/staging/${key}`, {
        token: v.tokens.developer,
        body,
        headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
      });
    const rollback = (key: string, version: number, ifMatch?: string) =>
      v.req('POST', `/v1/settings/staging/${key}/rollback`, {
        token: v.tokens.developer,
        body: { version },
        headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
      });
    const remove = (key: string, ifMatch: string) =>
      v.req('DELETE', `/v1/settings/staging/${key}`, {
        token: v.tokens.manager,
        headers: { 'if-match': ifMatch },
      });
    const versionOf = async (key: string) =>
      (await v.req('GET', `/v1/settings/staging/${key}`, { token: v.tokens.viewer })).json().version;
    const range = (n: number) => Array.from({ length: n }, (_, i) => i);

    test(`${WRITERS} PUTs with If-Match: * at once: every one applies, each on the latest version`, async () => {
      assert.equal((await put('star', { value: 0, value_type: 'int' })).statusCode, 201);
      const answers = await Promise.all(range(WRITERS).map((i) => put('star', { value: i + 1 }, '*')));
      assert.deepEqual(
        answers.map((a) => a.statusCode),
        Array(WRITERS).fill(200),
        answers.map((a) => a.body).join('\n'),
      );
      const versions = answers.map((a) => a.json().version).sort((a: number, b: number) => a - b);
      assert.deepEqual(
        versions,
        range(WRITERS).map((i) => i + 2),
      );
      assert.equal(await versionOf('star'), WRITERS + 1);
    });

    test(`${WRITERS} rollbacks without If-Match at once: every one applies`, async () => {
      assert.equal((await put('rb', { value: 'first', value_type: 'string' })).statusCode, 201);
      assert.equal((await put('rb', { value: 'second' }, '"1"')).statusCode, 200);
      const answers = await Promise.all(range(WRITERS).map(() => rollback('rb', 1)));
      assert.deepEqual(
        answers.map((a) => a.statusCode),
        Array(WRITERS).fill(200),
        answers.map((a) => a.body).join('\n'),
      );
      assert.ok(answers.every((a) => a.json().value === 'first'));
      assert.equal(await versionOf('rb'), WRITERS + 2);
      const withStar = await Promise.all(range(WRITERS).map(() => rollback('rb', 2, '*')));
      assert.ok(withStar.every((a) => a.statusCode === 200));
    });

    test('a version precondition still conflicts: of writers naming the same version, one wins', async () => {
      assert.equal((await put('named', { value: 0, value_type: 'int' })).statusCode, 201);
      const answers = await Promise.all(range(4).map((i) => put('named', { value: i }, '"1"')));
      assert.deepEqual(answers.map((a) => a.statusCode).sort(), [200, 412, 412, 412]);
      const conflict = answers.find((a) => a.statusCode === 412);
      assert.equal(conflict?.json().code, 'version_conflict');
      assert.equal(conflict?.json().current_version, 2);
      const rollbacks = await Promise.all(range(4).map(() => rollback('named', 1, '"2"')));
      assert.deepEqual(rollbacks.map((a) => a.statusCode).sort(), [200, 412, 412, 412]);
      // If-Match naming several versions matches the locked row if any is its version.
      const listed = await Promise.all(range(3).map(() => put('named', { value: 9 }, '"3", "4", "5"')));
      assert.deepEqual(
        listed.map((a) => a.statusCode),
        [200, 200, 200],
      );
    });

    test('creations without If-Match at once: one 201, every other one 428, however they interleave', async () => {
      const createAtOnce = async (version: number) => {
        const answers = await Promise.all(
          range(WRITERS).map((i) => put('born', { value: i, value_type: 'int' })),
        );
        assert.deepEqual(
          answers.map((a) => a.statusCode).sort(),
          [201, ...Array(WRITERS - 1).fill(428)],
          answers.map((a) => a.body).join('\n'),
        );
        for (const lost of answers.filter((a) => a.statusCode === 428)) {
          assert.equal(lost.json().code, 'precondition_required');
          assert.equal(lost.json().current_version, version);
        }
      };
      await createAtOnce(1);
      // A deleted key is absent: re-creations race the same way.
      assert.equal((await remove('born', '"1"')).statusCode, 204);
      await createAtOnce(3);
    });

    // PGlite runs one transaction at a time: no write can wait on another's lock. These are
    // registered on PostgreSQL only (not skipped on PGlite: nothing is left untested there).
    const onPostgres = (name: string, run: () => Promise<void>) => {
      if (store.kind === 'postgres') test(name, run);
    };

    onPostgres('a creation whose insert waited on another creation of the key is 428, not 412', async () => {
      assert.equal((await put('template', { value: 1, value_type: 'int' })).statusCode, 201);
      const res = await writeWhileHeld(
        // Another creation of `raced`, not yet committed: invisible to the PUT's reads, so it
        // inserts too, and waits on the unique index until this commits.
        sql`insert into settings (id, org_id, environment_id, key, value_type, value, version)
            select 'stg_raced', org_id, environment_id, 'raced', value_type, value, 1
              from settings where key = 'template'`,
        () => put('raced', { value: 2, value_type: 'int' }),
      );
      assert.equal(res.statusCode, 428, res.body);
      assert.equal(res.json().code, 'precondition_required');
      assert.equal(res.json().current_version, 1);
    });

    onPostgres(
      'a re-creation that waited for the lock while the key was re-created is 428, not 412',
      async () => {
        assert.equal((await put('revived', { value: 1, value_type: 'int' })).statusCode, 201);
        assert.equal((await remove('revived', '"1"')).statusCode, 204);
        const res = await writeWhileHeld(
          sql`select 1 from settings where key = 'revived' for update`,
          // Read deleted (a creation), then waits for the row lock …
          () => put('revived', { value: 2, value_type: 'int' }),
          // … while another request re-creates the key (version 3).
          sql`update settings set deleted_at = null, version = 3 where key = 'revived'`,
        );
        assert.equal(res.statusCode, 428, res.body);
        assert.equal(res.json().current_version, 3);
        assert.equal(await versionOf('revived'), 3, 'nothing written');
      },
    );

    test('`*` on a setting deleted meanwhile is 412, not a re-creation', async () => {
      assert.equal((await put('gone', { value: 1, value_type: 'int' })).statusCode, 201);
      const del = await remove('gone', '*');
      assert.equal(del.statusCode, 204, del.body);
      const res = await put('gone', { value: 2 }, '*');
      assert.equal(res.statusCode, 412);
      assert.equal(res.json().current_version, null);
      const rb = await rollback('gone', 1);
      assert.equal(rb.statusCode, 404);
    });

    onPostgres(
      'a `*` write that waited for the lock is checked against the type and rules it now keeps',
      async () => {
        assert.equal((await put('typed', { value: 1, value_type: 'int' })).statusCode, 201);
        const res = await writeWhileHeld(
          sql`select 1 from settings where key = 'typed' for update`,
          // Read and validated against version 1 (an int), then waits for the row lock …
          () => put('typed', { value: 2 }, '*'),
          // … while the setting becomes a string (version 2).
          sql`update settings set value_type = 'string', value = '"s"'::jsonb, version = 2 where key = 'typed'`,
        );
        assert.equal(res.statusCode, 400, res.body);
        assert.equal(res.json().code, 'validation_failed');
        assert.match(res.json().detail, /must be a string \(value_type string\)/);
        assert.equal(await versionOf('typed'), 2, 'nothing written');
      },
    );

    /**
     * `write`'s answer when it ran while another transaction held what `hold` takes: started once
     * `hold` ran, it waits on its locks; `meanwhile` runs in that transaction before it commits.
     */
    async function writeWhileHeld(hold: SQL, write: () => ReturnType<typeof put>, meanwhile?: SQL) {
      let pending: ReturnType<typeof put> | undefined;
      await v.t.store.db.db.transaction(async (tx) => {
        await tx.execute(hold);
        pending = write();
        await untilAWriterWaits();
        if (meanwhile) await tx.execute(meanwhile);
      });
      return pending as ReturnType<typeof put>;
    }

    async function untilAWriterWaits(): Promise<void> {
      for (let i = 0; i < 500; i++) {
        const [row] = await v.t.store.db.query<{ n: number }>(
          `select count(*)::int as n from pg_stat_activity
            where datname = current_database() and wait_event_type = 'Lock'`,
        );
        if ((row?.n ?? 0) > 0) return;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      throw new Error('the write never waited for the row lock');
    }
  });
}
