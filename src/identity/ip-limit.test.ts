// The per-IP failure limit under concurrency: an attempt takes its IP's point before it checks
// anything, so requests arriving together cannot all pass a check made before the first failure
// is counted (200 at once made 190 guesses for a limit of 10). Every proof the limiter guards:
// the login's password and code steps, sign-up, an invitation accepted with an account, the
// password change.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from './test-support.ts';

const PASS = 'velvet compass meadow 58';
const WRONG = 'certainly not the password';
const LIMIT = 3;

for (const { kind, skip } of STORES) {
  describe(`the per-IP limit holds for requests arriving together (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    let admin: string;

    before(async () => {
      t = await identityTestApp(kind, {
        LOGIN_IP_MAX_FAILURES: String(LIMIT),
        LOGIN_IP_WINDOW_SECONDS: '600',
      });
      admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    const from = (ip: string, url: string, payload: Record<string, unknown>, token?: string) =>
      t.app.inject({
        method: 'POST',
        url,
        remoteAddress: ip,
        headers: token ? { authorization: `Bearer ${token}` } : {},
        payload,
      });

    /** How many answers of each kind (`401 invalid_credentials`, `429 rate_limited`, `200`…). */
    const tally = (answers: { statusCode: number; body: string }[]) => {
      const out: Record<string, number> = {};
      for (const a of answers) {
        const code = a.statusCode < 300 ? '' : ` ${JSON.parse(a.body).code}`;
        const key = `${a.statusCode}${code}`;
        out[key] = (out[key] ?? 0) + 1;
      }
      return out;
    };

    const newUser = async (email: string) => {
      const res = await t.call('POST', '/v1/users', { token: admin, body: { email, password: PASS } });
      assert.equal(res.statusCode, 201, res.body);
      return res.json().id as string;
    };

    test('logins: 40 at once from one IP check at most the limit; the next is refused', async () => {
      const ip = '10.0.0.1';
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          from(ip, '/v1/auth/login', { email: `nobody${i}@example.com`, password: WRONG }),
        ),
      );
      assert.deepEqual(tally(answers), { '401 invalid_credentials': LIMIT, '429 rate_limited': 40 - LIMIT });
      const limited = answers.find((a) => a.statusCode === 429);
      assert.ok(Number(limited?.headers['retry-after']) > 0);
      const next = await from(ip, '/v1/auth/login', { email: ADMIN.email, password: ADMIN.password });
      assert.equal(next.statusCode, 429);
      // Now the budget holds failures only: wait for the window, and say why.
      assert.ok(Number(next.headers['retry-after']) > 500, String(next.headers['retry-after']));
      assert.match(next.json().detail, /failed logins/);
    });

    test('correct logins arriving together beyond the limit: the extra ones retry in a moment, not at the window', async () => {
      const ip = '10.0.0.9';
      await newUser('ines@example.com');
      const together = await Promise.all(
        Array.from({ length: 10 }, () =>
          from(ip, '/v1/auth/login', { email: 'ines@example.com', password: PASS }),
        ),
      );
      const counts = tally(together);
      assert.equal((counts['200'] ?? 0) + (counts['429 rate_limited'] ?? 0), 10, JSON.stringify(counts));
      assert.ok((counts['200'] ?? 0) >= LIMIT, JSON.stringify(counts));
      for (const refused of together.filter((a) => a.statusCode === 429)) {
        assert.equal(refused.headers['retry-after'], '1');
        assert.match(refused.json().detail, /in progress/);
        assert.doesNotMatch(refused.json().detail, /failed/);
      }
      // Nothing was a failure: one at a time, every login goes through.
      for (let i = 0; i < 2 * LIMIT; i++) {
        const one = await from(ip, '/v1/auth/login', { email: 'ines@example.com', password: PASS });
        assert.equal(one.statusCode, 200, one.body);
      }
    });

    test('successes give their point back: they never use up the budget, even at once', async () => {
      const ip = '10.0.0.2';
      await newUser('una@example.com');
      for (let round = 0; round < 3; round++) {
        const together = await Promise.all(
          Array.from({ length: LIMIT }, () =>
            from(ip, '/v1/auth/login', { email: 'una@example.com', password: PASS }),
          ),
        );
        assert.deepEqual(tally(together), { 200: LIMIT });
      }
      for (let i = 0; i < LIMIT; i++) {
        const wrong = await from(ip, '/v1/auth/login', { email: 'una@example.com', password: WRONG });
        assert.equal(wrong.statusCode, 401, wrong.body);
      }
      assert.equal(
        (await from(ip, '/v1/auth/login', { email: 'una@example.com', password: PASS })).statusCode,
        429,
      );
    });

    test('the 2FA code step: 20 wrong codes at once check at most the limit', async () => {
      const ip = '10.0.0.3';
      await newUser('vera@example.com');
      const own = await t.tokensFor('vera@example.com', PASS);
      const { secret } = (
        await t.call('POST', '/v1/auth/totp/enroll', {
          token: own.access_token,
          body: { password: PASS },
        })
      ).json();
      const on = await t.call('POST', '/v1/auth/totp/confirm', {
        token: own.access_token,
        body: { code: totpAt(secret, t.now.ms) },
      });
      assert.equal(on.statusCode, 200, on.body);
      const pending = (await t.login('vera@example.com', PASS)).json();
      assert.equal(pending.mfa_required, true);
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          from(ip, '/v1/auth/login/mfa', { mfa_token: pending.mfa_token, code: 'wxyz-wxyz-wxyz' }),
        ),
      );
      assert.deepEqual(tally(answers), { '401 mfa_code_invalid': LIMIT, '429 rate_limited': 20 - LIMIT });
    });

    test('sign-up: 20 refused at once count at most the limit', async () => {
      const ip = '10.0.0.4';
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          from(ip, '/v1/auth/signup', {
            email: `signer${i}@example.com`,
            password: PASS,
            org: 'no-such-org',
          }),
        ),
      );
      assert.deepEqual(tally(answers), { '403 signup_disabled': LIMIT, '429 rate_limited': 20 - LIMIT });
    });

    test('an invitation accepted with an account: 20 wrong passwords at once check at most the limit', async () => {
      const ip = '10.0.0.5';
      await newUser('wanda@example.com');
      const org = await t.call('POST', '/v1/orgs', { token: admin, body: { slug: 'ip-beta', name: 'Beta' } });
      assert.equal(org.statusCode, 201, org.body);
      const betaAdmin = (await t.login(ADMIN.email, ADMIN.password, { org: 'ip-beta' })).json().access_token;
      const inv = await t.call('POST', '/v1/invitations', {
        token: betaAdmin,
        body: { email: 'wanda@example.com' },
      });
      assert.equal(inv.statusCode, 201, inv.body);
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          from(ip, '/v1/auth/invitations/accept', { token: inv.json().token, password: WRONG }),
        ),
      );
      assert.deepEqual(tally(answers), { '401 invalid_credentials': LIMIT, '429 rate_limited': 20 - LIMIT });
    });

    test('the password change: 20 wrong current passwords at once check at most the limit', async () => {
      const ip = '10.0.0.6';
      await newUser('xena@example.com');
      const own = await t.tokensFor('xena@example.com', PASS);
      const answers = await Promise.all(
        Array.from({ length: 20 }, () =>
          from(
            ip,
            '/v1/auth/password',
            { current_password: WRONG, new_password: 'another fine passphrase' },
            own.access_token,
          ),
        ),
      );
      assert.deepEqual(tally(answers), { '403 password_incorrect': LIMIT, '429 rate_limited': 20 - LIMIT });
    });
  });
}
