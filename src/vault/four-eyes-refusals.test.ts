import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { seal } from '../crypto/envelope.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { fourEyesTestApp, type VaultTestApp } from './test-support.ts';

interface EventRow {
  actor_id: string;
  success: boolean;
  details: Record<string, unknown>;
}

for (const { kind, skip } of STORES) {
  describe(`four-eyes: undecryptable changes and refused decisions (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await fourEyesTestApp(kind);
    });
    after(() => v?.close());

    const decide = (id: string, how: 'approve' | 'reject', token: string, reason?: string) =>
      v.req('POST', `/v1/vault/changes/${id}/${how}`, {
        token,
        ...(reason === undefined ? {} : { body: { reason } }),
      });

    /** A production setting change held for approval, asked by the developer. */
    const hold = async (name: string, value: number): Promise<string> => {
      const res = await v.req('PUT', `/v1/settings/production/${name}`, {
        token: v.tokens.developer,
        body: { value, value_type: 'int' },
      });
      assert.equal(res.statusCode, 202, res.body);
      return res.json().change_id;
    };

    /** Two held changes, the first one's sealed payload copied over the second's (bound to the first). */
    const heldWithCopiedPayload = async (from: string, to: string): Promise<[string, string]> => {
      const source = await hold(from, 1);
      const target = await hold(to, 2);
      await v.t.store.db.query(
        `update vault_changes set payload = (select payload from vault_changes where id = $1) where id = $2`,
        [source, target],
      );
      return [source, target];
    };

    const changeRow = async (id: string) =>
      (
        await v.t.store.db.query<{
          status: string;
          decision_reason: string | null;
          result_id: string | null;
        }>(`select status, decision_reason, result_id from vault_changes where id = $1`, [id])
      )[0];

    const events = (action: string, id: string) =>
      v.t.store.db.query<EventRow>(
        `select actor_id, success, details from audit_events where action = $1 and resource_id = $2 order by id`,
        [action, id],
      );

    /** Approves a change whose payload no longer opens: 409, nothing applied, the change failed. */
    async function approveUnopenable(id: string, setting: string, reason: string) {
      const res = await decide(id, 'approve', v.tokens.manager, 'looks fine');
      assert.equal(res.statusCode, 409, res.body);
      assert.equal(res.json().code, 'change_undecryptable');
      assert.equal(res.json().reason, reason);
      assert.ok(!res.body.includes('"value"'), 'the answer names no payload');
      assert.deepEqual(await changeRow(id), {
        status: 'failed',
        decision_reason: 'looks fine [apply failed: change_undecryptable]',
        result_id: null,
      });
      const [event, ...more] = await events('change.approved', id);
      assert.equal(more.length, 0, 'recorded once, as the other failures of an approval are');
      assert.equal(event?.actor_id, v.ids.manager);
      assert.equal(event?.details.outcome, 'failed');
      assert.equal(event?.details.error_code, 'change_undecryptable');
      const read = await v.req('GET', `/v1/settings/production/${setting}`, { token: v.tokens.viewer });
      assert.equal(read.statusCode, 404, 'nothing applied');
      const again = await decide(id, 'approve', v.tokens.manager2);
      assert.equal(again.statusCode, 409, again.body);
      assert.equal(again.json().code, 'change_decided', 'failed is final');
    }

    test('a payload copied from another change does not open: 409 change_undecryptable, the change failed', async () => {
      const [source, target] = await heldWithCopiedPayload('copied_from', 'copied_to');
      await approveUnopenable(target, 'copied_to', 'integrity');
      // The change whose payload it was still applies: only the moved copy is refused.
      const ok = await decide(source, 'approve', v.tokens.manager);
      assert.equal(ok.statusCode, 200, ok.body);
      const read = await v.req('GET', '/v1/settings/production/copied_from', { token: v.tokens.viewer });
      assert.equal(read.json().value, 1);
    });

    test('a payload sealed under a master key this server does not hold: 409 (unknown_master_key)', async () => {
      const id = await hold('foreign_key', 3);
      const [row] = await v.t.store.db.query<{ org_id: string }>(
        `select org_id from vault_changes where id = $1`,
        [id],
      );
      const foreign = createKeyring(randomBytes(32));
      const payload = JSON.stringify({ name: 'foreign_key', value: 3, value_type: 'int' });
      await v.t.store.db.query(`update vault_changes set payload = $2 where id = $1`, [
        id,
        seal(foreign, payload, `org/${row?.org_id}/change/${id}`),
      ]);
      await approveUnopenable(id, 'foreign_key', 'unknown_master_key');
    });

    test('an unopenable change can still be rejected (rejecting opens nothing)', async () => {
      const [source, target] = await heldWithCopiedPayload('reject_source', 'reject_target');
      const rejected = await decide(target, 'reject', v.tokens.manager, 'tampered');
      assert.equal(rejected.statusCode, 200, rejected.body);
      assert.equal((await changeRow(target))?.status, 'rejected');
      assert.equal((await decide(source, 'reject', v.tokens.manager)).statusCode, 200);
    });

    test('a refused self-approval is audited: change.approved, success false, the reason', async () => {
      const id = await hold('self_approved', 6);
      const self = await decide(id, 'approve', v.tokens.developer, 'mine is fine');
      assert.equal(self.statusCode, 403, self.body);
      // The developer holds no approvals:approve: refused for that first, and recorded as such.
      assert.equal(self.json().code, 'permission_denied');
      const [denied, ...none] = await events('change.approved', id);
      assert.equal(none.length, 0);
      assert.deepEqual(denied, {
        actor_id: v.ids.developer,
        success: false,
        details: {
          reason: 'permission_denied',
          permission: 'approvals:approve',
          decision_reason: 'mine is fine',
        },
      });

      // A manager's own change: they hold the permission, and are refused for asking themselves.
      const held = await v.req('PUT', '/v1/settings/production/self_approved_by_manager', {
        token: v.tokens.manager,
        body: { value: 7, value_type: 'int' },
      });
      assert.equal(held.statusCode, 202, held.body);
      const own = held.json().change_id;
      const refused = await decide(own, 'approve', v.tokens.manager);
      assert.equal(refused.statusCode, 403, refused.body);
      assert.equal(refused.json().code, 'self_approval');
      const [event] = await events('change.approved', own);
      assert.deepEqual(event, {
        actor_id: v.ids.manager,
        success: false,
        details: { reason: 'self_approval', decision_reason: null },
      });
      const [message] = await v.t.store.db.query<{ error_message: string }>(
        `select error_message from audit_events where action = 'change.approved' and resource_id = $1`,
        [own],
      );
      assert.equal(message?.error_message, 'Another person must approve this change');
      assert.equal((await changeRow(own))?.status, 'pending', 'a refusal decides nothing');

      // Then approved by someone else: one more event, the successful one.
      assert.equal((await decide(own, 'approve', v.tokens.manager2)).statusCode, 200);
      const all = await events('change.approved', own);
      assert.deepEqual(
        all.map((e) => e.success),
        [false, true],
      );
    });

    test('other refused decisions are audited too: decided, unknown, not permitted to reject', async () => {
      const id = await hold('decided_twice', 8);
      assert.equal((await decide(id, 'approve', v.tokens.manager)).statusCode, 200);
      const twice = await decide(id, 'approve', v.tokens.manager2);
      assert.equal(twice.statusCode, 409, twice.body);
      const approvals = await events('change.approved', id);
      assert.deepEqual(
        approvals.map((e) => [e.actor_id, e.success, e.details.reason]),
        [
          [v.ids.manager, true, null],
          [v.ids.manager2, false, 'change_decided'],
        ],
      );
      const late = await decide(id, 'reject', v.tokens.manager2, 'too late');
      assert.equal(late.statusCode, 409, late.body);
      const [rejectedLate] = await events('change.rejected', id);
      assert.deepEqual(rejectedLate, {
        actor_id: v.ids.manager2,
        success: false,
        details: { reason: 'change_decided', decision_reason: 'too late' },
      });

      // Someone else's change, by a viewer (no approvals:approve, not the requester): 403, recorded.
      const theirs = await hold('not_yours', 9);
      const viewer = await decide(theirs, 'reject', v.tokens.viewer);
      assert.equal(viewer.statusCode, 403, viewer.body);
      const [notYours] = await events('change.rejected', theirs);
      assert.equal(notYours?.actor_id, v.ids.viewer);
      assert.equal(notYours?.success, false);
      assert.equal(notYours?.details.reason, 'permission_denied');
      assert.equal((await changeRow(theirs))?.status, 'pending');

      // An unknown change id is recorded under the id asked for; what is no change id is not.
      const unknown = 'chg_01J0000000000000000000000Z';
      const missing = await decide(unknown, 'approve', v.tokens.manager);
      assert.equal(missing.statusCode, 404, missing.body);
      const [asked] = await events('change.approved', unknown);
      assert.equal(asked?.details.reason, 'change_not_found');
      assert.equal(asked?.success, false);
      const before = await v.t.store.db.query<{ n: number }>(`select count(*)::int as n from audit_events`);
      const garbage = await decide('not-a-change', 'approve', v.tokens.manager);
      assert.equal(garbage.statusCode, 404, garbage.body);
      const afterGarbage = await v.t.store.db.query<{ n: number }>(
        `select count(*)::int as n from audit_events`,
      );
      assert.equal(afterGarbage[0]?.n, before[0]?.n, 'no event names what is not a change id');
    });

    test("another org's change is 404 to a holder of approvals:approve, recorded in the caller's org", async () => {
      const id = await hold('other_org_sees_nothing', 10);
      const other = await decide(id, 'approve', v.tokens.other);
      assert.equal(other.statusCode, 404, other.body);
      const rows = await v.t.store.db.query<{ org_id: string; success: boolean }>(
        `select e.org_id, e.success from audit_events e where e.action = 'change.approved' and e.resource_id = $1`,
        [id],
      );
      const [change] = await v.t.store.db.query<{ org_id: string }>(
        `select org_id from vault_changes where id = $1`,
        [id],
      );
      assert.equal(rows.length, 1);
      assert.notEqual(rows[0]?.org_id, change?.org_id, "never in the change's org: the caller's own");
      assert.equal(rows[0]?.success, false);
      assert.equal((await changeRow(id))?.status, 'pending');
    });
  });
}
