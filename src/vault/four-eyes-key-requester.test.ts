// A change an API key asked for keeps the key: shown on the change, recorded as the actor of the
// applied change and in its history, and checked at approval — a key revoked, expired or switched
// off since it asked ends its change (failed, audited) instead of having it applied. Until
// session 11 only the key's owner was stored: the applied change was recorded as {type: 'key',
// id: 'usr_…'} and a revoked key's change was still approved (a tester's finding).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { MIGRATIONS_FOLDER } from '../db/migrate.ts';
import { fourEyesTestApp, mintSettingsKey, type VaultTestApp } from './test-support.ts';

for (const { kind, skip } of STORES) {
  describe(`four-eyes: a change asked with an API key (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await fourEyesTestApp(kind);
    });
    after(() => v?.close());

    /** A key of the manager's, scoped to settings. */
    const mint = () => mintSettingsKey(v);

    const hold = async (key: string, name: string, value = 5): Promise<string> => {
      const res = await v.req('PUT', `/v1/settings/production/${name}`, {
        headers: { authorization: `Bearer ${key}` },
        body: { value, value_type: 'int' },
      });
      assert.equal(res.statusCode, 202, res.body);
      return res.json().change_id;
    };

    const approve = (id: string) =>
      v.req('POST', `/v1/vault/changes/${id}/approve`, { token: v.tokens.manager2, body: { reason: 'ok' } });

    const changeRow = async (id: string) =>
      (
        await v.t.store.db.query<{ status: string; decision_reason: string | null }>(
          'select status, decision_reason from vault_changes where id = $1',
          [id],
        )
      )[0];

    test('the change shows the key that asked; the applied change is recorded as that key', async () => {
      const asker = await mint();
      const id = await hold(asker.key, 'asked_by_key');
      const listed = (
        await v.req('GET', '/v1/vault/changes?status=pending', { token: v.tokens.manager2 })
      ).json().data as Record<string, unknown>[];
      const change = listed.find((c) => c.id === id);
      assert.equal(change?.requested_by, v.ids.manager, "requested_by stays the key's owner");
      assert.equal(change?.requested_by_type, 'key');
      assert.equal(change?.requested_by_key_id, asker.id);

      const approved = await approve(id);
      assert.equal(approved.statusCode, 200, approved.body);
      assert.equal(approved.json().requested_by_key_id, asker.id);

      const history = await v.req('GET', '/v1/settings/production/asked_by_key/history', {
        token: v.tokens.viewer,
      });
      assert.equal(history.statusCode, 200, history.body);
      const [entry] = history.json().data;
      assert.equal(entry.changed_by, asker.id, 'the key, as a direct write by the key records');
      assert.equal(entry.changed_by_type, 'key');

      const [changed] = await v.t.store.db.query<{ actor_type: string; actor_id: string }>(
        `select actor_type, actor_id from audit_events where action = 'setting.changed' and resource_id = $1`,
        [approved.json().result_id],
      );
      assert.deepEqual(changed, { actor_type: 'key', actor_id: asker.id });
      const [decision] = await v.t.store.db.query<{ actor_id: string; details: Record<string, unknown> }>(
        `select actor_id, details from audit_events where action = 'change.approved' and resource_id = $1`,
        [id],
      );
      assert.equal(decision?.actor_id, v.ids.manager2);
      assert.equal(decision?.details.requested_by, v.ids.manager);
      assert.equal(decision?.details.requested_by_key_id, asker.id);

      // A user's own change has no key.
      const own = await v.req('PUT', '/v1/settings/production/asked_by_user', {
        token: v.tokens.manager,
        body: { value: 1, value_type: 'int' },
      });
      assert.equal(own.statusCode, 202, own.body);
      const ownView = (await v.req('GET', '/v1/vault/changes?status=pending', { token: v.tokens.manager2 }))
        .json()
        .data.find((c: { id: string }) => c.id === own.json().change_id);
      assert.equal(ownView?.requested_by_type, 'user');
      assert.equal(ownView?.requested_by_key_id, null);
    });

    /** A key's change whose key then became unusable: approving ends it, nothing applied. */
    const endsWhenKeyUnusable = async (
      name: string,
      unusable: (keyId: string) => Promise<void>,
      reason: string,
    ) => {
      const asker = await mint();
      const id = await hold(asker.key, name);
      await unusable(asker.id);
      const refused = await approve(id);
      assert.equal(refused.statusCode, 403, `${reason}: ${refused.body}`);
      assert.equal(refused.json().code, 'requester_not_permitted');
      assert.equal(refused.json().reason, reason);
      assert.deepEqual(await changeRow(id), {
        status: 'failed',
        decision_reason: 'ok [apply failed: requester_not_permitted]',
      });
      const [event, ...more] = await v.t.store.db.query<{
        success: boolean;
        details: Record<string, unknown>;
      }>(`select success, details from audit_events where action = 'change.approved' and resource_id = $1`, [
        id,
      ]);
      assert.equal(more.length, 0);
      assert.equal(event?.details.outcome, 'failed');
      assert.equal(event?.details.error_code, 'requester_not_permitted');
      const read = await v.req('GET', `/v1/settings/production/${name}`, { token: v.tokens.viewer });
      assert.equal(read.statusCode, 404, `${reason}: nothing applied`);
      const again = await approve(id);
      assert.equal(again.json().code, 'change_decided', 'the change has ended');
    };

    test('a revoked key: its change ends failed (key_revoked), nothing applied', async () => {
      await endsWhenKeyUnusable(
        'asked_by_revoked_key',
        async (keyId) => {
          const revoked = await v.req('DELETE', `/v1/keys/${keyId}`, { token: v.tokens.manager });
          assert.equal(revoked.statusCode, 200, revoked.body);
        },
        'key_revoked',
      );
    });

    test('a switched-off key: key_disabled; an expired key: key_expired', async () => {
      await endsWhenKeyUnusable(
        'asked_by_disabled_key',
        async (keyId) => {
          const off = await v.req('PATCH', `/v1/keys/${keyId}`, {
            token: v.tokens.manager,
            body: { active: false },
          });
          assert.equal(off.statusCode, 200, off.body);
        },
        'key_disabled',
      );
      await endsWhenKeyUnusable(
        'asked_by_expired_key',
        async (keyId) => {
          // A minute before the app's clock (the test's, not the database's).
          await v.t.store.db.query('update api_keys set expires_at = $2 where id = $1', [
            keyId,
            new Date(v.t.now.ms - 60_000).toISOString(),
          ]);
        },
        'key_expired',
      );
    });

    test("migration 0013 backfills a pending key change's key from its change.requested event", async () => {
      const asker = await mint();
      const id = await hold(asker.key, 'backfilled');
      await v.t.store.db.query('update vault_changes set requested_by_key_id = null where id = $1', [id]);
      const sql = readFileSync(`${MIGRATIONS_FOLDER}/0013_vault_change_key_history_guard.sql`, 'utf8');
      const backfill = sql
        .split('--> statement-breakpoint')
        .find((s) => s.includes('SET "requested_by_key_id"'));
      assert.ok(backfill);
      await v.t.store.db.query(backfill);
      const [row] = await v.t.store.db.query<{ requested_by_key_id: string | null }>(
        'select requested_by_key_id from vault_changes where id = $1',
        [id],
      );
      assert.equal(row?.requested_by_key_id, asker.id);
    });
  });
}
