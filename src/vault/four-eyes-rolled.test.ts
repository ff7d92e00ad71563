// A roll is a rotation, not a revocation: a change asked with a key that was rolled since, and whose
// grace has ended, is judged at approval by the key's live successor — applied while the successor
// is usable, still recorded as the key that asked. Before, it failed as `key_expired` once the
// grace was over (a tester's finding).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { fourEyesTestApp, mintSettingsKey, type VaultTestApp } from './test-support.ts';

for (const { kind, skip } of STORES) {
  describe(`four-eyes: a change asked with a key rolled since (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await fourEyesTestApp(kind);
    });
    after(() => v?.close());

    const mint = () => mintSettingsKey(v);

    const hold = async (key: string, name: string): Promise<string> => {
      const res = await v.req('PUT', `/v1/settings/production/${name}`, {
        headers: { authorization: `Bearer ${key}` },
        body: { value: 5, value_type: 'int' },
      });
      assert.equal(res.statusCode, 202, res.body);
      return res.json().change_id;
    };

    /** Rolls the key with a minute of grace; returns the successor's id. */
    const roll = async (id: string): Promise<string> => {
      const res = await v.req('POST', `/v1/keys/${id}/roll`, {
        token: v.tokens.manager,
        body: { grace_seconds: 60 },
      });
      assert.equal(res.statusCode, 201, res.body);
      return res.json().id;
    };

    /** Past the grace of the rolls just made (tokens stay valid: 2 minutes). */
    const pastGrace = () => {
      v.t.now.ms += 120_000;
    };

    const approve = (id: string) =>
      v.req('POST', `/v1/vault/changes/${id}/approve`, { token: v.tokens.manager2, body: { reason: 'ok' } });

    test('rolled twice, graces over: approved and applied, recorded as the key that asked', async () => {
      const asker = await mint();
      const id = await hold(asker.key, 'asked_by_rolled_key');
      const successor = await roll(asker.id);
      await roll(successor);
      pastGrace();
      const approved = await approve(id);
      assert.equal(approved.statusCode, 200, approved.body);
      assert.equal(approved.json().status, 'applied');
      assert.equal(approved.json().requested_by_key_id, asker.id);
      const read = await v.req('GET', '/v1/settings/production/asked_by_rolled_key', {
        token: v.tokens.viewer,
      });
      assert.equal(read.statusCode, 200, read.body);
      const [changed] = await v.t.store.db.query<{ actor_type: string; actor_id: string }>(
        `select actor_type, actor_id from audit_events where action = 'setting.changed' and resource_id = $1`,
        [approved.json().result_id],
      );
      assert.deepEqual(changed, { actor_type: 'key', actor_id: asker.id });
    });

    test('a successor revoked, switched off or expired still ends the change', async () => {
      const cases: [string, (successor: string) => Promise<void>, string][] = [
        [
          'rolled_then_revoked',
          async (successor) => {
            const res = await v.req('DELETE', `/v1/keys/${successor}`, { token: v.tokens.manager });
            assert.equal(res.statusCode, 200, res.body);
          },
          'key_revoked',
        ],
        [
          'rolled_then_disabled',
          async (successor) => {
            const res = await v.req('PATCH', `/v1/keys/${successor}`, {
              token: v.tokens.manager,
              body: { active: false },
            });
            assert.equal(res.statusCode, 200, res.body);
          },
          'key_disabled',
        ],
        [
          'rolled_then_expired',
          async (successor) => {
            await v.t.store.db.query('update api_keys set expires_at = $2 where id = $1', [
              successor,
              new Date(v.t.now.ms - 1_000).toISOString(),
            ]);
          },
          'key_expired',
        ],
      ];
      for (const [name, end, reason] of cases) {
        const asker = await mint();
        const id = await hold(asker.key, name);
        const successor = await roll(asker.id);
        pastGrace();
        await end(successor);
        const refused = await approve(id);
        assert.equal(refused.statusCode, 403, `${name}: ${refused.body}`);
        assert.equal(refused.json().code, 'requester_not_permitted');
        assert.equal(refused.json().reason, reason, name);
        assert.equal(refused.json().key_id, asker.id);
        const read = await v.req('GET', `/v1/settings/production/${name}`, { token: v.tokens.viewer });
        assert.equal(read.statusCode, 404, `${name}: nothing applied`);
      }
    });

    test('the asking key revoked during its grace ends the change, its successor alive', async () => {
      const asker = await mint();
      const id = await hold(asker.key, 'revoked_in_grace');
      await roll(asker.id);
      const revoked = await v.req('DELETE', `/v1/keys/${asker.id}`, { token: v.tokens.manager });
      assert.equal(revoked.statusCode, 200, revoked.body);
      pastGrace();
      const refused = await approve(id);
      assert.equal(refused.statusCode, 403, refused.body);
      assert.equal(refused.json().reason, 'key_revoked');
    });
  });
}
