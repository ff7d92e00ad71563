// Events written before migration 0011 have no MAC. The migration records, per org, how far such
// events reach; these tests write events as Steward did before it, then run the real migration.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NodePgDatabase } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgliteDatabase } from 'drizzle-orm/pglite';
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator';
import { createTestDatabase } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { MIGRATIONS_FOLDER, runMigrations } from '../db/migrate.ts';
import { type EventContent, eventHash, GENESIS_HASH } from './chain.ts';
import { type AuditService, openAuditService } from './service.ts';

const BEFORE_MACS = '0010_vault_change_context';

/** Applies the migrations up to and including `lastTag`, from a copy of the folder cut there. */
async function migrateThrough(db: DbHandle, lastTag: string): Promise<void> {
  const journal = JSON.parse(readFileSync(join(MIGRATIONS_FOLDER, 'meta/_journal.json'), 'utf8')) as {
    entries: { tag: string }[];
  };
  const cut = journal.entries.findIndex((e) => e.tag === lastTag);
  assert.ok(cut >= 0, `no migration ${lastTag}`);
  const folder = mkdtempSync(join(tmpdir(), 'steward-migrations-'));
  try {
    mkdirSync(join(folder, 'meta'));
    const entries = journal.entries.slice(0, cut + 1);
    writeFileSync(join(folder, 'meta/_journal.json'), JSON.stringify({ ...journal, entries }));
    for (const { tag } of entries)
      copyFileSync(join(MIGRATIONS_FOLDER, `${tag}.sql`), join(folder, `${tag}.sql`));
    const config = { migrationsFolder: folder };
    if (db.kind === 'pglite') await migratePglite(db.db as unknown as PgliteDatabase, config);
    else await migratePg(db.db as unknown as NodePgDatabase, config);
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
}

for (const { kind, skip } of STORES) {
  describe(`events written before MACs existed, on ${kind}`, { skip }, () => {
    let db: DbHandle;
    let dispose: () => Promise<void>;
    let audit: AuditService;
    const linkedAndPending = newId('org'); // 3 linked, 2 committed but not linked yet
    const pendingOnly = newId('org'); // 3 not linked yet, no chain head
    const newOrg = newId('org'); // no event before the upgrade
    let planted = '';

    /** Writes events as Steward did before migration 0011: no MAC column; linked ones chained with the head. */
    async function writeAsBefore(orgId: string, linked: number, pending: number) {
      let prev = GENESIS_HASH;
      for (let i = 0; i < linked + pending; i++) {
        const content: EventContent = {
          id: newId('evt'),
          orgId,
          actorType: 'user',
          actorId: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA',
          actorName: 'Ada',
          action: 'key.created',
          resourceType: 'api_keys',
          resourceId: `key_${i}`,
          ip: null,
          userAgent: null,
          sessionId: null,
          requestId: null,
          details: { i, nested: { b: 1, a: 'x' } },
          changes: null,
          success: true,
          errorMessage: null,
          sensitive: false,
          retentionDays: 365,
          createdAt: new Date(),
        };
        const seq = i < linked ? i + 1 : null;
        const hash = seq === null ? null : eventHash(prev, { ...content, seq });
        await db.query(
          `insert into audit_events (id, org_id, seq, actor_type, actor_id, actor_name, action, resource_type, resource_id,
             details, success, sensitive, retention_days, created_at, prev_hash, hash)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`,
          [
            content.id,
            orgId,
            seq,
            content.actorType,
            content.actorId,
            content.actorName,
            content.action,
            content.resourceType,
            content.resourceId,
            JSON.stringify(content.details),
            content.success,
            content.sensitive,
            content.retentionDays,
            content.createdAt.toISOString(),
            seq === null ? null : prev,
            hash,
          ],
        );
        if (hash !== null) prev = hash;
      }
      if (linked > 0) {
        await db.query('insert into audit_chain_heads (org_id, last_seq, last_hash) values ($1, $2, $3)', [
          orgId,
          linked,
          prev,
        ]);
      }
    }

    before(async () => {
      if (kind === 'pglite') {
        db = await openDatabase({ dataDir: 'memory://' });
        dispose = () => db.close();
      } else {
        const { url, drop } = await createTestDatabase();
        db = await openDatabase({ dataDir: 'unused', databaseUrl: url, poolSize: 5 });
        dispose = async () => {
          await db.close();
          await drop();
        };
      }
      await migrateThrough(db, BEFORE_MACS);
      await writeAsBefore(linkedAndPending, 3, 2);
      await writeAsBefore(pendingOnly, 0, 3);
      await runMigrations(db); // 0011 and anything after it
      audit = await openAuditService({
        db,
        keyring: createKeyring(randomBytes(32)),
        defaultRetentionDays: 30,
      });
    });
    after(() => dispose?.());

    const append = async (orgId: string, count: number) => {
      for (let i = 0; i < count; i++) {
        await db.db.transaction((tx) =>
          audit.record(tx, { orgId, actor: { type: 'system' }, action: 'audit.exported', details: { i } }),
        );
      }
      await audit.sequencer.flushOrg(orgId);
    };

    test('the migration records each org: its linked events plus those the sequencer had not linked yet', async () => {
      const rows = await db.query<{ org_id: string; legacy_through_seq: string | number }>(
        'select org_id, legacy_through_seq from audit_legacy_boundaries order by org_id',
      );
      assert.deepEqual(
        rows.map((r) => [r.org_id, Number(r.legacy_through_seq)]).sort(),
        [
          [linkedAndPending, 5],
          [pendingOnly, 3],
        ].sort(),
      );
    });

    test('events from before verify without a MAC, events after need one', async () => {
      await audit.sequencer.flushOrg(linkedAndPending); // the two left unlinked, read back
      assert.deepEqual(await audit.verify(linkedAndPending), {
        valid: true,
        checked: 5,
        first_bad_sequence: null,
        first_bad_event_id: null,
      });
      await append(linkedAndPending, 2);
      assert.equal((await audit.verify(linkedAndPending)).checked, 7);
      await append(newOrg, 2);
      assert.equal((await audit.verify(newOrg)).checked, 2);
      // One inserted through SQL past the boundary has no MAC: not legacy, forged.
      planted = newId('evt');
      await db.query(
        `insert into audit_events (id, org_id, actor_type, action, success, retention_days, created_at)
         values ($1, $2, 'user', 'secret.revealed', true, 30, now())`,
        [planted, linkedAndPending],
      );
      assert.deepEqual(await audit.verify(linkedAndPending), {
        valid: false,
        checked: 7,
        first_bad_sequence: 8,
        first_bad_event_id: planted,
        reason: 'mac_missing',
      });
    });

    test('an event slipped in ahead of the unlinked legacy ones pushes one of them past the boundary', async () => {
      // The smallest id of all: the sequencer links it first, into a place kept for a legacy event.
      const early = 'evt_00000000000000000000000000';
      await db.query(
        `insert into audit_events (id, org_id, actor_type, action, success, retention_days, created_at)
         values ($1, $2, 'user', 'secret.revealed', true, 30, now())`,
        [early, pendingOnly],
      );
      const result = await audit.verify(pendingOnly);
      const [pushed] = await db.query<{ id: string }>(
        'select id from audit_events where org_id = $1 and seq = 4',
        [pendingOnly],
      );
      assert.notEqual(pushed?.id, early);
      assert.deepEqual(result, {
        valid: false,
        checked: 3,
        first_bad_sequence: 4,
        first_bad_event_id: pushed?.id,
        reason: 'mac_missing',
      });
    });
  });
}
