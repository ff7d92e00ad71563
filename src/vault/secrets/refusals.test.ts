import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { eq, sql } from 'drizzle-orm';
import { STORES } from '../../../test/helpers/stores.ts';
import { newId } from '../../db/ids.ts';
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

    test('refused writes, rollbacks and deletes are audited as the change they would have been', async () => {
      const id = await create({ name: 'REFUSED_WRITES', environment: 'development', value: VALUE });
      const missingId = newId('sec');
      const cases: [string, 'PATCH' | 'PUT' | 'POST' | 'DELETE', string, unknown, string, number, string][] =
        [
          [
            'viewer',
            'PATCH',
            `/v1/secrets/${id}`,
            { description: 'd' },
            'secret.updated',
            403,
            'permission_denied',
          ],
          [
            'viewer',
            'PUT',
            `/v1/secrets/${id}/value`,
            { value: VALUE },
            'secret.updated',
            403,
            'permission_denied',
          ],
          [
            'viewer',
            'POST',
            `/v1/secrets/${id}/rollback`,
            { version: 1 },
            'secret.rolled_back',
            403,
            'permission_denied',
          ],
          ['viewer', 'DELETE', `/v1/secrets/${id}`, undefined, 'secret.deleted', 403, 'permission_denied'],
          [
            'developer',
            'POST',
            `/v1/secrets/${id}/rollback`,
            { version: 77 },
            'secret.rolled_back',
            404,
            'secret_version_not_found',
          ],
          ['developer', 'DELETE', `/v1/secrets/${id}`, undefined, 'secret.deleted', 403, 'permission_denied'],
          [
            'developer',
            'PATCH',
            `/v1/secrets/${missingId}`,
            { description: 'd' },
            'secret.updated',
            404,
            'secret_not_found',
          ],
          [
            'developer',
            'PATCH',
            `/v1/secrets/${id}`,
            { owner_id: v.ids.viewer },
            'secret.updated',
            403,
            'permission_denied',
          ],
        ];
      for (const [who, method, url, body, action, status, code] of cases) {
        const token = v.tokens[who as 'viewer' | 'developer'];
        const res = await v.req(method, url, { token, ...(body === undefined ? {} : { body }) });
        assert.equal(res.statusCode, status, `${who} ${method} ${url}: ${res.body}`);
        assert.equal(res.json().code, code);
        const events = await eventsOf(res);
        assert.equal(events.length, 1, `${who} ${method} ${url}: one event, got ${JSON.stringify(events)}`);
        const [e] = events;
        assert.equal(e?.action, action);
        assert.equal(e?.success, false);
        assert.equal(e?.details?.reason, code);
        assert.equal(e?.resource_id, url.split('/')[3]);
        if (code === 'permission_denied') assert.ok(e?.details?.permission, e?.j);
        if (!url.includes(missingId)) assert.equal(e?.details?.name, 'REFUSED_WRITES', e?.j);
        assert.ok(!e?.j.includes(VALUE), e?.j);
      }
      // Still in the access log, as before.
      const logs = await v.t.store.db.db
        .select()
        .from(secretAccessLogs)
        .where(eq(secretAccessLogs.secretId, id));
      assert.equal(logs.filter((l) => !l.success).length, 7);
      // Visible through the API.
      const listed = await v.req('GET', `/v1/audit/events?resource_id=${id}&limit=100`, {
        token: v.tokens.admin,
      });
      assert.equal(listed.json().data.filter((e: { success: boolean }) => !e.success).length, 7, listed.body);

      // A 400 is bad input, not a refusal: no event. Nor for a malformed id.
      const bad = await v.req('PATCH', `/v1/secrets/${id}`, {
        token: v.tokens.developer,
        body: { rotation_enabled: true },
      });
      assert.equal(bad.statusCode, 400, bad.body);
      assert.equal((await eventsOf(bad)).length, 0);
      const junk = await v.req('DELETE', '/v1/secrets/not-an-id', { token: v.tokens.viewer });
      assert.equal(junk.statusCode, 404);
      assert.equal((await eventsOf(junk)).length, 0);
    });

    test('a refused creation is audited as secret.created, success false', async () => {
      const asViewer = await v.req('POST', '/v1/secrets', {
        token: v.tokens.viewer,
        body: { name: 'NOT_MINE', environment: 'development', value: VALUE },
      });
      assert.equal(asViewer.statusCode, 403, asViewer.body);
      await create({ name: 'TAKEN_NAME', environment: 'development', value: 'x' });
      const taken = await v.req('POST', '/v1/secrets', {
        token: v.tokens.developer,
        body: { name: 'TAKEN_NAME', environment: 'development', value: VALUE },
      });
      assert.equal(taken.statusCode, 409, taken.body);
      for (const [res, reason] of [
        [asViewer, 'permission_denied'],
        [taken, 'secret_name_taken'],
      ] as const) {
        const events = await eventsOf(res);
        assert.equal(events.length, 1, JSON.stringify(events));
        assert.equal(events[0]?.action, 'secret.created');
        assert.equal(events[0]?.success, false);
        assert.equal(events[0]?.details?.reason, reason);
        // The route's own permission is checked before the body is read: nothing asked is known.
        if (reason === 'secret_name_taken') {
          assert.equal(events[0]?.details?.environment, 'development');
          assert.equal(events[0]?.details?.name, 'TAKEN_NAME');
        } else assert.equal(events[0]?.details?.permission, 'secrets:create');
        assert.ok(!events[0]?.j.includes(VALUE), events[0]?.j);
      }
      const bad = await v.req('POST', '/v1/secrets', {
        token: v.tokens.developer,
        body: { name: 'BAD', environment: 'development', value: 'x', rotation_enabled: true },
      });
      assert.equal(bad.statusCode, 400, bad.body);
      assert.equal((await eventsOf(bad)).length, 0);
    });

    test('a rollback to a version that does not open is a refused rollback, not a refused reveal', async () => {
      const id = await create({ name: 'ROLLBACK_MOVED', environment: 'development', value: 'one' });
      const put = await v.req('PUT', `/v1/secrets/${id}/value`, {
        token: v.tokens.developer,
        body: { value: 'two' },
      });
      assert.equal(put.statusCode, 200, put.body);
      const db = v.t.store.db.db;
      const [v2] = await db
        .select()
        .from(secretVersions)
        .where(sql`${secretVersions.secretId} = ${id} and ${secretVersions.version} = 2`);
      assert.ok(v2);
      await db
        .update(secretVersions)
        .set({ value: v2.value })
        .where(sql`${secretVersions.secretId} = ${id} and ${secretVersions.version} = 1`);
      const rb = await v.req('POST', `/v1/secrets/${id}/rollback`, {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 409, rb.body);
      assert.equal(rb.json().code, 'secret_undecryptable');
      const events = await eventsOf(rb);
      assert.deepEqual(
        events.map((e) => [
          e.action,
          e.success,
          e.details?.reason,
          e.details?.undecryptable,
          e.details?.restored_from,
        ]),
        [['secret.rolled_back', false, 'secret_undecryptable', 'integrity', 1]],
      );
      const logs = await db
        .select()
        .from(secretAccessLogs)
        .where(eq(secretAccessLogs.requestId, String(rb.headers['x-request-id'])));
      assert.deepEqual(
        logs.map((l) => [l.accessType, l.success, l.errorCode, l.version]),
        [['write', false, 'secret_undecryptable', 1]],
      );
      // A reveal of that version is still a refused reveal.
      const reveal = await v.req('POST', `/v1/secrets/${id}/reveal`, {
        token: v.tokens.manager,
        body: { version: 1 },
      });
      assert.equal(reveal.statusCode, 409, reveal.body);
      assert.deepEqual(
        (await eventsOf(reveal)).map((e) => [e.action, e.success]),
        [['secret.revealed', false]],
      );
    });

    test('required_permission is decided as authz/check decides it on its own type; a deny counts', async () => {
      const id = await create(
        {
          name: 'NEEDS_USERS_UPDATE',
          environment: 'development',
          value: VALUE,
          required_permission: 'users:update',
        },
        v.tokens.admin,
      );
      const reveal = (token: string) => v.req('POST', `/v1/secrets/${id}/reveal`, { token });
      const check = async (token: string, permission: string) => {
        const res = await v.req('POST', '/v1/authz/check', { token, body: { permission } });
        assert.equal(res.statusCode, 200, res.body);
        return res.json().allowed as boolean;
      };
      // The viewer may reveal this secret, and holds users:update through a grant on its type.
      await grant({
        principal: v.ids.viewer,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'allow',
      });
      assert.equal((await reveal(v.tokens.viewer)).statusCode, 403, 'no users:update yet');
      await grant({
        principal: v.ids.viewer,
        permission: 'users:update',
        resource_type: 'users',
        effect: 'allow',
      });
      assert.equal(await check(v.tokens.viewer, 'users:update'), true);
      const granted = await reveal(v.tokens.viewer);
      assert.equal(granted.statusCode, 200, granted.body);
      assert.equal(granted.json().value, VALUE);

      // The manager holds users:update by role: revealed; a deny of it on users wins.
      assert.equal((await reveal(v.tokens.manager)).statusCode, 200);
      await grant({
        principal: v.ids.manager,
        permission: 'users:update',
        resource_type: 'users',
        effect: 'deny',
      });
      assert.equal(await check(v.tokens.manager, 'users:update'), false);
      const denied = await reveal(v.tokens.manager);
      assert.equal(denied.statusCode, 403, denied.body);
      assert.equal(denied.json().permission, 'users:update');
      assert.ok(!denied.body.includes(VALUE));
      // ...even with a grant of it on this secret (deny wins).
      await grant({
        principal: v.ids.manager,
        permission: 'users:update',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'allow',
      });
      assert.equal((await reveal(v.tokens.manager)).statusCode, 403);

      // A grant of the permission on this secret's id still counts (documented).
      assert.equal((await reveal(v.tokens.manager2)).statusCode, 200, 'manager2 holds it by role');
      await grant({
        principal: v.ids.developer,
        permission: 'secrets:reveal',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'allow',
      });
      assert.equal((await reveal(v.tokens.developer)).statusCode, 403, 'a developer lacks users:update');
      await grant({
        principal: v.ids.developer,
        permission: 'users:update',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'allow',
      });
      assert.equal((await reveal(v.tokens.developer)).statusCode, 200, 'granted on this secret');
      // And a deny of it on this secret refuses whoever holds it elsewhere.
      await grant({
        principal: v.ids.manager2,
        permission: 'users:update',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'deny',
      });
      assert.equal((await reveal(v.tokens.manager2)).statusCode, 403);
    });

    test('write answers withhold what the caller may not read; an empty PATCH writes nothing', async () => {
      const id = await create({
        name: 'WRITE_ONLY_FOR_DEV',
        environment: 'development',
        value: 'w1',
        description: 'hidden description',
      });
      await grant({
        principal: v.ids.developer,
        permission: 'secrets:read',
        resource_type: 'secrets',
        resource_id: id,
        effect: 'deny',
      });
      assert.equal((await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.developer })).statusCode, 403);
      const patch = await v.req('PATCH', `/v1/secrets/${id}`, {
        token: v.tokens.developer,
        body: { tags: ['t'] },
      });
      assert.equal(patch.statusCode, 200, patch.body);
      const put = await v.req('PUT', `/v1/secrets/${id}/value`, {
        token: v.tokens.developer,
        body: { value: 'w2' },
      });
      assert.equal(put.statusCode, 200, put.body);
      const rb = await v.req('POST', `/v1/secrets/${id}/rollback`, {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 200, rb.body);
      for (const [res, version] of [
        [patch, 1],
        [put, 2],
        [rb, 3],
      ] as const) {
        const body = res.json();
        assert.deepEqual(
          Object.keys(body).sort(),
          ['current_version', 'id', 'masked', 'updated_at'],
          res.body,
        );
        assert.equal(body.id, id);
        assert.equal(body.masked, true);
        assert.equal(body.current_version, version);
        assert.ok(!res.body.includes('WRITE_ONLY_FOR_DEV') && !res.body.includes('hidden description'));
      }
      // Whoever may read gets the whole view, as before.
      const full = await v.req('PATCH', `/v1/secrets/${id}`, {
        token: v.tokens.manager,
        body: { description: 'new description' },
      });
      assert.equal(full.statusCode, 200, full.body);
      assert.equal(full.json().name, 'WRITE_ONLY_FOR_DEV');
      assert.equal(full.json().masked, undefined);

      // A PATCH that changes nothing: 200, nothing written or recorded.
      const before = (await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.manager })).json();
      v.t.now.ms += 5_000;
      for (const body of [{}, { description: 'new description', tags: ['t'] }]) {
        const noop = await v.req('PATCH', `/v1/secrets/${id}`, { token: v.tokens.manager, body });
        assert.equal(noop.statusCode, 200, noop.body);
        assert.equal(noop.json().updated_at, before.updated_at);
        assert.equal(noop.json().description, 'new description');
        assert.equal((await eventsOf(noop)).length, 0, 'no event');
        const logs = await v.t.store.db.db
          .select()
          .from(secretAccessLogs)
          .where(eq(secretAccessLogs.requestId, String(noop.headers['x-request-id'])));
        assert.equal(logs.length, 0, 'no access-log row');
      }
      const asDev = await v.req('PATCH', `/v1/secrets/${id}`, { token: v.tokens.developer, body: {} });
      assert.equal(asDev.statusCode, 200, asDev.body);
      assert.equal(asDev.json().masked, true);
      const asViewer = await v.req('PATCH', `/v1/secrets/${id}`, { token: v.tokens.viewer, body: {} });
      assert.equal(asViewer.statusCode, 403, 'the same access checks');
      const after = (await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.manager })).json();
      assert.equal(after.updated_at, before.updated_at);
      assert.equal(after.updated_by, before.updated_by);
    });

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
