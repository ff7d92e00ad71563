// A key is never more than its scopes and its owner's rights (SPEC §3): what a key may do to keys,
// how changes to its owner reach it, and what a roll carries over (usage, rate limit, expiry).
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { newId } from '../db/ids.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';
import { createKey, problem, TEST_TIERS } from './test-support.ts';

const PASS = 'a long enough passphrase 42';

for (const store of STORES) {
  describe(`API keys stay within their bounds (${store.kind})`, { skip: store.skip }, () => {
    let t: IdentityTestApp;
    let token: string;
    before(async () => {
      t = await identityTestApp(store.kind, { API_KEY_TIERS: TEST_TIERS });
    });
    beforeEach(async () => {
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    const create = (body: Record<string, unknown> = {}, as = token) => createKey(t, as, body);
    /** A request authenticated by an API key. */
    const asKey = (key: string, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, body?: unknown) =>
      t.app.inject({
        method,
        url,
        headers: { 'x-api-key': key },
        ...(body === undefined ? {} : { payload: body as Record<string, unknown> }),
      });
    const verify = async (key: string, permission?: string) => {
      const res = await t.call('POST', '/v1/keys/verify', { token, body: { key, permission } });
      assert.equal(res.statusCode, 200, res.body);
      return res.json() as { code: string; quota: { remaining: number } | null };
    };
    let users = 0;
    /** A user of the org with these roles, and an access token of theirs. */
    const user = async (roles: string[]) => {
      const email = `user${++users}-${store.kind}@example.com`;
      const res = await t.call('POST', '/v1/users', { token, body: { email, password: PASS, roles } });
      assert.equal(res.statusCode, 201, res.body);
      const { access_token } = await t.tokensFor(email, PASS);
      return { id: (res.json() as { id: string }).id, token: access_token };
    };

    test('a key cannot widen itself: scopes, allowlist, limits, tier, expiry, active (403)', async () => {
      const k = await create({ scopes: ['api_keys:update'], allowed_ips: ['127.0.0.1'], tier: 'free' });
      for (const body of [
        { scopes: ['*'] },
        { allowed_ips: [] },
        { ratelimit: null },
        { tier: 'enterprise' },
        { expires_at: null },
        { period_days: 366 },
        { active: true },
      ]) {
        const field = Object.keys(body)[0];
        assert.equal(
          problem(await asKey(k.key, 'PATCH', `/v1/keys/${k.id}`, body), 403, 'key_self_change').field,
          field,
        );
      }
      const row = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      assert.deepEqual([row.scopes, row.allowed_ips, row.tier], [['api_keys:update'], ['127.0.0.1'], 'free']);
      // Its name and metadata are its own to change; a user changes the rest.
      const renamed = await asKey(k.key, 'PATCH', `/v1/keys/${k.id}`, {
        name: 'renamed',
        metadata: { a: 1 },
      });
      assert.equal(renamed.statusCode, 200, renamed.body);
      const widened = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { scopes: ['*'] } });
      assert.equal(widened.statusCode, 200, widened.body);
    });

    test('a key makes no key looser than itself: inherits its bounds, refuses looser ones (403)', async () => {
      const expiry = new Date(Date.now() + 86_400_000).toISOString();
      const k = await create({
        scopes: ['api_keys:create', 'api_keys:update', 'api_keys:read'],
        allowed_ips: ['127.0.0.0/8'],
        expires_at: expiry,
        ratelimit: { limit: 100, window_seconds: 60 },
        tier: 'free',
      });
      // What the request leaves out comes from the creating key.
      const child = await asKey(k.key, 'POST', '/v1/keys', { name: 'child', scopes: ['api_keys:read'] });
      assert.equal(child.statusCode, 201, child.body);
      const made = child.json();
      assert.deepEqual(
        [made.allowed_ips, made.expires_at, made.ratelimit, made.tier],
        [['127.0.0.0/8'], expiry, { limit: 100, window_seconds: 60 }, 'free'],
      );
      const later = new Date(Date.now() + 2 * 86_400_000).toISOString();
      for (const [body, field] of [
        [{ allowed_ips: [] }, 'allowed_ips'],
        [{ allowed_ips: ['10.0.0.1'] }, 'allowed_ips'],
        [{ allowed_ips: ['127.0.0.0/7'] }, 'allowed_ips'],
        [{ allowed_ips: ['::1'] }, 'allowed_ips'],
        [{ expires_at: null }, 'expires_at'],
        [{ expires_at: later }, 'expires_at'],
        [{ ratelimit: null }, 'ratelimit'],
        [{ ratelimit: { limit: 101, window_seconds: 60 } }, 'ratelimit'],
        [{ ratelimit: { limit: 100, window_seconds: 30 } }, 'ratelimit'],
        [{ tier: 'enterprise' }, 'tier'],
        [{ period_days: 7 }, 'tier'],
      ] as const) {
        const res = await asKey(k.key, 'POST', '/v1/keys', { name: 'x', scopes: ['api_keys:read'], ...body });
        assert.equal(problem(res, 403, 'key_bounds_exceeded').field, field, JSON.stringify(body));
      }
      // Tighter is fine.
      const tighter = await asKey(k.key, 'POST', '/v1/keys', {
        name: 'tighter',
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1', '127.1.0.0/16'],
        ratelimit: { limit: 5, window_seconds: 60 },
        tier: 'tiny',
      });
      assert.equal(tighter.statusCode, 201, tighter.body);
      // Loosening a sibling, or rolling one looser than itself (its new secret would come back), is
      // refused as well; a user's own session is not bounded.
      const patched = await asKey(k.key, 'PATCH', `/v1/keys/${made.id}`, { allowed_ips: [] });
      assert.equal(problem(patched, 403, 'key_bounds_exceeded').field, 'allowed_ips');
      const loose = await create({ scopes: ['api_keys:read'], tier: 'free' });
      const rolled = await asKey(k.key, 'POST', `/v1/keys/${loose.id}/roll`, { grace_seconds: 0 });
      assert.equal(problem(rolled, 403, 'key_bounds_exceeded').field, 'allowed_ips');
      const own = await asKey(k.key, 'POST', `/v1/keys/${made.id}/roll`, { grace_seconds: 0 });
      assert.equal(own.statusCode, 201, own.body);
      const successor = own.json().id as string;
      const byUser = await t.call('PATCH', `/v1/keys/${successor}`, { token, body: { allowed_ips: [] } });
      assert.equal(byUser.statusCode, 200, byUser.body);
    });

    test('a key gives no key a scope it does not hold: create, update, roll (403)', async () => {
      const creator = await create({ scopes: ['api_keys:create'] });
      for (const scopes of [
        ['*'],
        ['secrets:read'],
        ['api_keys:*'],
        ['*:create'],
        ['api_keys:create', 'org:admin'],
      ]) {
        const res = await asKey(creator.key, 'POST', '/v1/keys', { name: 'x', scopes });
        problem(res, 403, 'scope_not_held');
      }
      const same = await asKey(creator.key, 'POST', '/v1/keys', { name: 'x', scopes: ['api_keys:create'] });
      assert.equal(same.statusCode, 201, same.body);
      // A pattern covers what it stands for.
      const wide = await create({ scopes: ['api_keys:*', 'secrets:read'] });
      for (const scopes of [['api_keys:read'], ['api_keys:*'], ['api_keys:update', 'secrets:read'], []]) {
        const res = await asKey(wide.key, 'POST', '/v1/keys', { name: 'x', scopes });
        assert.equal(res.statusCode, 201, res.body);
      }
      problem(
        await asKey(wide.key, 'POST', '/v1/keys', { name: 'x', scopes: ['secrets:*'] }),
        403,
        'scope_not_held',
      );
      // Updating a sibling key (same owner): not beyond the caller's scopes, nor a stronger key at all.
      const updater = await create({ scopes: ['api_keys:update'] });
      const sibling = await create({ scopes: ['api_keys:update'] });
      const strong = await create({ scopes: ['*'] });
      problem(
        await asKey(updater.key, 'PATCH', `/v1/keys/${sibling.id}`, { scopes: ['*'] }),
        403,
        'scope_not_held',
      );
      problem(
        await asKey(updater.key, 'PATCH', `/v1/keys/${strong.id}`, { active: false }),
        403,
        'scope_not_held',
      );
      const narrowed = await asKey(updater.key, 'PATCH', `/v1/keys/${sibling.id}`, { scopes: [] });
      assert.equal(narrowed.statusCode, 200, narrowed.body);
      // Rolling a stronger key would hand its rights over in a new secret.
      problem(
        await asKey(creator.key, 'POST', `/v1/keys/${strong.id}/roll`, { grace_seconds: 0 }),
        403,
        'scope_not_held',
      );
      // A key may roll itself: the new key is exactly as strong (same scopes, limits, expiry).
      const self = await asKey(creator.key, 'POST', `/v1/keys/${creator.id}/roll`, { grace_seconds: 0 });
      assert.equal(self.statusCode, 201, self.body);
      assert.deepEqual(self.json().scopes, ['api_keys:create']);
      // A user is not scoped: the same requests pass with an access token.
      const user = await t.call('POST', `/v1/keys/${strong.id}/roll`, { token, body: { grace_seconds: 0 } });
      assert.equal(user.statusCode, 201, user.body);
    });

    test('revoke: a key revokes itself or a key no stronger and no looser, nothing else (403)', async () => {
      const expiry = new Date(t.now.ms + 86_400_000).toISOString();
      const weak = await create({
        scopes: ['api_keys:delete', 'api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        expires_at: expiry,
        tier: 'free',
      });
      const admin = await create({ scopes: ['*'] });
      const revokedEvents = async (id: string) =>
        (
          await t.store.db.query(
            "select 1 from audit_events where resource_id = $1 and action = 'key.revoked'",
            [id],
          )
        ).length;
      /** Refused, and nothing written: the target is active, unrevoked, verifies, has no revoke event. */
      const untouched = async (id: string, key: string) => {
        const row = (await t.call('GET', `/v1/keys/${id}`, { token })).json();
        assert.deepEqual([row.revoked_at, row.active], [null, true]);
        assert.equal((await verify(key)).code, 'valid');
        assert.equal(await revokedEvents(id), 0);
      };
      // The org's admin key holds scopes the weak key does not.
      const strong = await asKey(weak.key, 'DELETE', `/v1/keys/${admin.id}`, { reason: 'dos' });
      assert.equal(problem(strong, 403, 'scope_not_held').scope, '*');
      await untouched(admin.id, admin.key);
      // Same scopes, looser bounds: unpinned, or pinned but everlasting.
      const unpinned = await create({ scopes: ['api_keys:read'], expires_at: expiry, tier: 'free' });
      const everlasting = await create({
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        tier: 'free',
      });
      for (const [target, field] of [
        [unpinned, 'allowed_ips'],
        [everlasting, 'expires_at'],
      ] as const) {
        const res = await asKey(weak.key, 'DELETE', `/v1/keys/${target.id}`);
        assert.equal(problem(res, 403, 'key_bounds_exceeded').field, field);
        await untouched(target.id, target.key);
      }
      // A weaker key (fewer scopes, tighter bounds) it may revoke.
      const weaker = await create({
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        expires_at: expiry,
        tier: 'tiny',
      });
      const ok = await asKey(weak.key, 'DELETE', `/v1/keys/${weaker.id}`, { reason: 'cleanup' });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().revoked_reason, 'cleanup');
      assert.equal((await verify(weaker.key)).code, 'revoked');
      assert.equal(await revokedEvents(weaker.id), 1);
      // A scope stored before input was checked (`*:*`) matches nothing, so it makes no key stronger.
      const legacy = await create({
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        expires_at: expiry,
        tier: 'tiny',
      });
      await t.store.db.query(`update api_keys set scopes = '["*:*", "api_keys:read"]'::jsonb where id = $1`, [
        legacy.id,
      ]);
      const old = await asKey(weak.key, 'DELETE', `/v1/keys/${legacy.id}`);
      assert.equal(old.statusCode, 200, old.body);
      // Itself, always: a leaked key's holder can kill it with nothing else at hand.
      const self = await asKey(weak.key, 'DELETE', `/v1/keys/${weak.id}`, { reason: 'leaked' });
      assert.equal(self.statusCode, 200, self.body);
      assert.equal((await verify(weak.key)).code, 'revoked');
      assert.equal(await revokedEvents(weak.id), 1);
      // A user is not bounded: the stronger and looser keys go with an access token.
      for (const target of [admin, unpinned, everlasting]) {
        const res = await t.call('DELETE', `/v1/keys/${target.id}`, { token, body: {} });
        assert.equal(res.statusCode, 200, res.body);
      }
    });

    test('a superuser’s key is a superuser only when unscoped (*): GET /v1/orgs', async () => {
      // An org the admin is no member of: only a superuser lists it.
      const hidden = newId('org');
      await t.store.db.query('insert into organizations (id, slug, name) values ($1, $2, $3)', [
        hidden,
        `hidden-${store.kind}`,
        'Hidden',
      ]);
      const orgsOf = async (key: string) => {
        const res = await asKey(key, 'GET', '/v1/orgs');
        assert.equal(res.statusCode, 200, res.body);
        return (res.json() as { data: { id: string }[] }).data.map((o) => o.id);
      };
      const scoped = await create({ scopes: ['secrets:read'] });
      assert.deepEqual(await orgsOf(scoped.key), [t.orgId]);
      assert.equal((await asKey(scoped.key, 'GET', '/v1/auth/whoami')).json().superuser, false);
      const full = await create({ scopes: ['*'] });
      assert.ok((await orgsOf(full.key)).includes(hidden));
      assert.equal((await asKey(full.key, 'GET', '/v1/auth/whoami')).json().superuser, true);
      // The scoped key still has its owner's rights in the org within its scope (admin role).
      assert.equal((await verify(scoped.key, 'secrets:read')).code, 'valid');
      assert.equal((await verify(scoped.key, 'org:admin')).code, 'permission_denied');
    });

    test('a deactivated owner’s keys answer disabled at once', async () => {
      const u = await user(['developer']);
      const k = await create({ scopes: ['secrets:read'] }, u.token);
      assert.equal((await verify(k.key)).code, 'valid'); // cached now
      assert.equal((await asKey(k.key, 'GET', '/v1/auth/whoami')).statusCode, 200);
      const del = await t.call('DELETE', `/v1/users/${u.id}`, { token });
      assert.equal(del.statusCode, 204, del.body);
      assert.equal((await verify(k.key)).code, 'disabled');
      problem(await asKey(k.key, 'GET', '/v1/auth/whoami'), 401, 'key_disabled');
      // Reactivated: the key works again, at once too.
      const on = await t.call('PATCH', `/v1/users/${u.id}`, {
        token,
        body: { active: true, roles: ['viewer'] },
      });
      assert.equal(on.statusCode, 200, on.body);
      assert.equal((await verify(k.key)).code, 'valid');
    });

    test('a demoted owner’s key loses the rights at once (users API and role assignments)', async () => {
      const u = await user(['developer']);
      const k = await create({ scopes: ['*'] }, u.token);
      assert.equal((await verify(k.key, 'secrets:create')).code, 'valid');
      assert.deepEqual((await asKey(k.key, 'GET', '/v1/auth/whoami')).json().roles, ['developer']);
      const demote = await t.call('PATCH', `/v1/users/${u.id}`, { token, body: { roles: ['viewer'] } });
      assert.equal(demote.statusCode, 200, demote.body);
      assert.equal((await verify(k.key, 'secrets:create')).code, 'permission_denied');
      assert.equal((await verify(k.key, 'secrets:read')).code, 'valid');
      assert.deepEqual((await asKey(k.key, 'GET', '/v1/auth/whoami')).json().roles, ['viewer']);
      problem(await asKey(k.key, 'POST', '/v1/keys', { name: 'x', scopes: [] }), 403, 'permission_denied');
      // Through the role-assignment API (authz's own topic): promoted, then demoted again.
      const assigned = await t.call('POST', '/v1/role-assignments', {
        token,
        body: { principal: u.id, role: 'developer' },
      });
      assert.equal(assigned.statusCode, 201, assigned.body);
      assert.equal((await verify(k.key, 'secrets:create')).code, 'valid');
      const removed = await t.call('DELETE', `/v1/role-assignments/${assigned.json().id}`, { token });
      assert.equal(removed.statusCode, 204, removed.body);
      assert.equal((await verify(k.key, 'secrets:create')).code, 'permission_denied');
    });

    test('PATCH refuses a past expiry, as create does (400)', async () => {
      const k = await create();
      for (const at of [new Date(t.now.ms - 1), new Date(t.now.ms), new Date('2020-01-01T00:00:00Z')]) {
        const res = await t.call('PATCH', `/v1/keys/${k.id}`, {
          token,
          body: { expires_at: at.toISOString() },
        });
        problem(res, 400, 'validation_failed');
      }
      assert.equal((await t.call('GET', `/v1/keys/${k.id}`, { token })).json().expires_at, null);
      const later = new Date(t.now.ms + 60_000).toISOString();
      const ok = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { expires_at: later } });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal((await verify(k.key)).code, 'valid');
    });

    test('roll: an already rolled or expired key is refused (409); the new key keeps the original expiry', async () => {
      const end = new Date(t.now.ms + 3_600_000).toISOString();
      const k = await create({ expires_at: end });
      const roll = (id: string) =>
        t.call('POST', `/v1/keys/${id}/roll`, { token, body: { grace_seconds: 60 } });
      const first = await roll(k.id);
      assert.equal(first.statusCode, 201, first.body);
      assert.equal(first.json().expires_at, end);
      const again = problem(await roll(k.id), 409, 'api_key_already_rolled');
      assert.equal(again.rolled_to, first.json().id);
      const short = await create({ expires_at: new Date(t.now.ms + 1000).toISOString() });
      t.now.ms += 1000;
      problem(await roll(short.id), 409, 'api_key_expired');
      // The successor rolls as usual.
      assert.equal((await roll(first.json().id)).statusCode, 201);
    });

    test('roll: one quota for the old and new keys, unflushed usage included', async () => {
      const k = await create({ tier: 'tiny' });
      for (let i = 0; i < 2; i++) assert.equal((await verify(k.key)).code, 'valid');
      const res = await t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 600 } });
      assert.equal(res.statusCode, 201, res.body);
      const next = res.json() as { id: string; key: string };
      const v = await verify(next.key);
      assert.deepEqual([v.code, v.quota?.remaining], ['valid', 0]);
      assert.equal((await verify(next.key)).code, 'quota_exceeded');
      assert.equal((await verify(k.key)).code, 'quota_exceeded', 'the old key in grace shares the count');
      await t.app.steward.keys.verifier.flush();
      const row = (await t.call('GET', `/v1/keys/${next.id}`, { token })).json();
      assert.equal(row.usage.request_count, 3);
      // Usage of the old key in grace counts on the new key's row.
      const other = await create({ tier: 'free' });
      const rolled = (
        await t.call('POST', `/v1/keys/${other.id}/roll`, { token, body: { grace_seconds: 600 } })
      ).json() as { id: string; key: string };
      for (let i = 0; i < 3; i++) assert.equal((await verify(other.key)).code, 'valid');
      assert.equal((await verify(rolled.key)).quota?.remaining, 10_000 - 4);
      await t.app.steward.keys.verifier.flush();
      const counts = await t.store.db.query<{ id: string; request_count: number; last_used_at: Date | null }>(
        'select id, request_count, last_used_at from api_keys where id = any($1)',
        [[other.id, rolled.id]],
      );
      const byId = Object.fromEntries(counts.map((r) => [r.id, r]));
      assert.equal(byId[rolled.id]?.request_count, 4);
      assert.ok(byId[other.id]?.last_used_at !== null, 'the old key still records its last use');
    });

    test('roll: the rate limit is not refilled, and the two keys share it during grace', async () => {
      const k = await create({ ratelimit: { limit: 3, window_seconds: 600 } });
      for (let i = 0; i < 2; i++) assert.equal((await verify(k.key)).code, 'valid');
      const res = await t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 600 } });
      assert.equal(res.statusCode, 201, res.body);
      const next = res.json() as { key: string };
      assert.equal((await verify(next.key)).code, 'valid');
      assert.equal((await verify(next.key)).code, 'rate_limited');
      assert.equal((await verify(k.key)).code, 'rate_limited');
    });

    /** key.updated events of a key. */
    const updatedEvents = async (id: string) =>
      (
        await t.store.db.query(
          "select 1 from audit_events where resource_id = $1 and action = 'key.updated'",
          [id],
        )
      ).length;

    test('update: a key changes no key looser than itself as it is — name, metadata, scopes included (403)', async () => {
      const expiry = new Date(t.now.ms + 86_400_000).toISOString();
      const pinned = await create({
        scopes: ['api_keys:update', 'api_keys:delete', 'api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        expires_at: expiry,
        tier: 'free',
      });
      // Fewer scopes, but unpinned and everlasting: the pinned key may not revoke it, nor change it.
      const loose = await create({ name: 'loose', scopes: ['api_keys:read'], tier: 'free' });
      const everlasting = await create({
        name: 'everlasting',
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        tier: 'free',
      });
      for (const [target, field] of [
        [loose, 'allowed_ips'],
        [everlasting, 'expires_at'],
      ] as const) {
        for (const body of [
          { name: 'pwned' },
          { metadata: { owned: true } },
          { scopes: [] },
          { active: false },
        ]) {
          const res = await asKey(pinned.key, 'PATCH', `/v1/keys/${target.id}`, body);
          assert.equal(problem(res, 403, 'key_bounds_exceeded').field, field, JSON.stringify(body));
        }
        problem(await asKey(pinned.key, 'DELETE', `/v1/keys/${target.id}`), 403, 'key_bounds_exceeded');
        const row = (await t.call('GET', `/v1/keys/${target.id}`, { token })).json();
        assert.deepEqual(
          [row.name, row.metadata, row.scopes, row.active],
          [target === loose ? 'loose' : 'everlasting', {}, ['api_keys:read'], true],
        );
        assert.equal(await updatedEvents(target.id), 0);
      }
      // A key no looser than itself it changes; the result is checked as well.
      const tight = await create({
        scopes: ['api_keys:read'],
        allowed_ips: ['127.0.0.1'],
        expires_at: expiry,
        tier: 'tiny',
      });
      const ok = await asKey(pinned.key, 'PATCH', `/v1/keys/${tight.id}`, {
        name: 'renamed',
        metadata: { b: 2 },
      });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.deepEqual([ok.json().name, ok.json().metadata], ['renamed', { b: 2 }]);
      problem(
        await asKey(pinned.key, 'PATCH', `/v1/keys/${tight.id}`, { tier: 'enterprise' }),
        403,
        'key_bounds_exceeded',
      );
      // Its own name and metadata it changes, whatever its bounds; a user changes the loose key.
      const self = await asKey(pinned.key, 'PATCH', `/v1/keys/${pinned.id}`, { name: 'me' });
      assert.equal(self.statusCode, 200, self.body);
      const byUser = await t.call('PATCH', `/v1/keys/${loose.id}`, { token, body: { name: 'by user' } });
      assert.equal(byUser.statusCode, 200, byUser.body);
    });

    test('a burst suspension is lifted by an admin only (403 api_key_suspended); an owner’s own switch-off is the owner’s', async () => {
      const dev = await user(['developer']);
      const k = await create({ scopes: ['secrets:read'] }, dev.token);
      const patch = (body: Record<string, unknown>, as = dev.token) =>
        t.call('PATCH', `/v1/keys/${k.id}`, { token: as, body });
      const state = async () => {
        const row = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
        return [row.active, row.disabled_reason];
      };
      // Suspended as the verifier's burst report (or a creation burst) leaves it.
      await t.store.db.query(
        "update api_keys set active = false, disabled_reason = 'burst_detected' where id = $1",
        [k.id],
      );
      await t.app.steward.keys.verifier.invalidate('key', k.id);
      const refused = problem(await patch({ active: true }), 403, 'api_key_suspended');
      assert.deepEqual([refused.permission, refused.disabled_reason], ['api_keys:admin', 'burst_detected']);
      assert.deepEqual(await state(), [false, 'burst_detected']);
      // Switching it off again keeps the reason: no way round through the owner's own switch.
      assert.equal((await patch({ active: false })).statusCode, 200);
      assert.deepEqual(await state(), [false, 'burst_detected']);
      problem(await patch({ active: true, name: 'again' }), 403, 'api_key_suspended');
      assert.equal((await verify(k.key)).code, 'disabled');
      // The owner still renames it; an admin re-enables it.
      assert.equal((await patch({ name: 'renamed' })).statusCode, 200);
      const on = await patch({ active: true }, token);
      assert.equal(on.statusCode, 200, on.body);
      assert.deepEqual(await state(), [true, null]);
      assert.equal((await verify(k.key)).code, 'valid');
      // Off and on again by its owner: not a suspension.
      assert.equal((await patch({ active: false })).statusCode, 200);
      assert.deepEqual(await state(), [false, 'disabled by an administrator']);
      assert.equal((await patch({ active: true })).statusCode, 200);
      assert.deepEqual(await state(), [true, null]);
    });

    test('a rolled key is not revived: expires_at and active:true refused (409 api_key_already_rolled)', async () => {
      const k = await create();
      const rolled = await t.call('POST', `/v1/keys/${k.id}/roll`, { token, body: { grace_seconds: 60 } });
      assert.equal(rolled.statusCode, 201, rolled.body);
      const successor = rolled.json().id as string;
      t.now.ms += 61_000;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      assert.equal((await verify(k.key)).code, 'expired');
      const later = new Date(t.now.ms + 3_600_000).toISOString();
      for (const [body, field] of [
        [{ expires_at: null }, 'expires_at'],
        [{ expires_at: later }, 'expires_at'],
      ] as const) {
        const res = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body });
        const p = problem(res, 409, 'api_key_already_rolled');
        assert.deepEqual([p.rolled_to, p.field], [successor, field]);
      }
      // Switched off, then on again: refused as well; renaming is fine.
      assert.equal(
        (await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { active: false } })).statusCode,
        200,
      );
      const on = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { active: true } });
      assert.equal(problem(on, 409, 'api_key_already_rolled').field, 'active');
      assert.equal(
        (await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { name: 'old' } })).statusCode,
        200,
      );
      const row = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      assert.ok(row.expires_at !== null && Date.parse(row.expires_at) <= t.now.ms);
      assert.equal((await verify(k.key)).code, 'expired');
    });

    test('a PATCH that changes nothing writes nothing: 200 with the key, no event, same updated_at, cache kept', async () => {
      const k = await create({ name: 'same', metadata: { a: 1 } });
      assert.equal((await verify(k.key)).code, 'valid'); // cached
      const before = (await t.call('GET', `/v1/keys/${k.id}`, { token })).json();
      const loads = t.app.steward.keys.verifier.stats().loads;
      t.now.ms += 1000;
      for (const body of [{}, { name: 'same' }, { metadata: { a: 1 }, active: true, scopes: ['*'] }]) {
        const res = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body });
        assert.equal(res.statusCode, 200, res.body);
        // Usage moves with the flush timer; the rest is the key as it was.
        const { usage: _u, last_used_at: _l, ...got } = res.json();
        const { usage: _bu, last_used_at: _bl, ...want } = before;
        assert.deepEqual(got, want, JSON.stringify(body));
      }
      assert.equal(await updatedEvents(k.id), 0);
      assert.equal((await verify(k.key)).code, 'valid');
      assert.equal(t.app.steward.keys.verifier.stats().loads, loads, 'the cached key was not dropped');
      // A real change still writes.
      const renamed = await t.call('PATCH', `/v1/keys/${k.id}`, { token, body: { name: 'other' } });
      assert.equal(renamed.statusCode, 200, renamed.body);
      assert.notEqual(renamed.json().updated_at, before.updated_at);
      assert.equal(await updatedEvents(k.id), 1);
    });

    test('creation burst: every key created over the threshold is suspended, reported once', async () => {
      const put = (suspend: boolean, threshold: number) =>
        t.call('PUT', '/v1/keys/settings', {
          token,
          body: { burst_threshold: threshold, burst_window_seconds: 60, suspend_on_burst: suspend },
        });
      assert.equal((await put(true, 3)).statusCode, 200);
      t.now.ms += 120_000;
      token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
      const keys = [];
      for (let i = 0; i < 6; i++) keys.push(await create({ name: `burst-${i}` }));
      const rows = await Promise.all(
        keys.map(async (k) => (await t.call('GET', `/v1/keys/${k.id}`, { token })).json()),
      );
      assert.deepEqual(
        rows.map((r) => r.active),
        [true, true, true, false, false, false],
      );
      for (const k of keys.slice(3)) assert.equal((await verify(k.key)).code, 'disabled');
      const events = await t.store.db.query<{ action: string; n: number }>(
        `select action, count(*)::int as n from audit_events
         where action in ('security.burst_detected', 'key.suspended') and resource_id = any($1)
         group by action order by action`,
        [keys.map((k) => k.id)],
      );
      assert.deepEqual(events, [
        { action: 'key.suspended', n: 3 },
        { action: 'security.burst_detected', n: 2 }, // per IP and per principal, once each
      ]);
      await put(false, 50);
    });
  });
}
