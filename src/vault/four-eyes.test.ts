import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { STORES } from '../../test/helpers/stores.ts';
import { fourEyesTestApp, type VaultTestApp, vaultTestApp } from './test-support.ts';

const VALUE = 'prod-db-password-four-eyes-only';
const PASS = 'a sturdy vault passphrase';

describe('four-eyes changes for production (pglite)', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v?.close());

  test('policy: off by default; org:update to change; audited', async () => {
    const get = await v.req('GET', '/v1/vault/policy', { token: v.tokens.viewer });
    assert.deepEqual(get.json(), { four_eyes: false, environments: ['production'] });
    const dev = await v.req('PUT', '/v1/vault/policy', {
      token: v.tokens.developer,
      body: { four_eyes: true },
    });
    assert.equal(dev.statusCode, 403);
    const on = await v.req('PUT', '/v1/vault/policy', { token: v.tokens.admin, body: { four_eyes: true } });
    assert.equal(on.statusCode, 200, on.body);
    assert.equal(on.json().four_eyes, true);
  });

  test('a production secret is held, the requester cannot approve, another manager applies it', async () => {
    const held = await v.req('POST', '/v1/secrets', {
      token: v.tokens.manager,
      body: { name: 'DB_PASSWORD', environment: 'production', value: VALUE },
    });
    assert.equal(held.statusCode, 202, held.body);
    assert.equal(held.json().status, 'pending_approval');
    const changeId = held.json().change_id;
    const none = await v.req('GET', '/v1/secrets?environment=production', { token: v.tokens.manager });
    assert.equal(none.json().data.length, 0, 'nothing applied yet');

    const list = await v.req('GET', '/v1/vault/changes?status=pending', { token: v.tokens.manager });
    assert.equal(list.statusCode, 200, list.body);
    assert.equal(list.json().data[0].id, changeId);
    assert.ok(!list.body.includes(VALUE), 'summary never holds the value');

    const self = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.manager });
    assert.equal(self.statusCode, 403);
    assert.equal(self.json().code, 'self_approval');
    const dev = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.developer });
    assert.equal(dev.statusCode, 403, 'developers hold no approvals:approve');
    const ok = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, {
      token: v.tokens.manager2,
      body: { reason: 'checked' },
    });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.equal(ok.json().status, 'applied');
    const secretId = ok.json().result_id;
    const again = await v.req('POST', `/v1/vault/changes/${changeId}/approve`, { token: v.tokens.admin });
    assert.equal(again.statusCode, 409);

    const reveal = await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.manager2 });
    assert.equal(reveal.json().value, VALUE);
    const meta = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
    assert.equal(meta.json().created_by, v.ids.manager, 'applied as the requester');

    // A new value is held too; rejecting leaves the secret as it was.
    const put = await v.req('PUT', `/v1/secrets/${secretId}/value`, {
      token: v.tokens.manager,
      body: { value: 'other' },
    });
    assert.equal(put.statusCode, 202);
    const rej = await v.req('POST', `/v1/vault/changes/${put.json().change_id}/reject`, {
      token: v.tokens.manager2,
      body: { reason: 'no' },
    });
    assert.equal(rej.json().status, 'rejected');
    const still = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
    assert.equal(still.json().current_version, 1);

    // Other environments are not covered.
    const dev2 = await v.req('POST', '/v1/secrets', {
      token: v.tokens.developer,
      body: { name: 'DEV_ONLY', environment: 'development', value: 'x' },
    });
    assert.equal(dev2.statusCode, 201);
  });

  test('a production setting is held and applied with its If-Match version; audit has the decisions', async () => {
    const held = await v.req('PUT', '/v1/settings/production/timeout_ms', {
      token: v.tokens.developer,
      body: { value: 500, value_type: 'int' },
    });
    assert.equal(held.statusCode, 202, held.body);
    const ok = await v.req('POST', `/v1/vault/changes/${held.json().change_id}/approve`, {
      token: v.tokens.manager,
    });
    assert.equal(ok.statusCode, 200, ok.body);
    const read = await v.req('GET', '/v1/settings/production/timeout_ms', { token: v.tokens.viewer });
    assert.equal(read.json().value, 500);

    const actions = await v.t.store.db.query<{ action: string }>(
      `select action from audit_events where action like 'change.%' order by id`,
    );
    assert.deepEqual([...new Set(actions.map((a) => a.action))].sort(), [
      'change.approved',
      'change.rejected',
      'change.requested',
    ]);
    const all = await v.t.store.db.query<{ j: string }>(
      `select row_to_json(a)::text as j from audit_events a`,
    );
    for (const r of all) assert.ok(!r.j.includes(VALUE), r.j);
    const other = await v.req('POST', `/v1/vault/changes/${held.json().change_id}/approve`, {
      token: v.tokens.other,
    });
    assert.equal(other.statusCode, 404, 'another org never sees the change');
  });
});

for (const { kind, skip } of STORES) {
  describe(`four-eyes: more held changes, approval in one transaction (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await fourEyesTestApp(kind);
    });
    after(() => v?.close());

    const approve = (id: string, token: string) =>
      v.req('POST', `/v1/vault/changes/${id}/approve`, { token });

    test('two concurrent approvals: one applies, the other is refused; applied once', async () => {
      const held = await v.req('PUT', '/v1/settings/production/pool_size', {
        token: v.tokens.developer,
        body: { value: 8, value_type: 'int' },
      });
      assert.equal(held.statusCode, 202, held.body);
      const id = held.json().change_id;
      assert.match(id, /^chg_/);
      const [a, b] = await Promise.all([approve(id, v.tokens.manager), approve(id, v.tokens.manager2)]);
      assert.deepEqual([a.statusCode, b.statusCode].sort(), [200, 409], `${a.body} ${b.body}`);
      const history = await v.req('GET', '/v1/settings/production/pool_size/history', {
        token: v.tokens.viewer,
      });
      assert.equal(history.json().data.length, 1, 'applied exactly once');
      const rows = await v.t.store.db.query<{ status: string; result_id: string | null }>(
        `select status, result_id from vault_changes where id = $1`,
        [id],
      );
      assert.equal(rows[0]?.status, 'applied');
      assert.ok(rows[0]?.result_id?.startsWith('stg_'));
      const approvals = await v.t.store.db.query<{ success: boolean; reason: string | null }>(
        `select success, details->>'reason' as reason from audit_events
          where action = 'change.approved' and resource_id = $1 order by success`,
        [id],
      );
      // One approval; the loser's refusal is on record too (success false, change_decided).
      assert.deepEqual(approvals, [
        { success: false, reason: 'change_decided' },
        { success: true, reason: null },
      ]);
    });

    test('a change that no longer applies fails as a whole: nothing written, status failed', async () => {
      const first = await v.req('PUT', '/v1/settings/production/retries', {
        token: v.tokens.developer,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal((await approve(first.json().change_id, v.tokens.manager)).statusCode, 200);
      const a = await v.req('PUT', '/v1/settings/production/retries', {
        token: v.tokens.developer,
        headers: { 'if-match': '"1"' },
        body: { value: 2 },
      });
      const b = await v.req('PUT', '/v1/settings/production/retries', {
        token: v.tokens.developer,
        headers: { 'if-match': '"1"' },
        body: { value: 3 },
      });
      assert.equal((await approve(a.json().change_id, v.tokens.manager)).statusCode, 200);
      const stale = await approve(b.json().change_id, v.tokens.manager);
      assert.equal(stale.statusCode, 412, stale.body);
      const read = await v.req('GET', '/v1/settings/production/retries', { token: v.tokens.viewer });
      assert.equal(read.json().value, 2);
      assert.equal(read.json().version, 2);
      const rows = await v.t.store.db.query<{ status: string; result_id: string | null }>(
        `select status, result_id from vault_changes where id = $1`,
        [b.json().change_id],
      );
      assert.deepEqual(rows[0], { status: 'failed', result_id: null });
    });

    test('deleting a production setting is held; approval deletes it, history kept', async () => {
      const created = await v.req('PUT', '/v1/settings/production/to_drop', {
        token: v.tokens.developer,
        body: { value: 'x', value_type: 'string' },
      });
      assert.equal((await approve(created.json().change_id, v.tokens.manager)).statusCode, 200);
      const noMatch = await v.req('DELETE', '/v1/settings/production/to_drop', { token: v.tokens.manager });
      assert.equal(noMatch.statusCode, 428, 'If-Match checked before holding');
      const held = await v.req('DELETE', '/v1/settings/production/to_drop', {
        token: v.tokens.manager,
        headers: { 'if-match': '"1"' },
      });
      assert.equal(held.statusCode, 202, held.body);
      assert.equal(
        (await v.req('GET', '/v1/settings/production/to_drop', { token: v.tokens.viewer })).statusCode,
        200,
        'still there while pending',
      );
      assert.equal((await approve(held.json().change_id, v.tokens.manager2)).statusCode, 200);
      assert.equal(
        (await v.req('GET', '/v1/settings/production/to_drop', { token: v.tokens.viewer })).statusCode,
        404,
      );
      const history = await v.req('GET', '/v1/settings/production/to_drop/history', {
        token: v.tokens.viewer,
      });
      assert.deepEqual(
        history.json().data.map((h: { action: string }) => h.action),
        ['deleted', 'created'],
      );
    });

    test('held value, rollback and delete of a production secret: each applied on approval, reveals follow', async () => {
      const created = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'SIGNING_KEY', environment: 'production', value: 'first-value' },
      });
      const secretId = (await approve(created.json().change_id, v.tokens.manager2)).json().result_id;
      const reveal = async () =>
        (await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.manager2 })).json().value;
      assert.equal(await reveal(), 'first-value'); // now cached on this instance

      const put = await v.req('PUT', `/v1/secrets/${secretId}/value`, {
        token: v.tokens.manager,
        body: { value: 'second-value', rotation_reason: 'scheduled' },
      });
      assert.equal(put.statusCode, 202, put.body);
      assert.equal(await reveal(), 'first-value', 'nothing applied while pending');
      assert.equal((await approve(put.json().change_id, v.tokens.manager2)).statusCode, 200);
      assert.equal(await reveal(), 'second-value', 'the cache was dropped once the approval committed');

      const back = await v.req('POST', `/v1/secrets/${secretId}/rollback`, {
        token: v.tokens.manager,
        body: { version: 1 },
      });
      assert.equal(back.statusCode, 202, back.body);
      assert.equal((await approve(back.json().change_id, v.tokens.manager2)).statusCode, 200);
      assert.equal(await reveal(), 'first-value');
      const meta = (await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager })).json();
      assert.equal(meta.current_version, 3, 'a rollback is a new version');

      const del = await v.req('DELETE', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
      assert.equal(del.statusCode, 202, del.body);
      assert.equal(await reveal(), 'first-value', 'still there while pending');
      assert.equal((await approve(del.json().change_id, v.tokens.manager2)).statusCode, 200);
      const gone = await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.manager2 });
      assert.equal(gone.statusCode, 404);
      const actions = await v.t.store.db.query<{ action: string }>(
        "select action from audit_events where resource_id = $1 and action like 'secret.%' order by id",
        [secretId],
      );
      for (const a of ['secret.created', 'secret.updated', 'secret.rolled_back', 'secret.deleted']) {
        assert.ok(
          actions.some((r) => r.action === a),
          `${a} audited (${actions.map((r) => r.action).join(', ')})`,
        );
      }
    });

    test('PATCH of a production secret is held and applied as the requester', async () => {
      const held = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'API_TOKEN', environment: 'production', value: 'tok-value-1' },
      });
      const secretId = (await approve(held.json().change_id, v.tokens.manager2)).json().result_id;
      const patch = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.manager,
        body: { description: 'the payment provider token', tags: ['payments'] },
      });
      assert.equal(patch.statusCode, 202, patch.body);
      const unchanged = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
      assert.equal(unchanged.json().description, null, 'nothing applied while pending');
      const bad = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.manager,
        body: { description: 5 },
      });
      assert.equal(bad.statusCode, 400);
      const unknownField = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.manager,
        body: { nope: true },
      });
      assert.equal(unknownField.statusCode, 400);
      const badPerm = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.admin,
        body: { required_permission: 'no:such' },
      });
      assert.equal(badPerm.statusCode, 400, 'checked before holding');
      const viewer = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.viewer,
        body: { description: 'x' },
      });
      assert.equal(viewer.statusCode, 403);
      const refusals = await v.t.store.db.query<{ n: number }>(
        `select count(*)::int as n from secret_access_logs
          where secret_id = $1 and access_type = 'write' and not success and error_code = 'permission_denied'`,
        [secretId],
      );
      assert.equal(refusals[0]?.n, 1, 'a refused held change is in the access log like any other');
      const other = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.other,
        body: { description: 'x' },
      });
      assert.equal(other.statusCode, 404, "another org's secret");
      assert.equal((await approve(patch.json().change_id, v.tokens.manager)).statusCode, 403, 'not your own');
      const ok = await approve(patch.json().change_id, v.tokens.manager2);
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().result_id, secretId);
      const meta = (await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager })).json();
      assert.equal(meta.description, 'the payment provider token');
      assert.deepEqual(meta.tags, ['payments']);
      assert.equal(meta.updated_by, v.ids.manager, 'applied as the requester');
      // Its event names the approver, as the other applied secret changes' do.
      const [event] = await v.t.store.db.query<{ actor_id: string; details: Record<string, unknown> }>(
        `select actor_id, details from audit_events
          where action = 'secret.updated' and resource_id = $1 order by id desc limit 1`,
        [secretId],
      );
      assert.equal(event?.actor_id, v.ids.manager);
      assert.deepEqual(event?.details, {
        name: 'API_TOKEN',
        environment: 'production',
        approved_by: v.ids.manager2,
      });
      // A direct PATCH (development is not covered) names the secret too, with no approver.
      const dev = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'API_TOKEN', environment: 'development', value: 'tok-dev' },
      });
      assert.equal(dev.statusCode, 201, dev.body);
      const direct = await v.req('PATCH', `/v1/secrets/${dev.json().id}`, {
        token: v.tokens.manager,
        body: { description: 'dev token' },
      });
      assert.equal(direct.statusCode, 200, direct.body);
      const [directEvent] = await v.t.store.db.query<{ details: Record<string, unknown> }>(
        `select details from audit_events where action = 'secret.updated' and resource_id = $1`,
        [dev.json().id],
      );
      assert.deepEqual(directEvent?.details, { name: 'API_TOKEN', environment: 'development' });
    });

    test('changes that could never apply are refused at request time, not held', async () => {
      const pendingCount = async () =>
        (await v.t.store.db.query<{ n: number }>(`select count(*)::int as n from vault_changes`))[0]?.n;
      const created = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'prod_db', environment: 'production', value: 'db-value' },
      });
      const secretId = (await approve(created.json().change_id, v.tokens.manager2)).json().result_id;
      const setting = await v.req('PUT', '/v1/settings/production/page_size', {
        token: v.tokens.developer,
        body: { value: 20, value_type: 'int' },
      });
      assert.equal((await approve(setting.json().change_id, v.tokens.manager)).statusCode, 200);
      const outsider = await v.req('POST', '/v1/users', {
        token: v.tokens.other,
        body: { email: 'outsider@example.com', password: 'a sturdy vault passphrase', roles: ['viewer'] },
      });
      const before = await pendingCount();

      const { admin, manager, developer } = v.tokens;
      const outsiderId = outsider.json().id;
      const wrong: string[] = [];
      const refused = async (what: string, asked: ReturnType<typeof v.req>, status: number, code: string) => {
        const res = await asked;
        if (res.statusCode !== status || res.json().code !== code)
          wrong.push(`${what}: ${res.statusCode} ${res.body}`);
      };
      const prodDb = { name: 'prod_db', environment: 'production', value: 'x' };
      await refused(
        'name taken',
        v.req('POST', '/v1/secrets', { token: manager, body: prodDb }),
        409,
        'secret_name_taken',
      );
      await refused(
        'secret rollback to a missing version',
        v.req('POST', `/v1/secrets/${secretId}/rollback`, { token: manager, body: { version: 99 } }),
        404,
        'secret_version_not_found',
      );
      await refused(
        'setting rollback to a missing version',
        v.req('POST', '/v1/settings/production/page_size/rollback', {
          token: developer,
          body: { version: 99 },
        }),
        404,
        'setting_version_not_found',
      );
      await refused(
        'secret owned by a user of another org',
        v.req('POST', '/v1/secrets', {
          token: admin,
          body: { ...prodDb, name: 'owned_x', owner_id: outsiderId },
        }),
        404,
        'owner_not_found',
      );
      const patch = (owner_id: string) =>
        v.req('PATCH', `/v1/secrets/${secretId}`, { token: admin, body: { owner_id } });
      await refused('PATCH to an owner of another org', patch(outsiderId), 404, 'owner_not_found');
      await refused('PATCH to a malformed owner', patch('usr_nonexistent'), 400, 'validation_failed');
      const ifMatch = { 'if-match': '"7"' };
      await refused(
        'setting delete of a missing key',
        v.req('DELETE', '/v1/settings/production/no_such_key', { token: manager, headers: ifMatch }),
        404,
        'setting_not_found',
      );
      await refused(
        'setting update with a stale If-Match',
        v.req('PUT', '/v1/settings/production/page_size', {
          token: developer,
          headers: ifMatch,
          body: { value: 30 },
        }),
        412,
        'version_conflict',
      );
      assert.deepEqual(wrong, [], 'every case answered with its own error');
      assert.equal(await pendingCount(), before, 'nothing was held');
    });

    test('an approval still checks again: a name taken while the creation was pending fails it', async () => {
      const first = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'race_name', environment: 'production', value: 'one' },
      });
      const second = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'race_name', environment: 'production', value: 'two' },
      });
      assert.equal(second.statusCode, 202, 'both held: neither exists yet');
      assert.equal((await approve(first.json().change_id, v.tokens.manager2)).statusCode, 200);
      const late = await approve(second.json().change_id, v.tokens.manager2);
      assert.equal(late.statusCode, 409, late.body);
      assert.equal(late.json().code, 'secret_name_taken');
      const rows = await v.t.store.db.query<{ status: string }>(
        `select status from vault_changes where id = $1`,
        [second.json().change_id],
      );
      assert.equal(rows[0]?.status, 'failed');
    });

    test('a rollback to a version that does not open: refused when asked, failed (not hung) at approval', {
      timeout: 20_000,
    }, async () => {
      const created = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'moved_value', environment: 'production', value: 'first' },
      });
      const id = (await approve(created.json().change_id, v.tokens.manager2)).json().result_id;
      const put = await v.req('PUT', `/v1/secrets/${id}/value`, {
        token: v.tokens.manager,
        body: { value: 'second' },
      });
      assert.equal((await approve(put.json().change_id, v.tokens.manager2)).statusCode, 200);
      const held = await v.req('POST', `/v1/secrets/${id}/rollback`, {
        token: v.tokens.manager,
        body: { version: 1 },
      });
      assert.equal(held.statusCode, 202, held.body);
      // Version 2's sealed value copied over version 1's: bound to v/2, it no longer opens as v/1.
      await v.t.store.db.query(
        `update secret_versions set value = (select value from secret_versions where secret_id = $1 and version = 2)
          where secret_id = $1 and version = 1`,
        [id],
      );
      const late = await approve(held.json().change_id, v.tokens.manager2);
      assert.equal(late.statusCode, 409, late.body);
      assert.equal(late.json().code, 'secret_undecryptable');
      const rows = await v.t.store.db.query<{ status: string }>(
        `select status from vault_changes where id = $1`,
        [held.json().change_id],
      );
      assert.equal(rows[0]?.status, 'failed');
      const asked = await v.req('POST', `/v1/secrets/${id}/rollback`, {
        token: v.tokens.manager,
        body: { version: 1 },
      });
      assert.equal(asked.statusCode, 409, asked.body);
      assert.equal(asked.json().code, 'secret_undecryptable');
      const meta = await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.manager });
      assert.equal(meta.json().current_version, 2, 'nothing applied');
    });

    test('policy: unknown environment names are refused (a typo would protect nothing)', async () => {
      const typo = await v.req('PUT', '/v1/vault/policy', {
        token: v.tokens.admin,
        body: { four_eyes: true, environments: ['production', 'nope'] },
      });
      assert.equal(typo.statusCode, 404, typo.body);
      assert.equal(typo.json().code, 'environment_not_found');
      const policy = await v.req('GET', '/v1/vault/policy', { token: v.tokens.viewer });
      assert.deepEqual(policy.json(), { four_eyes: true, environments: ['production'] }, 'unchanged');
      const ok = await v.req('PUT', '/v1/vault/policy', {
        token: v.tokens.admin,
        body: { four_eyes: true, environments: ['production', 'staging'] },
      });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.deepEqual(ok.json().environments, ['production', 'staging']);
      const back = await v.req('PUT', '/v1/vault/policy', {
        token: v.tokens.admin,
        body: { four_eyes: true, environments: ['production'] },
      });
      assert.equal(back.statusCode, 200, back.body);
    });

    test('policy: a repeated environment name is stored once', async () => {
      const dup = await v.req('PUT', '/v1/vault/policy', {
        token: v.tokens.admin,
        body: { four_eyes: true, environments: ['production', 'production'] },
      });
      assert.equal(dup.statusCode, 200, dup.body);
      assert.deepEqual(dup.json().environments, ['production']);
      const policy = await v.req('GET', '/v1/vault/policy', { token: v.tokens.viewer });
      assert.deepEqual(policy.json().environments, ['production']);
    });

    test("an approved change is recorded with the requester's context; the approver's is on change.approved", async () => {
      const asked = await v.req('PUT', '/v1/settings/production/ctx_setting', {
        token: v.tokens.developer,
        body: { value: 1, value_type: 'int' },
        headers: { 'user-agent': 'requester-agent' },
      });
      assert.equal(asked.statusCode, 202, asked.body);
      const secretAsked = await v.req('POST', '/v1/secrets', {
        token: v.tokens.manager,
        body: { name: 'CTX_SECRET', environment: 'production', value: 'ctx-value' },
        headers: { 'user-agent': 'requester-agent' },
      });
      assert.equal(secretAsked.statusCode, 202, secretAsked.body);
      const approvals: LightMyRequestResponse[] = [];
      for (const change of [asked, secretAsked]) {
        const res = await v.req('POST', `/v1/vault/changes/${change.json().change_id}/approve`, {
          token: v.tokens.manager2,
          headers: { 'user-agent': 'approver-agent' },
        });
        assert.equal(res.statusCode, 200, res.body);
        approvals.push(res);
      }
      type Ev = {
        action: string;
        actor_id: string;
        user_agent: string | null;
        session_id: string | null;
        request_id: string | null;
        resource_id: string;
      };
      const events = async (ids: string[]) =>
        v.t.store.db.query<Ev>(
          `select action, actor_id, user_agent, session_id, request_id, resource_id from audit_events
            where resource_id = any($1) order by id`,
          [ids],
        );
      for (const [i, change] of [asked, secretAsked].entries()) {
        const changeId: string = change.json().change_id;
        const approval = approvals[i];
        assert.ok(approval);
        const resultId: string = approval.json().result_id;
        const evs = await events([changeId, resultId]);
        const requested = evs.find((e) => e.action === 'change.requested');
        const applied = evs.find((e) => e.action === (i === 0 ? 'setting.changed' : 'secret.created'));
        const approved = evs.find((e) => e.action === 'change.approved');
        assert.ok(requested && applied && approved, JSON.stringify(evs));
        const requester = i === 0 ? v.ids.developer : v.ids.manager;
        assert.equal(applied.actor_id, requester);
        assert.equal(applied.user_agent, 'requester-agent');
        assert.equal(applied.request_id, change.headers['x-request-id']);
        assert.equal(applied.session_id, requested.session_id, "the requester's session");
        assert.ok(applied.session_id);
        assert.equal(approved.actor_id, v.ids.manager2);
        assert.equal(approved.user_agent, 'approver-agent');
        assert.equal(approved.request_id, approval.headers['x-request-id']);
        assert.notEqual(approved.session_id, applied.session_id);
      }
      const history = await v.req('GET', '/v1/settings/production/ctx_setting/history', {
        token: v.tokens.viewer,
      });
      const entry = history.json().data[0];
      assert.equal(entry.changed_by, v.ids.developer);
      assert.equal(entry.user_agent, 'requester-agent');
      assert.equal(entry.request_id, asked.headers['x-request-id']);
      const logs = await v.t.store.db.query<{ principal_id: string; user_agent: string; request_id: string }>(
        `select principal_id, user_agent, request_id from secret_access_logs
          where secret_id = $1 and access_type = 'write'`,
        [approvals[1]?.json().result_id],
      );
      assert.deepEqual(logs, [
        {
          principal_id: v.ids.manager,
          user_agent: 'requester-agent',
          request_id: secretAsked.headers['x-request-id'],
        },
      ]);
    });

    test('a requester may withdraw their own pending change without approvals:approve; others may not', async () => {
      const mine = await v.req('PUT', '/v1/settings/production/withdrawn_setting', {
        token: v.tokens.developer,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal(mine.statusCode, 202, mine.body);
      const id: string = mine.json().change_id;
      const viewer = await v.req('POST', `/v1/vault/changes/${id}/reject`, { token: v.tokens.viewer });
      assert.equal(viewer.statusCode, 403, viewer.body);
      assert.equal(viewer.json().code, 'permission_denied');
      const unknown = await v.req('POST', '/v1/vault/changes/chg_01J0000000000000000000000/reject', {
        token: v.tokens.developer,
      });
      assert.equal(unknown.statusCode, 403, 'without approvals:approve, an unknown change says nothing');
      const withdrawn = await v.req('POST', `/v1/vault/changes/${id}/reject`, {
        token: v.tokens.developer,
        body: { reason: 'asked too soon' },
      });
      assert.equal(withdrawn.statusCode, 200, withdrawn.body);
      assert.equal(withdrawn.json().status, 'rejected');
      assert.equal(withdrawn.json().decided_by, v.ids.developer);
      const again = await v.req('POST', `/v1/vault/changes/${id}/reject`, { token: v.tokens.developer });
      assert.equal(again.statusCode, 409);
      const [event] = await v.t.store.db.query<{ actor_id: string; details: Record<string, unknown> }>(
        `select actor_id, details from audit_events where action = 'change.rejected' and resource_id = $1 and success`,
        [id],
      );
      assert.equal(event?.actor_id, v.ids.developer);
      assert.equal(event?.details.withdrawn, true);
      assert.equal(event?.details.reason, 'asked too soon');
      const nothing = await v.req('GET', '/v1/settings/production/withdrawn_setting', {
        token: v.tokens.viewer,
      });
      assert.equal(nothing.statusCode, 404);
      // Someone else's change still needs approvals:approve (a manager's, rejected by a developer).
      const theirs = await v.req('PUT', '/v1/settings/production/withdrawn_setting', {
        token: v.tokens.manager,
        body: { value: 2, value_type: 'int' },
      });
      const refused = await v.req('POST', `/v1/vault/changes/${theirs.json().change_id}/reject`, {
        token: v.tokens.developer,
      });
      assert.equal(refused.statusCode, 403, refused.body);
      const byManager = await v.req('POST', `/v1/vault/changes/${theirs.json().change_id}/reject`, {
        token: v.tokens.manager2,
      });
      assert.equal(byManager.statusCode, 200, byManager.body);
      const [rejected] = await v.t.store.db.query<{ details: Record<string, unknown> }>(
        `select details from audit_events where action = 'change.rejected' and resource_id = $1 and success`,
        [theirs.json().change_id],
      );
      assert.equal(rejected?.details.withdrawn, undefined, 'a rejection by someone else is no withdrawal');
    });

    test('segment create, update and delete are held (segments serve production too)', async () => {
      const body = {
        name: 'beta-users',
        constraints: [{ contextName: 'role', operator: 'IN', values: ['beta'] }],
      };
      const held = await v.req('POST', '/v1/segments', { token: v.tokens.manager, body });
      assert.equal(held.statusCode, 202, held.body);
      assert.equal((await v.req('GET', '/v1/segments', { token: v.tokens.viewer })).json().data.length, 0);
      const created = await approve(held.json().change_id, v.tokens.manager2);
      assert.equal(created.statusCode, 200, created.body);
      const segId = Number(created.json().result_id);
      const seg = await v.req('GET', `/v1/segments/${segId}`, { token: v.tokens.viewer });
      assert.equal(seg.json().created_by, v.ids.manager);

      const dup = await v.req('POST', '/v1/segments', { token: v.tokens.manager, body });
      assert.equal(dup.statusCode, 409, 'a taken name is refused before holding');
      const stale = await v.req('PUT', `/v1/segments/${segId}`, {
        token: v.tokens.manager,
        headers: { 'if-match': '"7"' },
        body: { ...body, description: 'x' },
      });
      assert.equal(stale.statusCode, 412);
      const upd = await v.req('PUT', `/v1/segments/${segId}`, {
        token: v.tokens.manager,
        headers: { 'if-match': '"1"' },
        body: { ...body, description: 'beta testers' },
      });
      assert.equal(upd.statusCode, 202, upd.body);
      const other = await v.req('PUT', `/v1/segments/${segId}`, { token: v.tokens.other, body });
      assert.equal(other.statusCode, 404, "another org's segment");
      assert.equal((await approve(upd.json().change_id, v.tokens.manager2)).statusCode, 200);
      const after1 = (await v.req('GET', `/v1/segments/${segId}`, { token: v.tokens.viewer })).json();
      assert.equal(after1.description, 'beta testers');
      assert.equal(after1.version, 2);

      const del = await v.req('DELETE', `/v1/segments/${segId}`, { token: v.tokens.manager });
      assert.equal(del.statusCode, 202, del.body);
      assert.equal((await approve(del.json().change_id, v.tokens.manager2)).statusCode, 200);
      assert.equal((await v.req('GET', `/v1/segments/${segId}`, { token: v.tokens.viewer })).statusCode, 404);
      const audit = await v.t.store.db.query<{ n: number }>(
        `select count(*)::int as n from audit_events where resource_type = 'flag_segment' and details->>'approved_by' = $1`,
        [v.ids.manager2],
      );
      assert.equal(audit[0]?.n, 3);
    });

    test('an approval re-checks the requester: a permission lost meanwhile refuses every kind (403), nothing applied', {
      timeout: 60_000,
    }, async () => {
      const { admin, manager2 } = v.tokens;
      // A requester of its own (a manager), so its grants touch nobody else.
      const user = await v.req('POST', '/v1/users', {
        token: admin,
        body: { email: 'requester@example.com', password: PASS, roles: ['manager'] },
      });
      assert.equal(user.statusCode, 201, user.body);
      const requesterId: string = user.json().id;
      const token = (await v.t.tokensFor('requester@example.com', PASS)).access_token;
      const ask = (
        method: 'POST' | 'PUT' | 'PATCH' | 'DELETE',
        url: string,
        body?: unknown,
        ifMatch?: string,
      ) => v.req(method, url, { token, body, ...(ifMatch ? { headers: { 'if-match': ifMatch } } : {}) });
      const held = async (res: Awaited<ReturnType<typeof v.req>>): Promise<string> => {
        assert.equal(res.statusCode, 202, res.body);
        return res.json().change_id;
      };
      const applied = async (res: Awaited<ReturnType<typeof v.req>>): Promise<string> => {
        const ok = await approve(await held(res), manager2);
        assert.equal(ok.statusCode, 200, ok.body);
        return ok.json().result_id;
      };
      // Targets, made by the requester and approved while it held its rights.
      const secretId = await applied(
        await ask('POST', '/v1/secrets', { name: 'perm_secret', environment: 'production', value: 'v1' }),
      );
      await applied(
        await ask('PUT', '/v1/settings/production/perm_setting', { value: 1, value_type: 'int' }),
      );
      await applied(await ask('POST', '/v1/flags/production', { name: 'perm-flag', enabled: true }));
      const segmentId = await applied(
        await ask('POST', '/v1/segments', {
          name: 'perm-seg',
          constraints: [{ contextName: 'role', operator: 'IN', values: ['beta'] }],
        }),
      );
      const segment = { name: 'perm-seg', description: 'changed', constraints: [] };
      const cases: [string, string, () => ReturnType<typeof v.req>][] = [
        [
          'secret.create',
          'secrets:create',
          () => ask('POST', '/v1/secrets', { name: 'perm_secret_2', environment: 'production', value: 'x' }),
        ],
        [
          'secret.value',
          'secrets:update',
          () => ask('PUT', `/v1/secrets/${secretId}/value`, { value: 'v2' }),
        ],
        [
          'secret.rollback',
          'secrets:update',
          () => ask('POST', `/v1/secrets/${secretId}/rollback`, { version: 1 }),
        ],
        [
          'secret.update',
          'secrets:update',
          () => ask('PATCH', `/v1/secrets/${secretId}`, { description: 'changed' }),
        ],
        ['secret.delete', 'secrets:delete', () => ask('DELETE', `/v1/secrets/${secretId}`)],
        [
          'setting.put (create)',
          'settings:create',
          () => ask('PUT', '/v1/settings/production/perm_setting_2', { value: 2, value_type: 'int' }),
        ],
        [
          'setting.put (update)',
          'settings:update',
          () => ask('PUT', '/v1/settings/production/perm_setting', { value: 2 }, '"1"'),
        ],
        [
          'setting.rollback',
          'settings:update',
          () => ask('POST', '/v1/settings/production/perm_setting/rollback', { version: 1 }),
        ],
        [
          'setting.delete',
          'settings:delete',
          () => ask('DELETE', '/v1/settings/production/perm_setting', undefined, '"1"'),
        ],
        [
          'flag.create',
          'flags:create',
          () => ask('POST', '/v1/flags/production', { name: 'perm-flag-2', enabled: true }),
        ],
        [
          'flag.replace',
          'flags:update',
          () => ask('PUT', '/v1/flags/production/perm-flag', { name: 'perm-flag', enabled: false }),
        ],
        ['flag.delete', 'flags:delete', () => ask('DELETE', '/v1/flags/production/perm-flag')],
        [
          'segment.create',
          'flags:create',
          () => ask('POST', '/v1/segments', { ...segment, name: 'perm-seg-2' }),
        ],
        ['segment.update', 'flags:update', () => ask('PUT', `/v1/segments/${segmentId}`, segment)],
        ['segment.delete', 'flags:delete', () => ask('DELETE', `/v1/segments/${segmentId}`)],
      ];
      const wrong: string[] = [];
      for (const [what, permission, request] of cases) {
        const changeId = await held(await request());
        // The requester loses exactly the permission the direct route needs.
        const grant = await v.req('POST', '/v1/authz/grants', {
          token: admin,
          body: {
            principal: requesterId,
            permission,
            resource_type: permission.split(':')[0],
            effect: 'deny',
          },
        });
        assert.equal(grant.statusCode, 201, grant.body);
        const res = await approve(changeId, manager2);
        if (res.statusCode !== 403 || res.json().code !== 'requester_not_permitted')
          wrong.push(`${what}: ${res.statusCode} ${res.body}`);
        else if (res.json().permission !== permission) wrong.push(`${what}: names ${res.body}`);
        const [row] = await v.t.store.db.query<{ status: string }>(
          `select status from vault_changes where id = $1`,
          [changeId],
        );
        if (row?.status !== 'failed') wrong.push(`${what}: change ${row?.status}`);
        const revoked = await v.req('DELETE', `/v1/authz/grants/${grant.json().id}`, { token: admin });
        assert.equal(revoked.statusCode, 204, revoked.body);
      }
      assert.deepEqual(wrong, [], 'every kind refused with requester_not_permitted');

      // Nothing was applied.
      const secret = (await v.req('GET', `/v1/secrets/${secretId}`, { token: admin })).json();
      assert.deepEqual([secret.current_version, secret.description], [1, null]);
      const setting = (await v.req('GET', '/v1/settings/production/perm_setting', { token: admin })).json();
      assert.deepEqual([setting.version, setting.value], [1, 1]);
      const flag = (await v.req('GET', '/v1/flags/production/perm-flag', { token: admin })).json();
      assert.deepEqual([flag.version, flag.enabled], [1, true]);
      const seg = (await v.req('GET', `/v1/segments/${segmentId}`, { token: admin })).json();
      assert.deepEqual([seg.version, seg.description], [1, null]);
      for (const url of ['/v1/flags/production/perm-flag-2', '/v1/settings/production/perm_setting_2']) {
        assert.equal((await v.req('GET', url, { token: admin })).statusCode, 404, url);
      }
      const names = (await v.req('GET', '/v1/secrets?environment=production', { token: admin }))
        .json()
        .data.map((s: { name: string }) => s.name);
      assert.ok(!names.includes('perm_secret_2'));

      // With its rights back, the same change applies; a requester who left the org cannot.
      const restored = await approve(
        await held(await ask('PATCH', `/v1/secrets/${secretId}`, { tags: ['t'] })),
        manager2,
      );
      assert.equal(restored.statusCode, 200, restored.body);
      const pending = await held(await ask('PUT', `/v1/secrets/${secretId}/value`, { value: 'v2' }));
      const off = await v.req('PATCH', `/v1/users/${requesterId}`, { token: admin, body: { active: false } });
      assert.equal(off.statusCode, 200, off.body);
      const gone = await approve(pending, manager2);
      assert.equal(gone.statusCode, 403, gone.body);
      assert.equal(gone.json().code, 'requester_not_permitted');
      const after = (await v.req('GET', `/v1/secrets/${secretId}`, { token: admin })).json();
      assert.equal(after.current_version, 1, 'nothing applied');
    });

    test("a key withdraws its owner's change only with a write scope on the change's resource", async () => {
      // Before session 10 a key scoped `*:read` (or `org:read`) withdrew its owner's pending change:
      // a write that no scope of the key covers.
      const held = await v.req('PUT', '/v1/settings/production/key_withdrawn', {
        token: v.tokens.manager,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal(held.statusCode, 202, held.body);
      const id: string = held.json().change_id;
      const keyWith = async (scopes: string[]) => {
        const created = await v.req('POST', '/v1/keys', {
          token: v.tokens.manager,
          body: { name: `withdrawer-${scopes.join('-')}`, scopes },
        });
        assert.equal(created.statusCode, 201, created.body);
        return { authorization: `Bearer ${created.json().key as string}` };
      };
      for (const scopes of [['*:read'], ['org:read'], ['secrets:update']]) {
        const refused = await v.req('POST', `/v1/vault/changes/${id}/reject`, {
          headers: await keyWith(scopes),
        });
        assert.equal(refused.statusCode, 403, `${scopes}: ${refused.body}`);
        assert.equal(refused.json().code, 'permission_denied');
      }
      const [still] = await v.t.store.db.query<{ status: string }>(
        'select status from vault_changes where id = $1',
        [id],
      );
      assert.equal(still?.status, 'pending', 'nothing withdrawn by the refused keys');
      const withdrawn = await v.req('POST', `/v1/vault/changes/${id}/reject`, {
        headers: await keyWith(['settings:update']),
      });
      assert.equal(withdrawn.statusCode, 200, withdrawn.body);
      assert.equal(withdrawn.json().status, 'rejected');
    });

    test("a key's held change is approved against its owner's rights", async () => {
      const created = await v.req('POST', '/v1/keys', {
        token: v.tokens.manager,
        body: { name: 'deployer', scopes: ['secrets:create', 'secrets:update', 'flags:create'] },
      });
      assert.equal(created.statusCode, 201, created.body);
      const key = created.json().key as string;
      const byKey = (method: 'POST' | 'PATCH', url: string, body: unknown) =>
        v.req(method, url, { headers: { authorization: `Bearer ${key}` }, body });
      const secret = await byKey('POST', '/v1/secrets', {
        name: 'key_made',
        environment: 'production',
        value: 'k1',
      });
      assert.equal(secret.statusCode, 202, secret.body);
      assert.equal(
        (await approve(secret.json().change_id, v.tokens.manager)).json().code,
        'self_approval',
        "the key's owner is the requester",
      );
      const ok = await approve(secret.json().change_id, v.tokens.manager2);
      assert.equal(ok.statusCode, 200, ok.body);
      const patch = await byKey('PATCH', `/v1/secrets/${ok.json().result_id}`, { description: 'by key' });
      assert.equal(patch.statusCode, 202, patch.body);
      const patched = await approve(patch.json().change_id, v.tokens.manager2);
      assert.equal(patched.statusCode, 200, patched.body);
      const flag = await byKey('POST', '/v1/flags/production', { name: 'key-flag', enabled: true });
      assert.equal(flag.statusCode, 202, flag.body);
      const flagged = await approve(flag.json().change_id, v.tokens.manager2);
      assert.equal(flagged.statusCode, 200, flagged.body);
    });

    test('an encrypted (not secret) setting value is nowhere in clear at rest: summaries and events masked', async () => {
      const marker = (n: number) => `ENCRYPTED-AT-REST-MARKER-${n}`;
      const put = (env: string, body: unknown, ifMatch?: string) =>
        v.req('PUT', `/v1/settings/${env}/enc_rest`, {
          token: v.tokens.developer,
          body,
          headers: ifMatch ? { 'if-match': ifMatch } : {},
        });
      // Direct writes (development is not covered): create, update, delete.
      assert.equal(
        (await put('development', { value: marker(1), value_type: 'string', encrypted: true })).statusCode,
        201,
      );
      assert.equal((await put('development', { value: marker(2) }, '"1"')).statusCode, 200);
      const read = await v.req('GET', '/v1/settings/development/enc_rest', { token: v.tokens.viewer });
      assert.equal(read.json().value, marker(2), 'not secret: the API still shows it');
      // Held writes (production): create, update keeping `encrypted`, rollback, delete.
      const held = [await put('production', { value: marker(3), value_type: 'string', encrypted: true })];
      assert.equal(held[0]?.statusCode, 202, held[0]?.body);
      const summary = (await v.req('GET', '/v1/vault/changes?status=pending', { token: v.tokens.manager }))
        .json()
        .data.find((c: { id: string }) => c.id === held[0]?.json().change_id)?.summary;
      assert.equal(summary?.value, '[REDACTED]', 'the reviewer sees it masked, as a secret value');
      assert.equal((await approve(held[0]?.json().change_id, v.tokens.manager)).statusCode, 200);
      const update = await put('production', { value: marker(4) }, '"1"');
      assert.equal(update.statusCode, 202, update.body);
      assert.equal((await approve(update.json().change_id, v.tokens.manager)).statusCode, 200);
      const rollback = await v.req('POST', '/v1/settings/production/enc_rest/rollback', {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rollback.statusCode, 202, rollback.body);
      assert.equal((await approve(rollback.json().change_id, v.tokens.manager)).statusCode, 200);
      const restored = await v.req('GET', '/v1/settings/production/enc_rest', { token: v.tokens.viewer });
      assert.equal(restored.json().value, marker(3), 'the sealed payloads applied the real values');
      const remove = await v.req('DELETE', '/v1/settings/production/enc_rest', {
        token: v.tokens.manager,
        headers: { 'if-match': '"3"' },
      });
      assert.equal(remove.statusCode, 202, remove.body);
      assert.equal((await approve(remove.json().change_id, v.tokens.manager2)).statusCode, 200);
      // Every text and jsonb column of every table: no marker in clear.
      const columns = await v.t.store.db.query<{ table_name: string; column_name: string }>(
        `select table_name, column_name from information_schema.columns
          where table_schema = 'public' and data_type in ('text', 'jsonb')`,
      );
      for (const c of columns) {
        const [hit] = await v.t.store.db.query<{ n: number }>(
          `select count(*)::int as n from "${c.table_name}" where "${c.column_name}"::text like '%ENCRYPTED-AT-REST-MARKER%'`,
        );
        assert.equal(hit?.n, 0, `${c.table_name}.${c.column_name} holds an encrypted value in clear`);
      }
      const events = await v.t.store.db.query<{
        action: string;
        changes: { before?: { value?: unknown }; after?: { value?: unknown } };
      }>(
        `select action, changes from audit_events where resource_type = 'setting' and action like 'setting.%'
          and changes::text like '%"encrypted": true%' order by id`,
      );
      assert.ok(events.length >= 6, `${events.length} events`);
      for (const e of events) {
        for (const side of [e.changes.before, e.changes.after]) {
          // Masked; an old value is not even decrypted (null), as for secret settings.
          if (side)
            assert.ok(
              [null, '[REDACTED]'].includes(side.value as null),
              `${e.action}: ${JSON.stringify(e.changes)}`,
            );
        }
      }
    });
  });
}
