// Concurrent writes without a version precondition. `If-Match: *` and a rollback without If-Match
// ask for no particular version: on PostgreSQL, where writes run side by side, four of them at once
// answered one 200 and three 412, because each expected the version it had read before taking the
// row lock. Each now applies on whatever version is latest when it holds the lock. (PGlite runs one
// transaction at a time, so the race never showed there; both stores run these tests.)
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sql } from 'drizzle-orm';
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
      // Creations without If-Match: one creates; the others find it created meanwhile (412), or
      // already there when they read it (428: updating needs If-Match).
      const creations = await Promise.all(range(4).map(() => put('born', { value: 1, value_type: 'int' })));
      const codes = creations.map((a) => a.statusCode);
      assert.equal(codes.filter((c) => c === 201).length, 1, String(codes));
      assert.ok(
        codes.every((c) => c === 201 || c === 412 || c === 428),
        String(codes),
      );
    });

    test('`*` on a setting deleted meanwhile is 412, not a re-creation', async () => {
      assert.equal((await put('gone', { value: 1, value_type: 'int' })).statusCode, 201);
      const del = await v.req('DELETE', '/v1/settings/staging/gone', {
        token: v.tokens.manager,
        headers: { 'if-match': '*' },
      });
      assert.equal(del.statusCode, 204, del.body);
      const res = await put('gone', { value: 2 }, '*');
      assert.equal(res.statusCode, 412);
      assert.equal(res.json().current_version, null);
      const rb = await rollback('gone', 1);
      assert.equal(rb.statusCode, 404);
    });

    test('a `*` write that waited for the lock is checked against the type and rules it now keeps', {
      skip: store.kind === 'pglite' && 'PGlite runs one transaction at a time: no write can wait',
    }, async () => {
      assert.equal((await put('typed', { value: 1, value_type: 'int' })).statusCode, 201);
      let pending: ReturnType<typeof put> | undefined;
      await v.t.store.db.db.transaction(async (tx) => {
        await tx.execute(sql`select 1 from settings where key = 'typed' for update`);
        // Read and validated against version 1 (an int), then waits for the row lock …
        pending = put('typed', { value: 2 }, '*');
        await untilAWriterWaits();
        // … while the setting becomes a string (version 2).
        await tx.execute(
          sql`update settings set value_type = 'string', value = '"s"'::jsonb, version = 2 where key = 'typed'`,
        );
      });
      const res = await (pending as ReturnType<typeof put>);
      assert.equal(res.statusCode, 400, res.body);
      assert.equal(res.json().code, 'validation_failed');
      assert.match(res.json().detail, /must be a string \(value_type string\)/);
      assert.equal(await versionOf('typed'), 2, 'nothing written');
    });

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
