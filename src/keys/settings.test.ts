// The org's burst settings as each instance caches them: a change this instance did not hear of
// (no bus message: another process wrote it, or the message was lost) still applies within a
// bounded time. The poll's sub-second path (PostgreSQL) is in instances.test.ts; this is the
// bounded-age path every store has, here on PGlite, which has no poll.
import assert from 'node:assert/strict';
import { after, before, describe, mock, test } from 'node:test';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';
import { hashKey } from './format.ts';
import { createKey, TEST_TIERS } from './test-support.ts';

describe('burst settings changed behind the instance’s back (pglite)', () => {
  let t: IdentityTestApp;
  let token: string;
  before(async () => {
    t = await identityTestApp('pglite', { API_KEY_TIERS: TEST_TIERS });
    token = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
  });
  after(() => t.close());

  const verify = async (key: string) =>
    (await t.call('POST', '/v1/keys/verify', { token, body: { key } })).json().code as string;

  test('a copy older than the refresh age is read again when a key is refreshed', async () => {
    const k = await createKey(t, token);
    assert.equal(await verify(k.key), 'valid'); // the key and the org's settings are cached
    // Wall-clock time only (the refresh ages); the injected clock, and so the burst window, stand still.
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    try {
      await t.store.db.query(
        `insert into api_key_settings (org_id, burst_threshold, burst_window_seconds, suspend_on_burst)
         values ($1, 2, 60, true)`,
        [t.orgId],
      );
      // Within the age the cached copy is used: the old threshold (50), nothing suspended.
      assert.deepEqual(
        [await verify(k.key), await verify(k.key), await verify(k.key)],
        ['valid', 'valid', 'valid'],
      );
      mock.timers.tick(61_000);
      // This request starts the key's background refresh; the next ones use what it read.
      assert.equal(await verify(k.key), 'valid');
      await t.app.steward.keys.verifier.prime(hashKey(k.key));
      assert.equal(await verify(k.key), 'disabled');
      // And the burst report (in the background) suspended it as the new settings say.
      const suspended = "select 1 from audit_events where action = 'key.suspended' and resource_id = $1";
      for (let i = 0; i < 200 && (await t.store.db.query(suspended, [k.id])).length === 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      assert.equal((await t.store.db.query(suspended, [k.id])).length, 1);
    } finally {
      mock.timers.reset();
    }
  });
});
