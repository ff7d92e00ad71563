// `steward audit purge` run while every server is stopped: nothing else will link what it writes, so
// the command must leave its own audit.purged events linked (on PostgreSQL they are written
// unlinked, for a sequencer; until session 10 they stayed so until a server started).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import { runMigrations } from '../db/migrate.ts';
import { openAuditService } from './service.ts';

for (const { kind, skip } of STORES) {
  describe(`steward audit purge with the servers stopped (${kind})`, { skip }, () => {
    const masterKey = randomBytes(32);
    const orgs = [newId('org'), newId('org')];
    let dir: string;
    let url: string | undefined;
    let dropDb: (() => Promise<void>) | undefined;

    const openDb = (): Promise<DbHandle> =>
      openDatabase(url ? { dataDir: 'unused', databaseUrl: url } : { dataDir: dir });

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'steward-audit-purge-cli-'));
      if (kind === 'postgres') ({ url, drop: dropDb } = await createTestDatabase());
      const db = await openDb();
      try {
        await runMigrations(db);
        // Four events per org, a year old, kept 30 days: all past their retention.
        const audit = await openAuditService({
          db,
          keyring: createKeyring(masterKey),
          defaultRetentionDays: 30,
          clock: () => new Date(Date.now() - 365 * 86_400_000),
        });
        for (const orgId of orgs)
          await db.db.transaction((tx) =>
            audit.record(
              tx,
              [0, 1, 2, 3].map((i) => ({
                orgId,
                actor: { type: 'system' as const, name: 'test' },
                action: 'setting.changed' as const,
                details: { i },
              })),
            ),
          );
        await audit.sequencer.flushAll();
      } finally {
        await db.close();
      }
    });
    after(async () => {
      await dropDb?.();
      rmSync(dir, { recursive: true, force: true });
    });

    test('leaves its audit.purged events linked, and every chain verifies', async () => {
      const run = spawnSync(process.execPath, ['bin/steward.js', 'audit', 'purge'], {
        env: {
          ...process.env,
          LOG_LEVEL: 'silent',
          STEWARD_DATA_DIR: dir,
          DATABASE_URL: url ?? '',
          STEWARD_MASTER_KEY: masterKey.toString('base64'),
          STEWARD_MASTER_KEY_PREVIOUS: '',
        },
        encoding: 'utf8',
        timeout: 120_000,
      });
      assert.equal(run.status, 0, run.stderr);
      const results = run.stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line));
      assert.deepEqual(results.map((r) => [r.orgId, r.purged]).sort(), orgs.map((o) => [o, 4]).sort());
      const db = await openDb();
      try {
        const unlinked = await db.query<{ id: string; action: string }>(
          'select id, action from audit_events where hash is null',
        );
        assert.deepEqual(unlinked, []);
        const purged = await db.query<{ org_id: string; seq: string | number }>(
          "select org_id, seq from audit_events where action = 'audit.purged' order by org_id",
        );
        assert.deepEqual(
          purged.map((r) => [r.org_id, Number(r.seq)]),
          [...orgs].sort().map((o) => [o, 5]),
        );
        const audit = await openAuditService({
          db,
          keyring: createKeyring(masterKey),
          defaultRetentionDays: 30,
        });
        for (const orgId of orgs)
          assert.deepEqual(await audit.verify(orgId), {
            valid: true,
            checked: 1,
            first_bad_sequence: null,
            first_bad_event_id: null,
          });
      } finally {
        await db.close();
      }
    });
  });
}
