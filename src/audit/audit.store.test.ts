import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { newId } from '../db/ids.ts';
import { createSequencer } from './sequencer.ts';
import { type AuditEventInput, type AuditService, openAuditService } from './service.ts';

/** What verify answers for an intact chain of `checked` events. */
const valid = (checked: number) => ({
  valid: true,
  checked,
  first_bad_sequence: null,
  first_bad_event_id: null,
});

// One conformance suite over both stores, as OpenFGA runs its tests over every backend.
for (const { kind, skip } of STORES) {
  describe(`audit trail on ${kind}`, { skip }, () => {
    let store: TestStore;
    let now = new Date('2026-01-01T00:00:00.000Z');
    let audit: AuditService;
    const keyring = createKeyring(randomBytes(32));

    before(async () => {
      store = await openTestStore(kind);
      audit = await openAuditService({
        db: store.db,
        keyring,
        defaultRetentionDays: 30,
        clock: () => now,
      });
    });
    after(() => store?.dispose());

    const event = (orgId: string, i = 0): AuditEventInput => ({
      orgId,
      actor: { type: 'user', id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA', name: 'Ada' },
      action: 'key.created',
      resource: { type: 'api_keys', id: `key_${i}` },
      context: { ip: '203.0.113.9', userAgent: 'test/1.0', requestId: `req-${i}` },
      details: { i, nested: { z: 1, a: [1, 'two', null] } },
      changes: { before: null, after: { name: `k${i}`, scopes: ['secrets:read'] } },
    });

    /** Writes events one transaction each, then links them (as the running sequencer would). */
    async function append(orgId: string, count: number, start = 0) {
      for (let i = start; i < start + count; i++)
        await store.db.db.transaction((tx) => audit.record(tx, event(orgId, i)));
      await audit.sequencer.flushAll();
    }

    /** Plays the attacker with direct database access: the trigger is switched off first. */
    async function asAttacker(sql: string, params: unknown[]) {
      await store.db.query('alter table audit_events disable trigger audit_events_append_only');
      try {
        await store.db.query(sql, params);
      } finally {
        await store.db.query('alter table audit_events enable trigger audit_events_append_only');
      }
    }

    test('events chain per org with consecutive sequences, and the chain verifies', async () => {
      const orgA = newId('org');
      const orgB = newId('org');
      await append(orgA, 5);
      await append(orgB, 3);
      await append(orgA, 2, 5);
      const a = await audit.list(orgA, {}, { limit: 100 });
      assert.deepEqual(
        a.map((e) => e.seq),
        [7, 6, 5, 4, 3, 2, 1],
      );
      for (let i = 0; i < a.length - 1; i++) assert.equal(a[i]?.prevHash, a[i + 1]?.hash);
      assert.deepEqual(await audit.verify(orgA), valid(7));
      assert.deepEqual(await audit.verify(orgB), valid(3));
    });

    test('the database refuses UPDATE, DELETE and TRUNCATE of events', async () => {
      const org = newId('org');
      await append(org, 1);
      await assert.rejects(
        store.db.query("update audit_events set action = 'x' where org_id = $1", [org]),
        /append-only/,
      );
      await assert.rejects(
        store.db.query('delete from audit_events where org_id = $1', [org]),
        /append-only/,
      );
      await assert.rejects(store.db.query('truncate audit_events'), /append-only/);
      // Linking is allowed once, and only without touching the content.
      await assert.rejects(
        store.db.query("update audit_events set hash = repeat('b', 64) where org_id = $1", [org]),
        /append-only/,
      );
      // An event written for the sequencer to link (the default on PostgreSQL).
      await store.db.db.transaction((tx) => audit.record(tx, event(org, 1), { link: false }));
      await assert.rejects(
        store.db.query(
          "update audit_events set seq = 2, prev_hash = 'x', hash = 'y', action = 'user.login' where org_id = $1 and hash is null",
          [org],
        ),
        /append-only/,
      );
      assert.deepEqual(await audit.verify(org), valid(2));
    });

    test(`by default ${kind === 'pglite' ? 'links as written' : 'leaves linking to the sequencer'}`, async () => {
      const org = newId('org');
      await store.db.db.transaction((tx) => audit.record(tx, event(org, 1)));
      const [row] = await store.db.query<{ seq: string | number | null; hash: string | null }>(
        'select seq, hash from audit_events where org_id = $1',
        [org],
      );
      if (kind === 'pglite') {
        assert.equal(Number(row?.seq), 1, 'linked in the writing transaction');
        assert.match(row?.hash ?? '', /^[0-9a-f]{64}$/);
      } else {
        assert.equal(row?.hash, null, 'left for the sequencer');
        await audit.sequencer.flushAll();
      }
      assert.deepEqual(await audit.verify(org), valid(1));
    });

    test('events linked as written and events linked by the sequencer make one chain', async () => {
      const org = newId('org');
      const other = newId('org');
      const tricky = {
        ...event(org, 1),
        context: { ip: '2001:db8::1', userAgent: 'tab\there, "quoted", comma, newline\nand back\\slash' },
        details: {
          zeta: 1,
          alpha: [1.5, -0, 1e21, 'é', { b: null, a: true }],
          empty: '',
          nested: { x: 'y' },
        },
        changes: { before: null, after: { list: [] } },
      };
      for (let round = 0; round < 3; round++) {
        await store.db.db.transaction((tx) =>
          audit.record(tx, [tricky, event(other, round)], { link: true }),
        );
        // Linked by the sequencer from the values this process remembers as written…
        await store.db.db.transaction((tx) => audit.record(tx, [event(org, round), tricky], { link: false }));
        await audit.record(store.db.db, event(org, round), { link: true }); // opens its own transaction
      }
      // …and from values read back, as another instance (which remembers nothing) would link them.
      const elsewhere = await openAuditService({ db: store.db, keyring, defaultRetentionDays: 30 });
      await store.db.db.transaction((tx) => elsewhere.record(tx, [tricky, event(org, 9)], { link: false }));
      await audit.sequencer.flushAll();
      assert.deepEqual(await audit.verify(org), valid(14));
      assert.deepEqual(await audit.verify(other), valid(3));
      const [stored] = await audit
        .list(org, { action: tricky.action, success: true }, { limit: 100 })
        .then((rows) => rows.filter((r) => r.userAgent === tricky.context.userAgent));
      assert.ok(stored, 'the tricky event is stored as given');
      assert.deepEqual(
        stored.details,
        tricky.details === null ? null : JSON.parse(JSON.stringify(tricky.details)),
      );
    });

    test('a tampered row is detected at its sequence', async () => {
      const org = newId('org');
      await append(org, 6);
      await asAttacker(
        "update audit_events set details = jsonb_set(details, '{i}', '99') where org_id = $1 and seq = 4",
        [org],
      );
      const [tampered] = await store.db.query<{ id: string }>(
        'select id from audit_events where org_id = $1 and seq = 4',
        [org],
      );
      assert.deepEqual(await audit.verify(org), {
        valid: false,
        checked: 3,
        first_bad_sequence: 4,
        first_bad_event_id: tampered?.id,
        reason: 'hash_mismatch',
      });
    });

    test('a re-hashed tampered row still breaks the link to the next event', async () => {
      const org = newId('org');
      await append(org, 4);
      // The attacker recomputes nothing correctly without the previous hash chain: changing hash breaks seq 3's prev.
      await asAttacker("update audit_events set hash = repeat('a', 64) where org_id = $1 and seq = 2", [org]);
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.first_bad_sequence, 2);
    });

    test('a deleted row is detected where it was', async () => {
      const org = newId('org');
      await append(org, 5);
      await asAttacker('delete from audit_events where org_id = $1 and seq = 3', [org]);
      assert.deepEqual(await audit.verify(org), {
        valid: false,
        checked: 2,
        first_bad_sequence: 3,
        first_bad_event_id: null,
        reason: 'missing_event',
      });
    });

    test('deleting the newest events is detected against the chain head', async () => {
      const org = newId('org');
      await append(org, 5);
      await asAttacker('delete from audit_events where org_id = $1 and seq >= 4', [org]);
      assert.deepEqual(await audit.verify(org), {
        valid: false,
        checked: 3,
        first_bad_sequence: 4,
        first_bad_event_id: null,
        reason: 'head_mismatch',
      });
    });

    test('a row added past the head, even one that links, is detected against the head', async () => {
      // verify walks to the head it reads first (events keep arriving while it walks); a row past
      // that head must be covered by the head read after it, which a forger cannot move.
      const org = newId('org');
      await append(org, 3);
      await asAttacker(
        `insert into audit_events (id, org_id, actor_type, action, success, sensitive, retention_days,
           created_at, seq, prev_hash, hash)
         select $2, org_id, actor_type, action, success, sensitive, retention_days, created_at, 4, hash, hash
         from audit_events where org_id = $1 and seq = 3`,
        [org, newId('evt')],
      );
      assert.deepEqual(await audit.verify(org), {
        valid: false,
        checked: 3,
        first_bad_sequence: 4,
        first_bad_event_id: null,
        reason: 'head_mismatch',
      });
    });

    test('an event exists if and only if its transaction commits', async () => {
      const org = newId('org');
      await append(org, 1);
      await assert.rejects(
        store.db.db.transaction(async (tx) => {
          await audit.record(tx, event(org, 1));
          throw new Error('the change failed');
        }),
        /the change failed/,
      );
      const events = await audit.list(org, {}, { limit: 10 });
      assert.equal(events.length, 1);
      await append(org, 1, 2);
      assert.deepEqual(await audit.verify(org), valid(2));
    });

    test('secrets are masked and unstorable text is made safe', async () => {
      const org = newId('org');
      await store.db.db.transaction((tx) =>
        audit.record(tx, {
          orgId: org,
          actor: { type: 'user', id: 'usr_x', name: 'Eve\u0000' },
          action: 'user.password_changed',
          context: { userAgent: 'bad\u0000agent\ud800' },
          details: { password: 'hunter2hunter2', refreshToken: 'rt_abc', note: 'fine', 'k\u0000': 1 },
          changes: { before: { api_key: 'stw_live_x' }, after: { value: 's3cr3t' } },
          secretFields: ['value'],
        }),
      );
      const [stored] = await audit.list(org, {}, { limit: 1 });
      const text = JSON.stringify(stored);
      for (const secret of ['hunter2hunter2', 'rt_abc', 'stw_live_x', 's3cr3t'])
        assert.doesNotMatch(text, new RegExp(secret));
      assert.ok(stored);
      assert.equal((stored.details as Record<string, unknown>).note, 'fine');
      assert.equal(stored?.userAgent, 'bad\uFFFDagent\uFFFD');
      assert.equal((await audit.verify(org)).valid, true);
    });

    test('text cut at its cap never splits a surrogate pair (the event still verifies)', async () => {
      const org = newId('org');
      await store.db.db.transaction((tx) =>
        audit.record(tx, [
          // Caps of 500 and 1000 UTF-16 units: the emoji's high half is the last unit that fits.
          {
            orgId: org,
            actor: { type: 'user', id: 'u', name: `${'a'.repeat(499)}😀` },
            action: 'user.login',
          },
          {
            orgId: org,
            actor: { type: 'user', id: 'u' },
            action: 'user.login',
            context: { userAgent: `${'a'.repeat(999)}😀` },
          },
          // A pair that fits whole is kept; a lone surrogate that fits is still made storable.
          {
            orgId: org,
            actor: { type: 'user', id: 'u', name: `${'a'.repeat(498)}😀` },
            action: 'user.login',
          },
          {
            orgId: org,
            actor: { type: 'user', id: 'u', name: `${'a'.repeat(499)}\ud800x` },
            action: 'user.login',
          },
        ]),
      );
      await audit.sequencer.flushOrg(org);
      const names = (await audit.list(org, {}, { limit: 10 })).reverse();
      assert.deepEqual(
        names.map((e) => [e.actorName, e.userAgent]),
        [
          ['a'.repeat(499), null],
          [null, 'a'.repeat(999)],
          [`${'a'.repeat(498)}😀`, null],
          [`${'a'.repeat(499)}\uFFFD`, null],
        ],
      );
      assert.deepEqual(await audit.verify(org), valid(4));
    });

    test('retention purge removes an expired prefix, leaves a signed checkpoint, and the rest verifies', async () => {
      const org = newId('org');
      now = new Date('2026-01-01T00:00:00.000Z');
      await append(org, 4); // retention 30 days
      now = new Date('2026-02-15T00:00:00.000Z');
      await append(org, 2, 4);
      const results = await audit.purge();
      const mine = results.find((r) => r.orgId === org);
      assert.deepEqual(mine, { orgId: org, purged: 4, lastPurgedSeq: 4 });
      await audit.sequencer.flushAll();
      const left = await audit.list(org, {}, { limit: 10 });
      assert.deepEqual(
        left.map((e) => [e.seq, e.action]),
        [
          [7, 'audit.purged'],
          [6, 'key.created'],
          [5, 'key.created'],
        ],
      );
      assert.deepEqual(await audit.verify(org), valid(3));
      // A forged checkpoint (say, to hide more deletions) fails its signature.
      await store.db.query('alter table audit_checkpoints disable trigger audit_checkpoints_append_only');
      await store.db.query('update audit_checkpoints set last_purged_seq = 5 where org_id = $1', [org]);
      await store.db.query('alter table audit_checkpoints enable trigger audit_checkpoints_append_only');
      const forged = await audit.verify(org);
      assert.equal(forged.valid, false);
      assert.equal(forged.reason, 'checkpoint_invalid');
    });

    test('a mixed workload verifies: single events, batches linked as written and by the sequencer, a purge', async () => {
      const org = newId('org');
      const round = async (from: number) => {
        await store.db.db.transaction((tx) => audit.record(tx, event(org, from))); // the default path
        // The reveal log's batch, linked as written (COPY on PGlite)…
        await store.db.db.transaction((tx) =>
          audit.record(tx, [event(org, from + 1), event(org, from + 2), event(org, from + 3)], {
            link: true,
          }),
        );
        // …and a batch left to the sequencer.
        await store.db.db.transaction((tx) =>
          audit.record(tx, [event(org, from + 4), event(org, from + 5)], { link: false }),
        );
        await audit.sequencer.flushAll();
      };
      now = new Date('2027-01-01T00:00:00.000Z');
      await round(0);
      now = new Date('2027-03-01T00:00:00.000Z');
      await round(10);
      const purged = (await audit.purge()).find((r) => r.orgId === org);
      assert.deepEqual(purged, { orgId: org, purged: 6, lastPurgedSeq: 6 });
      await round(20);
      assert.deepEqual(await audit.verify(org), valid(6 + 1 + 6));
      const [unsigned] = await store.db.query<{ n: string | number }>(
        'select count(*) as n from audit_events where org_id = $1 and mac is null',
        [org],
      );
      assert.equal(Number(unsigned?.n), 0, 'every event carries its MAC');
    });

    test('query filters and keyset pagination', async () => {
      const org = newId('org');
      await append(org, 7);
      await store.db.db.transaction((tx) =>
        audit.record(tx, {
          ...event(org, 99),
          action: 'user.login_failed',
          success: false,
          errorMessage: 'wrong password',
        }),
      );
      await audit.sequencer.flushAll();
      const failed = await audit.list(org, { success: false }, { limit: 10 });
      assert.deepEqual(
        failed.map((e) => e.action),
        ['user.login_failed'],
      );
      const byResource = await audit.list(
        org,
        { resourceType: 'api_keys', resourceId: 'key_3' },
        { limit: 10 },
      );
      assert.deepEqual(
        byResource.map((e) => e.seq),
        [4],
      );
      const page1 = await audit.list(org, {}, { limit: 3 });
      const page2 = await audit.list(org, {}, { limit: 3, beforeId: page1.at(-1)?.id });
      assert.deepEqual(
        [...page1, ...page2].map((e) => e.seq),
        [8, 7, 6, 5, 4, 3],
      );
    });

    test('50 concurrent writers and two sequencers (two instances) never fork the chain', async () => {
      const org = newId('org');
      const other = createSequencer({ db: store.db, batchSize: 7 });
      let writing = true;
      const linkers = [audit.sequencer, other].map(async (sequencer) => {
        while (writing) await sequencer.flushOrg(org);
      });
      await Promise.all(
        Array.from({ length: 50 }, (_, w) =>
          (async () => {
            for (let i = 0; i < 4; i++)
              await store.db.db.transaction((tx) => audit.record(tx, event(org, w * 100 + i)));
          })(),
        ),
      );
      writing = false;
      await Promise.all(linkers);
      const result = await audit.verify(org);
      assert.deepEqual(result, valid(200));
      const rows = await store.db.query<{ n: string; distinct_prev: string }>(
        'select count(*) as n, count(distinct prev_hash) as distinct_prev from audit_events where org_id = $1',
        [org],
      );
      assert.equal(Number(rows[0]?.n), 200);
      assert.equal(Number(rows[0]?.distinct_prev), 200, 'no two events share a predecessor');
    });

    test('verify under live writes: a chain that keeps growing while it is walked still verifies', async () => {
      // Before session 10, verify walked the events and then read the head: events linked in
      // between (a reveal batch, a sequencer pass) moved the head past what was walked, and a
      // healthy chain answered head_mismatch (seen at the end of the reveal bench on PostgreSQL).
      const org = newId('org');
      const batch = (from: number) => Array.from({ length: 50 }, (_, i) => event(org, from + i));
      for (let i = 0; i < 50; i++)
        await store.db.db.transaction((tx) => audit.record(tx, batch(i * 50), { link: true }));
      let writing = true;
      let written = 2500;
      const writer = (async () => {
        while (writing) {
          await store.db.db.transaction((tx) => audit.record(tx, batch(written), { link: true }));
          written += 50;
        }
      })();
      const results = [];
      try {
        for (let i = 0; i < 5; i++) results.push(await audit.verify(org));
      } finally {
        writing = false;
        await writer;
      }
      for (const result of results) {
        assert.equal(result.valid, true, JSON.stringify(result));
        assert.ok(result.checked >= 2500);
      }
      assert.ok(written > 2500, 'events were written while verify walked');
      assert.deepEqual(await audit.verify(org), valid(written));
    });

    test('verify while a purge removes the prefix it is walking still verifies', async () => {
      // On PGlite the purge's transaction runs between verify's pages; a walk it overtook (the
      // events it was about to read are gone, a newer checkpoint covers them) is walked again.
      const saved = now;
      try {
        const results = [];
        for (let round = 0; round < 4; round++) {
          const org = newId('org');
          now = new Date(Date.UTC(2030 + round, 0, 1));
          const batch = (from: number) => Array.from({ length: 100 }, (_, i) => event(org, from + i));
          for (let i = 0; i < 25; i++)
            await store.db.db.transaction((tx) => audit.record(tx, batch(i * 100), { link: true }));
          now = new Date(Date.UTC(2030 + round, 6, 1)); // past the 30 days of retention
          const verifying = audit.verify(org);
          const purged = audit.purge();
          results.push(await verifying);
          assert.ok((await purged).some((r) => r.orgId === org && r.purged === 2500));
        }
        for (const result of results) assert.equal(result.valid, true, JSON.stringify(result));
      } finally {
        now = saved;
      }
    });
  });
}
