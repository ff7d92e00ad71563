// Master-key rotation end to end, as src/vault/README.md "Re-wrap" tells an operator to do it:
// values sealed in every sealed column under key A; `steward vault rewrap` (the real binary) with
// B current and A previous; then a server holding only B starts and opens everything.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { Webhook } from 'standardwebhooks';
import { createTestDatabase } from '../../test/helpers/postgres.ts';
import { STORES } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { seal } from '../crypto/envelope.ts';
import { createKeyring, type Keyring, masterKeyId } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { runMigrations } from '../db/migrate.ts';
import { totpAad } from '../identity/core.ts';
import { ADMIN, totpAt } from '../identity/test-support.ts';
import { rewrapAll, sealedColumnName } from './rewrap.ts';
import { SEALED_COLUMNS } from './sealed-columns.ts';

const PASS = 'a sturdy rotation passphrase';
const SEALED = String.raw`v1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{40,}\.[A-Za-z0-9_-]{20,}`;

/** Every text or jsonb column of the schema with how many of its rows hold a sealed value matching `pattern`. */
async function sealedEverywhere(db: DbHandle, pattern = SEALED): Promise<Map<string, number>> {
  const columns = await db.query<{ table_name: string; column_name: string }>(
    `select table_name, column_name from information_schema.columns
      where table_schema = 'public' and data_type in ('text', 'jsonb')
        and table_name not like '\\_\\_%' order by 1, 2`,
  );
  const found = new Map<string, number>();
  for (const c of columns) {
    const [row] = await db.query<{ n: number }>(
      `select count(*)::int as n from "${c.table_name}" where "${c.column_name}"::text ~ $1`,
      [pattern],
    );
    if ((row?.n ?? 0) > 0) found.set(`${c.table_name}.${c.column_name}`, row?.n ?? 0);
  }
  return found;
}

/** The real `steward` binary, with the master keys as an operator would set them. */
function steward(env: Record<string, string>, ...args: string[]) {
  return spawnSync(process.execPath, ['bin/steward.js', ...args], {
    env: { ...process.env, LOG_LEVEL: 'silent', ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
}

const b64 = (key: Buffer) => key.toString('base64');

for (const { kind, skip } of STORES) {
  describe(`master-key rotation re-wraps every sealed column (${kind})`, { skip }, () => {
    const keyA = randomBytes(32);
    const keyB = randomBytes(32);
    const idA = masterKeyId(keyA);
    const idB = masterKeyId(keyB);
    const now = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
    let dir: string;
    let url: string | undefined;
    let dropDb: (() => Promise<void>) | undefined;
    let db: DbHandle;
    let app: FastifyInstance | undefined;
    // What the world holds, to find it again under key B.
    let totpSecret = '';
    let webhook = { key: '', secret: '' };
    let secretId = '';
    let changeId = '';

    const openDb = async () => {
      db = await openDatabase(url ? { dataDir: 'unused', databaseUrl: url } : { dataDir: dir });
    };
    const closeDb = async () => {
      await app?.close();
      app = undefined;
      await db.close();
    };
    const start = async (keyring: Keyring) => {
      const config = loadConfig({ LOG_LEVEL: 'silent' });
      app = await buildApp(config, { db, keyring, clock: () => new Date(now.ms) });
      await app.ready();
      return app;
    };
    const call = (
      method: 'GET' | 'POST' | 'PUT',
      path: string,
      options: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
    ): Promise<LightMyRequestResponse> => {
      if (!app) throw new Error('no app');
      return app.inject({
        method,
        url: path,
        headers: {
          ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
          ...options.headers,
        },
        ...(options.body === undefined ? {} : { payload: options.body as Record<string, unknown> }),
      });
    };
    const tokenOf = async (email: string, password: string) => {
      const res = await call('POST', '/v1/auth/login', { body: { email, password } });
      assert.equal(res.statusCode, 200, res.body);
      return res.json().access_token as string;
    };
    const cliEnv = (current: Buffer, previous?: Buffer) => ({
      STEWARD_DATA_DIR: dir,
      DATABASE_URL: url ?? '',
      STEWARD_MASTER_KEY: b64(current),
      STEWARD_MASTER_KEY_PREVIOUS: previous ? b64(previous) : '',
    });

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'steward-rewrap-'));
      if (kind === 'postgres') {
        const created = await createTestDatabase();
        url = created.url;
        dropDb = created.drop;
      }
      await openDb();
      await runMigrations(db);
    });
    after(async () => {
      await app?.close();
      await db?.close().catch(() => {});
      await dropDb?.();
      rmSync(dir, { recursive: true, force: true });
    });

    test('key A: a value in every sealed column', async () => {
      const a = await start(createKeyring(keyA));
      await a.steward.identity.bootstrap(ADMIN);
      const admin = await tokenOf(ADMIN.email, ADMIN.password);
      const user = await call('POST', '/v1/users', {
        token: admin,
        body: { email: 'dev@example.com', password: PASS, roles: ['developer'] },
      });
      assert.equal(user.statusCode, 201, user.body);
      const dev = await tokenOf('dev@example.com', PASS);
      // users.totp_secret: the developer turns 2FA on.
      const enrolled = await call('POST', '/v1/auth/totp/enroll', { token: dev, body: { password: PASS } });
      assert.equal(enrolled.statusCode, 200, enrolled.body);
      totpSecret = enrolled.json().secret;
      const confirmed = await call('POST', '/v1/auth/totp/confirm', {
        token: dev,
        body: { code: totpAt(totpSecret, now.ms) },
      });
      assert.equal(confirmed.statusCode, 200, confirmed.body);
      // webhook_keys.secret_sealed
      const hook = await call('POST', '/v1/webhook-keys', { token: admin, body: { name: 'CRM' } });
      assert.equal(hook.statusCode, 201, hook.body);
      webhook = { key: hook.json().key, secret: hook.json().secret };
      // secret_versions.value: two versions.
      const secret = await call('POST', '/v1/secrets', {
        token: admin,
        body: { name: 'STRIPE', environment: 'development', value: 'first-value' },
      });
      assert.equal(secret.statusCode, 201, secret.body);
      secretId = secret.json().id;
      const v2 = await call('PUT', `/v1/secrets/${secretId}/value`, {
        token: admin,
        body: { value: 'second-value' },
      });
      assert.equal(v2.statusCode, 200, v2.body);
      // settings.value_sealed and setting_history.value_sealed: an encrypted setting, updated once.
      const put1 = await call('PUT', '/v1/settings/development/db', {
        token: admin,
        body: { value: { host: 'a' }, value_type: 'json', encrypted: true },
      });
      assert.equal(put1.statusCode, 201, put1.body);
      const put2 = await call('PUT', '/v1/settings/development/db', {
        token: admin,
        body: { value: { host: 'b' } },
        headers: { 'if-match': '"1"' },
      });
      assert.equal(put2.statusCode, 200, put2.body);
      // vault_changes.payload: the developer's held change, approved after the rotation.
      const policy = await call('PUT', '/v1/vault/policy', {
        token: admin,
        body: { four_eyes: true, environments: ['staging'] },
      });
      assert.equal(policy.statusCode, 200, policy.body);
      const held = await call('PUT', '/v1/settings/staging/held', {
        token: dev,
        body: { value: 'held-value', value_type: 'string', encrypted: true },
      });
      assert.equal(held.statusCode, 202, held.body);
      changeId = held.json().change_id;

      // Every column holding a sealed value is one the re-wrap walks, and the test seals in each.
      const found = await sealedEverywhere(db);
      assert.deepEqual([...found.keys()].sort(), SEALED_COLUMNS.map(sealedColumnName).sort());
      await closeDb();
    });

    test('steward vault rewrap (B current, A previous): every value moves to B, exit 0', async () => {
      const run = steward(cliEnv(keyB, keyA), 'vault', 'rewrap', '--batch-size', '2');
      assert.equal(run.status, 0, run.stderr);
      const summary = JSON.parse(run.stdout);
      assert.equal(summary.to_key_id, idB);
      assert.equal(summary.failed, 0);
      assert.equal(summary.remaining, 0);
      assert.equal(summary.rewrapped, summary.total);
      for (const name of SEALED_COLUMNS.map(sealedColumnName)) {
        assert.ok(
          summary.tables[name].rewrapped > 0,
          `${name} re-wrapped: ${JSON.stringify(summary.tables)}`,
        );
        assert.equal(summary.tables[name].remaining, 0, name);
      }
      const again = steward(cliEnv(keyB, keyA), 'vault', 'rewrap');
      assert.equal(again.status, 0, again.stderr);
      assert.equal(JSON.parse(again.stdout).total, 0);
      await openDb();
      assert.deepEqual([...(await sealedEverywhere(db, String.raw`v1\.${idA}\.`)).keys()], []);
      // One event per org per batch, in the org's chain; identity's tables too.
      const events = await db.query<{ resource_type: string }>(
        `select distinct resource_type from audit_events where action = 'secret.rewrapped'`,
      );
      assert.deepEqual(
        events.map((e) => e.resource_type).sort(),
        [...new Set(SEALED_COLUMNS.map((c) => sealedColumnName(c).split('.')[0]))].sort(),
      );
      await db.close();
    });

    test('A dropped: the server starts and every value opens', async () => {
      await openDb();
      await start(createKeyring(keyB)); // signing keys load (the active private JWK opens)
      // A TOTP user signs in with a code.
      now.ms += 60_000;
      const first = await call('POST', '/v1/auth/login', {
        body: { email: 'dev@example.com', password: PASS },
      });
      assert.equal(first.statusCode, 200, first.body);
      const mfa = await call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: first.json().mfa_token, code: totpAt(totpSecret, now.ms) },
      });
      assert.equal(mfa.statusCode, 200, mfa.body);
      assert.ok(mfa.json().access_token);
      // The webhook key verifies a signature.
      const body = '{"type":"lead.created"}';
      const ts = Math.floor(now.ms / 1000);
      const ingest = await call('POST', '/v1/ingest', {
        headers: {
          'content-type': 'application/json',
          'x-api-key': webhook.key,
          'webhook-id': 'msg_after_rotation',
          'webhook-timestamp': String(ts),
          'webhook-signature': new Webhook(webhook.secret).sign(
            'msg_after_rotation',
            new Date(ts * 1000),
            body,
          ),
        },
        body,
      });
      assert.equal(ingest.statusCode, 202, ingest.body);
      // Secrets reveal, every version.
      const admin = await tokenOf(ADMIN.email, ADMIN.password);
      for (const [version, value] of [
        [1, 'first-value'],
        [2, 'second-value'],
      ] as const) {
        const r = await call('POST', `/v1/secrets/${secretId}/reveal`, { token: admin, body: { version } });
        assert.equal(r.statusCode, 200, r.body);
        assert.equal(r.json().value, value);
      }
      // Settings and their history open.
      const setting = await call('GET', '/v1/settings/development/db', { token: admin });
      assert.equal(setting.statusCode, 200, setting.body);
      assert.deepEqual(setting.json().value, { host: 'b' });
      const history = await call('GET', '/v1/settings/development/db/history', { token: admin });
      assert.equal(history.statusCode, 200, history.body);
      assert.deepEqual(history.json().data[0].old_value, { host: 'a' });
      // The held change's payload opens: approving applies it.
      const approved = await call('POST', `/v1/vault/changes/${changeId}/approve`, { token: admin });
      assert.equal(approved.statusCode, 200, approved.body);
      assert.equal(approved.json().status, 'applied');
      const held = await call('GET', '/v1/settings/staging/held', { token: admin });
      assert.equal(held.json().value, 'held-value');
      await closeDb();
    });

    test('a value the run cannot re-wrap is reported: exit 1, the table named, failed and remaining', async () => {
      await openDb();
      const [dev] = await db.query<{ id: string }>(`select id from users where email = 'dev@example.com'`);
      assert.ok(dev);
      // A seed sealed under a key neither the server nor the command holds.
      const stray = seal(createKeyring(randomBytes(32)), 'JBSWY3DPEHPK3PXP', totpAad(dev.id));
      await db.query('update users set totp_secret = $1 where id = $2', [stray, dev.id]);
      await db.close();
      const run = steward(cliEnv(keyB, keyA), 'vault', 'rewrap');
      assert.equal(run.status, 1, run.stdout);
      const summary = JSON.parse(run.stdout);
      assert.equal(summary.failed, 1);
      assert.equal(summary.remaining, 1);
      assert.deepEqual(summary.tables['users.totp_secret'], {
        total: 1,
        rewrapped: 0,
        failed: 1,
        remaining: 1,
      });
      assert.match(run.stderr, /users\.totp_secret: 1 value\(s\) still under another master key/);
      await openDb();
      // In-process too (a server holding both keys): the same counts, nothing re-wrapped.
      const both = createKeyring(keyB, [keyA]);
      const server = await start(both);
      const result = await rewrapAll({ db, keyring: both, audit: server.steward.audit });
      assert.equal(result.remaining, 1);
      assert.equal(result.failed, 1);
      assert.equal(result.rewrapped, 0);
    });

    // Only a server on PostgreSQL writes while the command runs: on PGlite the command needs the
    // data folder to itself.
    if (kind === 'postgres')
      test('values written under the old key during a run raise its total: progress never passes 100 %', async () => {
        // A server still writing under the old key while the command runs adds rows ahead of the
        // walk; until session 10 they were re-wrapped but not counted, and progress read `616/604`.
        const server = await start(createKeyring(keyB, [keyA]));
        const admin = await tokenOf(ADMIN.email, ADMIN.password);
        const create = async (name: string) => {
          const res = await call('POST', '/v1/secrets', {
            token: admin,
            body: { name, environment: 'development', value: 'v1' },
          });
          assert.equal(res.statusCode, 201, res.body);
          return res.json().id as string;
        };
        // A long walk (BULK's 30 versions first), and a secret after them that changes during it.
        const bulk = await create('BULK');
        for (let v = 2; v <= 30; v++) {
          const res = await call('PUT', `/v1/secrets/${bulk}/value`, {
            token: admin,
            body: { value: `v${v}` },
          });
          assert.equal(res.statusCode, 200, res.body);
        }
        const id = await create('DURING_RUN');
        const versions = SEALED_COLUMNS.filter((c) => sealedColumnName(c) === 'secret_versions.value');
        const seen: Array<[number, number]> = [];
        const writes: Promise<LightMyRequestResponse>[] = [];
        // A run that moves everything from B (what the server writes) to A, one row a batch; the
        // server writes three more versions of the secret (rows after the walk's position) meanwhile.
        const result = await rewrapAll(
          {
            db,
            keyring: createKeyring(keyA, [keyB]),
            audit: server.steward.audit,
            batchSize: 1,
            columns: versions,
          },
          (done, total) => {
            seen.push([done, total]);
            if (done > 0 && writes.length < 3)
              writes.push(
                call('PUT', `/v1/secrets/${id}/value`, {
                  token: admin,
                  body: { value: `v${writes.length + 2}` },
                }),
              );
          },
        );
        for (const res of await Promise.all(writes)) assert.equal(res.statusCode, 200, res.body);
        const [first] = seen;
        assert.ok(first);
        const last = seen.at(-1) ?? first;
        for (const [done, total] of seen) assert.ok(done <= total, `progress ${done}/${total}`);
        assert.ok(
          result.rewrapped > first[1],
          `the run met rows written after it began (${result.rewrapped} > ${first[1]})`,
        );
        assert.deepEqual(last, [result.rewrapped, result.total]);
        assert.equal(result.failed, 0);
        assert.equal(result.remaining, 0);
      });
  });
}
