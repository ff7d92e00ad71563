import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, beforeEach, describe, test } from 'node:test';
import { crc32 } from 'node:zlib';
import { Webhook } from 'standardwebhooks';
import { STORES } from '../../test/helpers/stores.ts';
import { StewardError } from '../http/errors.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';
import { API_KEY_PRODUCT, crc32Ascii, displayPrefix, generateKey, isWellFormed } from './format.ts';
import { parseCidr, verifyStandardWebhook } from './service.ts';

interface Vectors {
  signVectors: {
    secret: string;
    msgId: string;
    timestamp: number;
    payload: string;
    expectedSignature: string;
  }[];
  knownBadSignatures: { values: string[] };
  verifyScenarios: {
    defaults: { msgId: string; payload: string; secret: string; toleranceSeconds: number };
    cases: {
      name: string;
      offsetSeconds: number;
      verifierSecret?: string;
      payloadOverride?: string;
      mutation: null | {
        deleteHeader?: string;
        setHeader?: [string, string];
        truncateHeader?: [string, number];
        signatureList?: string[];
        mixedCaseHeaderNames?: boolean;
      };
      expect: 'ok' | 'error';
    }[];
  };
}

const vectors = JSON.parse(
  readFileSync(new URL('../../../shared/testdata/standard-webhooks/vectors.json', import.meta.url), 'utf8'),
) as Vectors;

describe('Standard Webhooks vectors', () => {
  test('fixed sign vectors verify; known-bad signatures do not', () => {
    for (const v of vectors.signVectors) {
      const headers = {
        'webhook-id': v.msgId,
        'webhook-timestamp': String(v.timestamp),
        'webhook-signature': v.expectedSignature,
      };
      assert.deepEqual(verifyStandardWebhook(v.secret, headers, v.payload, v.timestamp * 1000), {
        id: v.msgId,
        timestamp: v.timestamp,
      });
    }
    const v0 = vectors.signVectors[0]!;
    for (const bad of vectors.knownBadSignatures.values) {
      assert.throws(
        () =>
          verifyStandardWebhook(
            v0.secret,
            { 'webhook-id': v0.msgId, 'webhook-timestamp': String(v0.timestamp), 'webhook-signature': bad },
            v0.payload,
            v0.timestamp * 1000,
          ),
        (e: unknown) => e instanceof StewardError && e.code === 'webhook_signature_invalid',
      );
    }
  });

  for (const c of vectors.verifyScenarios.cases) {
    test(`scenario: ${c.name}`, () => {
      const d = vectors.verifyScenarios.defaults;
      const nowMs = Date.parse('2026-03-01T12:00:00Z');
      const ts = Math.floor(nowMs / 1000) + c.offsetSeconds;
      const payload = c.payloadOverride ?? d.payload;
      const valid = new Webhook(d.secret).sign(d.msgId, new Date(ts * 1000), payload);
      let headers: Record<string, string> = {
        'webhook-id': d.msgId,
        'webhook-timestamp': String(ts),
        'webhook-signature': valid,
      };
      const m = c.mutation;
      if (m?.deleteHeader) delete headers[m.deleteHeader];
      if (m?.setHeader) headers[m.setHeader[0]] = m.setHeader[1];
      if (m?.truncateHeader) headers[m.truncateHeader[0]] = valid.slice(0, m.truncateHeader[1]);
      if (m?.signatureList) {
        headers['webhook-signature'] = m.signatureList.map((s) => (s === '<VALID>' ? valid : s)).join(' ');
      }
      if (m?.mixedCaseHeaderNames) {
        headers = Object.fromEntries(
          Object.entries(headers).map(([k, v]) => [k.replace(/(^|-)w/g, (x) => x.toUpperCase()), v]),
        );
      }
      const run = () =>
        verifyStandardWebhook(c.verifierSecret ?? d.secret, headers, payload, nowMs, d.toleranceSeconds);
      if (c.expect === 'ok') assert.equal(run().id, d.msgId);
      else assert.throws(run, (e: unknown) => e instanceof StewardError && e.status === 401);
    });
  }

  test('key format: checksum refuses every single-character typo', () => {
    const key = generateKey(API_KEY_PRODUCT, 'live');
    assert.ok(isWellFormed(API_KEY_PRODUCT, key));
    assert.match(displayPrefix(API_KEY_PRODUCT, key), /^stw_live_.{6}…$/);
    const alphabet = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
    for (let i = 9; i < key.length; i++) {
      if (key[i] === '_') continue;
      const other = alphabet[(alphabet.indexOf(key[i]!) + 1) % 58]!;
      assert.equal(
        isWellFormed(API_KEY_PRODUCT, key.slice(0, i) + other + key.slice(i + 1)),
        false,
        `position ${i}`,
      );
    }
    assert.equal(isWellFormed(API_KEY_PRODUCT, key.slice(0, -1)), false);
    assert.equal(parseCidr('2001:db8::/129'), null);
    assert.equal(parseCidr('2001:db8::/32'), '2001:db8::/32');
    assert.equal(parseCidr('10.1.2.3'), '10.1.2.3');
  });

  test('key format: the checksum is zlib CRC-32, so keys issued before the JS loop still verify', () => {
    for (let i = 0; i < 200; i++) {
      const text = randomBytes(1 + (i % 60)).toString('base64');
      assert.equal(crc32Ascii(text), crc32(text), text);
    }
    // Issued by the earlier format.ts (zlib.crc32 over the head): must stay well-formed.
    const issued = 'stw_live_HsXyNqvcTStJ77ui8dAH7wYZm6o35EPPzAvfegadXsj3_38tmy2';
    assert.equal(isWellFormed(API_KEY_PRODUCT, issued), true);
    assert.equal(isWellFormed(API_KEY_PRODUCT, issued.replace('_live_', '_lïve_')), false);
    assert.equal(isWellFormed(API_KEY_PRODUCT, issued.replace('stw_live_H', 'stw_live_0')), false);
  });
});

describe('inbound webhook keys and /v1/ingest (pglite)', () => {
  let t: IdentityTestApp;
  let token: string;
  before(async () => {
    t = await identityTestApp('pglite');
  });
  beforeEach(async () => {
    token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  const send = (
    key: string,
    secret: string,
    body: string,
    opts: { id?: string; ts?: number; sig?: string; url?: string } = {},
  ) => {
    const ts = opts.ts ?? Math.floor(t.now.ms / 1000);
    const id = opts.id ?? `msg_${Math.random().toString(36).slice(2)}`;
    return t.app.inject({
      method: 'POST',
      url: opts.url ?? '/v1/ingest',
      headers: {
        'content-type': 'application/json',
        'x-api-key': key,
        'webhook-id': id,
        'webhook-timestamp': String(ts),
        'webhook-signature': opts.sig ?? new Webhook(secret).sign(id, new Date(ts * 1000), body),
      },
      payload: body,
    });
  };

  test('create (shown once, sealed), ingest, replay, bad signature, list signals, deactivate, delete', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Zapier' } });
    assert.equal(created.statusCode, 201, created.body);
    const { id, key, secret } = created.json() as { id: string; key: string; secret: string };
    assert.match(secret, /^whsec_/);
    assert.match(key, /^stwhk_live_/);
    const [row] = await t.store.db.query<Record<string, string>>('select * from webhook_keys where id = $1', [
      id,
    ]);
    // Substrings, not patterns: the secret is base64, whose + and / a RegExp would misread.
    const stored = JSON.stringify(row);
    assert.ok(!stored.includes(secret.slice(6, 20)) && !stored.includes(key), 'neither stored in clear');
    const listed = await t.call('GET', '/v1/webhook-keys', { token });
    assert.ok(!listed.body.includes(secret.slice(6, 20)), 'the secret is not listed');
    // A body whose bytes matter: spacing kept as sent.
    const body = '{"type":"lead.created",  "data": {"n": 1}}';
    const ok = await send(key, secret, body, { id: 'msg_1' });
    assert.equal(ok.statusCode, 202, ok.body);
    assert.equal((await send(key, secret, body, { url: '/v1/ingest/Zapier' })).statusCode, 202);
    const replay = await send(key, secret, body, { id: 'msg_1' });
    assert.equal(replay.statusCode, 409);
    assert.equal(replay.json().code, 'webhook_replayed');
    const codes = [
      (await send(key, secret, body, { sig: 'v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=' })).json().code,
      (await send(key, secret, body, { ts: Math.floor(t.now.ms / 1000) - 301 })).json().code,
      (
        await send(key, secret, `${body} `, {
          sig: new Webhook(secret).sign('msg_x', new Date(t.now.ms), body),
          id: 'msg_x',
        })
      ).json().code,
      (await send(key, secret, body, { url: '/v1/ingest/Other' })).json().code,
      // The last character changed (to another one: a key may end in x already).
      (await send(`${key.slice(0, -1)}${key.endsWith('x') ? 'y' : 'x'}`, secret, body)).json().code,
    ];
    assert.deepEqual(codes, [
      'webhook_signature_invalid',
      'webhook_timestamp_out_of_tolerance',
      'webhook_signature_invalid',
      'webhook_key_invalid',
      'webhook_key_invalid',
    ]);
    const noHeaders = await t.app.inject({
      method: 'POST',
      url: '/v1/ingest',
      headers: { 'x-api-key': key },
      payload: body,
    });
    assert.equal(noHeaders.json().code, 'webhook_headers_missing');
    const signals = await t.call('GET', '/v1/signals?limit=1', { token });
    assert.equal(signals.statusCode, 200, signals.body);
    const page = signals.json() as {
      data: { event_type: string; payload: unknown; message_id: string }[];
      next_cursor: string;
    };
    assert.equal(page.data.length, 1);
    assert.equal(page.data[0]?.event_type, 'lead.created');
    assert.ok(page.next_cursor);
    const next = (await t.call('GET', `/v1/signals?limit=10&cursor=${page.next_cursor}`, { token })).json();
    assert.equal(next.data.length, 1);
    assert.equal(next.next_cursor, null);
    // Deactivate, then delete.
    const off = await t.call('PATCH', `/v1/webhook-keys/${id}`, { token, body: { active: false } });
    assert.equal(off.json().active, false);
    assert.equal((await send(key, secret, body)).json().code, 'webhook_key_inactive');
    assert.equal((await t.call('DELETE', `/v1/webhook-keys/${id}`, { token })).statusCode, 204);
    assert.equal((await send(key, secret, body)).json().code, 'webhook_key_invalid');
    const actions = await t.store.db.query<{ action: string }>(
      'select action from audit_events where resource_id = $1 order by created_at, id',
      [id],
    );
    assert.deepEqual(
      actions.map((a) => a.action),
      ['webhook_key.created', 'webhook_key.updated', 'webhook_key.deleted'],
    );
    assert.equal((await t.call('GET', `/v1/webhook-keys/${id}`, { token })).statusCode, 404);
    assert.equal(
      (await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'x', y: 1 } })).statusCode,
      400,
    );
  });

  test('a signal is a JSON object: null, a number, a string, a boolean or an array is refused (400)', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Scalars' } });
    assert.equal(created.statusCode, 201, created.body);
    const { key, secret } = created.json() as { key: string; secret: string };
    const count = async () =>
      (await t.store.db.query<{ n: number }>('select count(*)::int as n from signals'))[0]?.n;
    const before = await count();
    for (const body of ['null', '42', '"lead.created"', 'true', '[]', '[{"type":"x"}]', ' null ']) {
      const res = await send(key, secret, body);
      assert.equal(res.statusCode, 400, `${body}: ${res.body}`);
      assert.equal(res.json().code, 'invalid_signal_payload', body);
    }
    assert.equal(await count(), before, 'nothing stored');
    const ok = await send(key, secret, '{}');
    assert.equal(ok.statusCode, 202, ok.body);
  });
});

describe('/v1/ingest: text PostgreSQL cannot store (pglite)', () => {
  let t: IdentityTestApp;
  let token: string;
  before(async () => {
    t = await identityTestApp('pglite');
  });
  beforeEach(async () => {
    token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  const send = (key: string, secret: string, body: string) => {
    const ts = Math.floor(t.now.ms / 1000);
    const id = `msg_${Math.random().toString(36).slice(2)}`;
    return t.app.inject({
      method: 'POST',
      url: '/v1/ingest',
      headers: {
        'content-type': 'application/json',
        'x-api-key': key,
        'webhook-id': id,
        'webhook-timestamp': String(ts),
        'webhook-signature': new Webhook(secret).sign(id, new Date(ts * 1000), body),
      },
      payload: body,
    });
  };

  test('a signed body nested deeper than 64 levels is 400 json_too_deep (was a 500 storing it), nothing stored', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Deep' } });
    assert.equal(created.statusCode, 201, created.body);
    const { key, secret } = created.json() as { key: string; secret: string };
    const nested = (levels: number) => `{"type":"deep","data":${'['.repeat(levels)}${']'.repeat(levels)}}`;
    for (const levels of [64, 5000]) {
      const res = await send(key, secret, nested(levels));
      assert.equal(res.statusCode, 400, `${levels}: ${res.body}`);
      assert.equal(res.json().code, 'json_too_deep');
    }
    // 63 levels of arrays inside the object: 64 in all, the most any body may nest.
    const fine = await send(key, secret, nested(63));
    assert.equal(fine.statusCode, 202, fine.body);
  });

  test('a signed body holding 1e400 is 400 number_out_of_range (it was stored as null), nothing stored', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Huge' } });
    assert.equal(created.statusCode, 201, created.body);
    const { key, secret } = created.json() as { key: string; secret: string };
    const count = async () =>
      (await t.store.db.query<{ n: number }>('select count(*)::int as n from signals'))[0]?.n;
    const before = await count();
    const res = await send(key, secret, '{"type":"x","data":{"amount":1e400}}');
    assert.equal(res.statusCode, 400, res.body);
    assert.equal(res.json().code, 'number_out_of_range');
    assert.match(res.json().detail, /^body\.data: /);
    assert.equal(await count(), before);
    const fine = await send(key, secret, '{"type":"x","data":{"amount":1.5e300,"label":"1e400"}}');
    assert.equal(fine.statusCode, 202, fine.body);
  });

  test('a signed body with \\u0000 or a lone surrogate is refused (400 unsupported_character), nothing stored', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Nul' } });
    assert.equal(created.statusCode, 201, created.body);
    const { key, secret } = created.json() as { key: string; secret: string };
    const count = async () =>
      (await t.store.db.query<{ n: number }>('select count(*)::int as n from signals'))[0]?.n;
    const before = await count();
    // JSON text as sent (the escapes are the body's own).
    for (const [body, path] of [
      ['{"type":"x","data":{"a":"\\u0000"}}', 'body.data.a'],
      ['{"type":"a\\u0000b"}', 'body.type'],
      ['{"type":"x","data":{"a":"\\ud800"}}', 'body.data.a'],
      ['{"type":"x","data":{"a":"\\uD800\\u0041"}}', 'body.data.a'],
      ['{"type":"x","data":{"a":"\\udc00z"}}', 'body.data.a'],
      ['{"type":"x","data":["ok",{"b":"\\ud83d"}]}', 'body.data.1.b'],
      ['{"type":"x","data":{"\\u0000":1}}', 'body.data (a key)'],
      ['{"type":"x","data":{"\\udfff":1}}', 'body.data (a key)'],
    ]) {
      const res = await send(key, secret, body as string);
      assert.equal(res.statusCode, 400, `${body}: ${res.body}`);
      assert.equal(res.json().code, 'unsupported_character', body);
      assert.ok((res.json().detail as string).startsWith(`${path}: `), `${body}: ${res.json().detail}`);
    }
    assert.equal(await count(), before, 'nothing stored');
    // A surrogate pair (escaped or as UTF-8) is one character: stored.
    const pair = await send(key, secret, '{"type":"x","data":{"a":"\\ud83d\\ude00","b":"😀"}}');
    assert.equal(pair.statusCode, 202, pair.body);
    // A type longer than the stored 200 units is not cut inside a pair.
    const type = `${'t'.repeat(199)}😀${'t'.repeat(50)}`;
    const long = await send(key, secret, JSON.stringify({ type }));
    assert.equal(long.statusCode, 202, long.body);
    const [row] = await t.store.db.query<{ event_type: string }>(
      'select event_type from signals where id = $1',
      [long.json().id],
    );
    assert.equal(row?.event_type, 't'.repeat(199));
  });

  test('PATCH /v1/webhook-keys/{id} that changes nothing writes nothing (200, no event, same updated_at)', async () => {
    const created = await t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Same' } });
    assert.equal(created.statusCode, 201, created.body);
    const { id, updated_at } = created.json() as { id: string; updated_at: string };
    t.now.ms += 1000;
    for (const body of [{}, { name: 'Same' }, { active: true }, { name: 'Same', active: true }]) {
      const res = await t.call('PATCH', `/v1/webhook-keys/${id}`, { token, body });
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(
        [res.json().name, res.json().active, res.json().updated_at],
        ['Same', true, updated_at],
      );
    }
    const events = async () =>
      (
        await t.store.db.query(
          "select 1 from audit_events where resource_id = $1 and action = 'webhook_key.updated'",
          [id],
        )
      ).length;
    assert.equal(await events(), 0);
    const renamed = await t.call('PATCH', `/v1/webhook-keys/${id}`, { token, body: { name: 'Other' } });
    assert.equal(renamed.statusCode, 200, renamed.body);
    assert.equal(await events(), 1);
  });
});

for (const store of STORES) {
  describe(`webhook key names under concurrency (${store.kind})`, { skip: store.skip }, () => {
    let t: IdentityTestApp;
    let token: string;
    before(async () => {
      t = await identityTestApp(store.kind);
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    test('concurrent creates and renames to one name: one wins, the others 409 webhook_key_name_taken', async () => {
      const creates = await Promise.all(
        Array.from({ length: 6 }, () =>
          t.call('POST', '/v1/webhook-keys', { token, body: { name: 'Race' } }),
        ),
      );
      assert.deepEqual(
        creates.map((r) => r.statusCode).sort(),
        [201, 409, 409, 409, 409, 409],
        creates.map((r) => r.body).join('\n'),
      );
      for (const r of creates)
        if (r.statusCode === 409) assert.equal(r.json().code, 'webhook_key_name_taken');
      const others = await Promise.all(
        Array.from({ length: 6 }, async (_, i) => {
          const res = await t.call('POST', '/v1/webhook-keys', { token, body: { name: `Other ${i}` } });
          assert.equal(res.statusCode, 201, res.body);
          return (res.json() as { id: string }).id;
        }),
      );
      const renames = await Promise.all(
        others.map((id) => t.call('PATCH', `/v1/webhook-keys/${id}`, { token, body: { name: 'Renamed' } })),
      );
      assert.deepEqual(
        renames.map((r) => r.statusCode).sort(),
        [200, 409, 409, 409, 409, 409],
        renames.map((r) => r.body).join('\n'),
      );
      for (const r of renames)
        if (r.statusCode === 409) assert.equal(r.json().code, 'webhook_key_name_taken');
      const names = await t.store.db.query<{ n: number }>(
        "select count(*)::int as n from webhook_keys where name in ('Race', 'Renamed')",
      );
      assert.equal(names[0]?.n, 2);
    });
  });
}
