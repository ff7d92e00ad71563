// Four-eyes needs a second, distinct person: a key minted by the requester (for an agent, for
// another user, or for themselves through a chain of keys) is the requester's own hand, and an
// agent is no person at all (a tester's findings, session 11).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ulid } from 'ulidx';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from './test-support.ts';

const BOSS_PASS = 'a sturdy chief passphrase';

for (const { kind, skip } of STORES) {
  describe(`four-eyes: the approver is a distinct person (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    /** A non-superuser admin: may assign roles and mint keys for anyone of the org. */
    let boss: string;
    before(async () => {
      v = await vaultTestApp(kind);
      const made = await v.req('POST', '/v1/users', {
        token: v.tokens.admin,
        body: { email: 'boss@example.com', password: BOSS_PASS, roles: ['admin'] },
      });
      assert.equal(made.statusCode, 201, made.body);
      boss = (await v.t.tokensFor('boss@example.com', BOSS_PASS)).access_token;
      const on = await v.req('PUT', '/v1/vault/policy', { token: boss, body: { four_eyes: true } });
      assert.equal(on.statusCode, 200, on.body);
    });
    after(() => v?.close());

    const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

    /** A key minted by `token` (or by a key, `headers`); returns its secret and id. */
    const mint = async (
      by: { token: string } | { headers: Record<string, string> },
      body: Record<string, unknown>,
    ): Promise<{ key: string; id: string }> => {
      const res = await v.req('POST', '/v1/keys', { ...by, body: { name: `k-${ulid()}`, ...body } });
      assert.equal(res.statusCode, 201, res.body);
      return { key: res.json().key, id: res.json().id };
    };

    /** A production setting change held for approval, asked by `by`. */
    const hold = async (
      by: { token: string } | { headers: Record<string, string> },
      name: string,
    ): Promise<string> => {
      const res = await v.req('PUT', `/v1/settings/production/${name}`, {
        ...by,
        body: { value: 5, value_type: 'int' },
      });
      assert.equal(res.statusCode, 202, res.body);
      return res.json().change_id;
    };

    const decide = (
      id: string,
      how: 'approve' | 'reject',
      by: { token: string } | { headers: Record<string, string> },
    ) => v.req('POST', `/v1/vault/changes/${id}/${how}`, by);

    const status = async (id: string) =>
      (
        await v.t.store.db.query<{ status: string }>('select status from vault_changes where id = $1', [id])
      )[0]?.status;

    const refusedWith = async (
      res: Awaited<ReturnType<VaultTestApp['req']>>,
      code: string,
      id: string,
      what: string,
    ) => {
      assert.equal(res.statusCode, 403, `${what}: ${res.body}`);
      assert.equal(res.json().code, code, what);
      assert.equal(await status(id), 'pending', `${what}: nothing decided`);
      const [event] = await v.t.store.db.query<{ success: boolean; details: { reason: string } }>(
        `select success, details from audit_events where action = 'change.approved' and resource_id = $1
          order by id desc limit 1`,
        [id],
      );
      assert.equal(event?.success, false, `${what}: the refusal is audited`);
      assert.equal(event?.details.reason, code);
    };

    test('a key the requester minted for an agent is not a second person: 403 approver_not_human', async () => {
      const id = await hold({ token: boss }, 'max_conn');
      await refusedWith(await decide(id, 'approve', { token: boss }), 'self_approval', id, 'boss itself');
      const agent = `agt_${ulid()}`;
      const assigned = await v.req('POST', '/v1/role-assignments', {
        token: boss,
        body: { principal: agent, role: 'manager' },
      });
      assert.equal(assigned.statusCode, 201, assigned.body);
      const agentKey = await mint(
        { token: boss },
        { owner: agent, scopes: ['approvals:approve', 'approvals:read', 'settings:*'] },
      );
      await refusedWith(
        await decide(id, 'approve', { headers: bearer(agentKey.key) }),
        'approver_not_human',
        id,
        "boss's agent key",
      );
      // An agent's key that nobody of the change minted is no person either.
      const other = await mint(
        { token: v.tokens.admin },
        { owner: agent, scopes: ['approvals:approve', 'settings:*'] },
      );
      await refusedWith(
        await decide(id, 'approve', { headers: bearer(other.key) }),
        'approver_not_human',
        id,
        "another person's agent key",
      );
      // Rejecting stays open to it: refusing a change is fail-safe (README, Four-eyes).
      const rejected = await decide(id, 'reject', { headers: bearer(agentKey.key) });
      assert.equal(rejected.statusCode, 200, rejected.body);
      assert.equal(await status(id), 'rejected');
      const read = await v.req('GET', '/v1/settings/production/max_conn', { token: v.tokens.viewer });
      assert.equal(read.statusCode, 404, 'never applied');
    });

    test("a key the requester minted for another user is the requester's hand: 403 self_approval", async () => {
      const id = await hold({ token: boss }, 'minted_for_manager2');
      const forManager2 = await mint(
        { token: boss },
        { owner: v.ids.manager2, scopes: ['approvals:approve'] },
      );
      await refusedWith(
        await decide(id, 'approve', { headers: bearer(forManager2.key) }),
        'self_approval',
        id,
        "boss's key owned by manager2",
      );
      // Through a chain: a key boss minted mints a key for manager2, which approves.
      const boss1 = await mint({ token: boss }, { scopes: ['*'] });
      const chained = await mint(
        { headers: bearer(boss1.key) },
        { owner: v.ids.manager2, scopes: ['approvals:approve'] },
      );
      await refusedWith(
        await decide(id, 'approve', { headers: bearer(chained.key) }),
        'self_approval',
        id,
        "a key minted by boss's key",
      );
      // manager2's own key (minted by manager2) is manager2: a second person.
      const own = await mint({ token: v.tokens.manager2 }, { scopes: ['approvals:approve', 'settings:*'] });
      const approved = await decide(id, 'approve', { headers: bearer(own.key) });
      assert.equal(approved.statusCode, 200, approved.body);
      assert.equal(approved.json().status, 'applied');
    });

    test("a change asked with a key someone else minted: neither the key's owner nor its minter approves", async () => {
      // boss mints a key for manager2 and asks with it: boss is behind the request as well.
      const asking = await mint({ token: boss }, { owner: v.ids.manager2, scopes: ['settings:*'] });
      const id = await hold({ headers: bearer(asking.key) }, 'asked_by_minted_key');
      await refusedWith(
        await decide(id, 'approve', { token: v.tokens.manager2 }),
        'self_approval',
        id,
        'owner',
      );
      await refusedWith(await decide(id, 'approve', { token: boss }), 'self_approval', id, 'minter');
      const approved = await decide(id, 'approve', { token: v.tokens.manager });
      assert.equal(approved.statusCode, 200, approved.body);
    });

    test('the refusal code is declared by the approval route', async () => {
      const res = await v.t.app.inject({ method: 'GET', url: '/openapi.json' });
      const listed =
        res.json().paths['/v1/vault/changes/{id}/approve'].post.responses['403']['x-steward-codes'];
      for (const code of ['self_approval', 'approver_not_human']) assert.ok(listed.includes(code), listed);
    });
  });
}
