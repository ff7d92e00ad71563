import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PGlite } from '@electric-sql/pglite';
import { openAuditService } from '../audit/service.ts';
import { loadKeyring } from '../crypto/keyring.ts';
import { openDatabase } from '../db/client.ts';

/** Runs the real `steward` bin against an embedded data folder. */
function steward(dir: string, ...args: string[]) {
  return spawnSync(process.execPath, ['bin/steward.js', ...args], {
    env: { ...process.env, STEWARD_DATA_DIR: dir, DATABASE_URL: '', LOG_LEVEL: 'silent' },
    encoding: 'utf8',
    timeout: 60000,
  });
}

describe('steward CLI', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'steward-cli-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('--help on every command', () => {
    for (const args of [
      ['--help'],
      ['serve', '--help'],
      ['migrate', '--help'],
      ['audit', 'verify', '--help'],
      ['audit', 'export', '--help'],
    ]) {
      const run = steward(dir, ...args);
      assert.equal(run.status, 0, args.join(' '));
      assert.match(run.stdout, /Usage: steward/);
    }
  });

  test('migrate, then verify and export the audit trail', async () => {
    const migrated = steward(dir, 'migrate');
    assert.equal(migrated.status, 0, migrated.stderr);
    assert.match(migrated.stdout, /migrations applied \(pglite\)/);
    // Put a few events in, unlinked, as a server would write them (each with its MAC under the data
    // folder's master key: rows inserted through SQL would not verify), then let the CLI link and verify them.
    const db = await openDatabase({ dataDir: dir });
    const keyring = loadKeyring({ dataDir: dir, embedded: true, warn: () => {} });
    const audit = await openAuditService({ db, keyring, defaultRetentionDays: 365 });
    for (let i = 1; i <= 3; i++) {
      const event = {
        orgId: 'org_01JAAAAAAAAAAAAAAAAAAAAAAA',
        actor: { type: 'system' },
        action: 'org.created',
      } as const;
      await audit.record(db.db, event, { link: false });
    }
    await db.close();
    const verified = steward(dir, 'audit', 'verify');
    assert.equal(verified.status, 0, verified.stderr);
    assert.deepEqual(JSON.parse(verified.stdout), {
      org_id: 'org_01JAAAAAAAAAAAAAAAAAAAAAAA',
      valid: true,
      checked: 3,
      first_bad_sequence: null,
      first_bad_event_id: null,
    });
    const out = join(dir, 'export.csv');
    const exported = steward(
      dir,
      'audit',
      'export',
      '--org',
      'org_01JAAAAAAAAAAAAAAAAAAAAAAA',
      '--format',
      'csv',
      '--out',
      out,
    );
    assert.equal(exported.status, 0, exported.stderr);
    assert.equal(readFileSync(out, 'utf8').trim().split('\r\n').length, 4);
    // A forwarder continues after the last sequence it wrote: oldest first from there.
    const org = ['audit', 'export', '--org', 'org_01JAAAAAAAAAAAAAAAAAAAAAAA'];
    const forward = steward(dir, ...org, '--after-seq', '1');
    assert.equal(forward.status, 0, forward.stderr);
    assert.deepEqual(
      forward.stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line).sequence),
      [2, 3],
    );
    assert.equal(steward(dir, ...org, '--after-seq', '3').stdout, '');
    for (const bad of ['-1', '1.5', 'x', '1e3', '']) {
      const refused = steward(dir, ...org, '--after-seq', bad);
      assert.notEqual(refused.status, 0, bad);
      assert.match(refused.stderr, /--after-seq must be a whole number/, bad);
    }
  });

  test('a master key dropped too early: one line naming the key and what to do, exit 2, no stack', () => {
    const own = mkdtempSync(join(tmpdir(), 'steward-cli-key-'));
    try {
      const keyOf = () => randomBytes(32).toString('base64');
      const [a, b] = [keyOf(), keyOf()];
      const withKey = (key: string, ...args: string[]) =>
        spawnSync(process.execPath, ['bin/steward.js', ...args], {
          env: {
            ...process.env,
            STEWARD_DATA_DIR: own,
            DATABASE_URL: '',
            LOG_LEVEL: 'silent',
            STEWARD_MASTER_KEY: key,
          },
          encoding: 'utf8',
          timeout: 60000,
        });
      // The first run seals the audit trail's key under A; dropping A without a re-wrap strands it.
      const first = withKey(a, 'audit', 'verify');
      assert.equal(first.status, 0, first.stderr);
      const stranded = withKey(b, 'audit', 'verify');
      assert.equal(stranded.status, 2, stranded.stderr);
      assert.match(
        stranded.stderr,
        /^steward: the audit MAC key [0-9a-f]{16} is sealed under master key [0-9a-f]{16}, which is not loaded: put that key back in STEWARD_MASTER_KEY_PREVIOUS, run "steward vault rewrap"/,
      );
      assert.equal(stranded.stderr.trim().split('\n').length, 1, stranded.stderr);
    } finally {
      rmSync(own, { recursive: true, force: true });
    }
  });

  test('verify exits 1 on a broken chain', async () => {
    const db = await PGlite.create(dir);
    await db.exec('alter table audit_events disable trigger audit_events_append_only');
    await db.exec("update audit_events set action = 'user.login' where seq = 2");
    await db.close();
    const verified = steward(dir, 'audit', 'verify', '--org', 'org_01JAAAAAAAAAAAAAAAAAAAAAAA');
    assert.equal(verified.status, 1);
    assert.equal(JSON.parse(verified.stdout).first_bad_sequence, 2);
  });
});
