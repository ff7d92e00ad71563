import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

// A flag deleted and created again under the same name is another flag: an ETag or a held change
// taken from the first must never act on the second.
for (const { kind, skip } of STORES) {
  describe(`a flag name used again (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(kind);
    });
    after(() => v.close());

    test("a re-created flag's version continues after the deleted one's: a stale If-Match is 412", async () => {
      const { req, tokens } = v;
      const token = tokens.manager;
      const url = '/v1/flags/development/reused';
      const create = (description: string) =>
        req('POST', '/v1/flags/development', {
          token,
          body: { name: 'reused', enabled: false, description },
        });
      const first = await create('old');
      assert.equal(first.statusCode, 201, first.body);
      assert.equal(first.headers.etag, '"1"');
      const bumped = await req('PUT', url, {
        token,
        headers: { 'if-match': '"1"' },
        body: { name: 'reused', enabled: false, description: 'old, edited' },
      });
      assert.equal(bumped.headers.etag, '"2"');
      assert.equal((await req('DELETE', url, { token })).statusCode, 204);

      const second = await create('new');
      assert.equal(second.statusCode, 201, second.body);
      assert.notEqual(second.json().id, first.json().id);
      assert.equal(second.json().version, 3, 'continues after the deleted flag’s last version (2)');
      assert.equal(second.headers.etag, '"3"');
      for (const stale of ['"1"', '"2"', '2']) {
        const put = await req('PUT', url, {
          token,
          headers: { 'if-match': stale },
          body: { name: 'reused', enabled: true, description: 'edit made against the old flag' },
        });
        assert.equal(put.statusCode, 412, `PUT If-Match ${stale}: ${put.body}`);
        const del = await req('DELETE', url, { token, headers: { 'if-match': stale } });
        assert.equal(del.statusCode, 412, `DELETE If-Match ${stale}: ${del.body}`);
      }
      const kept = await req('GET', url, { token: tokens.viewer });
      assert.equal(kept.json().description, 'new');
      const fresh = await req('PUT', url, {
        token,
        headers: { 'if-match': '"3"' },
        body: { name: 'reused', enabled: true, description: 'new, edited' },
      });
      assert.equal(fresh.statusCode, 200, fresh.body);
      assert.equal(fresh.json().version, 4);

      // Again: the count goes on from the highest version the name ever had in this environment.
      assert.equal((await req('DELETE', url, { token, headers: { 'if-match': '"4"' } })).statusCode, 204);
      assert.equal((await create('third')).json().version, 5);
      // Another environment's flag of that name has its own count; a name never used starts at 1.
      const staging = await req('POST', '/v1/flags/staging', {
        token,
        body: { name: 'reused', enabled: false },
      });
      assert.equal(staging.json().version, 1);
      assert.equal(
        (
          await req('POST', '/v1/flags/development', { token, body: { name: 'unused', enabled: false } })
        ).json().version,
        1,
      );
      // Another org's deleted flag of that name does not count either.
      const other = await req('POST', '/v1/flags/development', {
        token: tokens.other,
        body: { name: 'reused', enabled: false },
      });
      assert.equal(other.statusCode, 201, other.body);
      assert.equal(other.json().version, 1);
    });

    test('a held change applies only to the flag it was made against: deleted or re-created → 409, failed', async () => {
      const { req, tokens } = v;
      const policy = await req('PUT', '/v1/vault/policy', {
        token: tokens.admin,
        body: { four_eyes: true, environments: ['staging'] },
      });
      assert.equal(policy.statusCode, 200, policy.body);
      const approve = async (id: string, token = tokens.manager2) =>
        req('POST', `/v1/vault/changes/${id}/approve`, { token, body: {} });
      const url = '/v1/flags/staging/held-reused';
      const changeOf = async (res: { statusCode: number; body: string; json(): { change_id: string } }) => {
        assert.equal(res.statusCode, 202, res.body);
        return res.json().change_id;
      };
      const statusOf = async (id: string) => {
        const list = await req('GET', '/v1/vault/changes?limit=500', { token: tokens.admin });
        return (list.json().data as { id: string; status: string }[]).find((c) => c.id === id)?.status;
      };
      const createHeld = async (description: string) => {
        const id = await changeOf(
          await req('POST', '/v1/flags/staging', {
            token: tokens.manager,
            body: { name: 'held-reused', enabled: false, description },
          }),
        );
        const ok = await approve(id);
        assert.equal(ok.json().status, 'applied', ok.body);
        return ok.json().result_id as string;
      };

      const oldId = await createHeld('old');
      // Reviewed against the old flag: a deletion and a replacement.
      const staleDelete = await changeOf(await req('DELETE', url, { token: tokens.manager }));
      const staleReplace = await changeOf(
        await req('PUT', url, {
          token: tokens.manager,
          body: { name: 'held-reused', enabled: true, description: 'edit of the old flag' },
        }),
      );
      const changes = (
        await req('GET', '/v1/vault/changes?status=pending&limit=500', { token: tokens.admin })
      ).json().data as { id: string; target_id: string }[];
      assert.equal(changes.find((c) => c.id === staleDelete)?.target_id, oldId);
      // Someone else deletes it (approved) and creates a new flag of that name (approved).
      const otherDelete = await changeOf(await req('DELETE', url, { token: tokens.manager2 }));
      assert.equal((await approve(otherDelete, tokens.admin)).json().status, 'applied');
      const newId = await createHeld('NEW important flag');
      assert.notEqual(newId, oldId);

      for (const stale of [staleDelete, staleReplace]) {
        const res = await approve(stale, tokens.admin);
        assert.equal(res.statusCode, 409, res.body);
        assert.equal(res.json().code, 'flag_target_gone');
        assert.equal(res.json().target_id, oldId);
        assert.equal(res.json().current_id, newId);
        assert.equal(await statusOf(stale), 'failed');
      }
      const kept = await req('GET', url, { token: tokens.viewer });
      assert.equal(kept.statusCode, 200, 'the new flag was not deleted');
      assert.equal(kept.json().id, newId);
      assert.equal(kept.json().description, 'NEW important flag');
      assert.equal(kept.json().enabled, false, 'nor replaced');

      // Gone (not re-created): a second held deletion of one flag fails once the first applied.
      const first = await changeOf(await req('DELETE', url, { token: tokens.manager }));
      const second = await changeOf(await req('DELETE', url, { token: tokens.manager2 }));
      assert.equal((await approve(first)).json().status, 'applied');
      const gone = await approve(second, tokens.manager);
      assert.equal(gone.statusCode, 409, gone.body);
      assert.equal(gone.json().code, 'flag_target_gone');
      assert.equal(gone.json().current_id, null);
      assert.equal(await statusOf(second), 'failed');

      // A change made against the current flag still applies.
      await createHeld('third');
      const edit = await changeOf(
        await req('PUT', url, { token: tokens.manager, body: { name: 'held-reused', enabled: true } }),
      );
      const applied = await approve(edit);
      assert.equal(applied.json().status, 'applied', applied.body);
      assert.equal((await req('GET', url, { token: tokens.viewer })).json().enabled, true);
      await req('PUT', '/v1/vault/policy', { token: tokens.admin, body: { four_eyes: false } });
    });
  });
}
