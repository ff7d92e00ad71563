import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

for (const { kind, skip } of STORES) {
  describe(`identity flow over HTTP (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    before(async () => {
      t = await identityTestApp(kind);
    });
    after(() => t.close());

    test('login → MFA → refresh → reuse detection → revoked', async () => {
      const admin = await t.tokensFor(ADMIN.email, ADMIN.password);
      const created = await t.call('POST', '/v1/users', {
        token: admin.access_token,
        body: {
          email: 'Dana@Example.com',
          password: 'a long enough passphrase',
          full_name: 'Dana',
          roles: ['viewer'],
        },
      });
      assert.equal(created.statusCode, 201, created.body);
      assert.deepEqual(created.json().roles, ['viewer']);

      // Plain login, then 2FA enrolment.
      const first = await t.tokensFor('dana@example.com', 'a long enough passphrase');
      const enroll = await t.call('POST', '/v1/auth/totp/enroll', {
        token: first.access_token,
        body: { password: 'a long enough passphrase' },
      });
      assert.equal(enroll.statusCode, 200, enroll.body);
      const { secret, otpauth_uri } = enroll.json();
      assert.match(otpauth_uri, /^otpauth:\/\/totp\/Steward:/);
      const confirm = await t.call('POST', '/v1/auth/totp/confirm', {
        token: first.access_token,
        body: { code: totpAt(secret, t.now.ms) },
      });
      assert.equal(confirm.statusCode, 200, confirm.body);
      assert.equal(confirm.json().recovery_codes.length, 10);

      // Password now yields an mfa_token, not tokens.
      t.now.ms += 60_000;
      const step1 = await t.login('dana@example.com', 'a long enough passphrase');
      assert.equal(step1.statusCode, 200);
      assert.equal(step1.json().mfa_required, true);
      assert.equal(step1.json().access_token, undefined);
      const step2 = await t.call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: step1.json().mfa_token, code: totpAt(secret, t.now.ms) },
      });
      assert.equal(step2.statusCode, 200, step2.body);
      const tokens = step2.json();
      assert.equal(tokens.token_type, 'Bearer');
      assert.equal(tokens.expires_in, 900);

      const me = await t.call('GET', '/v1/me', { token: tokens.access_token });
      assert.equal(me.statusCode, 200);
      assert.equal(me.json().user.email, 'Dana@Example.com');
      assert.equal(me.json().totp_enabled, true);
      assert.deepEqual(me.json().roles, ['viewer']);

      // The mfa_token was single-use.
      const again = await t.call('POST', '/v1/auth/login/mfa', {
        body: { mfa_token: step1.json().mfa_token, code: totpAt(secret, t.now.ms + 30_000) },
      });
      assert.equal(again.json().code, 'mfa_token_invalid');

      // Refresh rotates.
      const r1 = await t.call('POST', '/v1/auth/refresh', { body: { refresh_token: tokens.refresh_token } });
      assert.equal(r1.statusCode, 200, r1.body);
      assert.notEqual(r1.json().refresh_token, tokens.refresh_token);
      const r2 = await t.call('POST', '/v1/auth/refresh', {
        body: { refresh_token: r1.json().refresh_token },
      });
      assert.equal(r2.statusCode, 200);
      const live = r2.json();
      assert.equal((await t.call('GET', '/v1/me', { token: live.access_token })).statusCode, 200);

      // Presenting the first (rotated) token again: reuse → the whole session is revoked.
      const reuse = await t.call('POST', '/v1/auth/refresh', {
        body: { refresh_token: tokens.refresh_token },
      });
      assert.equal(reuse.statusCode, 401);
      assert.equal(reuse.json().code, 'refresh_token_reused');
      const afterReuse = await t.call('POST', '/v1/auth/refresh', {
        body: { refresh_token: live.refresh_token },
      });
      assert.equal(afterReuse.json().code, 'session_revoked');
      const denied = await t.call('GET', '/v1/me', { token: live.access_token });
      assert.equal(denied.statusCode, 401);
      assert.equal(denied.json().code, 'session_revoked');
      // Another session of the same user is untouched.
      assert.equal((await t.call('GET', '/v1/me', { token: first.access_token })).statusCode, 200);

      const events = await t.call('GET', '/v1/audit/events?limit=500', { token: admin.access_token });
      const actions = events.json().data.map((e: { action: string }) => e.action);
      for (const a of [
        'user.created',
        'user.login',
        'user.totp_enrolled',
        'user.totp_enabled',
        'session.refresh_reused',
        'session.revoked',
      ]) {
        assert.ok(actions.includes(a), `${a} audited`);
      }
      assert.ok(!events.body.includes('a long enough passphrase'), 'no password in the trail');
      assert.ok(!events.body.includes(secret), 'no TOTP seed in the trail');
    });

    test('one keep-alive connection: each request is judged on its own token, a revoke applies at once', async () => {
      await t.app.listen({ port: 0, host: '127.0.0.1' });
      const address = t.app.server.address();
      assert.ok(address && typeof address === 'object');
      // One socket for every request: the case the per-connection token memo serves.
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      const whoami = (token: string) =>
        new Promise<{ status: number; body: { id?: string; code?: string }; reused: boolean }>(
          (resolve, reject) => {
            const req = request(
              {
                agent,
                host: '127.0.0.1',
                port: address.port,
                path: '/v1/auth/whoami',
                headers: { authorization: `Bearer ${token}` },
              },
              (res) => {
                let text = '';
                res.on('data', (chunk) => {
                  text += chunk;
                });
                res.on('end', () =>
                  resolve({ status: res.statusCode ?? 0, body: JSON.parse(text), reused: req.reusedSocket }),
                );
              },
            );
            req.on('error', reject);
            req.end();
          },
        );
      try {
        const admin = await t.tokensFor(ADMIN.email, ADMIN.password);
        const other = await t.tokensFor(ADMIN.email, ADMIN.password);
        const first = await whoami(admin.access_token);
        assert.equal(first.status, 200);
        const again = await whoami(admin.access_token);
        assert.deepEqual([again.status, again.reused], [200, true]);
        // Another session's token on the same connection is that session's.
        const sessions = (await t.call('GET', '/v1/auth/sessions', { token: admin.access_token })).json();
        assert.ok(sessions.data.length >= 2);
        const logout = await t.call('POST', '/v1/auth/logout', { token: other.access_token });
        assert.equal(logout.statusCode, 204, logout.body);
        const revoked = await whoami(other.access_token);
        assert.deepEqual([revoked.status, revoked.body.code, revoked.reused], [401, 'session_revoked', true]);
        const still = await whoami(admin.access_token);
        assert.deepEqual([still.status, still.reused], [200, true]);
        // The remembered token itself: refused on the very next request after its session ends.
        await t.call('POST', '/v1/auth/logout', { token: admin.access_token });
        const after = await whoami(admin.access_token);
        assert.deepEqual([after.status, after.body.code, after.reused], [401, 'session_revoked', true]);
        const garbage = await whoami(`${admin.access_token.slice(0, -4)}AAAA`);
        assert.equal(garbage.status, 401);
      } finally {
        agent.destroy();
      }
    });

    test('concurrent refreshes share a statement; a token presented twice at once is a reuse', async () => {
      // Signed in one after another: more than LOGIN_MAX_FAILURES logins of one account at once
      // are refused unchecked (429), as they could all be guesses.
      const sessions = [];
      for (let i = 0; i < 6; i++) sessions.push(await t.tokensFor(ADMIN.email, ADMIN.password));
      const refresh = (refresh_token: string) =>
        t.call('POST', '/v1/auth/refresh', { body: { refresh_token } });
      // Six sessions at once, twice over: every one rotates, and the new tokens work.
      let current = sessions.map((s) => s.refresh_token);
      for (let round = 0; round < 2; round++) {
        const answers = await Promise.all(current.map(refresh));
        for (const a of answers) assert.equal(a.statusCode, 200, a.body);
        current = answers.map((a) => a.json().refresh_token as string);
        assert.equal(new Set(current).size, 6);
      }
      // One session's token twice in the same batch: one rotation, one reuse, the session revoked.
      const [target, ...others] = current;
      assert.ok(target);
      const [a, b, ...rest] = await Promise.all([refresh(target), refresh(target), ...others.map(refresh)]);
      assert.deepEqual([a?.statusCode, b?.statusCode].sort(), [200, 401]);
      const loser = a?.statusCode === 401 ? a : b;
      assert.equal(loser?.json().code, 'refresh_token_reused');
      const winner = a?.statusCode === 200 ? a : b;
      const after = await refresh(winner?.json().refresh_token);
      assert.equal(after.json().code, 'session_revoked');
      for (const r of rest) assert.equal(r.statusCode, 200, r.body);
    });
  });
}
