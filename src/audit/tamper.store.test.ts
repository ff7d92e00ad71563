// The attacks of probe A, item 2, replayed through SQL by a role that may only read and write rows
// (SELECT, INSERT, UPDATE, DELETE: not the owner, not a superuser, triggers left on), on both stores.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { seal } from '../crypto/envelope.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { driverClient } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { eventHash } from './chain.ts';
import { auditMacKeyAad, auditMacKeyId } from './mac-key.ts';
import { type AuditEventInput, type AuditService, openAuditService } from './service.ts';

type Query = (text: string, params?: unknown[]) => Promise<Record<string, unknown>[]>;

for (const { kind, skip } of STORES) {
  describe(`audit trail against a role that can only edit rows, on ${kind}`, { skip }, () => {
    let store: TestStore;
    let audit: AuditService;
    const keyring = createKeyring(randomBytes(32));
    // Cluster-wide on PostgreSQL: a name of its own, dropped after the file.
    const role = `steward_t_dml_${randomBytes(5).toString('hex')}`;

    before(async () => {
      store = await openTestStore(kind);
      audit = await openAuditService({ db: store.db, keyring, defaultRetentionDays: 30 });
      await store.db.query(`create role ${role} nologin`);
      await store.db.query(`grant select, insert, update, delete on all tables in schema public to ${role}`);
    });
    after(async () => {
      await store?.db.query(`drop owned by ${role}`);
      await store?.db.query(`drop role ${role}`);
      await store?.dispose();
    });

    const event = (orgId: string, i: number): AuditEventInput => ({
      orgId,
      actor: { type: 'user', id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA', name: 'Ada' },
      action: 'key.created',
      resource: { type: 'api_keys', id: `key_${i}` },
      details: { i },
    });

    async function append(orgId: string, count: number) {
      for (let i = 0; i < count; i++)
        await store.db.db.transaction((tx) => audit.record(tx, event(orgId, i)));
      await audit.sequencer.flushAll();
    }

    /** One transaction as the restricted role, as the tester ran it. */
    async function asDmlRole(work: (query: Query) => Promise<void>) {
      await store.db.db.transaction(async (tx) => {
        const client = driverClient(tx, 'asDmlRole');
        const query: Query = async (text, params = []) =>
          ((await client.query(text, params)).rows ?? []) as Record<string, unknown>[];
        await query(`set local role ${role}`);
        await work(query);
      });
    }

    const row = async (orgId: string, seq: number) => {
      const [found] = await store.db.query<Record<string, unknown>>(
        'select * from audit_events where org_id = $1 and seq = $2',
        [orgId, seq],
      );
      assert.ok(found, `event ${seq} exists`);
      return found;
    };

    test('2a as the tester ran it: deleting the newest events is refused, the purge flag is not enough', async () => {
      const org = newId('org');
      await append(org, 6);
      const keep = await row(org, 3);
      await assert.rejects(
        asDmlRole(async (query) => {
          await query("set local steward.audit_purge = 'on'");
          await query('delete from audit_events where org_id = $1 and seq > 3', [org]);
          await query('update audit_chain_heads set last_seq = 3, last_hash = $2 where org_id = $1', [
            org,
            keep.hash,
          ]);
        }),
        /append-only/,
      );
      assert.equal((await audit.verify(org)).valid, true);
      assert.equal((await audit.verify(org)).checked, 6);
    });

    test('2a with a forged checkpoint to pass the delete gate: the checkpoint fails its signature', async () => {
      const org = newId('org');
      await append(org, 6);
      const newest = await row(org, 6);
      const keep = await row(org, 3);
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_checkpoints (id, org_id, last_purged_seq, last_purged_hash, purged_count, created_at, signature)
           values ($1, $2, 6, $3, 3, now(), repeat('0', 64))`,
          [newId('ckp'), org, newest.hash],
        );
        await query("set local steward.audit_purge = 'on'");
        await query('delete from audit_events where org_id = $1 and seq > 3', [org]);
        await query('update audit_chain_heads set last_seq = 3, last_hash = $2 where org_id = $1', [
          org,
          keep.hash,
        ]);
      });
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'checkpoint_invalid');
      assert.equal(result.first_bad_sequence, 6);
    });

    test('2a with a forged checkpoint naming the audit MAC key: the checkpoint fails its signature', async () => {
      const org = newId('org');
      await append(org, 4);
      const newest = await row(org, 4);
      const signature = `mac2.${await auditKeyId()}.${randomBytes(32).toString('base64url')}`;
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_checkpoints (id, org_id, last_purged_seq, last_purged_hash, purged_count, created_at, signature)
           values ($1, $2, 4, $3, 4, now(), $4)`,
          [newId('ckp'), org, newest.hash, signature],
        );
        await query("set local steward.audit_purge = 'on'");
        await query('delete from audit_events where org_id = $1', [org]);
      });
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'checkpoint_invalid');
    });

    test('2a, the head alone moved back: the head no longer matches the chain', async () => {
      const org = newId('org');
      await append(org, 5);
      const keep = await row(org, 2);
      await asDmlRole(async (query) => {
        await query('update audit_chain_heads set last_seq = 2, last_hash = $2 where org_id = $1', [
          org,
          keep.hash,
        ]);
      });
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'head_mismatch');
    });

    test('2b as the tester ran it (forge.mts): deleting the event to re-insert it edited is refused', async () => {
      const org = newId('org');
      await append(org, 4);
      const r = await row(org, 4);
      await assert.rejects(
        asDmlRole(async (query) => {
          await query("set local steward.audit_purge = 'on'");
          await query('delete from audit_events where id = $1', [r.id]);
        }),
        /append-only/,
      );
      assert.equal((await audit.verify(org)).valid, true);
    });

    test('2b by someone who can switch the triggers off: the re-hashed edit fails its MAC', async () => {
      const org = newId('org');
      await append(org, 4);
      const r = await row(org, 4);
      const edited = { ...r, actor_name: 'nobody@forged.test', changes: { after: { note: 'forged' } } };
      // forge.mts: the hash recomputed with the public algorithm, the head moved to it.
      const hash = eventHash(String(r.prev_hash), {
        id: String(r.id),
        orgId: org,
        seq: 4,
        actorType: String(r.actor_type),
        actorId: r.actor_id as string | null,
        actorName: edited.actor_name,
        action: String(r.action),
        resourceType: r.resource_type as string | null,
        resourceId: r.resource_id as string | null,
        ip: r.ip as string | null,
        userAgent: r.user_agent as string | null,
        sessionId: r.session_id as string | null,
        requestId: r.request_id as string | null,
        details: r.details,
        changes: edited.changes,
        success: Boolean(r.success),
        errorMessage: r.error_message as string | null,
        sensitive: Boolean(r.sensitive),
        retentionDays: Number(r.retention_days),
        createdAt: r.created_at as Date,
      });
      await store.db.query('alter table audit_events disable trigger audit_events_append_only');
      try {
        await store.db.query(
          'update audit_events set actor_name = $2, changes = $3, hash = $4 where id = $1',
          [r.id, edited.actor_name, JSON.stringify(edited.changes), hash],
        );
        await store.db.query('update audit_chain_heads set last_hash = $2 where org_id = $1', [org, hash]);
      } finally {
        await store.db.query('alter table audit_events enable trigger audit_events_append_only');
      }
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'mac_mismatch');
      assert.equal(result.first_bad_sequence, 4);
    });

    const forgedColumns =
      'id, org_id, actor_type, actor_id, actor_name, action, resource_type, resource_id, details, success, retention_days, created_at';
    const forgedValues = (org: string) => [
      newId('evt'),
      org,
      'user',
      'usr_01JMMMMMMMMMMMMMMMMMMMMMMM',
      'manager@a.test',
      'secret.revealed',
      'secrets',
      'sec_1',
      JSON.stringify({ forged: true }),
      true,
      30,
    ];

    test('2c as the tester ran it: an event inserted without a hash is chained, and fails for want of a MAC', async () => {
      const org = newId('org');
      await append(org, 3);
      const values = forgedValues(org);
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_events (${forgedColumns}) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())`,
          values,
        );
      });
      await audit.sequencer.flushAll(); // as the running sequencer does within milliseconds
      await append(org, 1); // a genuine event after it
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'mac_missing');
      assert.equal(result.first_bad_sequence, 4);
      assert.equal(result.checked, 3);
    });

    test('2c, a forged event inserted already chained at the head (public hash, head moved): no MAC', async () => {
      const org = newId('org');
      await append(org, 3);
      const head = await row(org, 3);
      const values = forgedValues(org);
      const createdAt = new Date();
      const hash = eventHash(String(head.hash), {
        id: String(values[0]),
        orgId: org,
        seq: 4,
        actorType: 'user',
        actorId: String(values[3]),
        actorName: String(values[4]),
        action: 'secret.revealed',
        resourceType: 'secrets',
        resourceId: 'sec_1',
        ip: null,
        userAgent: null,
        sessionId: null,
        requestId: null,
        details: { forged: true },
        changes: null,
        success: true,
        errorMessage: null,
        sensitive: false,
        retentionDays: 30,
        createdAt,
      });
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_events (${forgedColumns}, seq, prev_hash, hash)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 4, $13, $14)`,
          [...values, createdAt.toISOString(), head.hash, hash],
        );
        await query('update audit_chain_heads set last_seq = 4, last_hash = $2 where org_id = $1', [
          org,
          hash,
        ]);
      });
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'mac_missing');
      assert.equal(result.first_bad_sequence, 4);
    });

    test('2c, a forged event inserted with a hash but no place in the chain (listed, never linked) is found', async () => {
      const org = newId('org');
      await append(org, 2);
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_events (${forgedColumns}, hash) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), repeat('a', 64))`,
          forgedValues(org),
        );
      });
      const listed = await audit.list(org, { action: 'secret.revealed' }, { limit: 10 });
      assert.equal(listed.length, 1, 'the list shows it');
      const result = await audit.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'unchained_event');
    });

    test('2c with a MAC: made up, copied from a genuine event, or under a key nobody holds', async () => {
      const tag = randomBytes(32).toString('base64url');
      await forgedInFreshOrg(`mac1.${keyring.current.id}.${tag}`, 'mac_mismatch'); // not a format
      await forgedInFreshOrg((genuine) => String(genuine.mac), 'mac_mismatch');
      await forgedInFreshOrg(`mac2.${await auditKeyId()}.${tag}`, 'mac_mismatch');
      await forgedInFreshOrg(`mac2.0123456789abcdef.${tag}`, 'mac_key_unknown');
      await forgedInFreshOrg('not a mac', 'mac_mismatch');
    });

    const auditKeyId = async () => {
      const [key] = await store.db.query<{ id: string }>('select id from audit_mac_keys');
      assert.ok(key, 'the audit MAC key exists once the service has started');
      return key.id;
    };

    /** One org, two genuine events, then one forged with `mac`: verify names it and why. */
    async function forgedInFreshOrg(
      macOf: string | ((genuine: Record<string, unknown>) => string),
      reason: string,
    ) {
      const org = newId('org');
      await append(org, 2);
      const mac = typeof macOf === 'string' ? macOf : macOf(await row(org, 1));
      const forged = newId('evt');
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_events (${forgedColumns}, mac) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), $12)`,
          [forged, ...forgedValues(org).slice(1), mac],
        );
      });
      assert.deepEqual(
        await audit.verify(org),
        { valid: false, checked: 2, first_bad_sequence: 3, first_bad_event_id: forged, reason },
        mac,
      );
    }

    test('2c after a purge: a forged row placed below the checkpoint, where verify does not walk, is found', async () => {
      const org = newId('org');
      let now = new Date('2026-01-01T00:00:00.000Z');
      const dated = await openAuditService({
        db: store.db,
        keyring,
        defaultRetentionDays: 30,
        clock: () => now,
      });
      for (let i = 0; i < 3; i++) await store.db.db.transaction((tx) => dated.record(tx, event(org, i)));
      now = new Date('2026-03-01T00:00:00.000Z');
      await store.db.db.transaction((tx) => dated.record(tx, { ...event(org, 9), retentionDays: 365 }));
      await dated.sequencer.flushAll();
      assert.deepEqual(
        (await dated.purge()).find((r) => r.orgId === org),
        { orgId: org, purged: 3, lastPurgedSeq: 3 },
      );
      await dated.sequencer.flushAll();
      assert.equal((await dated.verify(org)).valid, true);
      const forged = newId('evt');
      await asDmlRole(async (query) => {
        await query(
          `insert into audit_events (${forgedColumns}, seq, prev_hash, hash)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now(), 2, repeat('0', 64), repeat('b', 64))`,
          [forged, ...forgedValues(org).slice(1)],
        );
      });
      const result = await dated.verify(org);
      assert.equal(result.valid, false);
      assert.equal(result.reason, 'unchained_event');
      assert.equal(result.first_bad_event_id, forged);
      assert.equal(result.first_bad_sequence, 2);
    });

    test('the delete gate: no event without a sequence, no checkpoint from a temporary table', async () => {
      const org = newId('org');
      await append(org, 2);
      await store.db.db.transaction((tx) => audit.record(tx, event(org, 5), { link: false }));
      const newest = await row(org, 2);
      // An event not linked yet has no sequence for a checkpoint to cover: never deleted.
      await assert.rejects(
        asDmlRole(async (query) => {
          await query(
            `insert into audit_checkpoints (id, org_id, last_purged_seq, last_purged_hash, purged_count, created_at, signature)
             values ($1, $2, 1000, $3, 3, now(), repeat('0', 64))`,
            [newId('ckp'), org, newest.hash],
          );
          await query("set local steward.audit_purge = 'on'");
          await query('delete from audit_events where org_id = $1 and hash is null', [org]);
        }),
        /append-only/,
      );
      // A temporary table named like the checkpoints comes first in the search path: not consulted.
      await assert.rejects(
        asDmlRole(async (query) => {
          await query(
            'create temporary table audit_checkpoints (org_id text, last_purged_seq bigint) on commit drop',
          );
          await query('insert into audit_checkpoints values ($1, 1000)', [org]);
          await query("set local steward.audit_purge = 'on'");
          await query('delete from audit_events where org_id = $1 and seq = 2', [org]);
        }),
        /append-only/,
      );
      await audit.sequencer.flushAll();
      assert.deepEqual(await audit.verify(org), {
        valid: true,
        checked: 3,
        first_bad_sequence: null,
        first_bad_event_id: null,
      });
    });

    test('the audit MAC key cannot be replaced or deleted; only a re-wrap to another master key passes', async () => {
      const org = newId('org');
      await append(org, 3);
      const [key] = await store.db.query<{ id: string; generation: number; key_sealed: string }>(
        'select id, generation, key_sealed from audit_mac_keys',
      );
      assert.ok(key);
      // An attacker's own key, sealed under a master key of their own, under the genuine row's AAD.
      const theirs = createKeyring(randomBytes(32));
      const mine = randomBytes(32);
      const theirId = auditMacKeyId(mine);
      const theirSealed = seal(theirs, mine, auditMacKeyAad(theirId));
      const sameMasterKey = `v1.${key.key_sealed.split('.')[1]}.${theirSealed.split('.').slice(2).join('.')}`;
      for (const [statement, params] of [
        ['delete from audit_mac_keys', []],
        ['update audit_mac_keys set id = $1', [theirId]],
        ['update audit_mac_keys set id = $1, key_sealed = $2', [theirId, theirSealed]],
        ['update audit_mac_keys set generation = 0', []],
        ['update audit_mac_keys set created_at = now()', []],
        ['update audit_mac_keys set key_sealed = $1', ['not sealed']],
        // A re-wrap moves the value to another master key: the same master key is a replacement.
        ['update audit_mac_keys set key_sealed = $1', [sameMasterKey]],
      ] as const) {
        await assert.rejects(
          asDmlRole(async (query) => {
            await query(statement, [...params]);
          }),
          /append-only/,
          statement,
        );
      }
      // Replacing it by a new first key: the generation is taken.
      await assert.rejects(
        asDmlRole(async (query) => {
          await query(
            `insert into audit_mac_keys (id, generation, key_sealed, created_at) values ($1, 1, $2, now())`,
            [theirId, theirSealed],
          );
        }),
        /duplicate key|unique/,
      );
      await assert.rejects(store.db.query('truncate audit_mac_keys'), /append-only/);
      assert.deepEqual(
        await store.db.query('select id, generation, key_sealed from audit_mac_keys'),
        [key],
        'the row is as Steward wrote it',
      );
      assert.deepEqual((await audit.verify(org)).valid, true);

      // What the trigger cannot tell from a re-wrap (a value sealed under another master key), or a
      // second key added beside the first, does not open: the next start stops rather than sign
      // under a key someone else chose, and the running instance goes on verifying.
      const restore = async () => {
        await store.db.query('alter table audit_mac_keys disable trigger audit_mac_keys_append_only');
        await store.db.query('delete from audit_mac_keys where generation <> 1');
        await store.db.query('update audit_mac_keys set key_sealed = $1', [key.key_sealed]);
        await store.db.query('alter table audit_mac_keys enable trigger audit_mac_keys_append_only');
      };
      for (const statement of [
        ['update audit_mac_keys set key_sealed = $1', [theirSealed]],
        [
          'insert into audit_mac_keys (id, generation, key_sealed, created_at) values ($1, 2, $2, now())',
          [theirId, theirSealed],
        ],
      ] as const) {
        await asDmlRole(async (query) => {
          await query(statement[0], [...statement[1]]);
        });
        try {
          await assert.rejects(
            openAuditService({ db: store.db, keyring, defaultRetentionDays: 30 }),
            /the audit MAC key [0-9a-f]{16} is sealed under master key [0-9a-f]{16}, which is not loaded/,
            statement[0],
          );
          assert.deepEqual((await audit.verify(org)).valid, true);
        } finally {
          await restore();
        }
      }
      assert.deepEqual(await store.db.query('select id, generation, key_sealed from audit_mac_keys'), [key]);
      assert.deepEqual((await audit.verify(org)).valid, true);
    });

    test('the legacy boundaries cannot be added to, moved or removed', async () => {
      // Only migration 0011 writes them (this database was empty then): the owner plants one to aim at.
      await store.db.query(
        'alter table audit_legacy_boundaries disable trigger audit_legacy_boundaries_frozen',
      );
      await store.db.query(
        'insert into audit_legacy_boundaries (org_id, legacy_through_seq) values ($1, 3)',
        [newId('org')],
      );
      await store.db.query(
        'alter table audit_legacy_boundaries enable trigger audit_legacy_boundaries_frozen',
      );
      for (const statement of [
        [
          'insert into audit_legacy_boundaries (org_id, legacy_through_seq) values ($1, 1000000)',
          [newId('org')],
        ],
        ['update audit_legacy_boundaries set legacy_through_seq = 1000000', []],
        ['delete from audit_legacy_boundaries', []],
      ] as const) {
        await assert.rejects(
          asDmlRole(async (query) => {
            await query(statement[0], [...statement[1]]);
          }),
          /append-only/,
          statement[0],
        );
      }
      await assert.rejects(store.db.query('truncate audit_legacy_boundaries'), /append-only/);
    });
  });
}
