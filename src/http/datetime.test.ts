// Dates the format accepts but the database cannot store: 400 on every route that takes one,
// never 500 (SPEC §0), and nothing written.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { createTestDatabase, postgresSkip } from '../../test/helpers/postgres.ts';
import { openDatabase } from '../db/client.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { isoDateTime } from './datetime.ts';

const OUT_OF_RANGE = [
  '0000-01-01T00:00:00Z',
  '0001-01-01T00:30:00+01:00', // year 0 in UTC
  '9999-12-31T23:59:59-14:00', // year 10000 in UTC
  '0049-01-01T00:00:00Z', // stored, but read back as 2049
  '0099-12-31T23:59:59Z',
];

test('isoDateTime: years 100 to 9999 in UTC, whatever the offset', () => {
  for (const value of OUT_OF_RANGE) assert.equal(isoDateTime.safeParse(value).success, false, value);
  for (const value of [
    '0100-01-01T00:00:00Z',
    '9999-12-31T23:59:59Z',
    '9999-12-31T23:59:59+14:00',
    '2030-06-01T12:00:00.123+02:00',
  ])
    assert.equal(isoDateTime.safeParse(value).success, true, value);
  assert.equal(isoDateTime.safeParse('2030-02-30T00:00:00Z').success, false, 'no 30 February');
});

describe('out-of-range dates over HTTP (pglite)', () => {
  let v: VaultTestApp;
  let secretId: string;
  let keyId: string;
  before(async () => {
    v = await vaultTestApp('pglite');
    const secret = await v.req('POST', '/v1/secrets', {
      token: v.tokens.manager,
      body: { name: 'DATED', environment: 'production', value: 'x' },
    });
    assert.equal(secret.statusCode, 201, secret.body);
    secretId = secret.json().id;
    const key = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name: 'dated', scopes: ['*'] },
    });
    assert.equal(key.statusCode, 201, key.body);
    keyId = key.json().id;
  });
  after(() => v.close());

  test('secrets, keys, grants and audit filters answer 400 naming the field; nothing is written', async () => {
    const count = async (table: string) =>
      Number((await v.t.store.db.query<{ n: string }>(`select count(*) as n from ${table}`))[0]?.n);
    const before = {
      secrets: await count('secrets'),
      keys: await count('api_keys'),
      grants: await count('grants'),
    };
    for (const at of OUT_OF_RANGE) {
      const cases: [string, string, Record<string, unknown> | undefined, string][] = [
        [
          'POST',
          '/v1/secrets',
          { name: 'Y1', environment: 'production', value: 'x', expires_at: at },
          'body.expires_at',
        ],
        ['PATCH', `/v1/secrets/${secretId}`, { expires_at: at }, 'body.expires_at'],
        ['POST', '/v1/keys', { name: 'k', scopes: ['*'], expires_at: at }, 'body.expires_at'],
        ['PATCH', `/v1/keys/${keyId}`, { expires_at: at }, 'body.expires_at'],
        [
          'POST',
          '/v1/authz/grants',
          {
            principal: v.ids.viewer,
            permission: 'secrets:read',
            resource_type: 'secrets',
            effect: 'allow',
            expires_at: at,
          },
          'body.expires_at',
        ],
        ['GET', `/v1/audit/events?since=${encodeURIComponent(at)}`, undefined, 'querystring.since'],
        ['GET', `/v1/audit/export?until=${encodeURIComponent(at)}`, undefined, 'querystring.until'],
      ];
      for (const [method, url, body, path] of cases) {
        const res = await v.req(method as 'POST', url, { token: v.tokens.admin, ...(body ? { body } : {}) });
        assert.equal(res.statusCode, 400, `${method} ${url} ${at}: ${res.body}`);
        assert.equal(res.json().code, 'validation_failed');
        assert.deepEqual(
          [...new Set(res.json().errors.map((e: { path: string }) => e.path))],
          [path],
          `${method} ${url} ${at}`,
        );
      }
    }
    assert.deepEqual(
      {
        secrets: await count('secrets'),
        keys: await count('api_keys'),
        grants: await count('grants'),
      },
      before,
    );
    const secret = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
    assert.equal(secret.json().expires_at, null);
  });
});

describe('dates read back from PostgreSQL whatever its TimeZone', { skip: postgresSkip }, () => {
  test('sessions are in UTC: an old instant is read as itself, not an Invalid Date', async () => {
    const database = await createTestDatabase();
    try {
      const admin = new pg.Client({ connectionString: database.url });
      await admin.connect();
      const name = new URL(database.url).pathname.slice(1);
      await admin.query(`alter database ${name} set timezone = 'Europe/Paris'`);
      await admin.end();
      const db = await openDatabase({ dataDir: 'unused', databaseUrl: database.url, poolSize: 1 });
      try {
        // In Europe/Paris the server writes 1800 with its local mean time offset (+00:09:21),
        // which new Date() cannot read: expiry dates of secrets and keys answered 500.
        const [row] = await db.query<{ zone: string; at: string }>(
          "select current_setting('TimeZone') as zone, '1800-01-01T00:00:00Z'::timestamptz::text as at",
        );
        assert.equal(row?.zone, 'UTC');
        assert.equal(new Date(row?.at ?? '').toISOString(), '1800-01-01T00:00:00.000Z');
      } finally {
        await db.close();
      }
    } finally {
      await database.drop();
    }
  });
});
