import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { eq, sql } from 'drizzle-orm';
import { STORES } from '../../../test/helpers/stores.ts';
import { createKeyring } from '../../crypto/keyring.ts';
import { newId } from '../../db/ids.ts';
import { rewrapAll } from '../rewrap.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { secretAccessLogs, secretVersions } from './schema.ts';

const VALUE = 'sk_live_SUPERSECRET_do_not_leak_1234';

for (const store of STORES) {
  describe(`secrets (${store.kind})`, { skip: store.skip }, () => {
    let v: VaultTestApp;
    let secretId: string;

    before(async () => {
      v = await vaultTestApp(store.kind);
    });
    after(() => v?.close());

    const create = (body: Record<string, unknown>, token = v.tokens.developer) =>
      v.req('POST', '/v1/secrets', { token, body });

    test('create, get, list: metadata only, never the value', async () => {
      const res = await create({
        name: 'STRIPE_KEY',
        environment: 'production',
        value: VALUE,
        secret_type: 'api_key',
        tags: ['payments'],
        rotation_days: 30,
      });
      assert.equal(res.statusCode, 201, res.body);
      const s = res.json();
      secretId = s.id;
      assert.match(s.id, /^sec_/);
      assert.equal(s.current_version, 1);
      assert.equal(s.rotation_enabled, true);
      assert.equal(s.environment, 'production');
      assert.ok(s.next_rotation_at);
      assert.ok(!res.body.includes(VALUE));

      const dup = await create({ name: 'STRIPE_KEY', environment: 'production', value: 'x' });
      assert.equal(dup.statusCode, 409);
      assert.equal(dup.json().code, 'secret_name_taken');
      const otherEnv = await create({ name: 'STRIPE_KEY', environment: 'staging', value: 'y' });
      assert.equal(otherEnv.statusCode, 201);

      const list = await v.req('GET', '/v1/secrets?environment=production&tag=payments', {
        token: v.tokens.viewer,
      });
      assert.equal(list.statusCode, 200, list.body);
      assert.equal(list.json().data.length, 1);
      assert.ok(!list.body.includes(VALUE));
      const one = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.viewer });
      assert.equal(one.statusCode, 200);
      assert.ok(!one.body.includes(VALUE));

      const page = await v.req('GET', '/v1/secrets?limit=1', { token: v.tokens.viewer });
      assert.ok(page.json().next_cursor);
      const page2 = await v.req('GET', `/v1/secrets?limit=1&cursor=${page.json().next_cursor}`, {
        token: v.tokens.viewer,
      });
      assert.notEqual(page2.json().data[0].id, page.json().data[0].id);
    });

    test('reveal needs secrets:reveal; audited; every access logged with tool id for agents only', async () => {
      const denied = await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.developer });
      assert.equal(denied.statusCode, 403);
      assert.equal(denied.json().code, 'permission_denied');
      assert.ok(!denied.body.includes(VALUE));
      const ok = await v.req('POST', `/v1/secrets/${secretId}/reveal`, {
        token: v.tokens.manager,
        headers: { 'x-steward-tool-id': 'deploy-tool' },
      });
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().value, VALUE);
      assert.equal(ok.json().version, 1);
      assert.equal(ok.headers['cache-control'], 'no-store');

      const logs = await v.t.store.db.db
        .select()
        .from(secretAccessLogs)
        .where(eq(secretAccessLogs.secretId, secretId));
      const reveals = logs.filter((l) => l.accessType === 'reveal');
      assert.deepEqual(reveals.map((l) => l.success).sort(), [false, true]);
      const good = reveals.find((l) => l.success);
      assert.equal(good?.principalId, v.ids.manager);
      assert.equal(good?.userAgent, 'vault-test');
      assert.ok(good?.ip);
      assert.equal(good?.toolId, null, 'a user is not an agent: no tool id');
      assert.equal(reveals.find((l) => !l.success)?.errorCode, 'permission_denied');
      assert.ok(logs.some((l) => l.accessType === 'write' && l.success));
      assert.ok(logs.some((l) => l.accessType === 'read' && l.success));
    });

    test('reads answered together each leave their own access-log row; so do refusals', async () => {
      const reads = async () =>
        (
          await v.t.store.db.db.select().from(secretAccessLogs).where(eq(secretAccessLogs.secretId, secretId))
        ).filter((l) => l.accessType === 'read');
      const before = new Set((await reads()).map((l) => l.id));
      const answers = await Promise.all([
        ...Array.from({ length: 20 }, () =>
          v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.viewer }),
        ),
        ...Array.from({ length: 5 }, () =>
          v.req('GET', `/v1/secrets/${secretId}/versions`, { token: v.tokens.developer }),
        ),
      ]);
      for (const a of answers) assert.equal(a.statusCode, 200, a.body);
      const added = (await reads()).filter((l) => !before.has(l.id));
      assert.equal(added.length, 25);
      assert.deepEqual(
        added.map((l) => l.requestId).sort(),
        answers.map((a) => a.headers['x-request-id']).sort(),
        'one row per answered request, under its request id',
      );
      assert.equal(added.filter((l) => l.principalId === v.ids.viewer).length, 20);
      assert.ok(added.every((l) => l.success && l.userAgent === 'vault-test' && l.ip));

      // Another org's admin gets a 404, recorded as a failed read in that org.
      const refused = await Promise.all(
        Array.from({ length: 3 }, () => v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.other })),
      );
      for (const r of refused) assert.equal(r.statusCode, 404);
      const failed = (await reads()).filter((l) => !before.has(l.id) && !l.success);
      assert.equal(failed.length, 3);
      assert.ok(failed.every((l) => l.errorCode === 'secret_not_found' && l.orgId !== added[0]?.orgId));
    });

    test('a deny grant on one secret hides it from the list too; pages follow the rows examined', async () => {
      const ids: string[] = [];
      for (const name of ['GRANT_A', 'GRANT_B', 'GRANT_C']) {
        const res = await create({ name, environment: 'development', value: 'g', tags: ['grant-test'] });
        assert.equal(res.statusCode, 201, res.body);
        ids.push(res.json().id);
      }
      const hidden = ids[1] as string;
      const grant = await v.req('POST', '/v1/authz/grants', {
        token: v.tokens.admin,
        body: {
          principal: v.ids.viewer,
          permission: 'secrets:read',
          resource_type: 'secrets',
          resource_id: hidden,
          effect: 'deny',
        },
      });
      assert.equal(grant.statusCode, 201, grant.body);
      const one = await v.req('GET', `/v1/secrets/${hidden}`, { token: v.tokens.viewer });
      assert.equal(one.statusCode, 403, one.body);
      const list = await v.req('GET', '/v1/secrets?tag=grant-test', { token: v.tokens.viewer });
      assert.equal(list.statusCode, 200, list.body);
      assert.deepEqual(
        list.json().data.map((s: { id: string }) => s.id),
        [ids[0], ids[2]],
      );
      // One row per page: the denied row's page is empty but still points past it.
      const seen: string[] = [];
      let pages = 0;
      let cursor: string | null = null;
      do {
        const page = await v.req(
          'GET',
          `/v1/secrets?tag=grant-test&limit=1${cursor ? `&cursor=${cursor}` : ''}`,
          { token: v.tokens.viewer },
        );
        assert.equal(page.statusCode, 200, page.body);
        seen.push(...page.json().data.map((s: { id: string }) => s.id));
        cursor = page.json().next_cursor;
        pages++;
      } while (cursor !== null && pages < 10);
      assert.deepEqual(seen, [ids[0], ids[2]]);
      assert.ok(pages >= 3, 'the hidden row took a page of its own');
      // Others still see it.
      const dev = await v.req('GET', '/v1/secrets?tag=grant-test', { token: v.tokens.developer });
      assert.equal(dev.json().data.length, 3);
    });

    test('refused reveals are audited (secret.revealed, success false, the reason) with the version asked for', async () => {
      const res = await create({ name: 'REFUSED_REVEALS', environment: 'development', value: 'rr' });
      assert.equal(res.statusCode, 201, res.body);
      const id: string = res.json().id;
      const reveal = (token: string, body?: unknown) =>
        v.req('POST', `/v1/secrets/${id}/reveal`, { token, ...(body ? { body } : {}) });
      const denied = await reveal(v.tokens.developer);
      assert.equal(denied.statusCode, 403);
      const missing = await reveal(v.tokens.manager, { version: 99 });
      assert.equal(missing.statusCode, 404);
      assert.equal(missing.json().code, 'secret_version_not_found');
      const off = await v.req('PATCH', `/v1/secrets/${id}`, {
        token: v.tokens.manager,
        body: { active: false },
      });
      assert.equal(off.statusCode, 200, off.body);
      const inactive = await reveal(v.tokens.manager);
      assert.equal(inactive.statusCode, 409);
      const expiredAt = new Date(v.t.now.ms - 1000).toISOString();
      await v.req('PATCH', `/v1/secrets/${id}`, {
        token: v.tokens.manager,
        body: { active: true, expires_at: expiredAt },
      });
      const expired = await reveal(v.tokens.manager);
      assert.equal(expired.statusCode, 409);
      assert.equal(expired.json().code, 'secret_expired');

      const events = await v.t.store.db.query<{
        actor_id: string;
        success: boolean;
        details: { reason?: string; version?: number | null; name?: string };
        request_id: string;
      }>(
        `select actor_id, success, details, request_id from audit_events
          where action = 'secret.revealed' and resource_id = $1 order by id`,
        [id],
      );
      assert.deepEqual(
        events.map((e) => [e.actor_id, e.success, e.details.reason, e.details.version, e.details.name]),
        [
          [v.ids.developer, false, 'permission_denied', 1, 'REFUSED_REVEALS'],
          [v.ids.manager, false, 'secret_version_not_found', 99, 'REFUSED_REVEALS'],
          [v.ids.manager, false, 'secret_inactive', 1, 'REFUSED_REVEALS'],
          [v.ids.manager, false, 'secret_expired', 1, 'REFUSED_REVEALS'],
        ],
      );
      assert.deepEqual(
        events.map((e) => e.request_id),
        [denied, missing, inactive, expired].map((r) => r.headers['x-request-id']),
      );
      // Visible through the API: the audit routes list them.
      const listed = await v.req('GET', `/v1/audit/events?action=secret.revealed&resource_id=${id}`, {
        token: v.tokens.admin,
      });
      assert.equal(listed.statusCode, 200, listed.body);
      assert.equal(listed.json().data.length, 4, listed.body);
      const logs = await v.t.store.db.db
        .select()
        .from(secretAccessLogs)
        .where(eq(secretAccessLogs.secretId, id));
      const refused = logs.filter((l) => l.accessType === 'reveal' && !l.success);
      assert.deepEqual(refused.map((l) => [l.errorCode, l.version]).sort(), [
        ['permission_denied', 1],
        ['secret_expired', 1],
        ['secret_inactive', 1],
        ['secret_version_not_found', 99],
      ]);
      // Another org's admin: a 404, audited in their own org; a malformed id: only its log row.
      const theirs = await v.req('POST', `/v1/secrets/${id}/reveal`, { token: v.tokens.other });
      assert.equal(theirs.statusCode, 404);
      const [theirEvent] = await v.t.store.db.query<{ org_id: string; details: { reason: string } }>(
        `select org_id, details from audit_events where action = 'secret.revealed' and request_id = $1`,
        [theirs.headers['x-request-id']],
      );
      assert.equal(theirEvent?.details.reason, 'secret_not_found');
      assert.notEqual(theirEvent?.org_id, logs[0]?.orgId);
      const junk = await v.req('POST', '/v1/secrets/not-an-id/reveal', { token: v.tokens.manager });
      assert.equal(junk.statusCode, 404);
      const junkEvents = await v.t.store.db.query(`select 1 from audit_events where request_id = $1`, [
        junk.headers['x-request-id'],
      ]);
      assert.equal(junkEvents.length, 0);
    });

    test('rotation enabled needs a period; tags are stored as a set', async () => {
      const never = await create({
        name: 'ROT_NO_DAYS',
        environment: 'development',
        value: 'x',
        rotation_enabled: true,
      });
      assert.equal(never.statusCode, 400, never.body);
      assert.equal(never.json().code, 'validation_failed');
      assert.equal(never.json().errors[0].path, 'body.rotation_days');
      const res = await create({
        name: 'ROT_TAGS',
        environment: 'development',
        value: 'x',
        tags: ['a', 'a', 'A'],
      });
      assert.equal(res.statusCode, 201, res.body);
      assert.deepEqual(res.json().tags, ['a', 'A']);
      assert.equal(res.json().rotation_enabled, false);
      const id: string = res.json().id;
      const patch = (body: unknown) =>
        v.req('PATCH', `/v1/secrets/${id}`, { token: v.tokens.developer, body });
      const enableOnly = await patch({ rotation_enabled: true });
      assert.equal(enableOnly.statusCode, 400, enableOnly.body);
      const enabled = await patch({ rotation_enabled: true, rotation_days: 5, tags: ['b', 'b', 'c'] });
      assert.equal(enabled.statusCode, 200, enabled.body);
      assert.deepEqual(enabled.json().tags, ['b', 'c']);
      assert.ok(enabled.json().next_rotation_at);
      const dropDays = await patch({ rotation_days: null });
      assert.equal(dropDays.statusCode, 400, dropDays.body);
      const off = await patch({ rotation_enabled: false, rotation_days: null });
      assert.equal(off.statusCode, 200, off.body);
      assert.equal(off.json().next_rotation_at, null);
    });

    test('new versions, versions list, rollback as a new version, reveal of old versions', async () => {
      const put = await v.req('PUT', `/v1/secrets/${secretId}/value`, {
        token: v.tokens.developer,
        body: { value: 'v2-value', rotation_reason: 'scheduled' },
      });
      assert.equal(put.statusCode, 200, put.body);
      assert.equal(put.json().current_version, 2);
      const versions = await v.req('GET', `/v1/secrets/${secretId}/versions`, { token: v.tokens.viewer });
      assert.deepEqual(
        versions.json().data.map((x: { version: number; active: boolean }) => [x.version, x.active]),
        [
          [2, true],
          [1, false],
        ],
      );
      assert.equal(versions.json().data[0].reason, 'scheduled');
      const rb = await v.req('POST', `/v1/secrets/${secretId}/rollback`, {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 200, rb.body);
      assert.equal(rb.json().current_version, 3);
      const now = await v.req('POST', `/v1/secrets/${secretId}/reveal`, { token: v.tokens.manager });
      assert.equal(now.json().value, VALUE);
      assert.equal(now.json().version, 3);
      const old = await v.req('POST', `/v1/secrets/${secretId}/reveal`, {
        token: v.tokens.manager,
        body: { version: 2 },
      });
      assert.equal(old.json().value, 'v2-value');
      const missing = await v.req('POST', `/v1/secrets/${secretId}/rollback`, {
        token: v.tokens.developer,
        body: { version: 99 },
      });
      assert.equal(missing.statusCode, 404);
      assert.equal(missing.json().code, 'secret_version_not_found');
    });

    test('a ciphertext copied to another row does not open: 409 secret_undecryptable, never 500', async () => {
      const other = await create({ name: 'OTHER', environment: 'production', value: 'other-value' });
      const otherId = other.json().id;
      const db = v.t.store.db.db;
      const [source] = await db.select().from(secretVersions).where(eq(secretVersions.secretId, secretId));
      assert.ok(source);
      await db
        .update(secretVersions)
        .set({ value: source.value })
        .where(sql`${secretVersions.secretId} = ${otherId} and ${secretVersions.version} = 1`);
      const res = await v.req('POST', `/v1/secrets/${otherId}/reveal`, { token: v.tokens.manager });
      assert.equal(res.statusCode, 409, res.body);
      assert.equal(res.json().code, 'secret_undecryptable');
      assert.equal(res.json().reason, 'integrity');
      assert.ok(!res.body.includes(VALUE));
      // Also a version copied within the same secret (v/1 → v/2 binding).
      const rb = await v.req('POST', `/v1/secrets/${otherId}/rollback`, {
        token: v.tokens.developer,
        body: { version: 1 },
      });
      assert.equal(rb.statusCode, 409);
      assert.equal(rb.json().code, 'secret_undecryptable');
      const logs = await db.select().from(secretAccessLogs).where(eq(secretAccessLogs.secretId, otherId));
      assert.ok(
        logs.some((l) => l.accessType === 'reveal' && !l.success && l.errorCode === 'secret_undecryptable'),
      );
    });

    test('bad inputs: wrong types, unknown fields, unknown environment, other org ids → 404', async () => {
      const cases: [Record<string, unknown>, number, string][] = [
        [{ name: 'A', environment: 'production', value: 42 }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'production', value: 'x', extra: 1 }, 400, 'validation_failed'],
        [{ name: '1bad name', environment: 'production', value: 'x' }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'production', value: '' }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'production', value: 'x', secret_type: 'nope' }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'production', value: 'x', rotation_days: 0 }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'production', value: 'x', tags: 'a' }, 400, 'validation_failed'],
        [{ name: 'A', environment: 'nowhere', value: 'x' }, 404, 'environment_not_found'],
        [
          { name: 'A', environment: 'production', value: 'x', required_permission: 'x:y' },
          403,
          'permission_denied',
        ],
      ];
      for (const [body, status, code] of cases) {
        const res = await create(body);
        assert.equal(res.statusCode, status, `${JSON.stringify(body)} → ${res.body}`);
        assert.equal(res.json().code, code);
      }
      const badPerm = await create(
        { name: 'A', environment: 'production', value: 'x', required_permission: 'x:y' },
        v.tokens.admin,
      );
      assert.equal(badPerm.json().code, 'invalid_required_permission');
      const bad = await v.req('GET', '/v1/secrets?environment=nowhere', { token: v.tokens.viewer });
      assert.equal(bad.statusCode, 404);
      const due = await v.req('GET', '/v1/secrets?due_for_rotation=maybe', { token: v.tokens.viewer });
      assert.equal(due.statusCode, 400);

      const theirs = await create(
        { name: 'THEIRS', environment: 'production', value: 'globex' },
        v.tokens.other,
      );
      assert.equal(theirs.statusCode, 201, theirs.body);
      const id = theirs.json().id;
      for (const [method, url, body] of [
        ['GET', `/v1/secrets/${id}`, undefined],
        ['POST', `/v1/secrets/${id}/reveal`, undefined],
        ['PUT', `/v1/secrets/${id}/value`, { value: 'x' }],
        ['GET', `/v1/secrets/${id}/versions`, undefined],
        ['POST', `/v1/secrets/${id}/rollback`, { version: 1 }],
        ['PATCH', `/v1/secrets/${id}`, { description: 'x' }],
        ['DELETE', `/v1/secrets/${id}`, undefined],
        ['GET', '/v1/secrets/not-an-id', undefined],
      ] as const) {
        const res = await v.req(method, url, { token: v.tokens.admin, body });
        assert.equal(res.statusCode, 404, `${method} ${url}: ${res.body}`);
        assert.equal(res.json().code, 'secret_not_found');
      }
      const mine = await v.req('GET', '/v1/secrets', { token: v.tokens.admin });
      assert.ok(!mine.json().data.some((s: { id: string }) => s.id === id));
      const unauth = await v.req('POST', `/v1/secrets/${secretId}/reveal`);
      assert.equal(unauth.statusCode, 401);
    });

    test('owner_id: a principal of the org, by the rule API keys follow; checked on create and PATCH', async () => {
      // A user of the other org only.
      const outsider = await v.req('POST', '/v1/users', {
        token: v.tokens.other,
        body: { email: 'outsider@example.com', password: 'a sturdy vault passphrase', roles: ['viewer'] },
      });
      assert.equal(outsider.statusCode, 201, outsider.body);
      const outsiderId: string = outsider.json().id;
      const unknownUser = newId('usr');
      const agent = newId('agt');
      const owned = (name: string, owner_id: unknown) =>
        create({ name, environment: 'development', value: 'v', owner_id }, v.tokens.admin);
      const refused: [unknown, number, string][] = [
        [outsiderId, 404, 'owner_not_found'],
        [unknownUser, 404, 'owner_not_found'],
        ['not even an id', 400, 'validation_failed'],
        ['usr_nonexistent', 400, 'validation_failed'],
        [newId('key'), 400, 'validation_failed'],
      ];
      for (const [owner, status, code] of refused) {
        const res = await owned('OWNED_X', owner);
        assert.equal(res.statusCode, status, `${owner} → ${res.body}`);
        assert.equal(res.json().code, code);
      }
      // The keys domain gives the same answer for the same user of another org.
      const key = await v.req('POST', '/v1/keys', {
        token: v.tokens.admin,
        body: { name: 'k', scopes: [], owner: outsiderId },
      });
      assert.equal(key.statusCode, 404, key.body);
      assert.equal(key.json().code, 'owner_not_found');

      const member = await owned('OWNED_BY_MANAGER', v.ids.manager);
      assert.equal(member.statusCode, 201, member.body);
      assert.equal(member.json().owner_id, v.ids.manager);
      const byAgent = await owned('OWNED_BY_AGENT', agent);
      assert.equal(byAgent.statusCode, 201, byAgent.body);
      assert.equal(byAgent.json().owner_id, agent);

      const id = member.json().id;
      const patch = (owner_id: unknown) =>
        v.req('PATCH', `/v1/secrets/${id}`, { token: v.tokens.admin, body: { owner_id } });
      for (const [owner, status, code] of refused) {
        const res = await patch(owner);
        assert.equal(res.statusCode, status, `PATCH ${owner} → ${res.body}`);
        assert.equal(res.json().code, code);
      }
      assert.equal(
        (await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.admin })).json().owner_id,
        v.ids.manager,
      );
      const moved = await patch(v.ids.manager2);
      assert.equal(moved.statusCode, 200, moved.body);
      assert.equal(moved.json().owner_id, v.ids.manager2);
      const cleared = await patch(null);
      assert.equal(cleared.statusCode, 200, cleared.body);
      assert.equal(cleared.json().owner_id, null);
    });

    test('audit: events for every change and reveal, and no secret value anywhere', async () => {
      const patched = await v.req('PATCH', `/v1/secrets/${secretId}`, {
        token: v.tokens.developer,
        body: { description: 'Stripe live key', rotation_days: 7 },
      });
      assert.equal(patched.statusCode, 200, patched.body);
      const rows = await v.t.store.db.query<{ action: string; changes: unknown; details: unknown }>(
        `select action, changes, details from audit_events where resource_id = $1 order by id`,
        [secretId],
      );
      const actions = rows.map((r) => r.action);
      for (const a of ['secret.created', 'secret.revealed', 'secret.updated', 'secret.rolled_back']) {
        assert.ok(actions.includes(a), `${a} in ${actions}`);
      }
      const all = await v.t.store.db.query<{ j: string }>(
        `select row_to_json(a)::text as j from audit_events a`,
      );
      for (const r of all) {
        assert.ok(!r.j.includes(VALUE) && !r.j.includes('v2-value') && !r.j.includes('other-value'), r.j);
      }
    });

    test('rotation: due list and one secret.rotation_due per secret per period', async () => {
      const { secrets } = await import('../index.ts').then((m) => m.createVaultServices(v.t.app.steward));
      const c = await create({ name: 'ROTATE_ME', environment: 'development', value: 'r', rotation_days: 1 });
      const id = c.json().id;
      assert.equal((await secrets.announceDueRotations()) >= 0, true);
      v.t.now.ms += 2 * 86_400_000;
      await v.relogin();
      const due = await v.req('GET', '/v1/secrets?due_for_rotation=true', { token: v.tokens.viewer });
      assert.ok(due.json().data.some((s: { id: string }) => s.id === id));
      assert.ok(due.json().data.every((s: { due_for_rotation: boolean }) => s.due_for_rotation));
      await secrets.announceDueRotations();
      await secrets.announceDueRotations();
      const count = async () =>
        (
          await v.t.store.db.query<{ n: number }>(
            `select count(*)::int as n from audit_events where action = 'secret.rotation_due' and resource_id = $1`,
            [id],
          )
        )[0]?.n;
      assert.equal(await count(), 1);
      // Rotating moves the period forward; the next due date is announced once more.
      await v.req('PUT', `/v1/secrets/${id}/value`, { token: v.tokens.developer, body: { value: 'r2' } });
      await secrets.announceDueRotations();
      assert.equal(await count(), 1);
      v.t.now.ms += 2 * 86_400_000;
      await secrets.announceDueRotations();
      assert.equal(await count(), 2);
      await v.relogin();
    });

    test('due for rotation means one thing: the view, both filters and the scheduler agree', async () => {
      const { secrets } = await import('../index.ts').then((m) => m.createVaultServices(v.t.app.steward));
      await secrets.announceDueRotations(); // earlier tests' due secrets are announced already
      const make = async (name: string, extra: Record<string, unknown>) => {
        const res = await create({ name, environment: 'staging', value: 'd', ...extra });
        assert.equal(res.statusCode, 201, res.body);
        return res.json().id as string;
      };
      const due = await make('DUE_ACTIVE', { rotation_days: 1 });
      const inactive = await make('DUE_BUT_INACTIVE', { rotation_days: 1 });
      const later = await make('DUE_LATER', { rotation_days: 5 });
      const never = await make('NEVER_ROTATED', {});
      const off = await v.req('PATCH', `/v1/secrets/${inactive}`, {
        token: v.tokens.developer,
        body: { active: false },
      });
      assert.equal(off.statusCode, 200, off.body);
      // Past their next rotation date, without moving the clock (tokens stay valid).
      await v.t.store.db.query(`update secrets set next_rotation_at = $2 where id = any($1)`, [
        [due, inactive],
        new Date(v.t.now.ms - 60_000).toISOString(),
      ]);
      const view = async (id: string) =>
        (await v.req('GET', `/v1/secrets/${id}`, { token: v.tokens.viewer })).json().due_for_rotation;
      assert.equal(await view(due), true);
      assert.equal(await view(inactive), false, 'a deactivated secret is not due (its view said so)');
      assert.equal(await view(later), false);
      assert.equal(await view(never), false);

      const listed = async (filter: string) => {
        const res = await v.req(
          'GET',
          `/v1/secrets?environment=staging&limit=500&due_for_rotation=${filter}`,
          {
            token: v.tokens.viewer,
          },
        );
        assert.equal(res.statusCode, 200, res.body);
        const rows: { id: string; due_for_rotation: boolean }[] = res.json().data;
        assert.ok(
          rows.every((r) => r.due_for_rotation === (filter === 'true')),
          `every row of due_for_rotation=${filter} agrees with its view`,
        );
        return rows.map((r) => r.id);
      };
      const dueIds = await listed('true');
      assert.ok(dueIds.includes(due));
      assert.ok(!dueIds.includes(inactive) && !dueIds.includes(later) && !dueIds.includes(never));
      const notDue = await listed('false');
      assert.ok(!notDue.includes(due), 'false was ignored: it listed the due secret too');
      assert.ok(notDue.includes(inactive) && notDue.includes(later) && notDue.includes(never));

      assert.equal(await secrets.announceDueRotations(), 1, 'the scheduler announces the due one only');
      const announced = await v.t.store.db.query<{ resource_id: string }>(
        `select resource_id from audit_events where action = 'secret.rotation_due' and resource_id = any($1)`,
        [[due, inactive, later, never]],
      );
      assert.deepEqual(
        announced.map((r) => r.resource_id),
        [due],
      );

      for (const bad of ['yes', '1', 'TRUE', '']) {
        const res = await v.req('GET', `/v1/secrets?due_for_rotation=${bad}`, { token: v.tokens.viewer });
        assert.equal(res.statusCode, 400, `due_for_rotation=${bad}: ${res.body}`);
        assert.equal(res.json().code, 'validation_failed');
      }
    });

    test('a next_rotation_at with microseconds (set in SQL) is announced once, by any instance', async () => {
      const first = await import('../index.ts').then((m) => m.createVaultServices(v.t.app.steward));
      const second = await import('../index.ts').then((m) => m.createVaultServices(v.t.app.steward));
      await first.secrets.announceDueRotations(); // earlier tests' due secrets are announced already
      const res = await create({
        name: 'ROTATE_MICROS',
        environment: 'staging',
        value: 'm',
        rotation_days: 30,
      });
      assert.equal(res.statusCode, 201, res.body);
      const id: string = res.json().id;
      // As an operator would: `now() - interval '2 hours'`, here from the app's clock (the test's).
      await v.t.store.db.query(
        `update secrets set next_rotation_at = $2::timestamptz - interval '2 hours' + interval '123 microseconds'
          where id = $1`,
        [id, new Date(v.t.now.ms).toISOString()],
      );
      const [stored] = await v.t.store.db.query<{ micros: number }>(
        `select extract(microseconds from next_rotation_at)::int % 1000 as micros from secrets where id = $1`,
        [id],
      );
      assert.equal(stored?.micros, 123, 'the column holds microseconds a JS Date cannot');
      const passes = [
        await first.secrets.announceDueRotations(),
        await second.secrets.announceDueRotations(),
        await first.secrets.announceDueRotations(),
      ];
      assert.deepEqual(passes, [1, 0, 0], 'announced once, then never again in this period');
      const [row] = await v.t.store.db.query<{ same: boolean }>(
        `select rotation_notified_for = next_rotation_at as same from secrets where id = $1`,
        [id],
      );
      assert.equal(row?.same, true, 'the announced date is the column, to the microsecond');
      const events = await v.t.store.db.query<{ n: number }>(
        `select count(*)::int as n from audit_events where action = 'secret.rotation_due' and resource_id = $1`,
        [id],
      );
      assert.equal(events[0]?.n, 1);
    });

    test('re-wrap under a new master key, then reveal every version', async () => {
      const app = v.t.app;
      const db = v.t.store.db;
      const oldKeyring = app.steward.keyring;
      const newKey = randomBytes(32);
      const both = createKeyringWith(newKey, oldKeyring);
      const progress: number[] = [];
      const result = await rewrapAll({ db, keyring: both, audit: app.steward.audit, batchSize: 3 }, (done) =>
        progress.push(done),
      );
      assert.ok(result.rewrapped > 0);
      assert.equal(result.remaining, 0);
      assert.ok(progress.length >= 2, 'progress reported per batch');
      const rows = await db.db.select().from(secretVersions).where(eq(secretVersions.secretId, secretId));
      assert.ok(
        rows.every((r) => r.keyId === both.current.id && r.value.startsWith(`v1.${both.current.id}.`)),
      );
      // Reveal through a service holding only the new key.
      const { createSecretService } = await import('./service.ts');
      const onlyNew = createSecretService({
        db,
        keyring: createKeyring(newKey),
        audit: app.steward.audit,
        authz: app.steward.authz,
        tenancy: app.steward.tenancy,
        identity: app.steward.identity,
        clock: app.steward.clock,
      });
      const manager = await app.steward.identity.authenticate(`Bearer ${v.tokens.manager}`);
      assert.ok(manager);
      for (const r of rows) {
        const out = await onlyNew.reveal(
          {
            principal: manager,
            context: { ip: '127.0.0.1', userAgent: null, sessionId: null, requestId: 'r' },
            toolId: null,
          },
          secretId,
          r.version,
        );
        assert.equal(out.value, r.version === 2 ? 'v2-value' : VALUE);
      }
      const events = await db.query<{ n: number }>(
        `select count(*)::int as n from audit_events where action = 'secret.rewrapped'`,
      );
      assert.ok((events[0]?.n ?? 0) >= 1);
      const again = await rewrapAll({ db, keyring: both, audit: app.steward.audit, batchSize: 3 });
      assert.equal(again.rewrapped, 0);
    });

    test('delete: gone from the API, name reusable, versions kept', async () => {
      const dev = await v.req('DELETE', `/v1/secrets/${secretId}`, { token: v.tokens.developer });
      assert.equal(dev.statusCode, 403);
      const del = await v.req('DELETE', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
      assert.equal(del.statusCode, 204, del.body);
      const get = await v.req('GET', `/v1/secrets/${secretId}`, { token: v.tokens.manager });
      assert.equal(get.statusCode, 404);
      const again = await create({ name: 'STRIPE_KEY', environment: 'production', value: 'new' });
      assert.equal(again.statusCode, 201);
      const kept = await v.t.store.db.db
        .select()
        .from(secretVersions)
        .where(eq(secretVersions.secretId, secretId));
      assert.ok(kept.length >= 3);
    });
  });
}

import type { Keyring } from '../../crypto/keyring.ts';

/** A keyring whose current key is `current` and that still unwraps with `previous`. */
function createKeyringWith(current: Buffer, previous: Keyring): Keyring {
  const next = createKeyring(current);
  return {
    ...next,
    ids: [...next.ids, ...previous.ids],
    has: (id) => next.has(id) || previous.has(id),
    unwrap: (wrapped) => (next.has(wrapped.keyId) ? next.unwrap(wrapped) : previous.unwrap(wrapped)),
  };
}
