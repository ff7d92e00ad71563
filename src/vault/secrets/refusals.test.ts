import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eq, sql } from 'drizzle-orm';
import { STORES } from '../../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { secretAccessLogs, secretVersions } from './schema.ts';

const VALUE = 'refusal-test-value-never-in-an-event';

interface EventRow {
  action: string;
  success: boolean;
  resource_id: string | null;
  details: Record<string, unknown> | null;
  error_message: string | null;
  j: string;
}

for (const store of STORES) {
  describe(`secrets: refused writes, the required permission, write answers (${store.kind})`, {
    skip: store.skip,
  }, () => {
    let v: VaultTestApp;

    before(async () => {
      v = await vaultTestApp(store.kind);
    });
    after(() => v?.close());

    const create = async (body: Record<string, unknown>, token = v.tokens.developer) => {
      const res = await v.req('POST', '/v1/secrets', { token, body });
      assert.equal(res.statusCode, 201, res.body);
      return res.json().id as string;
    };
    const eventsOf = (res: { headers: Record<string, unknown> }) =>
      v.t.store.db.query<EventRow>(
        `select action, success, resource_id, details, error_message, row_to_json(a)::text as j
           from audit_events a where request_id = $1 order by id`,
        [res.headers['x-request-id']],
      );
    const grant = async (body: Record<string, unknown>) => {
      const res = await v.req('POST', '/v1/authz/grants', { token: v.tokens.admin, body });
      assert.equal(res.statusCode, 201, res.body);
    };

    test('an expired secret is not due for rotation: not listed as due, not announced', async () => {
      const { secrets } = await import('../index.ts').then((m) => m.createVaultServices(v.t.app.steward));
      await secrets.announceDueRotations(); // earlier tests' due secrets are announced already
      const due = await create({ name: 'DUE_LIVE', environment: 'staging', value: 'd', rotation_days: 1 });
      const expired = await create({
        name: 'DUE_EXPIRED',
        environment: 'staging',
        value: 'd',
        rotation_days: 1,
      });
      const past = new Date(v.t.now.ms - 60_000).toISOString();
      await v.t.store.db.query(`update secrets set next_rotation_at = $2 where id = any($1)`, [
        [due, expired],
        past,
      ]);
      await v.t.store.db.query(`update secrets set expires_at = $2 where id = $1`, [expired, past]);
      const reveal = await v.req('POST', `/v1/secrets/${expired}/reveal`, { token: v.tokens.manager });
      assert.equal(reveal.json().code, 'secret_expired');
      const view = async (id: string) =>
        (await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.viewer })).json().due_for_rotation;
      assert.equal(await view(due), true);
      assert.equal(await view(expired), false);
      const listed = async (filter: string) =>
        (
          await v.req('GET', `/v1/secrets?environment=staging&limit=500&due_for_rotation=${filter}`, {
            token: v.tokens.viewer,
          })
        )
          .json()
          .data.map((s: { id: string }) => s.id);
      assert.deepEqual(await listed('true'), [due]);
      assert.ok((await listed('false')).includes(expired));
      assert.equal(await secrets.announceDueRotations(), 1);
      const announced = await v.t.store.db.query<{ resource_id: string }>(
        `select resource_id from audit_events where action = 'secret.rotation_due' and resource_id = any($1)`,
        [[due, expired]],
      );
      assert.deepEqual(
        announced.map((r) => r.resource_id),
        [due],
      );
    });
  });
}
