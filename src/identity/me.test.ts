// GET /v1/me from memory: every change to what it shows is there at the very next request, on
// this instance and (over the bus) on another one sharing the database; a change the bus never
// announced is forgotten after the TTL.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { createMemoryBus, type InvalidationBus } from '../bus/index.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { PROFILE_CACHE_TTL_MS } from './core.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

const PASS = 'copper kettles whistling';

describe('GET /v1/me answers from memory, never stale (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;
  let id: string;
  let token: string;
  const email = 'wanda@example.com';

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const created = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email, password: PASS, roles: ['viewer'] },
    });
    assert.equal(created.statusCode, 201, created.body);
    id = created.json().id;
    token = (await t.tokensFor(email, PASS)).access_token;
  });
  after(() => t.close());

  /** /v1/me twice (the second from memory), then `change`, then the very next /v1/me. */
  const across = async (change: () => Promise<void>, as = token) => {
    const me = () => t.call('GET', '/v1/me', { token: as });
    const first = await me();
    assert.equal(first.statusCode, 200, first.body);
    assert.deepEqual((await me()).json(), first.json(), 'a warm answer is the same');
    await change();
    const next = await me();
    assert.equal(next.statusCode, 200, next.body);
    return { before: first.json(), after: next.json() };
  };
  const ok = (res: { statusCode: number; body: string }, status = 200) =>
    assert.equal(res.statusCode, status, res.body);

  test('a warm answer reads no row: a change behind the API shows after the TTL', async () => {
    const { after: cached } = await across(async () => {
      await t.store.db.query('update users set full_name = $1 where id = $2', ['Behind The Back', id]);
    });
    assert.equal(cached.user.full_name, null, 'served from memory');
    t.now.ms += PROFILE_CACHE_TTL_MS - 1;
    assert.equal((await t.call('GET', '/v1/me', { token })).json().user.full_name, null, 'within the TTL');
    t.now.ms += 1;
    const later = (await t.call('GET', '/v1/me', { token })).json();
    assert.equal(later.user.full_name, 'Behind The Back', 'after it');
  });

  test('profile fields and roles (PATCH by an admin)', async () => {
    const { before: was, after: now } = await across(async () => {
      ok(
        await t.call('PATCH', `/v1/users/${id}`, {
          token: admin,
          body: { full_name: 'Wanda Maximoff', username: 'wanda', roles: ['developer'] },
        }),
      );
    });
    assert.deepEqual(was.roles, ['viewer']);
    assert.equal(now.user.full_name, 'Wanda Maximoff');
    assert.equal(now.user.username, 'wanda');
    assert.deepEqual(now.roles, ['developer']);
    assert.deepEqual(now.user.roles, ['developer']);
    assert.notEqual(now.user.updated_at, was.user.updated_at);
    // Roles alone, as authz's own API assigns them.
    const { after: more } = await across(async () => {
      ok(
        await t.call('PATCH', `/v1/users/${id}`, { token: admin, body: { roles: ['developer', 'manager'] } }),
      );
    });
    assert.deepEqual([...more.roles].sort(), ['developer', 'manager']);
  });

  test('TOTP enrolment, enabling and disabling', async () => {
    t.now.ms += 1000;
    let secret = '';
    const enrolled = await across(async () => {
      const res = await t.call('POST', '/v1/auth/totp/enroll', { token, body: { password: PASS } });
      ok(res);
      secret = res.json().secret;
    });
    assert.notEqual(enrolled.after.user.updated_at, enrolled.before.user.updated_at);
    assert.equal(enrolled.after.totp_enabled, false);
    const on = await across(async () => {
      ok(await t.call('POST', '/v1/auth/totp/confirm', { token, body: { code: totpAt(secret, t.now.ms) } }));
    });
    assert.equal(on.after.totp_enabled, true);
    assert.equal(on.after.user.totp_enabled, true);
    t.now.ms += 30_000;
    const off = await across(async () => {
      ok(
        await t.call('POST', '/v1/auth/totp/disable', {
          token,
          body: { password: PASS, code: totpAt(secret, t.now.ms) },
        }),
        204,
      );
    });
    assert.equal(off.after.totp_enabled, false);
  });

  test('password change, a lock, an unlock and a login elsewhere', async () => {
    t.now.ms += 1000;
    const changed = await across(async () => {
      ok(
        await t.call('POST', '/v1/auth/password', {
          token,
          body: { current_password: PASS, new_password: `${PASS} again` },
        }),
      );
    });
    assert.notEqual(changed.after.user.password_changed_at, changed.before.user.password_changed_at);
    const locked = await across(async () => {
      for (let i = 0; i < 5; i++) await t.login(email, 'not the password at all');
    });
    assert.equal(locked.before.user.locked_until, null);
    assert.ok(locked.after.user.locked_until, 'the lock shows');
    const unlocked = await across(async () => {
      ok(await t.call('POST', `/v1/users/${id}/unlock`, { token: admin }));
    });
    assert.equal(unlocked.after.user.locked_until, null);
    t.now.ms += 1000;
    const elsewhere = await across(async () => {
      ok(await t.login(email, `${PASS} again`));
    });
    assert.notEqual(elsewhere.after.user.last_login_at, elsewhere.before.user.last_login_at);
  });

  test('deactivation: the next /v1/me is refused; reactivated, it shows the account again', async () => {
    const me = () => t.call('GET', '/v1/me', { token });
    ok(await me());
    ok(await t.call('PATCH', `/v1/users/${id}`, { token: admin, body: { active: false } }));
    assert.equal((await me()).json().code, 'session_revoked');
    ok(await t.call('PATCH', `/v1/users/${id}`, { token: admin, body: { active: true, full_name: 'Back' } }));
    token = (await t.tokensFor(email, `${PASS} again`)).access_token;
    const back = (await me()).json();
    assert.equal(back.user.active, true);
    assert.equal(back.user.full_name, 'Back');
    assert.deepEqual(back.roles, [], 'deactivation removed the roles');
  });
});

/** Apps on one store and one clock; `bus` per app (shared: they hear each other). */
async function instances(
  store: TestStore,
  buses: (InvalidationBus | undefined)[],
  env: Record<string, string>,
) {
  const keyring = createKeyring(randomBytes(32));
  const now = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
  const config = loadConfig({ LOG_LEVEL: 'silent', SESSION_REVOCATION_POLL_MS: '200', ...env });
  const apps: FastifyInstance[] = [];
  for (const bus of buses) {
    const app = await buildApp(config, {
      db: store.db,
      keyring,
      clock: () => new Date(now.ms),
      ...(bus ? { bus } : {}),
    });
    apps.push(app);
    await app.ready();
  }
  return { apps, now };
}

for (const { kind, skip } of STORES) {
  // PostgreSQL: the real bus (Redis) where REDIS_URL is set, else one in-memory bus for both.
  const redis = kind === 'postgres' && process.env.REDIS_URL ? process.env.REDIS_URL : undefined;
  describe(`GET /v1/me on two instances (${kind}${redis ? ' + Redis' : ''})`, { skip }, () => {
    test('a change on one is at the other at once (bus); one that heard nothing, after the TTL', async () => {
      const store = await openTestStore(kind);
      const shared = redis ? undefined : createMemoryBus();
      const { apps, now } = await instances(
        store,
        [shared, shared, createMemoryBus()],
        redis ? { REDIS_URL: redis } : {},
      );
      const [a, b, deaf] = apps as [FastifyInstance, FastifyInstance, FastifyInstance];
      try {
        await a.steward.identity.bootstrap(ADMIN);
        const login = async (app: FastifyInstance, email: string, password: string) => {
          const res = await app.inject({
            method: 'POST',
            url: '/v1/auth/login',
            payload: { email, password },
          });
          assert.equal(res.statusCode, 200, res.body);
          return res.json().access_token as string;
        };
        const admin = await login(a, ADMIN.email, ADMIN.password);
        const created = await a.inject({
          method: 'POST',
          url: '/v1/users',
          headers: { authorization: `Bearer ${admin}` },
          payload: { email: 'xena@example.com', password: PASS, roles: ['viewer'] },
        });
        assert.equal(created.statusCode, 201, created.body);
        const token = await login(a, 'xena@example.com', PASS);
        const me = async (app: FastifyInstance) => {
          const res = await app.inject({
            method: 'GET',
            url: '/v1/me',
            headers: { authorization: `Bearer ${token}` },
          });
          assert.equal(res.statusCode, 200, res.body);
          return res.json() as { user: { full_name: string | null }; roles: string[] };
        };
        for (const app of apps) assert.equal((await me(app)).user.full_name, null); // warm everywhere
        const patched = await a.inject({
          method: 'PATCH',
          url: `/v1/users/${created.json().id}`,
          headers: { authorization: `Bearer ${admin}` },
          payload: { full_name: 'Xena Warrior', roles: ['developer'] },
        });
        assert.equal(patched.statusCode, 200, patched.body);
        // In memory the bus delivers before publish returns; Redis within milliseconds. The profile
        // (identity's topic) and the roles (authz's topic) travel as two messages, each in its own time.
        const deadline = Date.now() + 1000;
        let seen = await me(b);
        const current = () => seen.user.full_name !== null && seen.roles[0] === 'developer';
        while (redis && !current() && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 5));
          seen = await me(b);
        }
        assert.equal(seen.user.full_name, 'Xena Warrior');
        assert.deepEqual(seen.roles, ['developer']);
        // The instance that heard nothing keeps its copy until the TTL (the backstop for a lost message).
        assert.equal((await me(deaf)).user.full_name, null);
        now.ms += PROFILE_CACHE_TTL_MS;
        assert.equal((await me(deaf)).user.full_name, 'Xena Warrior');
      } finally {
        for (const app of apps) await app.close();
        await store.dispose();
      }
    });
  });
}
