// The audit trail's own MAC key (audit_mac_keys): made once, shared by every instance, re-wrapped
// with the master key; and what was signed before it existed (mac1., hex checkpoints) still
// verifying under the master key that signed it.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { createKeyring, type Keyring, masterKeyId } from '../crypto/keyring.ts';
import { hmacSha256 } from '../crypto/mac.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { rewrapAll } from '../vault/rewrap.ts';
import {
  AUDIT_CHECKPOINT_KEY_PURPOSE,
  AUDIT_EVENT_KEY_PURPOSE,
  type AuditKeys,
  createAuditKeys,
} from './mac.ts';
import { loadAuditMacKeys } from './mac-key.ts';
import { auditSealedColumns } from './sealed-columns.ts';
import { type AuditEventInput, type AuditService, createAuditService, openAuditService } from './service.ts';

const valid = (checked: number) => ({
  valid: true,
  checked,
  first_bad_sequence: null,
  first_bad_event_id: null,
});

const event = (orgId: string, i: number, retentionDays = 365): AuditEventInput => ({
  orgId,
  actor: { type: 'user', id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA', name: 'Ada' },
  action: 'key.created',
  resource: { type: 'api_keys', id: `key_${i}` },
  details: { i },
  retentionDays,
});

/**
 * Signs as Steward did between bd5e8e2 and this change: `mac1.<master key id>.…` events and hex
 * checkpoints, under keys derived from the current master key. The rest of the service is real.
 */
function writtenToday(keyring: Keyring, keys: AuditKeys): AuditKeys {
  const eventKey = keyring.deriveKey(AUDIT_EVENT_KEY_PURPOSE, 32);
  const checkpointKey = keyring.deriveKey(AUDIT_CHECKPOINT_KEY_PURPOSE, 32);
  return {
    ...keys,
    eventMac: (content) =>
      `mac1.${keyring.current.id}.${hmacSha256(eventKey, content).toString('base64url')}`,
    signCheckpoint: (payload) => hmacSha256(checkpointKey, payload).toString('hex'),
  };
}

for (const { kind, skip } of STORES) {
  describe(`the audit MAC key, on ${kind}`, { skip }, () => {
    let store: TestStore;
    const keyA = randomBytes(32);
    const keyB = randomBytes(32);
    let now = new Date('2026-11-22T12:00:00.000Z');
    const open = (keyring: Keyring) =>
      openAuditService({ db: store.db, keyring, defaultRetentionDays: 30, clock: () => now });
    const append = async (
      audit: AuditService,
      orgId: string,
      from: number,
      count: number,
      retention = 365,
    ) => {
      for (let i = from; i < from + count; i++)
        await store.db.db.transaction((tx) => audit.record(tx, event(orgId, i, retention)));
      await audit.sequencer.flushAll();
    };
    const keyRows = () =>
      store.db.query<{ id: string; generation: number; key_sealed: string }>(
        'select id, generation, key_sealed from audit_mac_keys order by generation',
      );

    before(async () => {
      store = await openTestStore(kind);
    });
    after(() => store?.dispose());

    test('made by the first start, sealed under the master key; new events and checkpoints name it (mac2)', async () => {
      assert.deepEqual(await keyRows(), [], 'a migrated database has no key yet');
      const audit = await open(createKeyring(keyA));
      const rows = await keyRows();
      assert.equal(rows.length, 1);
      const [row] = rows;
      assert.ok(row);
      assert.match(row.id, /^[0-9a-f]{16}$/);
      assert.equal(row.generation, 1);
      assert.ok(row.key_sealed.startsWith(`v1.${masterKeyId(keyA)}.`), 'sealed under the master key');
      const org = newId('org');
      await append(audit, org, 0, 3, 1);
      now = new Date(now.getTime() + 2 * 86_400_000);
      await append(audit, org, 3, 1);
      assert.equal((await audit.purge()).find((r) => r.orgId === org)?.purged, 3);
      await audit.sequencer.flushAll();
      const macs = await store.db.query<{ mac: string }>('select mac from audit_events where org_id = $1', [
        org,
      ]);
      assert.ok(macs.length > 0);
      for (const { mac } of macs) assert.match(mac, new RegExp(`^mac2\\.${row.id}\\.[A-Za-z0-9_-]{43}$`));
      const [checkpoint] = await store.db.query<{ signature: string }>(
        'select signature from audit_checkpoints where org_id = $1',
        [org],
      );
      assert.match(checkpoint?.signature ?? '', new RegExp(`^mac2\\.${row.id}\\.[A-Za-z0-9_-]{43}$`));
      // A second instance reads the same key: it verifies the first one's events and checkpoint.
      const second = await open(createKeyring(keyA));
      assert.deepEqual(await second.verify(org), valid(2));
      assert.deepEqual(await keyRows(), rows, 'the second start made no key');
    });

    test('a key row that does not open under the master keys held stops the start, saying why', async () => {
      const [row] = await keyRows();
      await assert.rejects(
        open(createKeyring(keyB)),
        new RegExp(
          `the audit MAC key ${row?.id} is sealed under master key ${masterKeyId(keyA)}, which is not loaded`,
        ),
      );
    });

    test('events and a checkpoint written today (mac1., hex) verify while their master key is held', async () => {
      const ringA = createKeyring(keyA);
      const keys = createAuditKeys(ringA, await loadAuditMacKeys({ db: store.db, keyring: ringA }));
      const today = createAuditService({
        db: store.db,
        keys: writtenToday(ringA, keys),
        defaultRetentionDays: 30,
        clock: () => now,
      });
      const purged = newId('org'); // mac1 events, purged today behind a hex checkpoint, then mac2 events
      const mixed = newId('org'); // mac1 events, then mac2 events
      const fresh = newId('org'); // mac2 events only
      now = new Date('2026-11-22T12:00:00.000Z');
      await append(today, purged, 0, 3, 1);
      await append(today, mixed, 0, 2);
      now = new Date('2026-11-24T12:00:00.000Z');
      await append(today, purged, 3, 1);
      assert.equal((await today.purge()).find((r) => r.orgId === purged)?.purged, 3);
      await today.sequencer.flushAll();
      const [checkpoint] = await store.db.query<{ signature: string }>(
        'select signature from audit_checkpoints where org_id = $1',
        [purged],
      );
      assert.match(checkpoint?.signature ?? '', /^[0-9a-f]{64}$/, 'signed as today: hex');
      const [first] = await store.db.query<{ id: string; mac: string }>(
        'select id, mac from audit_events where org_id = $1 and seq = 1',
        [mixed],
      );
      assert.ok(first?.mac.startsWith(`mac1.${masterKeyId(keyA)}.`));

      // This change deployed, still on A: new events get mac2; everything verifies. At its start the
      // hex checkpoint (which every earlier release wrote) got a copy signed under the audit MAC key.
      const onA = await open(ringA);
      const signatures = await store.db.query<{ signature: string }>(
        'select signature from audit_checkpoints where org_id = $1 order by id',
        [purged],
      );
      assert.equal(signatures.length, 2);
      assert.match(signatures[1]?.signature ?? '', /^mac2\./, 're-signed under the audit MAC key');
      assert.equal(await onA.resignLegacyCheckpoints(), 0, 'once is enough');
      for (const org of [purged, mixed, fresh]) await append(onA, org, 10, 2);
      assert.deepEqual(await onA.verify(purged), valid(4));
      assert.deepEqual(await onA.verify(mixed), valid(4));
      assert.deepEqual(await onA.verify(fresh), valid(2));

      // Rotation: B current, A previous; the audit key is re-wrapped under B.
      const both = createKeyring(keyB, [keyA]);
      const rotated = await open(both);
      const result = await rewrapAll({
        db: store.db,
        keyring: both,
        audit: rotated,
        columns: auditSealedColumns,
      });
      assert.deepEqual(result.tables['audit_mac_keys.key_sealed'], {
        total: 1,
        rewrapped: 1,
        failed: 0,
        remaining: 0,
      });
      const [row] = await keyRows();
      assert.ok(row?.key_sealed.startsWith(`v1.${masterKeyId(keyB)}.`));
      await rotated.sequencer.flushAll();
      // While A is held, what it signed today verifies (each org also has the re-wrap's event now).
      assert.deepEqual(await rotated.verify(purged), valid(5));
      assert.deepEqual(await rotated.verify(mixed), valid(5));

      // A dropped: only today's mac1 events are unverifiable; the checkpoint's re-signed copy holds.
      const onlyB = await open(createKeyring(keyB));
      const [fourth] = await store.db.query<{ id: string }>(
        'select id from audit_events where org_id = $1 and seq = 4',
        [purged],
      );
      assert.deepEqual(await onlyB.verify(fresh), valid(3));
      assert.deepEqual(await onlyB.verify(mixed), {
        valid: false,
        checked: 0,
        first_bad_sequence: 1,
        first_bad_event_id: first?.id,
        reason: 'mac_key_unknown',
      });
      assert.deepEqual(await onlyB.verify(purged), {
        valid: false,
        checked: 0,
        first_bad_sequence: 4,
        first_bad_event_id: fourth?.id,
        reason: 'mac_key_unknown',
      });
    });

    test('a MAC or checkpoint naming an audit key that does not exist is not accepted', async () => {
      const ring = createKeyring(keyB);
      const audit = await open(ring);
      const org = newId('org');
      await append(audit, org, 0, 2);
      const [genuine] = await store.db.query<{ id: string; mac: string }>(
        'select id, mac from audit_events where org_id = $1 and seq = 2',
        [org],
      );
      assert.ok(genuine);
      const keys = createAuditKeys(ring, await loadAuditMacKeys({ db: store.db, keyring: ring }));
      const tag = genuine.mac.split('.')[2] ?? '';
      // Same tag, another key id: unknown. Same key id, mac1 instead of mac2: a master key of that id is not held.
      assert.equal(keys.checkEventMac('{}', `mac2.0123456789abcdef.${tag}`), 'mac_key_unknown');
      assert.equal(keys.checkEventMac('{}', genuine.mac.replace(/^mac2\./, 'mac1.')), 'mac_key_unknown');
      assert.equal(keys.checkEventMac('{}', genuine.mac.replace(/^mac2\./, 'mac3.')), 'mac_mismatch');
      const signature = keys.signCheckpoint('payload');
      assert.equal(keys.checkCheckpoint('payload', signature), true);
      assert.equal(keys.checkCheckpoint('payload!', signature), false);
      assert.equal(
        keys.checkCheckpoint('payload', signature.replace(/^mac2\.[0-9a-f]{16}/, 'mac2.0123456789abcdef')),
        false,
      );
      assert.equal(keys.checkCheckpoint('payload', signature.replace(/^mac2\./, 'mac1.')), false);
    });
  });

  describe(`two instances starting at once on a fresh database, on ${kind}`, { skip }, () => {
    let store: TestStore;
    const extra: DbHandle[] = [];
    before(async () => {
      store = await openTestStore(kind);
    });
    after(async () => {
      for (const db of extra) await db.close();
      await store?.dispose();
    });

    test('end with one audit key, and each verifies what the other wrote', async () => {
      const keyring = createKeyring(randomBytes(32));
      // Two servers with their own connection pools; on PGlite, one database has one connection.
      const handles: DbHandle[] = [store.db, store.db];
      let blocker: pg.Client | undefined;
      if (store.url) {
        for (let i = 0; i < 2; i++) {
          const db = await openDatabase({ dataDir: 'unused', databaseUrl: store.url, poolSize: 2 });
          extra.push(db);
          handles[i] = db;
        }
        // Both must find the table empty and then both insert: a SHARE lock lets their reads
        // through and holds their inserts until both are waiting.
        blocker = new pg.Client({ connectionString: store.url });
        await blocker.connect();
        await blocker.query('begin');
        await blocker.query('lock table audit_mac_keys in share mode');
      }
      const starting = handles.map((db) => openAuditService({ db, keyring, defaultRetentionDays: 30 }));
      if (blocker) {
        const waiting = async () => {
          const [row] = (
            await blocker.query(
              `select count(*)::int as n from pg_locks where relation = 'audit_mac_keys'::regclass and not granted`,
            )
          ).rows as { n: number }[];
          return row?.n ?? 0;
        };
        const deadline = Date.now() + 10_000;
        while ((await waiting()) < 2) {
          assert.ok(Date.now() < deadline, 'both instances reach their insert');
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        await blocker.query('commit');
        await blocker.end();
      }
      const services = await Promise.all(starting);
      const rows = await store.db.query<{ id: string }>('select id from audit_mac_keys');
      assert.equal(rows.length, 1, 'exactly one key');
      const orgs = [newId('org'), newId('org')];
      for (const [i, audit] of services.entries()) {
        const orgId = orgs[i] ?? '';
        await store.db.db.transaction((tx) => audit.record(tx, event(orgId, i)));
        await audit.sequencer.flushAll();
      }
      const [one, two] = services;
      assert.ok(one && two);
      assert.deepEqual(await one.verify(orgs[1] ?? ''), valid(1));
      assert.deepEqual(await two.verify(orgs[0] ?? ''), valid(1));
      const macs = await store.db.query<{ mac: string }>('select mac from audit_events');
      assert.deepEqual([...new Set(macs.map((m) => m.mac.split('.')[1]))], [rows[0]?.id]);
    });
  });
}
