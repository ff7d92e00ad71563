import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { openTestStore, STORES } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { createMemoryBus } from '../bus/index.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { bootstrapOnFirstStart, runBootstrap } from './bootstrap.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from './test-support.ts';

const PASS = 'a sturdy passphrase here';

describe('users and orgs admin API, bad inputs (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;
  let otherOrgUser: string;
  let otherAdmin: string;

  before(async () => {
    t = await identityTestApp('pglite');
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const org = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'globex', name: 'Globex' } });
    assert.equal(org.statusCode, 201, org.body);
    // The superuser is admin of both orgs; log in to globex and create a user there.
    const inGlobex = (await t.login(ADMIN.email, ADMIN.password, { org: 'globex' })).json().access_token;
    const u = await t.call('POST', '/v1/users', {
      token: inGlobex,
      body: { email: 'ivan@globex.example', password: PASS, roles: ['admin'] },
    });
    assert.equal(u.statusCode, 201, u.body);
    otherOrgUser = u.json().id;
    otherAdmin = (await t.tokensFor('ivan@globex.example', PASS)).access_token;
  });
  after(() => t.close());

  test('create, list, get, patch, deactivate; audited with before/after', async () => {
    const created = await t.call('POST', '/v1/users', {
      token: admin,
      body: {
        email: 'judy@example.com',
        password: PASS,
        username: 'judy',
        full_name: 'Judy',
        roles: ['viewer'],
      },
    });
    assert.equal(created.statusCode, 201);
    const judy = created.json();
    assert.equal(judy.active, true);
    assert.equal(judy.totp_enabled, false);
    assert.equal(judy.created_by, t.adminId);
    assert.ok(!('password_hash' in judy) && !created.body.includes('argon2'), 'never a hash');

    const dup = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'JUDY@example.com', password: PASS },
    });
    assert.equal(dup.statusCode, 409);
    assert.equal(dup.json().code, 'email_taken');
    const dupName = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'judy2@example.com', password: PASS, username: 'JUDY' },
    });
    assert.equal(dupName.json().code, 'username_taken');

    const list = await t.call('GET', '/v1/users?limit=1', { token: admin });
    assert.equal(list.json().data.length, 1);
    assert.ok(list.json().next_cursor);
    const page2 = await t.call('GET', `/v1/users?limit=1&cursor=${list.json().next_cursor}`, {
      token: admin,
    });
    assert.notEqual(page2.json().data[0].id, list.json().data[0].id);

    const patched = await t.call('PATCH', `/v1/users/${judy.id}`, {
      token: admin,
      body: { full_name: 'Judy Hopps', roles: ['developer'] },
    });
    assert.equal(patched.statusCode, 200, patched.body);
    assert.equal(patched.json().full_name, 'Judy Hopps');
    assert.deepEqual(patched.json().roles, ['developer']);

    const judySession = (await t.tokensFor('judy@example.com', PASS)).access_token;
    assert.equal((await t.call('GET', '/v1/me', { token: judySession })).json().roles[0], 'developer');
    // A developer reads users but cannot create them.
    assert.equal((await t.call('GET', '/v1/users', { token: judySession })).statusCode, 200);
    const forbidden = await t.call('POST', '/v1/users', {
      token: judySession,
      body: { email: 'z@example.com', password: PASS },
    });
    assert.equal(forbidden.statusCode, 403);
    assert.equal(forbidden.json().code, 'permission_denied');

    const del = await t.call('DELETE', `/v1/users/${judy.id}`, { token: admin });
    assert.equal(del.statusCode, 204);
    assert.equal(
      (await t.call('GET', '/v1/me', { token: judySession })).statusCode,
      401,
      'sessions end at once',
    );
    assert.equal((await t.login('judy@example.com', PASS)).json().code, 'invalid_credentials');
    const gone = await t.call('GET', `/v1/users/${judy.id}`, { token: admin });
    assert.equal(gone.json().active, false);
    assert.deepEqual(gone.json().roles, []);
    const self = await t.call('DELETE', `/v1/users/${t.adminId}`, { token: admin });
    assert.equal(self.json().code, 'cannot_deactivate_self');

    const back = await t.call('PATCH', `/v1/users/${judy.id}`, {
      token: admin,
      body: { active: true, roles: ['viewer'] },
    });
    assert.equal(back.json().active, true);
    assert.equal((await t.login('judy@example.com', PASS)).statusCode, 200);

    const events = (
      await t.call('GET', `/v1/audit/events?resource_id=${judy.id}&limit=100`, { token: admin })
    ).json().data;
    const actions = events.map((e: { action: string }) => e.action);
    for (const a of ['user.created', 'user.updated', 'user.deactivated']) assert.ok(actions.includes(a), a);
    const update = events.find(
      (e: { action: string; changes: { after?: { full_name?: string } } }) =>
        e.action === 'user.updated' && e.changes.after?.full_name === 'Judy Hopps',
    );
    assert.deepEqual(update.changes.before, { full_name: 'Judy', roles: ['viewer'] });
    assert.deepEqual(update.changes.after, { full_name: 'Judy Hopps', roles: ['developer'] });
  });

  test("another org's user id answers 404 on every route, as does a made-up id", async () => {
    for (const [method, url, body] of [
      ['GET', `/v1/users/${otherOrgUser}`, undefined],
      ['PATCH', `/v1/users/${otherOrgUser}`, { full_name: 'x' }],
      ['POST', `/v1/users/${otherOrgUser}/unlock`, undefined],
      ['DELETE', `/v1/users/${otherOrgUser}`, undefined],
      ['GET', '/v1/users/usr_01J00000000000000000000000', undefined],
      ['GET', '/v1/users/not-an-id', undefined],
    ] as const) {
      const res = await t.call(method, url, { token: admin, ...(body ? { body } : {}) });
      assert.equal(res.statusCode, 404, `${method} ${url}`);
      assert.equal(res.json().code, 'user_not_found');
    }
    // The other org's admin does not see ours either (the superuser, admin of both orgs, is visible).
    const leo = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'leo@example.com', password: PASS },
    });
    const ours = await t.call('GET', `/v1/users/${leo.json().id}`, { token: otherAdmin });
    assert.equal(ours.statusCode, 404);
    const theirList = (await t.call('GET', '/v1/users', { token: otherAdmin })).json().data;
    assert.ok(theirList.every((u: { id: string }) => u.id !== leo.json().id));
    const theirDelete = await t.call('DELETE', `/v1/users/${leo.json().id}`, { token: otherAdmin });
    assert.equal(theirDelete.statusCode, 404);
  });

  test('orgs: superuser creates, members list theirs; others get 403', async () => {
    const mine = await t.call('GET', '/v1/orgs', { token: otherAdmin });
    assert.deepEqual(
      mine.json().data.map((o: { slug: string }) => o.slug),
      ['globex'],
    );
    const all = await t.call('GET', '/v1/orgs', { token: admin });
    assert.deepEqual(
      all
        .json()
        .data.map((o: { slug: string }) => o.slug)
        .sort(),
      ['default', 'globex'],
    );
    const denied = await t.call('POST', '/v1/orgs', {
      token: otherAdmin,
      body: { slug: 'evil', name: 'Evil' },
    });
    assert.equal(denied.statusCode, 403);
    const taken = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'globex', name: 'Again' } });
    assert.equal(taken.statusCode, 409);
    const withAdmin = await t.call('POST', '/v1/orgs', {
      token: admin,
      body: { slug: 'initech', name: 'Initech', admin_user_id: otherOrgUser },
    });
    assert.equal(withAdmin.statusCode, 201, withAdmin.body);
    const ivanOrgs = await t.call('GET', '/v1/orgs', { token: otherAdmin });
    assert.deepEqual(
      ivanOrgs.json().data.map((o: { slug: string }) => o.slug),
      ['globex', 'initech'],
    );
    const ivanInInitech = await t.login('ivan@globex.example', PASS, { org: 'initech' });
    assert.equal(ivanInInitech.statusCode, 200);
    const notMember = await t.login('ivan@globex.example', PASS, { org: 'default' });
    assert.equal(notMember.json().code, 'invalid_credentials');
  });

  test('bad inputs: missing fields, wrong types, unknown fields, weak passwords → 400, never 500', async () => {
    const cases: [string, string, unknown, string?][] = [
      ['POST', '/v1/auth/login', {}],
      ['POST', '/v1/auth/login', { email: 'a@b.c' }],
      ['POST', '/v1/auth/login', { email: 42, password: 'x' }],
      ['POST', '/v1/auth/login', { email: 'not-an-email', password: 'x' }],
      ['POST', '/v1/auth/login', { email: 'a@b.c', password: 'x', admin: true }],
      ['POST', '/v1/auth/login/mfa', { mfa_token: 'x' }],
      ['POST', '/v1/auth/login/mfa', { mfa_token: 1, code: 2 }],
      ['POST', '/v1/auth/refresh', {}],
      ['POST', '/v1/auth/refresh', { refresh_token: ['x'] }],
      ['POST', '/v1/users', { email: 'k@example.com' }, admin],
      ['POST', '/v1/users', { email: 'k@example.com', password: PASS, roles: 'admin' }, admin],
      ['POST', '/v1/users', { email: 'k@example.com', password: PASS, superuser: true }, admin],
      ['PATCH', `/v1/users/${t.adminId}`, { active: 'no' }, admin],
      ['POST', '/v1/orgs', { slug: 'Bad Slug', name: 'x' }, admin],
      ['POST', '/v1/auth/totp/confirm', {}, admin],
      ['POST', '/v1/auth/totp/disable', { code: '123456' }, admin],
      ['POST', '/v1/auth/password', { new_password: PASS }, admin],
    ];
    for (const [method, url, body, token] of cases) {
      const res = await t.call(method as 'POST', url, { body, ...(token ? { token } : {}) });
      assert.equal(res.statusCode, 400, `${method} ${url} ${JSON.stringify(body)}: ${res.body}`);
      assert.equal(res.json().code, 'validation_failed');
    }
    const notJson = await t.app.inject({
      method: 'POST',
      url: '/v1/auth/login',
      headers: { 'content-type': 'application/json' },
      payload: '{"email":',
    });
    assert.equal(notJson.json().code, 'invalid_json');
    const policies: [string, string][] = [
      ['short', 'password_too_short'],
      ['password123456', 'password_too_common'],
      ['kim@example.com and more', 'password_contains_identity'],
    ];
    for (const [password, code] of policies) {
      const res = await t.call('POST', '/v1/users', {
        token: admin,
        body: { email: 'kim@example.com', password },
      });
      assert.equal(res.json().code, code);
    }
    // A new account's or invitation's email within SMTP's limits (RFC 5321): a local part of 64
    // octets, an address of 254. Logging in takes any address an account may already have.
    const local65 = `${'a'.repeat(65)}@example.com`;
    const long255 = `k@${'d'.repeat(63)}.${'d'.repeat(63)}.${'d'.repeat(63)}.${'d'.repeat(57)}.com`;
    assert.equal(long255.length, 255);
    for (const [url, body] of [
      ['/v1/users', { email: local65, password: PASS }],
      ['/v1/users', { email: long255, password: PASS }],
      ['/v1/users', { email: `${'é'.repeat(33)}@example.com`, password: PASS }],
      ['/v1/invitations', { email: local65 }],
      ['/v1/auth/signup', { email: local65, org: 'default', password: PASS }],
    ] as const) {
      const res = await t.call('POST', url, { body, ...(url === '/v1/auth/signup' ? {} : { token: admin }) });
      assert.equal(res.statusCode, 400, `${url} ${body.email}: ${res.body}`);
      assert.equal(res.json().code, 'validation_failed');
      assert.deepEqual(
        new Set(res.json().errors.map((e: { path: string }) => e.path)),
        new Set(['body.email']),
      );
    }
    const local64 = `${'a'.repeat(64)}@example.com`;
    const made = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: local64, password: PASS },
    });
    assert.equal(made.statusCode, 201, made.body);
    const login = await t.call('POST', '/v1/auth/login', { body: { email: local65, password: PASS } });
    assert.equal(
      login.json().code,
      'invalid_credentials',
      'an unknown long address is not a validation error',
    );
    const badRefresh = await t.call('POST', '/v1/auth/refresh', {
      body: { refresh_token: 'ses_01J00000000000000000000000.0.AAAA' },
    });
    assert.equal(badRefresh.json().code, 'refresh_token_invalid');
    const forgedRefresh = await t.call('POST', '/v1/auth/refresh', {
      body: { refresh_token: `ses_01J00000000000000000000000.0.${'A'.repeat(43)}` },
    });
    assert.equal(forgedRefresh.json().code, 'refresh_token_invalid');
    const garbage = await t.call('GET', '/v1/me', { token: 'eyJhbGciOiJFZERTQSJ9.e30.AAAA' });
    assert.equal(garbage.json().code, 'token_invalid');
    const none = await t.call('GET', '/v1/me');
    assert.equal(none.json().code, 'unauthenticated');
    const apiKeyShaped = await t.call('GET', '/v1/me', { token: 'stw_live_abc' });
    // Not a JWT: identity leaves it alone, and the keys authenticator names the problem.
    assert.equal(apiKeyShaped.statusCode, 401);
    assert.equal(apiKeyShaped.json().code, 'key_malformed');
  });

  test('bootstrap refuses when a superuser exists; first-start bootstrap is a no-op then', async () => {
    const out: string[] = [];
    await assert.rejects(
      runBootstrap(
        t.app.steward.identity,
        { STEWARD_ADMIN_EMAIL: 'x@example.com', STEWARD_ADMIN_PASSWORD: undefined },
        (s) => out.push(s),
      ),
      (error: { code?: string }) => error.code === 'superuser_exists',
    );
    assert.equal(
      await bootstrapOnFirstStart(
        t.app.steward.identity,
        { STEWARD_ADMIN_EMAIL: undefined, STEWARD_ADMIN_PASSWORD: undefined },
        (s) => out.push(s),
      ),
      false,
    );
    assert.deepEqual(out, []);
  });
});

describe('first start on an empty database', () => {
  test('creates org default and a superuser, printing a generated password once', async () => {
    const store = await openTestStore('pglite');
    const app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
      db: store.db,
      keyring: createKeyring(randomBytes(32)),
    });
    try {
      await app.ready();
      const out: string[] = [];
      assert.equal(
        await bootstrapOnFirstStart(
          app.steward.identity,
          { STEWARD_ADMIN_EMAIL: 'boss@example.com', STEWARD_ADMIN_PASSWORD: undefined },
          (s) => out.push(s),
        ),
        true,
      );
      const printed = out.join('');
      const password = /shown once, store it now\): (\S+)/.exec(printed)?.[1];
      assert.ok(password && password.length >= 20);
      const login = await app.inject({
        method: 'POST',
        url: '/v1/auth/login',
        payload: { email: 'boss@example.com', password },
      });
      assert.equal(login.statusCode, 200);
      const me = await app.inject({
        method: 'GET',
        url: '/v1/me',
        headers: { authorization: `Bearer ${login.json().access_token}` },
      });
      assert.equal(me.json().superuser, true);
      assert.deepEqual(me.json().roles, ['admin']);
      const rows = await store.db.query<{ password_hash: string }>('select password_hash from users');
      assert.ok(
        rows.every((r) => r.password_hash.startsWith('$argon2id$') && !r.password_hash.includes(password)),
      );
      assert.equal(
        await bootstrapOnFirstStart(
          app.steward.identity,
          { STEWARD_ADMIN_EMAIL: undefined, STEWARD_ADMIN_PASSWORD: undefined },
          (s) => out.push(s),
        ),
        false,
      );
    } finally {
      await app.close();
      await store.dispose();
    }
  });
});

for (const { kind, skip } of STORES) {
  describe(`revocation across instances (${kind})`, { skip }, () => {
    test('a revoke on one instance is refused on another: at once by the bus, and (PostgreSQL) by polling alone', async () => {
      const store = await openTestStore(kind);
      const keyring = createKeyring(randomBytes(32));
      const config = loadConfig({ LOG_LEVEL: 'silent', SESSION_REVOCATION_POLL_MS: '500' });
      const shared = createMemoryBus();
      const a = await buildApp(config, { db: store.db, keyring, bus: shared });
      const b = await buildApp(config, { db: store.db, keyring, bus: shared });
      const c = await buildApp(config, { db: store.db, keyring, bus: createMemoryBus() }); // hears nothing
      try {
        await Promise.all([a.ready(), b.ready(), c.ready()]);
        await a.steward.identity.bootstrap(ADMIN);
        const login = await a.inject({ method: 'POST', url: '/v1/auth/login', payload: ADMIN });
        const { access_token } = login.json();
        const me = (app: typeof a) =>
          app.inject({ method: 'GET', url: '/v1/me', headers: { authorization: `Bearer ${access_token}` } });
        // Instances B and C verify (and cache) the token.
        assert.equal((await me(b)).statusCode, 200);
        assert.equal((await me(c)).statusCode, 200);
        const started = Date.now();
        assert.equal(
          (
            await a.inject({
              method: 'POST',
              url: '/v1/auth/logout',
              headers: { authorization: `Bearer ${access_token}` },
            })
          ).statusCode,
          204,
        );
        assert.equal((await me(b)).json().code, 'session_revoked', 'bus: at once');
        // Embedded mode does not poll: one process owns a PGlite folder, and every revoke in it
        // reaches its list directly (the apps here share one handle only to test the bus).
        if (kind === 'pglite') {
          assert.equal((await me(c)).statusCode, 200, 'no poll in embedded mode');
          // What it does read, at start: revokes committed before it ran (a restart).
          const d = await buildApp(config, { db: store.db, keyring, bus: createMemoryBus() });
          try {
            await d.ready();
            assert.equal((await me(d)).json().code, 'session_revoked', 'read at start');
          } finally {
            await d.close();
          }
          return;
        }
        // C hears no bus message: only its poll (every 500 ms here) can refuse the token. The poll
        // period is the guarantee; the deadline is generous so that a loaded machine (a CI
        // rehearsal measured 1,179 ms) only waits longer, while a poll that never comes still fails.
        let refusedAt = 0;
        while (Date.now() - started < 10_000) {
          if ((await me(c)).statusCode === 401) {
            refusedAt = Date.now() - started;
            break;
          }
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.ok(refusedAt > 0, 'refused by polling within 10 s');
        assert.equal((await me(c)).json().code, 'session_revoked');
      } finally {
        await a.close();
        await b.close();
        await c.close();
        await store.dispose();
      }
    });
  });
}

for (const { kind, skip } of STORES) {
  describe(`PATCH /v1/users/{id} is all or nothing (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    let admin: string;

    before(async () => {
      t = await identityTestApp(kind);
      admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    async function user(email: string, username: string) {
      const res = await t.call('POST', '/v1/users', {
        token: admin,
        body: { email, password: PASS, username, roles: ['viewer'] },
      });
      assert.equal(res.statusCode, 201, res.body);
      return res.json().id as string;
    }

    test('a refused part leaves the user, roles, sessions and audit trail untouched', async () => {
      const id = await user('kim@example.com', 'kim');
      await user('lou@example.com', 'lou');
      const session = (await t.tokensFor('kim@example.com', PASS)).access_token;
      const trail = async () =>
        (await t.call('GET', `/v1/audit/events?resource_id=${id}&limit=100`, { token: admin })).json().data
          .length;
      const before = (await t.call('GET', `/v1/users/${id}`, { token: admin })).json();
      const eventsBefore = await trail();

      for (const [body, status, code] of [
        [{ active: false, roles: ['nope'] }, 400, 'validation_failed'],
        [{ active: false, username: 'LOU' }, 409, 'username_taken'],
        [{ full_name: 'Kim K', roles: ['nope'] }, 404, 'role_not_found'],
        [{ username: 'kimmy', roles: ['viewer', 'nope'] }, 404, 'role_not_found'],
      ] as const) {
        const res = await t.call('PATCH', `/v1/users/${id}`, { token: admin, body });
        assert.equal(res.statusCode, status, `${JSON.stringify(body)}: ${res.body}`);
        assert.equal(res.json().code, code);
      }
      const now = (await t.call('GET', `/v1/users/${id}`, { token: admin })).json();
      assert.deepEqual(now, before, 'nothing written');
      assert.equal(await trail(), eventsBefore, 'nothing audited');
      assert.equal((await t.call('GET', '/v1/me', { token: session })).statusCode, 200, 'session alive');
    });

    test('every part commits together: name, username and deactivation in one PATCH', async () => {
      const id = await user('max@example.com', 'max');
      const session = (await t.tokensFor('max@example.com', PASS)).access_token;
      const res = await t.call('PATCH', `/v1/users/${id}`, {
        token: admin,
        body: { full_name: 'Max Power', username: 'maxp', active: false },
      });
      assert.equal(res.statusCode, 200, res.body);
      const u = res.json();
      assert.equal(u.full_name, 'Max Power');
      assert.equal(u.username, 'maxp');
      assert.equal(u.active, false);
      assert.deepEqual(u.roles, []);
      assert.equal((await t.call('GET', '/v1/me', { token: session })).statusCode, 401, 'sessions revoked');
      const actions = (await t.call('GET', `/v1/audit/events?resource_id=${id}&limit=100`, { token: admin }))
        .json()
        .data.map((e: { action: string }) => e.action);
      assert.ok(actions.includes('user.updated') && actions.includes('user.deactivated'), actions.join());
    });
  });
}

describe('routes without a body refuse one; unlock without a lock (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;

  before(async () => {
    t = await identityTestApp('pglite');
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  test('unknown fields on body-less POST and DELETE routes → 400; none or {} still work', async () => {
    const u = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'nell@example.com', password: PASS },
    });
    const id = u.json().id;
    const session = await t.tokensFor('nell@example.com', PASS);
    const refused: [string, string, string][] = [
      ['POST', '/v1/auth/logout', session.access_token],
      ['POST', `/v1/users/${id}/totp/reset`, admin],
      ['POST', `/v1/users/${id}/unlock`, admin],
      ['DELETE', `/v1/users/${id}`, admin],
      ['DELETE', '/v1/auth/sessions/ses_01JAAAAAAAAAAAAAAAAAAAAAAA', admin],
      ['DELETE', '/v1/invitations/inv_01JAAAAAAAAAAAAAAAAAAAAAAA', admin],
    ];
    for (const [method, url, token] of refused) {
      const res = await t.call(method as 'POST' | 'DELETE', url, { token, body: { all: true } });
      assert.equal(res.statusCode, 400, `${method} ${url}: ${res.body}`);
      assert.equal(res.json().code, 'validation_failed');
      assert.equal(res.json().errors[0].path, 'body.all');
    }
    assert.equal((await t.call('GET', '/v1/me', { token: session.access_token })).statusCode, 200);
    assert.equal(
      (await t.call('POST', `/v1/users/${id}/unlock`, { token: admin, body: {} })).statusCode,
      200,
    );
    const out = await t.call('POST', '/v1/auth/logout', { token: session.access_token, body: {} });
    assert.equal(out.statusCode, 204, out.body);
    const other = await t.tokensFor('nell@example.com', PASS);
    assert.equal((await t.call('POST', '/v1/auth/logout', { token: other.access_token })).statusCode, 204);
  });

  test('unlocking a user who is not locked answers 200 and audits nothing', async () => {
    const u = await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'otto@example.com', password: PASS },
    });
    const id = u.json().id;
    const unlocked = async () =>
      (
        await t.call('GET', `/v1/audit/events?resource_id=${id}&action=user.unlocked`, { token: admin })
      ).json().data;
    const res = await t.call('POST', `/v1/users/${id}/unlock`, { token: admin });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.json().locked_until, null);
    assert.deepEqual(await unlocked(), []);
    // One failure: the unlock now clears something, and says what.
    await t.login('otto@example.com', 'wrong password here');
    assert.equal((await t.call('POST', `/v1/users/${id}/unlock`, { token: admin })).statusCode, 200);
    const [event] = await unlocked();
    assert.deepEqual(event.changes.before, { locked_until: null, lock_count: 0, failed_login_count: 1 });
  });
});
