// What settings' answers hold back: the value from a caller denied reading the setting (write
// answers too), a secret or encrypted value's key names from validation errors, and one value
// that does not open from the rest of a list or a history.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { and, eq } from 'drizzle-orm';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { settingHistory, settings } from './schema.ts';

const MARKER = 'MARKER_7f3a9c';

describe('settings: what answers hold back (pglite)', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v?.close());

  const put = (key: string, body: unknown, ifMatch?: string, token = v.tokens.developer) =>
    v.req('PUT', `/v1/settings/development/${key}`, {
      token,
      body,
      headers: ifMatch === undefined ? {} : { 'if-match': ifMatch },
    });

  test('a deny grant on settings:read: the PUT and the rollback answer without the value', async () => {
    const created = await put(
      'denied',
      { value: `${MARKER}-v1`, value_type: 'string' },
      undefined,
      v.tokens.manager,
    );
    assert.equal(created.statusCode, 201, created.body);
    assert.equal((await put('denied', { value: `${MARKER}-v2` }, '"1"', v.tokens.manager)).statusCode, 200);
    const grant = await v.req('POST', '/v1/authz/grants', {
      token: v.tokens.admin,
      body: {
        principal: v.ids.developer,
        permission: 'settings:read',
        resource_type: 'settings',
        resource_id: created.json().id,
        effect: 'deny',
      },
    });
    assert.equal(grant.statusCode, 201, grant.body);
    assert.equal(
      (await v.req('GET', '/v1/settings/development/denied', { token: v.tokens.developer })).statusCode,
      403,
    );

    const written = await put('denied', { value: 'mine' }, '*');
    assert.equal(written.statusCode, 200, written.body);
    assert.equal(written.json().version, 3);
    assert.equal(written.json().value, null);
    assert.equal(written.json().masked, true);
    assert.equal(written.headers.etag, '"3"');
    const restored = await v.req('POST', '/v1/settings/development/denied/rollback', {
      token: v.tokens.developer,
      body: { version: 1 },
    });
    assert.equal(restored.statusCode, 200, restored.body);
    assert.equal(restored.json().value, null);
    assert.equal(restored.json().masked, true);
    assert.ok(!restored.body.includes(MARKER), restored.body);

    // Someone who may read it sees what the rollback restored.
    const read = await v.req('GET', '/v1/settings/development/denied', { token: v.tokens.manager });
    assert.equal(read.json().value, `${MARKER}-v1`);
    assert.equal(read.json().masked, false);
    const theirs = await put('denied', { value: 'theirs' }, '*', v.tokens.manager);
    assert.equal(theirs.json().value, 'theirs');
    assert.equal(theirs.json().masked, false);
  });

  test('secret and encrypted JSON settings: validation errors name no part of the value', async () => {
    const schema = {
      type: 'object',
      additionalProperties: false,
      properties: { port: { type: 'integer' } },
    };
    const cases: [string, Record<string, unknown>][] = [
      ['secret_json', { is_secret: true }],
      ['encrypted_json', { encrypted: true }],
      ['secret_plain_json', { is_secret: true, encrypted: false }],
    ];
    for (const [key, flags] of cases) {
      const res = await put(key, {
        value: { [`${MARKER}_key`]: 'x', [`${MARKER}_other`]: 'y', port: 'not a number' },
        value_type: 'json',
        rules: { json_schema: schema },
        ...flags,
      });
      assert.equal(res.statusCode, 400, `${key}: ${res.body}`);
      assert.ok(!res.body.includes(MARKER), `${key}: ${res.body}`);
      const errors: { path: string; message: string }[] = res.json().errors;
      assert.deepEqual(
        errors.map((e) => e.path),
        ['body.value', 'body.value'],
        key,
      );
      assert.deepEqual(
        errors.map((e) => e.message),
        ['no value is allowed here (rule json_schema)', 'must be of type integer (rule json_schema)'],
        'each message once, in the order met',
      );
    }

    // An update of a secret setting that does not say is_secret again: still masked.
    const saved = await put('kept_secret', {
      value: { port: 1 },
      value_type: 'json',
      is_secret: true,
      rules: { json_schema: schema },
    });
    assert.equal(saved.statusCode, 201, saved.body);
    const update = await put('kept_secret', { value: { [`${MARKER}_key`]: 1 } }, '"1"');
    assert.equal(update.statusCode, 400);
    assert.ok(!update.body.includes(MARKER), update.body);
    // A secret becoming plain: masked too (the write is refused; the old value was secret).
    const unmask = await put('kept_secret', { value: { [`${MARKER}_key`]: 1 }, is_secret: false }, '"1"');
    assert.ok(!unmask.body.includes(MARKER), unmask.body);

    // A plain setting keeps the path: its value is the caller's to see.
    const plain = await put('plain_json', {
      value: { [`${MARKER}_key`]: 'x' },
      value_type: 'json',
      rules: { json_schema: schema },
    });
    assert.equal(plain.statusCode, 400);
    assert.deepEqual(
      plain.json().errors.map((e: { path: string }) => e.path),
      [`body.value.${MARKER}_key`],
    );
  });

  test('a value that does not open fails its own GET (409), not the list it is in', async () => {
    for (const key of ['list_a', 'list_b', 'list_c']) {
      const res = await put(key, {
        value: `${key}-value`,
        value_type: 'string',
        encrypted: true,
        category: 'open',
      });
      assert.equal(res.statusCode, 201, res.body);
    }
    const [a] = await v.t.store.db.db.select().from(settings).where(eq(settings.key, 'list_a'));
    // list_a's sealed value moved to list_b (another row's AAD), list_c's under a master key this
    // server does not hold.
    await v.t.store.db.db
      .update(settings)
      .set({ valueSealed: a?.valueSealed ?? '' })
      .where(eq(settings.key, 'list_b'));
    const [c] = await v.t.store.db.db.select().from(settings).where(eq(settings.key, 'list_c'));
    const [version, , ...rest] = (c?.valueSealed ?? '').split('.');
    await v.t.store.db.db
      .update(settings)
      .set({ valueSealed: [version, '0123456789abcdef', ...rest].join('.') })
      .where(eq(settings.key, 'list_c'));

    const list = await v.req('GET', '/v1/settings/development?category=open', { token: v.tokens.viewer });
    assert.equal(list.statusCode, 200, list.body);
    assert.deepEqual(
      list
        .json()
        .data.map((s: { key: string; value: unknown; masked: boolean; undecryptable?: string }) => [
          s.key,
          s.value,
          s.masked,
          s.undecryptable,
        ]),
      [
        ['list_a', 'list_a-value', false, undefined],
        ['list_b', null, true, 'integrity'],
        ['list_c', null, true, 'unknown_master_key'],
      ],
    );
    for (const [key, reason] of [
      ['list_b', 'integrity'],
      ['list_c', 'unknown_master_key'],
    ]) {
      const one = await v.req('GET', `/v1/settings/development/${key}`, { token: v.tokens.viewer });
      assert.equal(one.statusCode, 409, one.body);
      assert.equal(one.json().code, 'setting_undecryptable');
      assert.equal(one.json().reason, reason);
    }
  });

  test('a history value that does not open masks its entries, not the whole history', async () => {
    assert.equal((await put('hist', { value: 'v1', value_type: 'string', encrypted: true })).statusCode, 201);
    for (const n of [2, 3, 4, 5]) {
      assert.equal((await put('hist', { value: `v${n}` }, `"${n - 1}"`)).statusCode, 200);
    }
    const db = v.t.store.db.db;
    const [row] = await db.select().from(settings).where(eq(settings.key, 'hist'));
    const id = row?.id ?? '';
    const sealedAt = async (n: number) =>
      (
        await db
          .select()
          .from(settingHistory)
          .where(and(eq(settingHistory.settingId, id), eq(settingHistory.version, n)))
      )[0]?.valueSealed ?? '';
    const setSealed = (n: number, sealed: string) =>
      db
        .update(settingHistory)
        .set({ valueSealed: sealed })
        .where(and(eq(settingHistory.settingId, id), eq(settingHistory.version, n)));
    // Version 1 under a master key this server does not hold; version 4 holds version 3's value.
    const [format, , ...rest] = (await sealedAt(1)).split('.');
    await setSealed(1, [format, '0123456789abcdef', ...rest].join('.'));
    await setSealed(4, await sealedAt(3));

    const res = await v.req('GET', '/v1/settings/development/hist/history', { token: v.tokens.viewer });
    assert.equal(res.statusCode, 200, res.body);
    type Entry = {
      version: number;
      old_value: unknown;
      new_value: unknown;
      masked: boolean;
      undecryptable?: string;
    };
    assert.deepEqual(
      res.json().data.map((h: Entry) => [h.version, h.old_value, h.new_value, h.masked, h.undecryptable]),
      [
        [5, null, null, true, 'integrity'], // its old value is version 4's
        [4, null, null, true, 'integrity'],
        [3, 'v2', 'v3', false, undefined],
        [2, null, null, true, 'unknown_master_key'], // its old value is version 1's
        [1, null, null, true, 'unknown_master_key'],
      ],
    );
    // Paged, an entry's old value is still read from the row past the page.
    const page = await v.req('GET', '/v1/settings/development/hist/history?limit=1', {
      token: v.tokens.viewer,
    });
    assert.equal(page.json().data[0].undecryptable, 'integrity');
    // The latest value opens; restoring a version whose value does not is refused.
    assert.equal(
      (await v.req('GET', '/v1/settings/development/hist', { token: v.tokens.viewer })).json().value,
      'v5',
    );
    const rollback = await v.req('POST', '/v1/settings/development/hist/rollback', {
      token: v.tokens.developer,
      body: { version: 4 },
    });
    assert.equal(rollback.statusCode, 409, rollback.body);
    assert.equal(rollback.json().code, 'setting_undecryptable');
  });
});
