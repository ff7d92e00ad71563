// The master-key rotation of src/vault/README.md "Re-wrap", followed to the letter, must leave the
// audit trail verifiable: events and a purge checkpoint written under key A; servers restarted with
// B current and A previous; the real `steward vault rewrap`; A dropped. Every event, old and new,
// and the checkpoint still verify, in the server and through `steward audit verify`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createTestDatabase } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring, type Keyring, masterKeyId } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { runMigrations } from '../db/migrate.ts';
import { ADMIN } from '../identity/test-support.ts';
import type { AuditEventInput } from './service.ts';

/** The real `steward` binary, with the master keys as an operator would set them. */
function steward(env: Record<string, string>, ...args: string[]) {
  return spawnSync(process.execPath, ['bin/steward.js', ...args], {
    env: { ...process.env, LOG_LEVEL: 'silent', ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
}

const DAY = 86_400_000;

for (const { kind, skip } of STORES) {
  describe(`master-key rotation as documented keeps the audit trail verifiable (${kind})`, { skip }, () => {
    const keyA = randomBytes(32);
    const keyB = randomBytes(32);
    const now = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
    const purgedOrg = newId('org'); // three events purged under A: its chain starts at a checkpoint
    const keptOrg = newId('org'); // every event kept
    let defaultOrg = '';
    let dir: string;
    let url: string | undefined;
    let dropDb: (() => Promise<void>) | undefined;
    let db: DbHandle;
    let app: FastifyInstance | undefined;

    const openDb = async () => {
      db = await openDatabase(url ? { dataDir: 'unused', databaseUrl: url } : { dataDir: dir });
    };
    const stop = async () => {
      await app?.close();
      app = undefined;
      await db.close();
    };
    /** A server holding `keyring`, as `steward serve` builds it. */
    const start = async (keyring: Keyring) => {
      await openDb();
      app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
        db,
        keyring,
        clock: () => new Date(now.ms),
      });
      await app.ready();
      return app;
    };
    const cliEnv = (current: Buffer, previous?: Buffer) => ({
      STEWARD_DATA_DIR: dir,
      DATABASE_URL: url ?? '',
      STEWARD_MASTER_KEY: current.toString('base64'),
      STEWARD_MASTER_KEY_PREVIOUS: previous ? previous.toString('base64') : '',
    });
    const event = (orgId: string, i: number, retentionDays = 365): AuditEventInput => ({
      orgId,
      actor: { type: 'user', id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA', name: 'Ada' },
      action: 'key.created',
      resource: { type: 'api_keys', id: `key_${i}` },
      details: { i },
      retentionDays,
    });
    /** Every org's verdict, as the server answers it. */
    const verifyAll = async (server: FastifyInstance) => {
      const audit = server.steward.audit;
      await audit.sequencer.flushAll();
      return Object.fromEntries(
        await Promise.all([defaultOrg, purgedOrg, keptOrg].map(async (o) => [o, await audit.verify(o)])),
      );
    };
    const valid = (checked: number) => ({
      valid: true,
      checked,
      first_bad_sequence: null,
      first_bad_event_id: null,
    });

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'steward-audit-rotation-'));
      if (kind === 'postgres') {
        const created = await createTestDatabase();
        url = created.url;
        dropDb = created.drop;
      }
      await openDb();
      await runMigrations(db);
      await db.close();
    });
    after(async () => {
      await app?.close();
      await db?.close().catch(() => {});
      await dropDb?.();
      rmSync(dir, { recursive: true, force: true });
    });

    test('key A: events in three orgs, one org purged behind a signed checkpoint', async () => {
      const a = await start(createKeyring(keyA));
      await a.steward.identity.bootstrap(ADMIN); // org default: its own events
      const [org] = await db.query<{ id: string }>(`select id from organizations where slug = 'default'`);
      defaultOrg = org?.id ?? '';
      const audit = a.steward.audit;
      for (let i = 0; i < 3; i++) {
        await db.db.transaction((tx) => audit.record(tx, event(purgedOrg, i, 1)));
        await db.db.transaction((tx) => audit.record(tx, event(keptOrg, i)));
      }
      now.ms += 2 * DAY;
      await db.db.transaction((tx) => audit.record(tx, event(purgedOrg, 3)));
      await audit.sequencer.flushAll();
      const purged = await audit.purge();
      assert.deepEqual(
        purged.find((r) => r.orgId === purgedOrg),
        { orgId: purgedOrg, purged: 3, lastPurgedSeq: 3 },
      );
      const [checkpoint] = await db.query<{ n: number }>(
        'select count(*)::int as n from audit_checkpoints where org_id = $1',
        [purgedOrg],
      );
      assert.equal(checkpoint?.n, 1);
      const verdicts = await verifyAll(a);
      assert.deepEqual(verdicts[purgedOrg], valid(2)); // event 4 and audit.purged
      assert.deepEqual(verdicts[keptOrg], valid(3));
      assert.equal(verdicts[defaultOrg]?.valid, true);
      await stop();
    });

    test('servers restarted with B current and A previous; steward vault rewrap exits 0', async () => {
      const both = await start(createKeyring(keyB, [keyA]));
      now.ms += DAY;
      for (const orgId of [purgedOrg, keptOrg])
        await db.db.transaction((tx) => both.steward.audit.record(tx, event(orgId, 10)));
      const verdicts = await verifyAll(both);
      assert.deepEqual(verdicts[purgedOrg], valid(3));
      assert.deepEqual(verdicts[keptOrg], valid(4));
      await stop(); // an embedded data folder is locked by its server
      const run = steward(cliEnv(keyB, keyA), 'vault', 'rewrap');
      assert.equal(run.status, 0, run.stderr);
      const summary = JSON.parse(run.stdout);
      assert.equal(summary.to_key_id, masterKeyId(keyB));
      assert.equal(summary.remaining, 0);
      // The audit trail's own key is one of the sealed values the command moves to B.
      assert.deepEqual(summary.tables['audit_mac_keys.key_sealed'], {
        total: 1,
        rewrapped: 1,
        failed: 0,
        remaining: 0,
      });
    });

    test('A dropped: every event, old and new, and the checkpoint verify', async () => {
      const onlyB = await start(createKeyring(keyB));
      now.ms += DAY;
      for (const orgId of [purgedOrg, keptOrg])
        await db.db.transaction((tx) => onlyB.steward.audit.record(tx, event(orgId, 20)));
      const verdicts = await verifyAll(onlyB);
      // Each org's trail also holds the re-wrap's event: one more than written here.
      assert.deepEqual(verdicts[purgedOrg], valid(5), 'the checkpoint signed under A still verifies');
      assert.deepEqual(verdicts[keptOrg], valid(6), 'events MACed under A still verify');
      assert.equal(verdicts[defaultOrg]?.valid, true, JSON.stringify(verdicts[defaultOrg]));
      const rewrapped = await db.query<{ org_id: string }>(
        `select org_id from audit_events where action = 'secret.rewrapped' and resource_type = 'audit_mac_keys'`,
      );
      assert.deepEqual(
        rewrapped.map((r) => r.org_id).sort(),
        [defaultOrg, purgedOrg, keptOrg].sort(),
        "each org's trail records the re-wrap of the key that authenticates it",
      );
      await stop();
      // The operator's own check, with only B set.
      const run = steward(cliEnv(keyB), 'audit', 'verify');
      assert.equal(run.status, 0, run.stdout + run.stderr);
      const lines = run.stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { org_id: string; valid: boolean });
      assert.deepEqual(
        lines.map((l) => [l.org_id, l.valid]).sort(),
        [defaultOrg, purgedOrg, keptOrg].map((o) => [o, true]).sort(),
      );
    });
  });
}
