import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eq } from 'drizzle-orm';
import { STORES } from '../../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { checkSchema, validate } from './json-schema.ts';
import { settingHistory, settings } from './schema.ts';

const SECRET = 'hunter2-db-password-never-shown';

describe('JSON Schema subset', () => {
  const schema = {
    type: 'object',
    required: ['host', 'port'],
    additionalProperties: false,
    properties: {
      host: { type: 'string', minLength: 1, maxLength: 10, pattern: '^[a-z.]+$' },
      port: { type: 'integer', minimum: 1, maximum: 65535 },
      tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 2 },
      ratio: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1, multipleOf: 0.25 },
      mode: { const: 'fast' },
      opt: { type: ['string', 'null'] },
    },
  };
  test('accepts a valid document', () => {
    assert.deepEqual(checkSchema(schema), []);
    assert.deepEqual(
      validate(schema, { host: 'db.local', port: 5432, tags: ['a'], ratio: 0.5, mode: 'fast', opt: null }),
      [],
    );
  });
  test('reports each failure with its path', () => {
    const cases: [unknown, string][] = [
      [{ port: 1 }, '/host'],
      [{ host: 'x', port: 0 }, '/port'],
      [{ host: 'x', port: 1.5 }, '/port'],
      [{ host: 'X', port: 1 }, '/host'],
      [{ host: 'abcdefghijklmnop', port: 1 }, '/host'],
      [{ host: 'x', port: 1, tags: ['c'] }, '/tags/0'],
      [{ host: 'x', port: 1, tags: ['a', 'a', 'b'] }, '/tags'],
      [{ host: 'x', port: 1, ratio: 1 }, '/ratio'],
      [{ host: 'x', port: 1, ratio: 0.3 }, '/ratio'],
      [{ host: 'x', port: 1, mode: 'slow' }, '/mode'],
      [{ host: 'x', port: 1, opt: 3 }, '/opt'],
      [{ host: 'x', port: 1, extra: true }, '/extra'],
      [[], ''],
    ];
    for (const [value, path] of cases) {
      const errors = validate(schema, value);
      assert.ok(errors.length > 0, JSON.stringify(value));
      assert.equal(errors[0]?.path, path, JSON.stringify(value));
    }
  });
  test('refuses unsupported keywords and malformed ones', () => {
    assert.ok(checkSchema({ anyOf: [] }).length > 0);
    assert.ok(checkSchema({ $ref: '#/x' }).length > 0);
    assert.ok(checkSchema({ type: 'str' }).length > 0);
    assert.ok(checkSchema({ minLength: -1 }).length > 0);
    assert.ok(checkSchema({ pattern: '(' }).length > 0);
    assert.ok(checkSchema({ properties: { a: { format: 'email' } } }).length > 0);
    assert.deepEqual(checkSchema({ title: 'x', description: 'y', $schema: 'z', default: 1 }), []);
  });
  test('"constructor" and other prototype names are ordinary keys', () => {
    assert.deepEqual(validate({ type: 'object', required: ['constructor'] }, {}).length, 1);
    assert.deepEqual(
      validate({ type: 'object', properties: {}, additionalProperties: false }, { toString: 1 }).length,
      1,
    );
  });
});

for (const store of STORES) {
  describe(`settings (${store.kind})`, { skip: store.skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(store.kind);
    });
    after(() => v?.close());

    const put = (env: string, key: string, body: unknown, ifMatch?: string, token = v.tokens.developer) =>
      v.req('PUT', `/v1/settings/${env}/${key}`, {
        token,
        body,
        headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
      });

    test('create, read with ETag, update with If-Match; 428 without, 412 when stale', async () => {
      const created = await put('production', 'max_upload_mb', {
        value: 10,
        value_type: 'int',
        category: 'limits',
        rules: { min: 1, max: 100 },
      });
      assert.equal(created.statusCode, 201, created.body);
      assert.equal(created.json().version, 1);
      assert.equal(created.headers.etag, '"1"');
      const read = await v.req('GET', '/v1/settings/production/max_upload_mb', { token: v.tokens.viewer });
      assert.equal(read.json().value, 10);
      assert.equal(read.headers.etag, '"1"');

      const noMatch = await put('production', 'max_upload_mb', { value: 20 });
      assert.equal(noMatch.statusCode, 428);
      assert.equal(noMatch.json().code, 'precondition_required');
      const ok = await put('production', 'max_upload_mb', { value: 20 }, '"1"');
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().version, 2);
      assert.equal(ok.json().category, 'limits', 'omitted fields are kept');
      const stale = await put('production', 'max_upload_mb', { value: 30 }, '"1"');
      assert.equal(stale.statusCode, 412);
      assert.equal(stale.json().code, 'version_conflict');
      assert.equal(stale.json().current_version, 2);
      const bare = await put('production', 'max_upload_mb', { value: 30 }, '2');
      assert.equal(bare.statusCode, 200, 'a bare version number is accepted');
      const ifMatchOnNew = await put('production', 'brand_new', { value: 'x', value_type: 'string' }, '"1"');
      assert.equal(ifMatchOnNew.statusCode, 412);
      const garbage = await put('production', 'max_upload_mb', { value: 30 }, 'abc');
      assert.equal(garbage.statusCode, 400);

      const all = await v.req('GET', '/v1/settings/production', { token: v.tokens.viewer });
      assert.equal(all.statusCode, 200);
      assert.deepEqual(
        all.json().data.map((s: { key: string }) => s.key),
        ['max_upload_mb'],
      );
    });

    test('history with old/new values, who, IP, user agent, request id; rollback is a new version', async () => {
      const hist = await v.req('GET', '/v1/settings/production/max_upload_mb/history', {
        token: v.tokens.viewer,
      });
      assert.equal(hist.statusCode, 200, hist.body);
      const entries = hist.json().data;
      assert.deepEqual(
        entries.map((e: { version: number; old_value: unknown; new_value: unknown }) => [
          e.version,
          e.old_value,
          e.new_value,
        ]),
        [
          [3, 20, 30],
          [2, 10, 20],
          [1, null, 10],
        ],
      );
      assert.equal(entries[0].changed_by, v.ids.developer);
      assert.equal(entries[0].user_agent, 'vault-test');
      assert.ok(entries[0].ip && entries[0].request_id);

      const rb = await v.req('POST', '/v1/settings/production/max_upload_mb/rollback', {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 200, rb.body);
      assert.equal(rb.json().version, 4);
      assert.equal(rb.json().value, 10);
      const after = await v.req('GET', '/v1/settings/production/max_upload_mb/history?limit=1', {
        token: v.tokens.viewer,
      });
      assert.equal(after.json().data[0].action, 'rolled_back');
      assert.equal(after.json().data[0].restored_from, 1);
      assert.ok(after.json().next_cursor);
      const staleRb = await v.req('POST', '/v1/settings/production/max_upload_mb/rollback', {
        token: v.tokens.developer,
        body: { version: 2 },
        headers: { 'if-match': '"3"' },
      });
      assert.equal(staleRb.statusCode, 412);
      const missing = await v.req('POST', '/v1/settings/production/max_upload_mb/rollback', {
        token: v.tokens.developer,
        body: { version: 42 },
      });
      assert.equal(missing.statusCode, 404);
      assert.equal(missing.json().code, 'setting_version_not_found');
      const audit = await v.t.store.db.query<{ action: string }>(
        `select action from audit_events where resource_type = 'setting' order by id`,
      );
      assert.deepEqual(
        audit.map((a) => a.action),
        ['setting.changed', 'setting.changed', 'setting.changed', 'setting.rolled_back'],
      );
      // History rows are immutable in the database itself.
      await assert.rejects(
        v.t.store.db.query(`update setting_history set value = '99'::jsonb where version = 1`),
        /immutable/,
      );
    });

    test('every validation error', async () => {
      const cases: [string, unknown, string][] = [
        ['t_int', { value: 1.5, value_type: 'int' }, 'body.value'],
        ['t_int2', { value: '1', value_type: 'int' }, 'body.value'],
        ['t_float', { value: 'x', value_type: 'float' }, 'body.value'],
        ['t_bool', { value: 'true', value_type: 'bool' }, 'body.value'],
        ['t_str', { value: 1, value_type: 'string' }, 'body.value'],
        ['t_min', { value: 0, value_type: 'int', rules: { min: 1 } }, 'body.value'],
        ['t_max', { value: 9, value_type: 'float', rules: { max: 5 } }, 'body.value'],
        ['t_pat', { value: 'ABC', value_type: 'string', rules: { pattern: '^[a-z]+$' } }, 'body.value'],
        ['t_len', { value: 'abcdef', value_type: 'string', rules: { max_length: 3 } }, 'body.value'],
        ['t_enum', { value: 'blue', value_type: 'string', rules: { enum: ['red', 'green'] } }, 'body.value'],
        [
          't_schema',
          {
            value: { port: 'x' },
            value_type: 'json',
            rules: { json_schema: { type: 'object', properties: { port: { type: 'integer' } } } },
          },
          'body.value.port',
        ],
        ['r_minmax', { value: 1, value_type: 'int', rules: { min: 5, max: 1 } }, 'body.rules.min'],
        ['r_pat_on_int', { value: 1, value_type: 'int', rules: { pattern: 'x' } }, 'body.rules.pattern'],
        ['r_min_on_str', { value: 'a', value_type: 'string', rules: { min: 1 } }, 'body.rules.min'],
        ['r_bad_re', { value: 'a', value_type: 'string', rules: { pattern: '(' } }, 'body.rules.pattern'],
        ['r_enum_type', { value: 1, value_type: 'int', rules: { enum: [1, 'two'] } }, 'body.rules.enum.1'],
        [
          'r_schema_kw',
          { value: {}, value_type: 'json', rules: { json_schema: { oneOf: [] } } },
          'body.rules.json_schema.oneOf',
        ],
        ['r_unknown', { value: 1, value_type: 'int', rules: { minimum: 1 } }, 'body.rules.minimum'],
        ['no_type', { value: 1 }, 'body.value_type'],
        ['bad_type', { value: 1, value_type: 'integer' }, 'body.value_type'],
        ['no_value', { value_type: 'int' }, 'body.value'],
        ['extra', { value: 1, value_type: 'int', colour: 'red' }, 'body.colour'],
      ];
      for (const [key, body, path] of cases) {
        const res = await put('development', key, body);
        assert.equal(res.statusCode, 400, `${key}: ${res.body}`);
        assert.equal(res.json().code, 'validation_failed', key);
        assert.ok(
          res.json().errors.some((e: { path: string }) => e.path === path),
          `${key}: ${JSON.stringify(res.json().errors)}`,
        );
      }
      const badKey = await put('development', 'bad key!', { value: 1, value_type: 'int' });
      assert.equal(badKey.statusCode, 400);
      const unknownEnv = await put('nowhere', 'k', { value: 1, value_type: 'int' });
      assert.equal(unknownEnv.statusCode, 404);
      assert.equal(unknownEnv.json().code, 'environment_not_found');
      const unknownEnvList = await v.req('GET', '/v1/settings/nowhere', { token: v.tokens.viewer });
      assert.equal(unknownEnvList.statusCode, 404);
      const okJson = await put('development', 'feature_cfg', {
        value: { port: 8080 },
        value_type: 'json',
        rules: {
          json_schema: { type: 'object', required: ['port'], properties: { port: { type: 'integer' } } },
        },
      });
      assert.equal(okJson.statusCode, 201, okJson.body);
      assert.deepEqual(okJson.json().value, { port: 8080 });
      const viewer = await put(
        'development',
        'v_only',
        { value: 1, value_type: 'int' },
        undefined,
        v.tokens.viewer,
      );
      assert.equal(viewer.statusCode, 403);
      const nothing = await v.t.store.db.db.select().from(settings).where(eq(settings.key, 't_int'));
      assert.equal(nothing.length, 0, 'no partial write');
    });

    test('secret settings: masked in responses, history and audit; stored sealed; other org sees 404', async () => {
      const created = await put('production', 'db_password', {
        value: SECRET,
        value_type: 'string',
        is_secret: true,
      });
      assert.equal(created.statusCode, 201, created.body);
      assert.equal(created.json().masked, true);
      assert.equal(created.json().value, null);
      assert.equal(created.json().encrypted, true);
      const updated = await put('production', 'db_password', { value: `${SECRET}-2` }, '"1"');
      assert.equal(updated.statusCode, 200, updated.body);
      const bodies = [
        created.body,
        updated.body,
        (await v.req('GET', '/v1/settings/production/db_password', { token: v.tokens.viewer })).body,
        (await v.req('GET', '/v1/settings/production', { token: v.tokens.viewer })).body,
        (await v.req('GET', '/v1/settings/production/db_password/history', { token: v.tokens.viewer })).body,
      ];
      const rb = await v.req('POST', '/v1/settings/production/db_password/rollback', {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 200, rb.body);
      bodies.push(rb.body);
      for (const b of bodies) assert.ok(!b.includes(SECRET), b);
      const hist = JSON.parse(bodies[4] as string).data;
      assert.ok(
        hist.every(
          (h: { masked: boolean; old_value: unknown; new_value: unknown }) =>
            h.masked && h.old_value === null && h.new_value === null,
        ),
      );

      const [row] = await v.t.store.db.db.select().from(settings).where(eq(settings.key, 'db_password'));
      assert.equal(row?.value, null);
      assert.ok(row?.valueSealed?.startsWith('v1.'));
      const histRows = await v.t.store.db.db
        .select()
        .from(settingHistory)
        .where(eq(settingHistory.settingId, row?.id ?? ''));
      assert.ok(histRows.every((h) => h.value === null && h.valueSealed !== null));
      const audit = await v.t.store.db.query<{ j: string }>(
        `select row_to_json(a)::text as j from audit_events a`,
      );
      for (const a of audit) assert.ok(!a.j.includes(SECRET), a.j);

      // A sealed value moved to another setting's row: a clear 409, not a 500.
      const plain = await put('production', 'api_url', {
        value: 'https://x',
        value_type: 'string',
        encrypted: true,
      });
      assert.equal(plain.statusCode, 201);
      assert.equal(plain.json().value, 'https://x');
      await v.t.store.db.db
        .update(settings)
        .set({ valueSealed: row?.valueSealed ?? '' })
        .where(eq(settings.key, 'api_url'));
      const moved = await v.req('GET', '/v1/settings/production/api_url', { token: v.tokens.viewer });
      assert.equal(moved.statusCode, 409, moved.body);
      assert.equal(moved.json().code, 'setting_undecryptable');
      assert.ok(!moved.body.includes(SECRET));

      const theirs = await v.req('GET', '/v1/settings/production/db_password', { token: v.tokens.other });
      assert.equal(theirs.statusCode, 404);
      assert.equal(theirs.json().code, 'setting_not_found');
      const theirPut = await put('production', 'db_password', { value: 'x' }, '"3"', v.tokens.other);
      assert.equal(theirPut.statusCode, 412, 'their org has no such setting: If-Match on nothing fails');
      const theirHistory = await v.req('GET', '/v1/settings/production/db_password/history', {
        token: v.tokens.other,
      });
      assert.equal(theirHistory.statusCode, 404);
    });

    test('delete: If-Match required, history kept, 404 after, the key can be created again', async () => {
      const created = await put('staging', 'feature_limit', {
        value: 5,
        value_type: 'int',
        rules: { max: 10 },
      });
      assert.equal(created.statusCode, 201, created.body);
      const del = (ifMatch?: string, token = v.tokens.manager, key = 'feature_limit') =>
        v.req('DELETE', `/v1/settings/staging/${key}`, {
          token,
          headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
        });
      assert.equal((await del()).statusCode, 428);
      const stale = await del('"9"');
      assert.equal(stale.statusCode, 412);
      assert.equal(stale.json().current_version, 1);
      assert.equal((await del('abc')).statusCode, 400);
      assert.equal((await del('"1"', v.tokens.viewer)).statusCode, 403, 'viewers hold no settings:delete');
      assert.equal((await del('"1"', v.tokens.other)).statusCode, 404, "another org's setting");
      assert.equal((await del('"1"', v.tokens.manager, 'no_such_key')).statusCode, 404);
      assert.equal((await del('"1"', v.tokens.manager, 'bad key!')).statusCode, 400);
      const ok = await del('"1"');
      assert.equal(ok.statusCode, 204, ok.body);
      assert.equal((await del('"2"')).statusCode, 404, 'gone');
      assert.equal(
        (await v.req('GET', '/v1/settings/staging/feature_limit', { token: v.tokens.viewer })).statusCode,
        404,
      );
      const all = await v.req('GET', '/v1/settings/staging', { token: v.tokens.viewer });
      assert.ok(!all.json().data.some((s: { key: string }) => s.key === 'feature_limit'));
      const history = await v.req('GET', '/v1/settings/staging/feature_limit/history', {
        token: v.tokens.viewer,
      });
      assert.equal(history.statusCode, 200);
      assert.deepEqual(
        history
          .json()
          .data.map((h: { version: number; action: string; old_value: unknown }) => [
            h.version,
            h.action,
            h.old_value,
          ]),
        [
          [2, 'deleted', 5],
          [1, 'created', null],
        ],
      );
      // Updating a deleted key is a creation: no If-Match, value_type needed; versions continue.
      assert.equal((await put('staging', 'feature_limit', { value: 6 }, '"2"')).statusCode, 412);
      assert.equal((await put('staging', 'feature_limit', { value: 6 })).statusCode, 400);
      const again = await put('staging', 'feature_limit', { value: 20, value_type: 'int' });
      assert.equal(again.statusCode, 201, again.body);
      assert.equal(again.json().version, 3);
      assert.deepEqual(again.json().rules, {}, 'the deleted rules do not come back');
      const audit = await v.t.store.db.query<{ n: number }>(
        `select count(*)::int as n from audit_events where action = 'setting.deleted'
           and resource_id = $1 and details->>'deleted' = 'true'`,
        [created.json().id],
      );
      assert.equal(audit[0]?.n, 1);
      const rollback = await v.req('POST', '/v1/settings/staging/feature_limit/rollback', {
        token: v.tokens.developer,
        body: { version: 2 },
      });
      assert.equal(rollback.statusCode, 404, 'a deletion has no value to restore');
      assert.equal(rollback.json().code, 'setting_version_not_found');
    });

    test('a deny grant on one setting: its GET, history and list row are refused; pages follow the keys examined', async () => {
      const ids: string[] = [];
      for (const key of ['grant_a', 'grant_b', 'grant_c']) {
        const res = await put('development', key, { value: 1, value_type: 'int', category: 'grant-test' });
        assert.equal(res.statusCode, 201, res.body);
        ids.push(res.json().id);
      }
      const grant = await v.req('POST', '/v1/authz/grants', {
        token: v.tokens.admin,
        body: {
          principal: v.ids.viewer,
          permission: 'settings:read',
          resource_type: 'settings',
          resource_id: ids[1],
          effect: 'deny',
        },
      });
      assert.equal(grant.statusCode, 201, grant.body);
      for (const url of ['/v1/settings/development/grant_b', '/v1/settings/development/grant_b/history']) {
        const res = await v.req('GET', url, { token: v.tokens.viewer });
        assert.equal(res.statusCode, 403, `${url}: ${res.body}`);
        assert.equal(res.json().code, 'permission_denied');
        assert.equal((await v.req('GET', url, { token: v.tokens.developer })).statusCode, 200, url);
      }
      const list = await v.req('GET', '/v1/settings/development?category=grant-test', {
        token: v.tokens.viewer,
      });
      assert.deepEqual(
        list.json().data.map((s: { key: string }) => s.key),
        ['grant_a', 'grant_c'],
      );
      const seen: string[] = [];
      let pages = 0;
      let cursor: string | null = null;
      do {
        const page = await v.req(
          'GET',
          `/v1/settings/development?category=grant-test&limit=1${cursor ? `&cursor=${cursor}` : ''}`,
          { token: v.tokens.viewer },
        );
        assert.equal(page.statusCode, 200, page.body);
        seen.push(...page.json().data.map((s: { key: string }) => s.key));
        cursor = page.json().next_cursor;
        pages++;
      } while (cursor !== null && pages < 10);
      assert.deepEqual(seen, ['grant_a', 'grant_c']);
      assert.ok(pages >= 3, 'the hidden row took a page of its own');
    });

    test('If-Match as RFC 9110 says: a list matches if any strong tag does; weak tags and "06" never match', async () => {
      const created = await put('development', 'etag_rules', { value: 1, value_type: 'int' });
      assert.equal(created.statusCode, 201, created.body);
      const cases: [string, number][] = [
        ['W/"1"', 412],
        ['"01"', 412],
        ['"1 "', 400], // a space is not an etagc
        ['W/"1", "7"', 412],
        ['"1",', 200], // version 2 now
        ['"5", "2"', 200], // 3
        ['"3","9"', 200], // 4
        [' "9" , W/"4" , "4" ', 200], // 5
        ['*', 200], // 6
        ['6', 200], // 7: a bare version number, for curl users
        ['07', 412],
        ['"7" "8"', 400],
        ['"7", abc', 400],
        ['W/7', 400],
        ['"7', 400],
        [',', 400],
      ];
      for (const [ifMatch, status] of cases) {
        const res = await put('development', 'etag_rules', { value: 2 }, ifMatch);
        assert.equal(res.statusCode, status, `If-Match: ${ifMatch} → ${res.body}`);
      }
      const read = await v.req('GET', '/v1/settings/development/etag_rules', { token: v.tokens.viewer });
      assert.equal(read.json().version, 7);
    });

    test('is_secret without encryption (SPEC: two flags) is kept, masked everywhere; becoming secret encrypts', async () => {
      const plainSecret = 'plaintext-secret-setting-value-xyz';
      const created = await put('development', 'secret_plain', {
        value: plainSecret,
        value_type: 'string',
        is_secret: true,
        encrypted: false,
      });
      assert.equal(created.statusCode, 201, created.body);
      assert.equal(created.json().encrypted, false);
      assert.equal(created.json().masked, true);
      const updated = await put('development', 'secret_plain', { value: `${plainSecret}-2` }, '"1"');
      assert.equal(updated.statusCode, 200, updated.body);
      assert.equal(updated.json().encrypted, false, 'an explicit choice is kept on update');
      const rb = await v.req('POST', '/v1/settings/development/secret_plain/rollback', {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 200, rb.body);
      const bodies = [
        created.body,
        updated.body,
        rb.body,
        (await v.req('GET', '/v1/settings/development/secret_plain', { token: v.tokens.viewer })).body,
        (await v.req('GET', '/v1/settings/development', { token: v.tokens.viewer })).body,
        (await v.req('GET', '/v1/settings/development/secret_plain/history', { token: v.tokens.viewer }))
          .body,
      ];
      for (const b of bodies) assert.ok(!b.includes(plainSecret), b);
      const audit = await v.t.store.db.query<{ j: string }>(
        `select row_to_json(a)::text as j from audit_events a`,
      );
      for (const a of audit) assert.ok(!a.j.includes(plainSecret), a.j);

      // A plain setting marked secret later, without saying `encrypted`: sealed from then on.
      const plain = await put('development', 'later_secret', { value: 'p', value_type: 'string' });
      assert.equal(plain.json().encrypted, false);
      const marked = await put('development', 'later_secret', { value: 'q', is_secret: true }, '"1"');
      assert.equal(marked.statusCode, 200, marked.body);
      assert.equal(marked.json().encrypted, true);
      const [row] = await v.t.store.db.db.select().from(settings).where(eq(settings.key, 'later_secret'));
      assert.equal(row?.value, null);
      assert.ok(row?.valueSealed);
    });

    // Last: the history test above counts every setting event of the org, in order.
    test('a key of 200 characters is served; 201 is refused by the schema, 257 by the router (414)', async () => {
      const key = `k${'e'.repeat(199)}`;
      const created = await put('development', key, { value: 'v', value_type: 'string' });
      assert.equal(created.statusCode, 201, created.body);
      const read = await v.req('GET', `/v1/settings/development/${key}`, { token: v.tokens.viewer });
      assert.equal(read.statusCode, 200, read.body);
      const over = await put('development', `${key}e`, { value: 'v', value_type: 'string' });
      assert.equal(over.statusCode, 400, over.body);
      const far = await put('development', `${key}${'e'.repeat(57)}`, { value: 'v', value_type: 'string' });
      assert.equal(far.statusCode, 414, far.body);
      assert.equal(far.json().code, 'uri_too_long');
    });
  });
}
