import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';
import { createKey, problem, TEST_TIERS } from './test-support.ts';

for (const store of STORES) {
  describe(`API keys over HTTP (${store.kind})`, { skip: store.skip }, () => {
    let t: IdentityTestApp;
    let token: string;
    before(async () => {
      t = await identityTestApp(store.kind, { TRUST_PROXY: '10.0.0.1', API_KEY_TIERS: TEST_TIERS });
    });
    // Tests move the clock (quota periods, grace): a fresh access token for each.
    beforeEach(async () => {
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    const create = (body: Record<string, unknown> = {}, as = token) => createKey(t, as, body);
    const verify = async (key: string, extra: Record<string, unknown> = {}, as = token) => {
      const res = await t.call('POST', '/v1/keys/verify', { token: as, body: { key, ...extra } });
      assert.equal(res.statusCode, 200, res.body);
      return res.json() as {
        valid: boolean;
        code: string;
        key_id: string | null;
        org_id: string | null;
        owner: string | null;
        scopes: string[] | null;
        ratelimit: { limit: number; remaining: number; reset: number } | null;
        quota: { limit: number; remaining: number; period_end: string } | null;
      };
    };
    const putSettings = ({ body }: { body: Record<string, unknown> }) =>
      t.app.inject({
        method: 'PUT',
        url: '/v1/keys/settings',
        headers: { authorization: `Bearer ${token}` },
        payload: body,
      });
    const withKey = (key: string, url = '/v1/auth/whoami', headers: Record<string, string> = {}) =>
      t.app.inject({ method: 'GET', url, headers: { 'x-api-key': key, ...headers } });

    test('created once, stored hashed, listed by prefix; valid over verify, X-API-Key and Bearer', async () => {
      const k = await create({ metadata: { team: 'a' } });
      assert.match(k.key, /^stw_live_[1-9A-HJ-NP-Za-km-z]{40,46}_[1-9A-HJ-NP-Za-km-z]{6}$/);
      assert.ok(k.key.startsWith(k.prefix.replace('…', '')));
      const list = await t.call('GET', '/v1/keys', { token });
      assert.equal(list.statusCode, 200);
      assert.doesNotMatch(list.body, new RegExp(k.key));
      const got = await t.call('GET', `/v1/keys/${k.id}`, { token });
      assert.equal(got.statusCode, 200);
      assert.equal('key' in got.json(), false);
      const [row] = await t.store.db.query<{ hash: string }>('select hash from api_keys where id = $1', [
        k.id,
      ]);
      assert.equal(row?.hash.length, 64);
      assert.doesNotMatch(JSON.stringify(row), /stw_live/);
      const v = await verify(k.key);
      assert.deepEqual(
        {
          valid: v.valid,
          code: v.code,
          key_id: v.key_id,
          org_id: v.org_id,
          owner: v.owner,
          scopes: v.scopes,
        },
        { valid: true, code: 'valid', key_id: k.id, org_id: t.orgId, owner: t.adminId, scopes: ['*'] },
      );
      assert.equal(v.ratelimit, null);
      assert.equal(v.quota, null);
      const me = await withKey(k.key);
      assert.equal(me.statusCode, 200, me.body);
      assert.equal(me.json().id, k.id);
      const bearer = await t.call('GET', '/v1/auth/whoami', { token: k.key });
      assert.equal(bearer.statusCode, 200, bearer.body);
      // The audit has the creation, never the key.
      const events = await t.store.db.query<{ action: string; changes: unknown }>(
        "select action, changes from audit_events where resource_id = $1 and action = 'key.created'",
        [k.id],
      );
      assert.equal(events.length, 1);
      assert.doesNotMatch(JSON.stringify(events), new RegExp(`${k.key}|"hash"`));
    });

    test('every reason code, over POST /v1/keys/verify and the middleware', async () => {
      // malformed: wrong shape, and one mistyped character (checksum)
      const good = await create();
      const typo = good.key.slice(0, 15) + (good.key[15] === 'a' ? 'b' : 'a') + good.key.slice(16);
      for (const bad of ['nope', typo, `${good.key}x`, 'stw_live_0OIl_abcdef']) {
        assert.equal((await verify(bad)).code, 'malformed');
      }
      problem(await withKey(typo), 401, 'key_malformed');
      problem(await t.call('GET', '/v1/auth/whoami', { token: 'stw_garbage' }), 401, 'key_malformed');
      // not_found: well-formed, checksum right, never issued
      const { generateKey } = await import('./format.ts');
      const unknown = generateKey('stw', 'live');
      const nf = await verify(unknown);
      assert.deepEqual([nf.valid, nf.code, nf.key_id, nf.org_id], [false, 'not_found', null, null]);
      assert.equal(problem(await withKey(unknown), 401, 'key_not_found').reason, 'not_found');
      // revoked
      const r = await create();
      const del = await t.call('DELETE', `/v1/keys/${r.id}`, { token, body: { reason: 'leaked' } });
      assert.equal(del.statusCode, 200, del.body);
      assert.equal(del.json().revoked_reason, 'leaked');
      assert.equal((await verify(r.key)).code, 'revoked');
      problem(await withKey(r.key), 401, 'key_revoked');
      problem(await t.call('DELETE', `/v1/keys/${r.id}`, { token }), 409, 'api_key_revoked');
      // expired
      const e = await create({ expires_at: new Date(t.now.ms + 1000).toISOString() });
      t.now.ms += 1000;
      assert.equal((await verify(e.key)).code, 'expired');
      problem(await withKey(e.key), 401, 'key_expired');
      // disabled
      const d = await create();
      const off = await t.call('PATCH', `/v1/keys/${d.id}`, { token, body: { active: false } });
      assert.equal(off.statusCode, 200, off.body);
      assert.equal((await verify(d.key)).code, 'disabled');
      problem(await withKey(d.key), 401, 'key_disabled');
      // ip_not_allowed
      const ip = await create({ allowed_ips: ['192.0.2.0/24'] });
      assert.equal((await verify(ip.key, { ip: '198.51.100.1' })).code, 'ip_not_allowed');
      assert.equal((await verify(ip.key, { ip: '192.0.2.77' })).code, 'valid');
      problem(await withKey(ip.key), 403, 'key_ip_not_allowed');
      // rate_limited, with headers
      const rl = await create({ ratelimit: { limit: 2, window_seconds: 60 } });
      const first = await withKey(rl.key);
      assert.equal(first.statusCode, 200);
      assert.equal(first.headers['ratelimit-limit'], '2');
      assert.equal(first.headers['ratelimit-remaining'], '1');
      assert.ok(Number(first.headers['ratelimit-reset']) > 0);
      const v2 = await verify(rl.key);
      assert.deepEqual([v2.code, v2.ratelimit?.limit, v2.ratelimit?.remaining], ['valid', 2, 0]);
      assert.ok((v2.ratelimit?.reset ?? 0) > t.now.ms);
      assert.equal((await verify(rl.key)).code, 'rate_limited');
      const limited = problem(await withKey(rl.key), 429, 'rate_limited');
      assert.equal(limited.reason, 'rate_limited');
      const again = await withKey(rl.key);
      assert.ok(Number(again.headers['retry-after']) >= 1);
      assert.equal(again.headers['ratelimit-remaining'], '0');
      // quota_exceeded
      const qk = await create({ tier: 'tiny' });
      for (let i = 0; i < 3; i++) assert.equal((await verify(qk.key)).code, 'valid');
      const qx = await verify(qk.key);
      assert.deepEqual([qx.code, qx.quota?.limit, qx.quota?.remaining], ['quota_exceeded', 3, 0]);
      const qres = problem(await withKey(qk.key), 429, 'quota_exceeded');
      assert.equal(qres.reason, 'quota_exceeded');
      // permission_denied: scopes ∩ owner's rights
      const scoped = await create({ scopes: ['secrets:read'] });
      assert.equal((await verify(scoped.key, { permission: 'secrets:read' })).code, 'valid');
      const pd = await verify(scoped.key, { permission: 'roles:update' });
      assert.deepEqual([pd.valid, pd.code, pd.key_id], [false, 'permission_denied', scoped.id]);
      problem(await withKey(scoped.key, '/v1/keys'), 403, 'permission_denied');
      // Order: a revoked key over its rate limit answers revoked, an expired disabled key expired.
      const both = await create({ expires_at: new Date(t.now.ms + 1000).toISOString() });
      await t.call('PATCH', `/v1/keys/${both.id}`, { token, body: { active: false } });
      t.now.ms += 1000;
      assert.equal((await verify(both.key)).code, 'expired');
    });

    test("a connection remembers its key's hash, never the verdict", async () => {
      const verifier = t.app.steward.keys.verifier;
      const connection = {}; // what the authenticator passes: the request's socket
      const on = async (key: string) => (await verifier.verify(key, { ip: '127.0.0.1', connection })).code;
      const a = await create();
      const b = await create();
      assert.equal(await on(a.key), 'valid');
      assert.equal(await on(a.key), 'valid', 'the same key again, from the memo');
      assert.equal(await on(b.key), 'valid', 'another key on the same connection is itself');
      assert.equal(await on(`${a.key}x`), 'malformed');
      assert.equal(await on(a.key.slice(0, -1)), 'malformed');
      const del = await t.call('DELETE', `/v1/keys/${a.id}`, { token, body: { reason: 'leaked' } });
      assert.equal(del.statusCode, 200, del.body);
      assert.equal(await on(a.key), 'revoked', 'a revoke reaches a connection that used the key');
      assert.equal(await on(b.key), 'valid');
    });

    test('verifications are counted by code at /metrics (both routes)', async () => {
      const scrape = async () => {
        const res = await t.app.inject({ method: 'GET', url: '/metrics' });
        assert.equal(res.statusCode, 200);
        assert.match(res.body, /^# TYPE steward_api_key_verifications_total counter$/m);
        const counts: Record<string, number> = {};
        for (const m of res.body.matchAll(/^steward_api_key_verifications_total\{code="(\w+)"\} (\d+)$/gm)) {
          counts[m[1] as string] = Number(m[2]);
        }
        return counts;
      };
      const k = await create();
      const before = await scrape();
      // Every code is exported from the start, zeros included.
      assert.deepEqual(Object.keys(before).sort(), [
        'disabled',
        'expired',
        'ip_not_allowed',
        'malformed',
        'not_found',
        'permission_denied',
        'quota_exceeded',
        'rate_limited',
        'revoked',
        'valid',
      ]);
      assert.equal((await verify(k.key)).code, 'valid');
      assert.equal((await withKey(k.key)).statusCode, 200);
      assert.equal((await verify('nope')).code, 'malformed');
      problem(await withKey(`${k.key.slice(0, -1)}${k.key.endsWith('a') ? 'b' : 'a'}`), 401, 'key_malformed');
      const { generateKey } = await import('./format.ts');
      assert.equal((await verify(generateKey('stw', 'live'))).code, 'not_found');
      const after = await scrape();
      const delta = Object.fromEntries(
        Object.entries(after)
          .map(([code, n]) => [code, n - (before[code] ?? 0)])
          .filter(([, n]) => n !== 0),
      );
      assert.deepEqual(delta, { valid: 2, malformed: 2, not_found: 1 });
      assert.equal(after.valid, t.app.steward.keys.verifier.counts().valid);
    });

    test('verify needs api_keys:verify', async () => {
      const k = await create({ scopes: ['api_keys:read'] });
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/keys/verify',
        headers: { 'x-api-key': k.key },
        payload: { key: k.key },
      });
      problem(res, 403, 'permission_denied');
      problem(
        await t.app.inject({ method: 'POST', url: '/v1/keys/verify', payload: { key: k.key } }),
        401,
        'unauthenticated',
      );
      // A key holding api_keys:verify may verify.
      const verifier = await create({ scopes: ['api_keys:verify'] });
      const ok = await t.app.inject({
        method: 'POST',
        url: '/v1/keys/verify',
        headers: { 'x-api-key': verifier.key },
        payload: { key: k.key },
      });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().code, 'valid');
    });

    test('roll: the old key works until the grace period ends, not at its end', async () => {
      const old = await create({ scopes: ['secrets:read'], metadata: { x: 1 } });
      const res = await t.call('POST', `/v1/keys/${old.id}/roll`, { token, body: { grace_seconds: 60 } });
      assert.equal(res.statusCode, 201, res.body);
      const rolled = res.json() as {
        id: string;
        key: string;
        scopes: string[];
        previous: { expires_at: string };
      };
      assert.notEqual(rolled.id, old.id);
      assert.deepEqual(rolled.scopes, ['secrets:read']);
      assert.equal(Date.parse(rolled.previous.expires_at), t.now.ms + 60_000);
      const start = t.now.ms;
      t.now.ms = start + 59_999;
      assert.equal((await verify(old.key)).code, 'valid');
      assert.equal((await verify(rolled.key)).code, 'valid');
      t.now.ms = start + 60_000;
      assert.equal((await verify(old.key)).code, 'expired');
      assert.equal((await verify(rolled.key)).code, 'valid');
      const oldRow = (await t.call('GET', `/v1/keys/${old.id}`, { token })).json();
      assert.equal(oldRow.rolled_to, rolled.id);
      // grace 0: the old key stops at once
      const again = await t.call('POST', `/v1/keys/${rolled.id}/roll`, { token, body: { grace_seconds: 0 } });
      assert.equal(again.statusCode, 201);
      assert.equal((await verify(rolled.key)).code, 'expired');
      const events = await t.store.db.query("select 1 from audit_events where action = 'key.rolled'");
      assert.equal(events.length, 2);
    });

    test('quota resets at the end of the billing period (injected clock); usage is flushed in batches', async () => {
      const k = await create({ tier: 'tiny', period_days: 1 });
      const periodStart = t.now.ms;
      for (let i = 0; i < 3; i++) assert.equal((await verify(k.key)).code, 'valid');
      const over = await verify(k.key);
      assert.equal(over.code, 'quota_exceeded');
      assert.equal(Date.parse(over.quota?.period_end ?? ''), periodStart + 86_400_000);
      // No write per verification: between two flushes the row does not move. The flush timer
      // runs every second, so a window can contain one; then look again.
      const verifier = t.app.steward.keys.verifier;
      const countOf = async (id: string) =>
        (
          await t.store.db.query<{ request_count: number }>(
            'select request_count from api_keys where id = $1',
            [id],
          )
        )[0]?.request_count;
      const probe = await create({});
      for (let attempt = 0; ; attempt++) {
        assert.ok(attempt < 20, 'a flush in every window');
        const flushesBefore = verifier.stats().flushes;
        const rowBefore = await countOf(probe.id);
        for (let i = 0; i < 3; i++) assert.equal((await verify(probe.key)).code, 'valid');
        const rowAfter = await countOf(probe.id);
        if (verifier.stats().flushes !== flushesBefore) continue;
        assert.equal(rowAfter, rowBefore);
        break;
      }
      await verifier.flush();
      const got = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      assert.equal(got.usage.request_count, 3);
      assert.ok(got.last_used_at !== null);
      t.now.ms = periodStart + 86_400_000 - 1;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      assert.equal((await verify(k.key)).code, 'quota_exceeded');
      t.now.ms = periodStart + 86_400_000;
      const fresh = await verify(k.key);
      assert.equal(fresh.code, 'valid');
      assert.equal(fresh.quota?.remaining, 2);
      assert.equal(Date.parse(fresh.quota?.period_end ?? ''), periodStart + 2 * 86_400_000);
      await t.app.steward.keys.verifier.flush();
      const after = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      assert.equal(after.usage.request_count, 1);
      assert.equal(Date.parse(after.usage.period_start), periodStart + 86_400_000);
    });

    test('flush() waits for a flush already under way (the timer’s): usage is written when it resolves', async () => {
      const verifier = t.app.steward.keys.verifier;
      const k = await create();
      for (let i = 0; i < 5; i++) assert.equal((await verify(k.key)).code, 'valid');
      const flushesBefore = verifier.stats().flushes;
      const underWay = verifier.flush(); // takes the pending counts, as the timer does
      await verifier.flush(); // nothing left pending: must still wait for the write under way
      assert.ok(verifier.stats().flushes > flushesBefore, 'returned before the write under way finished');
      const [row] = await t.store.db.query<{ request_count: number }>(
        'select request_count from api_keys where id = $1',
        [k.id],
      );
      assert.equal(row?.request_count, 5);
      await underWay;
    });

    test('IP allowlist: IPv6 CIDR; X-Forwarded-For believed only from a trusted proxy', async () => {
      const k = await create({ allowed_ips: ['2001:db8::/32', '192.0.2.10'] });
      const from = (remoteAddress: string, xff?: string) =>
        t.app.inject({
          method: 'GET',
          url: '/v1/auth/whoami',
          remoteAddress,
          headers: { 'x-api-key': k.key, ...(xff ? { 'x-forwarded-for': xff } : {}) },
        });
      assert.equal((await from('2001:db8:1::5')).statusCode, 200);
      problem(await from('2001:db9::5'), 403, 'key_ip_not_allowed');
      assert.equal((await from('192.0.2.10')).statusCode, 200);
      assert.equal((await from('::ffff:192.0.2.10')).statusCode, 200);
      // An untrusted client claiming an allowed address is judged by its own address.
      problem(await from('203.0.113.9', '2001:db8::5'), 403, 'key_ip_not_allowed');
      // The trusted proxy's header is believed.
      assert.equal((await from('10.0.0.1', '2001:db8::7')).statusCode, 200);
      problem(await from('10.0.0.1', '2001:dead::7'), 403, 'key_ip_not_allowed');
      problem(
        await t.call('POST', '/v1/keys', {
          token,
          body: { name: 'x', scopes: [], allowed_ips: ['10.0.0.0/33'] },
        }),
        400,
        'invalid_cidr',
      );
    });

    test("org A's key against org B: 404 on B's resources, not_found on verify", async () => {
      const org = await t.call('POST', '/v1/orgs', { token, body: { slug: 'org-b', name: 'B' } });
      assert.equal(org.statusCode, 201, org.body);
      const tokenB = (await t.login(ADMIN.email, ADMIN.password, { org: 'org-b' })).json()
        .access_token as string;
      const keyB = await create({}, tokenB);
      const keyA = await create();
      problem(await withKey(keyA.key, `/v1/keys/${keyB.id}`), 404, 'api_key_not_found');
      problem(await t.call('GET', `/v1/keys/${keyB.id}`, { token }), 404, 'api_key_not_found');
      problem(
        await t.call('PATCH', `/v1/keys/${keyB.id}`, { token, body: { name: 'x' } }),
        404,
        'api_key_not_found',
      );
      problem(await t.call('DELETE', `/v1/keys/${keyB.id}`, { token }), 404, 'api_key_not_found');
      problem(
        await t.call('POST', `/v1/keys/${keyB.id}/roll`, { token, body: { grace_seconds: 0 } }),
        404,
        'api_key_not_found',
      );
      const v = await verify(keyB.key);
      assert.deepEqual(
        [v.valid, v.code, v.key_id, v.org_id, v.owner],
        [false, 'not_found', null, null, null],
      );
      const list = (await withKey(keyA.key, '/v1/keys')).json() as { data: { id: string }[] };
      assert.ok(!list.data.some((k) => k.id === keyB.id));
    });

    test('bad inputs: wrong types, unknown fields, oversize, bad scopes and tiers', async () => {
      const post = (body: unknown) => t.call('POST', '/v1/keys', { token, body });
      problem(await post({ name: 7, scopes: [] }), 400, 'validation_failed');
      problem(await post({ name: 'x', scopes: 'secrets:read' }), 400, 'validation_failed');
      problem(await post({ name: 'x', scopes: [], admin: true }), 400, 'validation_failed');
      problem(await post({ name: 'x'.repeat(201), scopes: [] }), 400, 'validation_failed');
      problem(
        await post({ name: 'x', scopes: [], metadata: { a: 'x'.repeat(9000) } }),
        400,
        'validation_failed',
      );
      problem(await post({ name: 'x', scopes: ['nope:nothing'] }), 400, 'invalid_scope');
      problem(await post({ name: 'x', scopes: [], tier: 'platinum' }), 400, 'unknown_tier');
      problem(await post({ name: 'x', scopes: [], expires_at: 'tomorrow' }), 400, 'validation_failed');
      problem(
        await post({ name: 'x', scopes: [], expires_at: new Date(t.now.ms - 1).toISOString() }),
        400,
        'validation_failed',
      );
      problem(
        await post({ name: 'x', scopes: [], ratelimit: { limit: 0, window_seconds: 1 } }),
        400,
        'validation_failed',
      );
      problem(
        await post({ name: 'x', scopes: [], owner: 'usr_01JD0000000000000000000000' }),
        404,
        'owner_not_found',
      );
      for (const owner of ['not an id', 'usr_nonexistent', 'key_01JD0000000000000000000000']) {
        const body = problem(await post({ name: 'x', scopes: [], owner }), 400, 'validation_failed');
        assert.deepEqual(body.errors, [
          { path: 'body.owner', message: 'Not a user (usr_…) or agent (agt_…) id' },
        ]);
      }
      const verifyBad = (body: unknown) => t.call('POST', '/v1/keys/verify', { token, body });
      problem(await verifyBad({ key: 5 }), 400, 'validation_failed');
      problem(await verifyBad({ key: 'x', extra: 1 }), 400, 'validation_failed');
      problem(await verifyBad({ key: 'x'.repeat(600) }), 400, 'validation_failed');
      assert.equal((await verifyBad({ key: `stw_live_${'1'.repeat(70)}` })).json().code, 'malformed');
      problem(await t.call('GET', '/v1/keys/not-an-id', { token }), 404, 'api_key_not_found');
      problem(await t.call('GET', '/v1/keys?cursor=zzz', { token }), 400, 'invalid_cursor');
      problem(
        await t.call('POST', '/v1/keys/key_01JD0000000000000000000000/roll', { token, body: {} }),
        400,
        'validation_failed',
      );
    });

    test('pagination over keys', async () => {
      const seen = new Set<string>();
      let cursor: string | null = null;
      let pages = 0;
      do {
        const res = await t.call('GET', `/v1/keys?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { token });
        assert.equal(res.statusCode, 200, res.body);
        const body = res.json() as { data: { id: string }[]; next_cursor: string | null };
        for (const k of body.data) seen.add(k.id);
        cursor = body.next_cursor;
        pages++;
      } while (cursor !== null && pages < 100);
      const [count] = await t.store.db.query<{ n: number }>(
        'select count(*)::int as n from api_keys where org_id = $1',
        [t.orgId],
      );
      assert.equal(seen.size, count?.n);
      assert.ok(pages > 1);
    });

    test('burst: audited once per window; suspends the key only when the org says so', async () => {
      const put = await putSettings({
        body: { burst_threshold: 5, burst_window_seconds: 60, suspend_on_burst: false },
      });
      assert.equal(put.statusCode, 200, put.body);
      const k = await create();
      for (let i = 0; i < 12; i++) assert.equal((await verify(k.key)).code, 'valid');
      const waitFor = async (sql: string, params: unknown[], n: number) => {
        for (let i = 0; i < 100; i++) {
          const rows = await t.store.db.query(sql, params);
          if (rows.length >= n) return rows;
          await new Promise((r) => setTimeout(r, 20));
        }
        return t.store.db.query(sql, params);
      };
      const bursts =
        "select details from audit_events where action = 'security.burst_detected' and resource_id = $1";
      assert.equal((await waitFor(bursts, [k.id], 1)).length, 1);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await t.store.db.query(bursts, [k.id])).length, 1, 'once per key per window');
      // Suspension on.
      await putSettings({ body: { burst_threshold: 5, burst_window_seconds: 60, suspend_on_burst: true } });
      const s = await create();
      const codes: string[] = [];
      for (let i = 0; i < 7; i++) codes.push((await verify(s.key)).code);
      assert.deepEqual(codes, ['valid', 'valid', 'valid', 'valid', 'valid', 'disabled', 'disabled']);
      await waitFor(
        "select 1 from audit_events where action = 'key.suspended' and resource_id = $1",
        [s.id],
        1,
      );
      const row = (await t.call('GET', `/v1/keys/${s.id}`, { token })).json();
      assert.deepEqual([row.active, row.disabled_reason], [false, 'burst_detected']);
      // An admin re-enables it.
      const on = await t.call('PATCH', `/v1/keys/${s.id}`, { token, body: { active: true } });
      assert.equal(on.json().active, true);
      t.now.ms += 61_000;
      assert.equal((await verify(s.key)).code, 'valid');
      await putSettings({ body: { burst_threshold: 50, burst_window_seconds: 60, suspend_on_burst: false } });
    });

    test('burst: refused requests count too (ip_not_allowed, rate_limited, quota_exceeded, revoked), and may suspend', async () => {
      const waitFor = async (sql: string, params: unknown[], n: number) => {
        for (let i = 0; i < 100; i++) {
          const rows = await t.store.db.query(sql, params);
          if (rows.length >= n) return rows;
          await new Promise((r) => setTimeout(r, 20));
        }
        return t.store.db.query(sql, params);
      };
      const bursts =
        "select details from audit_events where action = 'security.burst_detected' and resource_id = $1";
      const put = (suspend: boolean) =>
        putSettings({ body: { burst_threshold: 5, burst_window_seconds: 60, suspend_on_burst: suspend } });
      // Every key made first, under the default threshold: six creations over a threshold of 5
      // would be a creation burst of their own.
      t.now.ms += 120_000;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      const pinned = await create({ allowed_ips: ['10.9.9.9'] });
      const limited = await create({ ratelimit: { limit: 2, window_seconds: 600 } });
      const quota = await create({ tier: 'tiny' });
      const revoked = await create();
      const s = await create({ allowed_ips: ['10.9.9.9'] });
      const dead = await create();
      for (const k of [revoked, dead]) {
        assert.equal((await t.call('DELETE', `/v1/keys/${k.id}`, { token, body: {} })).statusCode, 200);
      }
      assert.equal((await put(false)).statusCode, 200);
      for (const [k, refusal] of [
        [pinned, 'ip_not_allowed'],
        [limited, 'rate_limited'],
        [quota, 'quota_exceeded'],
        [revoked, 'revoked'],
      ] as const) {
        const codes = new Set<string>();
        for (let i = 0; i < 7; i++) codes.add((await verify(k.key, { ip: '127.0.0.1' })).code);
        assert.ok(codes.has(refusal), [...codes].join());
        const rows = (await waitFor(bursts, [k.id], 1)) as { details: Record<string, unknown> }[];
        assert.equal(rows.length, 1, refusal);
        assert.deepEqual([rows[0]?.details.count, rows[0]?.details.suspended], [6, false], refusal);
      }
      // Over the middleware as well, and with suspension on: the key is switched off.
      assert.equal((await put(true)).statusCode, 200);
      for (let i = 0; i < 6; i++) problem(await withKey(s.key), 403, 'key_ip_not_allowed');
      await waitFor(
        "select 1 from audit_events where action = 'key.suspended' and resource_id = $1",
        [s.id],
        1,
      );
      const row = (await t.call('GET', `/v1/keys/${s.id}`, { token })).json();
      assert.deepEqual([row.active, row.disabled_reason], [false, 'burst_detected']);
      assert.equal(
        ((await t.store.db.query(bursts, [s.id]))[0] as { details: { suspended: boolean } }).details
          .suspended,
        true,
      );
      // A revoked key is not suspended (nothing to switch off): reported, `suspended: false`.
      for (let i = 0; i < 6; i++) assert.equal((await verify(dead.key)).code, 'revoked');
      const deadRows = (await waitFor(bursts, [dead.id], 1)) as { details: { suspended: boolean } }[];
      assert.equal(deadRows[0]?.details.suspended, false);
      assert.equal(
        (
          await t.store.db.query(
            "select 1 from audit_events where action = 'key.suspended' and resource_id = $1",
            [dead.id],
          )
        ).length,
        0,
      );
      await putSettings({ body: { burst_threshold: 50, burst_window_seconds: 60, suspend_on_burst: false } });
    });

    test('a quota_exceeded 429 carries RateLimit-* headers (the request took a rate-limit point)', async () => {
      const k = await create({ tier: 'tiny', ratelimit: { limit: 10, window_seconds: 600 } });
      for (let i = 0; i < 3; i++) {
        const ok = await withKey(k.key);
        assert.equal(ok.statusCode, 200, ok.body);
        assert.equal(ok.headers['ratelimit-remaining'], String(9 - i));
      }
      const over = await withKey(k.key);
      problem(over, 429, 'quota_exceeded');
      assert.equal(over.headers['ratelimit-limit'], '10');
      assert.equal(over.headers['ratelimit-remaining'], '6');
      assert.ok(Number(over.headers['ratelimit-reset']) > 0);
      assert.ok(Number(over.headers['retry-after']) > 600, 'Retry-After: the end of the billing period');
    });

    test('after a billing period ends, refusals and GET show the current period; nothing is written', async () => {
      const k = await create({ tier: 'tiny', period_days: 1, allowed_ips: ['127.0.0.1'] });
      const start = t.now.ms;
      for (let i = 0; i < 3; i++) assert.equal((await verify(k.key, { ip: '127.0.0.1' })).code, 'valid');
      await t.app.steward.keys.verifier.flush();
      const refused = await verify(k.key, { ip: '10.1.1.1' });
      assert.deepEqual([refused.code, refused.quota?.remaining], ['ip_not_allowed', 0]);
      t.now.ms = start + 86_400_000 + 5_000;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      const later = await verify(k.key, { ip: '10.1.1.1' });
      assert.equal(later.code, 'ip_not_allowed');
      assert.deepEqual(later.quota, {
        limit: 3,
        remaining: 3,
        period_end: new Date(start + 2 * 86_400_000).toISOString(),
      });
      const got = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      assert.deepEqual(got.usage, {
        request_count: 0,
        period_start: new Date(start + 86_400_000).toISOString(),
        period_days: 1,
      });
      const listed = (await t.call('GET', '/v1/keys?limit=100', { token }))
        .json()
        .data.find((r: { id: string }) => r.id === k.id);
      assert.equal(listed.usage.request_count, 0);
      await t.app.steward.keys.verifier.flush();
      const [row] = await t.store.db.query<{ request_count: number; period_start: Date }>(
        'select request_count, period_start from api_keys where id = $1',
        [k.id],
      );
      assert.deepEqual(
        [row?.request_count, new Date(row?.period_start ?? 0).getTime()],
        [3, start],
        'no write',
      );
      // The next counted request starts the new period.
      const fresh = await verify(k.key, { ip: '127.0.0.1' });
      assert.deepEqual([fresh.code, fresh.quota?.remaining], ['valid', 2]);
    });

    test('the settings audit event names fields as the API does (snake_case)', async () => {
      const put = await putSettings({
        body: { burst_threshold: 40, burst_window_seconds: 30, suspend_on_burst: false },
      });
      assert.equal(put.statusCode, 200, put.body);
      const events = await t.store.db.query<{ changes: { before: object; after: object } }>(
        "select changes from audit_events where action = 'key.updated' and resource_type = 'api_key_settings'",
      );
      const names = ['burst_threshold', 'burst_window_seconds', 'suspend_on_burst'];
      assert.ok(events.length > 0);
      for (const { changes } of events) {
        assert.deepEqual(Object.keys(changes.before).sort(), names);
        assert.deepEqual(Object.keys(changes.after).sort(), names);
      }
      assert.ok(
        events.some((e) =>
          isDeepStrictEqual(e.changes.after, {
            burst_threshold: 40,
            burst_window_seconds: 30,
            suspend_on_burst: false,
          }),
        ),
      );
      await putSettings({ body: { burst_threshold: 50, burst_window_seconds: 60, suspend_on_burst: false } });
    });

    test('burst of key creations from one source is detected', async () => {
      await putSettings({ body: { burst_threshold: 3, burst_window_seconds: 60, suspend_on_burst: false } });
      t.now.ms += 120_000;
      for (let i = 0; i < 5; i++) await create({ name: `burst-${i}` });
      const rows = await t.store.db.query<{ details: { kind: string; source: string } }>(
        "select details from audit_events where action = 'security.burst_detected'",
      );
      const creation = rows.filter((r) => r.details.kind === 'key_creation');
      assert.equal(creation.length, 2, JSON.stringify(creation)); // per IP and per principal, once each
      await putSettings({ body: { burst_threshold: 50, burst_window_seconds: 60, suspend_on_burst: false } });
    });

    test('scopes no check can match are refused on create and PATCH (400 invalid_scope); stored ones still work', async () => {
      const post = (scopes: unknown[]) => t.call('POST', '/v1/keys', { token, body: { name: 'x', scopes } });
      const refused = (res: Awaited<ReturnType<typeof post>>, at: number, scope: string) => {
        const body = problem(res, 400, 'invalid_scope');
        assert.equal(body.scope, scope);
        const errors = body.errors as { path: string; message: string }[];
        assert.deepEqual(
          errors.map((e) => e.path),
          [`body.scopes.${at}`],
        );
        assert.match(String(body.detail), new RegExp(`^body\\.scopes\\.${at}: `));
        return errors[0]?.message ?? '';
      };
      // `*:*` reads as "everything", but the scope rule (permission, resource:*, *:action, *)
      // matches it with nothing: a key minted with it would be denied everywhere.
      assert.match(refused(await post(['*:*']), 0, '*:*'), /use "\*" for every permission/);
      assert.match(refused(await post(['secrets:read', ' *:* ']), 1, ' *:* '), /use "\*"/);
      for (const scope of [
        ' ',
        '\t',
        'secrets',
        'secrets:',
        ':read',
        'nope:*',
        '*:nope',
        'secrets:read ',
        '**',
      ]) {
        assert.match(refused(await post([scope]), 0, scope), /GET \/v1\/authz\/permissions/);
      }
      // The empty string is refused by the body schema itself.
      const empty = problem(await post(['']), 400, 'validation_failed');
      assert.deepEqual(
        (empty.errors as { path: string }[]).map((e) => e.path),
        ['body.scopes.0'],
      );
      // What the rule can match is accepted, and matches.
      const cases: [string, string, string][] = [
        ['secrets:read', 'secrets:read', 'secrets:create'],
        ['secrets:*', 'secrets:reveal', 'flags:read'],
        ['*:read', 'flags:read', 'flags:create'],
        ['*', 'org:admin', 'nope:nothing'],
      ];
      for (const [scope, allowed, denied] of cases) {
        const k = await create({ scopes: [scope] });
        assert.equal((await verify(k.key, { permission: allowed })).code, 'valid', scope);
        assert.equal((await verify(k.key, { permission: denied })).code, 'permission_denied', scope);
      }
      // PATCH: refused, and nothing changes.
      const k = await create({ scopes: ['secrets:read'] });
      refused(
        await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { scopes: ['secrets:read', '*:*'] } }),
        1,
        '*:*',
      );
      assert.deepEqual((await t.call('GET', `/v1/keys/${k.id}`, { token })).json().scopes, ['secrets:read']);
      // A key stored before the check keeps working: read, renamed, verified as before.
      await t.store.db.query(`update api_keys set scopes = '["*:*", "secrets:read"]'::jsonb where id = $1`, [
        k.id,
      ]);
      const renamed = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { name: 'legacy' } });
      assert.equal(renamed.statusCode, 200, renamed.body);
      assert.deepEqual(renamed.json().scopes, ['*:*', 'secrets:read']);
      assert.equal((await verify(k.key, { permission: 'secrets:read' })).code, 'valid');
      assert.equal((await verify(k.key, { permission: 'secrets:create' })).code, 'permission_denied');
    });
  });
}
