import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createLocalJWKSet, createRemoteJWKSet, jwtVerify } from 'jose';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

describe('login, lockout, 2FA codes, tokens (pglite)', () => {
  let t: IdentityTestApp;
  let admin: { access_token: string; refresh_token: string };
  const PASS = 'purple elephants dance';

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = await t.tokensFor(ADMIN.email, ADMIN.password);
    for (const email of ['erin@example.com', 'frank@example.com', 'gina@example.com', 'hank@example.com']) {
      const res = await t.call('POST', '/v1/users', {
        token: admin.access_token,
        body: { email, password: PASS },
      });
      assert.equal(res.statusCode, 201, res.body);
    }
  });
  after(() => t.close());

  test('unknown user and wrong password: same status and body, similar time', async () => {
    const strip = (body: string) => {
      const { request_id: _ignored, ...rest } = JSON.parse(body);
      return rest;
    };
    const time = async (email: string) => {
      const started = performance.now();
      const res = await t.login(email, 'not the password at all');
      return { res, ms: performance.now() - started };
    };
    await time('warmup@example.com');
    const unknown: number[] = [];
    const wrong: number[] = [];
    let a: Awaited<ReturnType<typeof time>> | undefined;
    let b: Awaited<ReturnType<typeof time>> | undefined;
    for (let i = 0; i < 4; i++) {
      a = await time(`nobody${i}@example.com`);
      b = await time('hank@example.com');
      unknown.push(a.ms);
      wrong.push(b.ms);
    }
    assert.ok(a && b);
    assert.equal(a.res.statusCode, 401);
    assert.equal(b.res.statusCode, 401);
    assert.deepEqual(strip(a.res.body), strip(b.res.body));
    assert.equal(a.res.json().code, 'invalid_credentials');
    // Both paths run exactly one Argon2id verify (~20 ms); the rest is noise on a shared machine.
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[1] ?? 0;
    const ratio = median(unknown) / median(wrong);
    assert.ok(
      ratio > 0.33 && ratio < 3,
      `unknown ${median(unknown).toFixed(1)} ms vs wrong ${median(wrong).toFixed(1)} ms`,
    );
    // Unlock hank for the other tests (4 failures so far).
    const { id } = (await t.call('GET', '/v1/users?limit=500', { token: admin.access_token }))
      .json()
      .data.find((u: { email: string }) => u.email === 'hank@example.com');
    await t.call('POST', `/v1/users/${id}/unlock`, { token: admin.access_token });
  });

  test('five failures lock for 15 minutes, the next lock for 30; success and unlock reset', async () => {
    const email = 'erin@example.com';
    for (let i = 1; i <= 4; i++)
      assert.equal((await t.login(email, 'wrong password!')).json().code, 'invalid_credentials');
    const fifth = await t.login(email, 'wrong password!');
    assert.equal(fifth.statusCode, 423);
    assert.equal(fifth.json().code, 'account_locked');
    const until = Date.parse(fifth.json().locked_until);
    assert.equal(until - t.now.ms, 15 * 60_000);
    // Even the right password is refused while locked.
    const locked = await t.login(email, PASS);
    assert.equal(locked.statusCode, 423);
    t.now.ms += 15 * 60_000 - 1000;
    assert.equal((await t.login(email, PASS)).statusCode, 423, 'still locked a second before the end');
    t.now.ms += 1000;
    // Unlocked by time; five more failures: twice as long.
    for (let i = 1; i <= 4; i++) await t.login(email, 'wrong password!');
    const second = await t.login(email, 'wrong password!');
    assert.equal(second.statusCode, 423);
    assert.equal(Date.parse(second.json().locked_until) - t.now.ms, 30 * 60_000);
    // An admin unlocks; the right password works and the doubling starts over.
    admin = await t.tokensFor(ADMIN.email, ADMIN.password); // the clock moved past the old token
    const { id } = (await t.call('GET', '/v1/users?limit=500', { token: admin.access_token }))
      .json()
      .data.find((u: { email: string }) => u.email === email);
    const unlocked = await t.call('POST', `/v1/users/${id}/unlock`, { token: admin.access_token });
    assert.equal(unlocked.statusCode, 200);
    assert.equal(unlocked.json().locked_until, null);
    assert.equal((await t.login(email, PASS)).statusCode, 200);
    const events = (await t.call('GET', '/v1/audit/events?limit=500', { token: admin.access_token })).json()
      .data;
    const actions = events.map((e: { action: string }) => e.action);
    assert.equal(actions.filter((a: string) => a === 'user.locked').length, 2);
    assert.ok(actions.includes('user.unlocked'));
    assert.ok(actions.includes('user.login_failed'));
  });

  test('per-IP limiter: failures across accounts are refused with 429', async () => {
    const local = await identityTestApp('pglite', {
      LOGIN_IP_MAX_FAILURES: '3',
      LOGIN_IP_WINDOW_SECONDS: '60',
    });
    try {
      for (let i = 0; i < 3; i++)
        assert.equal((await local.login(`x${i}@example.com`, 'whatever pass')).statusCode, 401);
      const limited = await local.login('y@example.com', 'whatever pass');
      assert.equal(limited.statusCode, 429);
      assert.equal(limited.json().code, 'rate_limited');
      assert.ok(Number(limited.headers['retry-after']) > 0);
      // Another address is not affected.
      const other = await local.app.inject({
        method: 'POST',
        url: '/v1/auth/login',
        remoteAddress: '10.1.2.3',
        payload: { email: ADMIN.email, password: ADMIN.password },
      });
      assert.equal(other.statusCode, 200);
    } finally {
      await local.close();
    }
  });

  test('TOTP: replayed code, wrong code, expired mfa_token, recovery codes usable once', async () => {
    const email = 'frank@example.com';
    const session = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: session.access_token, body: { password: PASS } })
    ).json();
    const bad = await t.call('POST', '/v1/auth/totp/confirm', {
      token: session.access_token,
      body: { code: '000000' },
    });
    assert.equal(bad.json().code, 'totp_code_invalid');
    const confirm = await t.call('POST', '/v1/auth/totp/confirm', {
      token: session.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    const codes: string[] = confirm.json().recovery_codes;
    const again = await t.call('POST', '/v1/auth/totp/enroll', {
      token: session.access_token,
      body: { password: PASS },
    });
    assert.equal(again.json().code, 'totp_already_enabled');

    const mfaToken = async () => (await t.login(email, PASS)).json().mfa_token as string;
    // The code used to confirm cannot log in within its window.
    const replay = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: await mfaToken(), code: totpAt(secret, t.now.ms) },
    });
    assert.equal(replay.statusCode, 401);
    assert.equal(replay.json().code, 'mfa_code_replayed');
    const wrong = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: await mfaToken(), code: '123456' },
    });
    assert.equal(wrong.json().code, 'mfa_code_invalid');

    const stale = await mfaToken();
    t.now.ms += 301_000;
    const expired = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: stale, code: totpAt(secret, t.now.ms) },
    });
    assert.equal(expired.json().code, 'mfa_token_expired');
    const forged = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: 'mfa_nope', code: '123456' },
    });
    assert.equal(forged.json().code, 'mfa_token_invalid');

    const viaRecovery = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: await mfaToken(), code: codes[0] },
    });
    assert.equal(viaRecovery.statusCode, 200, viaRecovery.body);
    const reused = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: await mfaToken(), code: codes[0] },
    });
    assert.equal(reused.statusCode, 401);
    assert.equal(reused.json().code, 'mfa_code_invalid');

    // Disabling needs the password and a code.
    const live = viaRecovery.json().access_token;
    const noPw = await t.call('POST', '/v1/auth/totp/disable', {
      token: live,
      body: { password: 'wrong password!', code: totpAt(secret, t.now.ms) },
    });
    assert.equal(noPw.json().code, 'password_incorrect');
    t.now.ms += 30_000;
    const off = await t.call('POST', '/v1/auth/totp/disable', {
      token: live,
      body: { password: PASS, code: totpAt(secret, t.now.ms) },
    });
    assert.equal(off.statusCode, 204, off.body);
    assert.equal((await t.login(email, PASS)).json().mfa_required, undefined);
  });

  test('access tokens verify with jose against the JWKS endpoint, as another service would', async () => {
    admin = await t.tokensFor(ADMIN.email, ADMIN.password);
    const jwks = await t.call('GET', '/.well-known/jwks.json');
    assert.equal(jwks.statusCode, 200);
    const [key] = jwks.json().keys;
    assert.equal(key.kty, 'OKP');
    assert.equal(key.crv, 'Ed25519');
    assert.equal(key.d, undefined, 'no private part published');
    const { payload, protectedHeader } = await jwtVerify(admin.access_token, createLocalJWKSet(jwks.json()), {
      issuer: 'steward',
      currentDate: new Date(t.now.ms),
    });
    assert.equal(protectedHeader.alg, 'EdDSA');
    assert.equal(protectedHeader.kid, key.kid);
    assert.equal(payload.sub, t.adminId);
    assert.equal(payload.org, t.orgId);
    assert.match(String(payload.sid), /^ses_/);
    assert.deepEqual(payload.roles, ['admin']);
    assert.equal((payload.exp ?? 0) - (payload.iat ?? 0), 900);

    // Over real HTTP too, with jose's remote key set.
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const address = t.app.server.address();
    assert.ok(address && typeof address === 'object');
    const remote = createRemoteJWKSet(new URL(`http://127.0.0.1:${address.port}/.well-known/jwks.json`));
    const verified = await jwtVerify(admin.access_token, remote, { currentDate: new Date(t.now.ms) });
    assert.equal(verified.payload.sub, t.adminId);
  });

  test('signing-key rotation: the old key stays published until its tokens expire', async () => {
    const before = await t.tokensFor(ADMIN.email, ADMIN.password);
    const oldKid = JSON.parse(
      Buffer.from(before.access_token.split('.')[0] ?? '', 'base64url').toString(),
    ).kid;
    const newKid = await t.app.steward.identity.rotateSigningKey();
    assert.notEqual(newKid, oldKid);
    const kids = (await t.call('GET', '/.well-known/jwks.json'))
      .json()
      .keys.map((k: { kid: string }) => k.kid);
    assert.deepEqual(new Set(kids), new Set([oldKid, newKid]));
    assert.equal((await t.call('GET', '/v1/me', { token: before.access_token })).statusCode, 200);
    const fresh = await t.tokensFor(ADMIN.email, ADMIN.password);
    assert.equal(
      JSON.parse(Buffer.from(fresh.access_token.split('.')[0] ?? '', 'base64url').toString()).kid,
      newKid,
    );
    // After the old tokens' lifetime, the old key is withdrawn.
    t.now.ms += 16 * 60_000;
    await t.app.steward.identity.signingKeys.load();
    const later = (await t.call('GET', '/.well-known/jwks.json'))
      .json()
      .keys.map((k: { kid: string }) => k.kid);
    assert.deepEqual(later, [newKid]);
    const expired = await t.call('GET', '/v1/me', { token: before.access_token });
    assert.equal(expired.statusCode, 401);
    admin = await t.tokensFor(ADMIN.email, ADMIN.password);
  });

  test('password change revokes the other sessions, keeps this one', async () => {
    const email = 'gina@example.com';
    const a = await t.tokensFor(email, PASS);
    const b = await t.tokensFor(email, PASS);
    const weak = await t.call('POST', '/v1/auth/password', {
      token: a.access_token,
      body: { current_password: PASS, new_password: 'password1234' },
    });
    assert.equal(weak.json().code, 'password_too_common');
    const wrong = await t.call('POST', '/v1/auth/password', {
      token: a.access_token,
      body: { current_password: 'not it at all', new_password: 'a brand new passphrase' },
    });
    assert.equal(wrong.json().code, 'password_incorrect');
    const ok = await t.call('POST', '/v1/auth/password', {
      token: a.access_token,
      body: { current_password: PASS, new_password: 'a brand new passphrase' },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.equal(ok.json().revoked_sessions, 1);
    assert.equal((await t.call('GET', '/v1/me', { token: a.access_token })).statusCode, 200);
    assert.equal((await t.call('GET', '/v1/me', { token: b.access_token })).json().code, 'session_revoked');
    assert.equal((await t.login(email, PASS)).statusCode, 401);
    assert.equal((await t.login(email, 'a brand new passphrase')).statusCode, 200);
  });

  test('sessions: list, revoke own, logout', async () => {
    admin = await t.tokensFor(ADMIN.email, ADMIN.password);
    const email = 'hank@example.com';
    const a = await t.tokensFor(email, PASS);
    const b = await t.tokensFor(email, PASS);
    const list = await t.call('GET', '/v1/auth/sessions', { token: a.access_token });
    assert.equal(list.statusCode, 200);
    const rows = list.json().data;
    assert.ok(rows.length >= 2);
    assert.equal(rows.filter((s: { current: boolean }) => s.current).length, 1);
    const other = rows.find((s: { current: boolean }) => !s.current);
    const del = await t.call('DELETE', `/v1/auth/sessions/${other.id}`, { token: a.access_token });
    assert.equal(del.statusCode, 204);
    const stillB = await t.call('GET', '/v1/me', { token: b.access_token });
    // b may or may not be the one deleted (hank has older sessions); the deleted one is dead.
    if (
      other.id === JSON.parse(Buffer.from(b.access_token.split('.')[1] ?? '', 'base64url').toString()).sid
    ) {
      assert.equal(stillB.json().code, 'session_revoked');
    }
    assert.equal((await t.call('POST', '/v1/auth/logout', { token: a.access_token })).statusCode, 204);
    assert.equal((await t.call('GET', '/v1/me', { token: a.access_token })).json().code, 'session_revoked');
    // Someone else's session id, or a made-up one: 404.
    const adminSessions = (await t.call('GET', '/v1/auth/sessions', { token: admin.access_token })).json()
      .data;
    const mine = await t.tokensFor(email, PASS);
    const probe = await t.call('DELETE', `/v1/auth/sessions/${adminSessions[0].id}`, {
      token: mine.access_token,
    });
    assert.equal(probe.statusCode, 404);
    assert.equal(
      (await t.call('DELETE', '/v1/auth/sessions/nope', { token: mine.access_token })).statusCode,
      404,
    );
  });
});

describe('what a login leaves behind: pending 2FA, another org audit (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;
  const PASS = 'violet kites at noon';

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  test('a password change voids the mfa_tokens issued before it', async () => {
    const email = 'ursula@example.com';
    assert.equal(
      (await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } })).statusCode,
      201,
    );
    const session = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: session.access_token, body: { password: PASS } })
    ).json();
    await t.call('POST', '/v1/auth/totp/confirm', {
      token: session.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    // A stolen password: the thief's login waits at the 2FA step; the owner changes the password.
    const pending = (await t.login(email, PASS)).json();
    assert.equal(pending.mfa_required, true);
    t.now.ms += 1000;
    const changed = await t.call('POST', '/v1/auth/password', {
      token: session.access_token,
      body: { current_password: PASS, new_password: 'a different passphrase' },
    });
    assert.equal(changed.statusCode, 200, changed.body);
    t.now.ms += 60_000;
    const late = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: pending.mfa_token, code: totpAt(secret, t.now.ms) },
    });
    assert.equal(late.statusCode, 401, late.body);
    assert.equal(late.json().code, 'mfa_token_invalid');
  });

  test('used 2FA challenges are purged, expired ones an hour later; pending ones stay', async () => {
    const count = async () =>
      Number(
        (await t.store.db.query<{ n: number | string }>('select count(*) as n from mfa_challenges'))[0]?.n,
      );
    const pending = (await t.login('ursula@example.com', 'a different passphrase')).json();
    assert.equal(pending.mfa_required, true);
    const before = await count();
    assert.ok(before >= 2, `${before} challenges: the earlier test's and this one`);
    assert.equal(await t.app.steward.identity.purgeChallenges(), before - 1, 'all but the pending one');
    assert.equal(await count(), 1);
    // Expired, it still answers mfa_token_expired for an hour; then it goes.
    t.now.ms += 10 * 60_000;
    assert.equal(await t.app.steward.identity.purgeChallenges(), 0);
    const late = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: pending.mfa_token, code: '000000' },
    });
    assert.equal(late.json().code, 'mfa_token_expired');
    t.now.ms += 60 * 60_000;
    assert.equal(await t.app.steward.identity.purgeChallenges(), 1);
    assert.equal(await count(), 0);
  });

  test('a revoked or expired access token → 401 with WWW-Authenticate error="invalid_token"', async () => {
    const { access_token: token } = await t.tokensFor(ADMIN.email, ADMIN.password);
    assert.equal((await t.call('POST', '/v1/auth/logout', { token })).statusCode, 204);
    const revoked = await t.call('GET', '/v1/me', { token });
    assert.equal(revoked.statusCode, 401);
    assert.equal(revoked.json().code, 'session_revoked');
    assert.equal(revoked.headers['www-authenticate'], 'Bearer realm="steward", error="invalid_token"');
    const { access_token: other } = await t.tokensFor(ADMIN.email, ADMIN.password);
    t.now.ms += 16 * 60_000;
    const expired = await t.call('GET', '/v1/auth/whoami', { token: other });
    assert.equal(expired.statusCode, 401);
    assert.equal(expired.json().code, 'token_expired');
    assert.equal(expired.headers['www-authenticate'], 'Bearer realm="steward", error="invalid_token"');
  });

  test("another org's user trying a named org is, in its log, an unknown email", async () => {
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const beta = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'beta', name: 'Beta' } });
    assert.equal(beta.statusCode, 201, beta.body);
    await t.call('POST', '/v1/users', {
      token: admin,
      body: { email: 'victor@example.com', password: PASS, full_name: 'Victor Hidden' },
    });
    const inBeta = (await t.login(ADMIN.email, ADMIN.password, { org: 'beta' })).json().access_token;
    for (const email of ['victor@example.com', 'nobody-at-all@example.com']) {
      const res = await t.login(email, PASS, { org: 'beta' });
      assert.equal(res.statusCode, 401);
      assert.equal(res.json().code, 'invalid_credentials');
    }
    const failed = (
      await t.call('GET', '/v1/audit/events?action=user.login_failed&limit=100', { token: inBeta })
    ).json().data as { actor: unknown; details: unknown; resource: unknown }[];
    assert.equal(failed.length, 2);
    const [a, b] = failed.map((e) => JSON.stringify([e.actor, e.details, e.resource]));
    assert.equal(a, b, 'the same actor, reason and resource for both');
    assert.ok(!JSON.stringify(failed).includes('Victor') && !JSON.stringify(failed).includes('victor'));
  });
});

describe('login/mfa checks the account again, as the password step does (pglite)', () => {
  let t: IdentityTestApp;
  let admin: string;
  let betaAdmin: string;
  const PASS = 'amber lanterns drifting';

  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
    admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    const beta = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'beta', name: 'Beta' } });
    assert.equal(beta.statusCode, 201, beta.body);
    betaAdmin = (await t.login(ADMIN.email, ADMIN.password, { org: 'beta' })).json().access_token;
  });
  after(() => t.close());

  /** A user of the first org with 2FA on; also a member of beta when `beta`. Returns id and seed. */
  const twoFactorUser = async (email: string, beta = false) => {
    const created = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
    assert.equal(created.statusCode, 201, created.body);
    if (beta) {
      const inv = await t.call('POST', '/v1/invitations', { token: betaAdmin, body: { email } });
      assert.equal(inv.statusCode, 201, inv.body);
      const joined = await t.call('POST', '/v1/auth/invitations/accept', {
        body: { token: inv.json().token, password: PASS },
      });
      assert.ok(joined.statusCode < 300, joined.body);
    }
    const session = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: session.access_token, body: { password: PASS } })
    ).json();
    const on = await t.call('POST', '/v1/auth/totp/confirm', {
      token: session.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    assert.equal(on.statusCode, 200, on.body);
    t.now.ms += 30_000; // the confirming code's step is spent
    return { id: created.json().id as string, secret: secret as string };
  };
  const strip = (body: string) => {
    const { request_id: _ignored, ...rest } = JSON.parse(body);
    return rest;
  };
  const sessionsOf = async (id: string) =>
    Number(
      (
        await t.store.db.query<{ n: number | string }>(
          'select count(*) as n from sessions where user_id = $1',
          [id],
        )
      )[0]?.n,
    );
  const failures = async (token: string, id: string) =>
    (
      (await t.call('GET', '/v1/audit/events?action=user.login_failed&limit=500', { token })).json().data as {
        actor: { id?: string };
        details: { reason?: string };
      }[]
    ).filter((e) => e.actor.id === id);

  /** Password step, the change, code step: the refusal must be the password step's. */
  const refusedAfter = async (
    email: string,
    user: { id: string; secret: string },
    org: string | undefined,
    change: () => Promise<void>,
  ) => {
    const pending = (await t.login(email, PASS, org ? { org } : {})).json();
    assert.equal(pending.mfa_required, true);
    const before = await sessionsOf(user.id);
    await change();
    const mfa = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: pending.mfa_token, code: totpAt(user.secret, t.now.ms) },
    });
    const first = await t.login(email, PASS, org ? { org } : {});
    assert.equal(mfa.statusCode, first.statusCode, mfa.body);
    assert.deepEqual(strip(mfa.body), strip(first.body), 'the same answer as the password step');
    assert.equal(await sessionsOf(user.id), before, 'no session opened');
    return mfa;
  };

  test('a user deactivated between the steps: invalid_credentials, audited as inactive', async () => {
    const email = 'olga@example.com';
    const olga = await twoFactorUser(email);
    const mfa = await refusedAfter(email, olga, undefined, async () => {
      const off = await t.call('PATCH', `/v1/users/${olga.id}`, { token: admin, body: { active: false } });
      assert.equal(off.statusCode, 200, off.body);
    });
    assert.equal(mfa.statusCode, 401);
    assert.equal(mfa.json().code, 'invalid_credentials');
    const events = await failures(admin, olga.id);
    assert.equal(events.length, 1, 'the code step audited as the password step (a no-org login: none)');
    assert.equal(events[0]?.details.reason, 'inactive');
  });

  test('a membership ended between the steps: invalid_credentials in that org, audited in its log', async () => {
    const email = 'pavel@example.com';
    const pavel = await twoFactorUser(email, true);
    const mfa = await refusedAfter(email, pavel, 'beta', async () => {
      const off = await t.call('DELETE', `/v1/users/${pavel.id}`, { token: betaAdmin });
      assert.equal(off.statusCode, 204, off.body);
    });
    assert.equal(mfa.json().code, 'invalid_credentials');
    const events = await failures(betaAdmin, pavel.id);
    assert.deepEqual(
      events.map((e) => e.details.reason),
      ['inactive', 'inactive'],
      'the code step and the password step, alike',
    );
    // Still a member of the first org, where the same steps succeed.
    const pending = (await t.login(email, PASS)).json();
    const ok = await t.call('POST', '/v1/auth/login/mfa', {
      body: { mfa_token: pending.mfa_token, code: totpAt(pavel.secret, t.now.ms) },
    });
    assert.equal(ok.statusCode, 200, ok.body);
  });

  test('a membership turned off behind the API (no challenge ended): refused all the same', async () => {
    const email = 'quinn@example.com';
    const quinn = await twoFactorUser(email, true);
    const mfa = await refusedAfter(email, quinn, 'beta', async () => {
      await t.store.db.query(
        'update org_memberships set active = false where user_id = $1 and org_id <> $2',
        [quinn.id, t.orgId],
      );
    });
    assert.equal(mfa.json().code, 'invalid_credentials');
  });

  test('a deactivation racing a password login leaves no live session (no 2FA)', async () => {
    // The password check runs off the event loop for milliseconds, while the deactivation commits.
    // Whichever order the two take, the deactivated account must not keep a session: either the
    // login is refused, or it committed first and the deactivation revoked what it opened.
    for (let round = 0; round < 5; round++) {
      const email = `race${round}@example.com`;
      const created = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
      assert.equal(created.statusCode, 201, created.body);
      const id = created.json().id as string;
      const [login, off] = await Promise.all([
        t.login(email, PASS),
        t.call('PATCH', `/v1/users/${id}`, { token: admin, body: { active: false } }),
      ]);
      assert.equal(off.statusCode, 200, off.body);
      assert.ok(login.statusCode === 200 || login.statusCode === 401, login.body);
      if (login.statusCode === 401) assert.equal(login.json().code, 'invalid_credentials');
      const [live] = await t.store.db.query<{ n: number | string }>(
        'select count(*) as n from sessions where user_id = $1 and revoked_at is null',
        [id],
      );
      assert.equal(Number(live?.n), 0, `round ${round}: login ${login.statusCode}, a live session remains`);
    }
  });

  test('an account locked between the steps: 423 account_locked, audited as locked', async () => {
    const email = 'rosa@example.com';
    const rosa = await twoFactorUser(email);
    const mfa = await refusedAfter(email, rosa, undefined, async () => {
      for (let i = 0; i < 5; i++) await t.login(email, 'not the password at all');
    });
    assert.equal(mfa.statusCode, 423);
    assert.equal(mfa.json().code, 'account_locked');
    const reasons = (await failures(admin, rosa.id)).map((e) => e.details.reason);
    assert.equal(reasons.filter((r) => r === 'locked').length, 2, 'the code step and the password step');
  });
});
