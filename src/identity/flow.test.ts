import assert from 'node:assert/strict';
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
      const enroll = await t.call('POST', '/v1/auth/totp/enroll', { token: first.access_token });
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

    test('concurrent refreshes share a statement; a token presented twice at once is a reuse', async () => {
      const sessions = await Promise.all(
        Array.from({ length: 6 }, () => t.tokensFor(ADMIN.email, ADMIN.password)),
      );
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
