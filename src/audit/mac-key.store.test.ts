// The audit trail's own MAC key (audit_mac_keys): made once, shared by every instance, re-wrapped
// with the master key; and the purge checkpoints earlier releases signed (hex, under a key derived
// from the master key) re-signed at start, so a rotation leaves them verifying.
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
import { AUDIT_CHECKPOINT_KEY_PURPOSE, type AuditKeys, createAuditKeys } from './mac.ts';
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
 * Signs purge checkpoints as every release before session 8 did: hex, under a key derived from the
 * current master key. Events get their MAC as now; the rest of the service is real.
 */
function earlierCheckpoints(keyring: Keyring, keys: AuditKeys): AuditKeys {
  const checkpointKey = keyring.deriveKey(AUDIT_CHECKPOINT_KEY_PURPOSE, 32);
  return { ...keys, signCheckpoint: (payload) => hmacSha256(checkpointKey, payload).toString('hex') };
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

    test('a purge checkpoint of an earlier release (hex) is re-signed at start, so the documented rotation leaves it verifying', async () => {
      const ringA = createKeyring(keyA);
      const keys = createAuditKeys(ringA, await loadAuditMacKeys({ db: store.db, keyring: ringA }));
      const earlier = createAuditService({
        db: store.db,
        keys: earlierCheckpoints(ringA, keys),
        defaultRetentionDays: 30,
        clock: () => now,
      });
      // A checkpoint signed under a master key nobody holds any more: it cannot be checked, so it
      // must not be re-signed (re-signing is what would launder a forged one).
      const keyC = randomBytes(32);
      const ringC = createKeyring(keyC);
      const stranded = createAuditService({
        db: store.db,
        keys: earlierCheckpoints(
          ringC,
          createAuditKeys(ringC, await loadAuditMacKeys({ db: store.db, keyring: ringA })),
        ),
        defaultRetentionDays: 30,
        clock: () => now,
      });
      const purged = newId('org'); // purged behind a hex checkpoint under A
      const lost = newId('org'); // purged behind a hex checkpoint under C
      // A purge covers every org: each org's events expire in turn, so each purge touches one.
      now = new Date('2026-11-18T12:00:00.000Z');
      await append(stranded, lost, 0, 2, 1);
      await append(stranded, lost, 2, 1);
      now = new Date('2026-11-20T12:00:00.000Z');
      assert.equal((await stranded.purge()).find((r) => r.orgId === lost)?.purged, 2);
      await append(earlier, purged, 0, 3, 1);
      now = new Date('2026-11-24T12:00:00.000Z');
      await append(earlier, purged, 3, 1);
      assert.equal((await earlier.purge()).find((r) => r.orgId === purged)?.purged, 3);
      await earlier.sequencer.flushAll();
      const signaturesOf = async (org: string) =>
        (
          await store.db.query<{ signature: string }>(
            'select signature from audit_checkpoints where org_id = $1 order by id',
            [org],
          )
        ).map((r) => r.signature);
      assert.match(
        (await signaturesOf(purged))[0] ?? '',
        /^[0-9a-f]{64}$/,
        'signed as earlier releases: hex',
      );

      // This version starts, still on A: the hex checkpoint A signed gets a copy signed under the
      // audit MAC key; C's, which no held key verifies, does not.
      const onA = await open(ringA);
      const signatures = await signaturesOf(purged);
      assert.equal(signatures.length, 2);
      assert.match(signatures[1] ?? '', /^mac2\./, 're-signed under the audit MAC key');
      assert.equal((await signaturesOf(lost)).length, 1, 'an unverifiable checkpoint is not re-signed');
      assert.equal(await onA.resignLegacyCheckpoints(), 0, 'once is enough');
      assert.deepEqual(await onA.verify(purged), valid(2)); // the kept event and the purge's own
      assert.equal((await onA.verify(lost)).reason, 'checkpoint_invalid');

      // Rotation as documented: B current, A previous; the audit key is re-wrapped under B; A dropped.
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
      const onlyB = await open(createKeyring(keyB));
      // The purged org also has the re-wrap's event now.
      assert.deepEqual(await onlyB.verify(purged), valid(3));
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
      // Same tag, another key id: unknown. Any other prefix is no MAC of ours.
      assert.equal(keys.checkEventMac('{}', `mac2.0123456789abcdef.${tag}`), 'mac_key_unknown');
      assert.equal(keys.checkEventMac('{}', genuine.mac.replace(/^mac2\./, 'mac1.')), 'mac_mismatch');
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
