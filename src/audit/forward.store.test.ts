// Reading the trail forward by sequence (`after_seq`), as a log forwarder (SIEM) does: every event
// exactly once, even when transactions commit out of id order. Paging newest first until the newest
// id already seen can miss an event committed late: its id (taken when it was recorded) sorts below
// one already read.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { installTestPrincipals, type TestApp, testApp } from '../../test/helpers/app.ts';
import { STORES } from '../../test/helpers/stores.ts';
import type { Principal } from '../http/principal.ts';
import type { AuditEventInput } from './service.ts';

interface EventView {
  id: string;
  sequence: number | null;
}

for (const { kind, skip } of STORES) {
  describe(`reading the audit trail forward by sequence (${kind})`, { skip }, () => {
    let t: TestApp;
    let orgId: string;

    before(async () => {
      t = await testApp(kind);
      orgId = (await t.app.steward.tenancy.createOrg({ slug: 'fwd', name: 'Forward' })).id;
      const admin: Principal = {
        orgId,
        kind: 'user',
        id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA',
        name: 'Ada',
        roles: [],
        scopes: null,
        superuser: true,
      };
      installTestPrincipals(t.app, { admin });
    });
    after(() => t.close());

    const get = (url: string) =>
      t.app.inject({ method: 'GET', url, headers: { 'x-test-principal': 'admin' } });
    const audit = () => t.app.steward.audit;
    const event = (i: number): AuditEventInput => ({
      orgId,
      actor: { type: 'system', name: 'writer' },
      action: 'setting.changed',
      details: { i },
    });
    /** Records `input` in a transaction of its own, committing once `hold` resolves. */
    const write = (input: AuditEventInput | AuditEventInput[], hold: Promise<unknown> = Promise.resolve()) =>
      t.app.steward.db.db.transaction(async (tx) => {
        await audit().record(tx, input);
        await hold;
      });
    /**
     * Records `input` in a transaction held open until `release()`; resolves once it is recorded
     * (its id drawn), so what is written next has a later id but commits first.
     */
    const writeHeld = async (input: AuditEventInput) => {
      let release = () => {};
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      let recorded = () => {};
      const isRecorded = new Promise<void>((resolve) => {
        recorded = resolve;
      });
      const done = t.app.steward.db.db.transaction(async (tx) => {
        await audit().record(tx, input);
        recorded();
        await held;
      });
      await Promise.race([isRecorded, done]);
      return { release, done };
    };
    const allIds = async () =>
      (await t.store.db.query<{ id: string }>('select id from audit_events where org_id = $1', [orgId]))
        .map((r) => r.id)
        .sort();

    /** A forwarder: reads by after_seq, page by page, from where it stopped. */
    function forwarder(limit: number) {
      let afterSeq = 0;
      const seen: EventView[] = [];
      let reading = Promise.resolve(0);
      /** Reads until nothing is new; returns how many events it read. */
      async function read(): Promise<number> {
        let count = 0;
        for (;;) {
          const res = await get(`/v1/audit/events?after_seq=${afterSeq}&limit=${limit}`);
          assert.equal(res.statusCode, 200, res.body);
          const page = res.json() as { data: EventView[]; next_cursor: null; next_after_seq: number };
          assert.equal(page.next_cursor, null);
          seen.push(...page.data);
          count += page.data.length;
          afterSeq = page.next_after_seq;
          if (page.data.length < limit) return count;
        }
      }
      return {
        seen,
        /** One read at a time, as one forwarder process would. */
        poll: (): Promise<number> => {
          reading = reading.then(read, read);
          return reading;
        },
      };
    }

    /** Every event of the org once, in consecutive sequence order from 1. */
    async function assertExactlyOnce(seen: EventView[]) {
      const ids = seen.map((e) => e.id);
      assert.equal(new Set(ids).size, ids.length, 'no event twice');
      assert.deepEqual([...ids].sort(), await allIds(), 'every event');
      assert.deepEqual(
        seen.map((e) => e.sequence),
        seen.map((_, i) => i + 1),
      );
    }

    test('concurrent writers: a reader polling by after_seq collects every event exactly once', async () => {
      const reader = forwarder(7);
      let writing = true;
      const polling = (async () => {
        while (writing) {
          await reader.poll();
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
      })();
      const writers: Promise<unknown>[] = [];
      for (let w = 0; w < 8; w++)
        writers.push(
          (async () => {
            for (let i = 0; i < 15; i++) await write(i % 5 === 0 ? [event(i), event(i + 100)] : event(i));
          })(),
        );
      if (kind === 'postgres') {
        // Transactions that record, wait, and commit after later ones (ids older than what the
        // reader has already seen), while the reader keeps polling.
        for (let i = 0; i < 6; i++) {
          const slow = await writeHeld(event(1000 + i));
          await write(event(2000 + i));
          await audit().sequencer.flushAll();
          await reader.poll();
          slow.release();
          writers.push(slow.done);
        }
      }
      await Promise.all(writers);
      writing = false;
      await polling;
      await audit().sequencer.flushAll(); // what is left, as the running sequencer would shortly
      await reader.poll();
      assert.ok(reader.seen.length > 100);
      await assertExactlyOnce(reader.seen);
      assert.equal(await reader.poll(), 0, 'nothing more once caught up');
    });

    if (kind === 'postgres') {
      test('an event committed after a later one: read by after_seq, not missed; newest first by id, missed', async () => {
        await audit().sequencer.flushAll();
        const reader = forwarder(50);
        await reader.poll();
        const newest = async () =>
          ((await get('/v1/audit/events?limit=1')).json().data as EventView[])[0]?.id;
        const late = await writeHeld(event(1)); // recorded first: the smaller id
        await write(event(2));
        await audit().sequencer.flushAll();
        const seenNewest = await newest();
        assert.equal(await reader.poll(), 1);
        late.release();
        await late.done;
        await audit().sequencer.flushAll();
        // Newest first down to the newest id already seen: the late event's id sorts below it.
        const fresh = ((await get('/v1/audit/events?limit=500')).json().data as EventView[]).findIndex(
          (e) => e.id === seenNewest,
        );
        assert.equal(fresh, 0, 'newest first shows nothing new: the late event is missed');
        assert.equal(await reader.poll(), 1, 'by sequence it comes next');
        await assertExactlyOnce(reader.seen);
      });
    }

    test('the export reads forward by after_seq too, ascending', async () => {
      await audit().sequencer.flushAll();
      const before = (await allIds()).length;
      const res = await get('/v1/audit/export?format=ndjson&after_seq=3');
      assert.equal(res.statusCode, 200, res.body);
      const sequences = res.body
        .trim()
        .split('\n')
        .map((line) => (JSON.parse(line) as EventView).sequence);
      assert.deepEqual(
        sequences,
        sequences.map((_, i) => i + 4),
      );
      // Its own audit.exported event is in it when linked before the first page is read: always
      // on PGlite (linked as written), on PostgreSQL only if the sequencer was that quick.
      if (kind === 'pglite') assert.equal(sequences.length, before - 3 + 1);
      else assert.ok([before - 3, before - 3 + 1].includes(sequences.length), String(sequences.length));
      // The filters apply as usual; the export records what was asked.
      const filtered = await get('/v1/audit/export?format=csv&after_seq=0&action=audit.exported');
      assert.equal(filtered.statusCode, 200);
      await audit().sequencer.flushAll();
      const [exported] = (await get('/v1/audit/events?action=audit.exported&limit=1')).json().data;
      assert.deepEqual(exported.details.filters, { action: 'audit.exported', after_seq: 0 });
    });

    test('a filtered read that matches nothing moves on to the head; what matches later is read next', async () => {
      await audit().sequencer.flushAll();
      const filtered = (afterSeq: number) =>
        get(`/v1/audit/events?after_seq=${afterSeq}&action=secret.revealed&limit=10`);
      const head = async () =>
        (
          await t.store.db.query<{ last_seq: string }>(
            'select last_seq from audit_chain_heads where org_id = $1',
            [orgId],
          )
        )[0]?.last_seq;
      // Before, a poll that matched nothing answered the after_seq it was given: every later poll
      // scanned the whole tail again.
      const empty = (await filtered(0)).json();
      assert.deepEqual(empty.data, []);
      assert.ok(empty.next_after_seq > 0);
      assert.equal(empty.next_after_seq, Number(await head()));
      // Events that do not match, then one that does: the next poll reads just that one.
      for (let i = 0; i < 3; i++) await write(event(i));
      await write({ ...event(9), action: 'secret.revealed' });
      await audit().sequencer.flushAll();
      const next = (await filtered(empty.next_after_seq)).json();
      assert.deepEqual(
        next.data.map((e: { action: string; sequence: number }) => [e.action, e.sequence]),
        [['secret.revealed', empty.next_after_seq + 4]],
      );
      assert.equal(next.next_after_seq, Number(await head()));
      // A full page continues from its last event, not from the head.
      for (let i = 0; i < 3; i++) await write({ ...event(i), action: 'secret.revealed' });
      await audit().sequencer.flushAll();
      const page = (
        await get(`/v1/audit/events?after_seq=${next.next_after_seq}&action=secret.revealed&limit=2`)
      ).json();
      assert.equal(page.data.length, 2);
      assert.equal(page.next_after_seq, page.data[1].sequence);
      const rest = (await filtered(page.next_after_seq)).json();
      assert.equal(rest.data.length, 1);
      assert.equal(rest.data[0].sequence, page.next_after_seq + 1);
    });

    test('after_seq: a non-negative integer, not combined with cursor; otherwise unchanged', async () => {
      for (const value of [
        '-1',
        '1.5',
        '',
        'abc',
        '1e3',
        '0x10',
        '+1',
        ' 1',
        '9007199254740992',
        '9'.repeat(30),
      ]) {
        for (const path of ['/v1/audit/events', '/v1/audit/export']) {
          const res = await get(`${path}?after_seq=${encodeURIComponent(value)}`);
          assert.equal(res.statusCode, 400, `${path} ${value}`);
          assert.equal(res.json().code, 'validation_failed', `${path} ${value}`);
          assert.deepEqual(
            res.json().errors.map((e: { path: string }) => e.path),
            ['querystring.after_seq'],
          );
        }
      }
      const cursor = (await get('/v1/audit/events?limit=1')).json().next_cursor;
      const both = await get(`/v1/audit/events?after_seq=0&cursor=${cursor}`);
      assert.equal(both.statusCode, 400);
      assert.equal(both.json().code, 'validation_failed');
      assert.deepEqual(
        both.json().errors.map((e: { path: string }) => e.path),
        ['querystring.after_seq'],
      );
      // The largest accepted value reads nothing, and says where to continue.
      const max = await get('/v1/audit/events?after_seq=9007199254740991');
      assert.deepEqual(max.json(), { data: [], next_cursor: null, next_after_seq: 9007199254740991 });
      // Without it: newest first by id, as before.
      const page = (await get('/v1/audit/events?limit=500')).json();
      assert.equal(page.next_after_seq, null);
      const ids = page.data.map((e: EventView) => e.id);
      assert.deepEqual(ids, [...ids].sort().reverse());
      // The parameter is documented.
      const doc = (await t.app.inject({ method: 'GET', url: '/openapi.json' })).json();
      for (const path of ['/v1/audit/events', '/v1/audit/export']) {
        const names = doc.paths[path].get.parameters.map((p: { name: string }) => p.name);
        assert.ok(names.includes('after_seq'), path);
      }
      assert.ok(doc.paths['/v1/audit/events'].get.responses['200'].content['application/json'].schema);
    });
  });
}
