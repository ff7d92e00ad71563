import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { installTestPrincipals } from '../../test/helpers/app.ts';
import { openTestStore, STORES, type TestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { newId } from '../db/ids.ts';
import { encodeCursor } from '../http/pagination.ts';
import type { Principal } from '../http/principal.ts';
import { PERMISSIONS } from './catalogue.ts';

// The HTTP contract of the authz lists and writes: strict queries, a paged catalogue, one grant
// out of identical concurrent requests, and DELETE routes documented as the 204 they answer.
for (const { kind, skip } of STORES) {
  describe(`authz API contract on ${kind}`, { skip }, () => {
    let store: TestStore;
    let app: FastifyInstance;
    const p: Record<string, Principal> = {};

    before(async () => {
      store = await openTestStore(kind);
      app = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), {
        db: store.db,
        keyring: createKeyring(randomBytes(32)),
      });
      const org = (await app.steward.tenancy.createOrg({ slug: 'acme', name: 'Acme' })).id;
      for (const name of ['admin', 'target']) {
        p[name] = {
          orgId: org,
          kind: 'user',
          id: newId('usr'),
          name,
          roles: [],
          scopes: null,
          superuser: false,
        };
      }
      installTestPrincipals(app, p);
      await app.ready();
      app.steward.authz.usePrincipalDirectory({
        find: async (orgId, id) => Object.values(p).find((x) => x.id === id && x.orgId === orgId) ?? null,
      });
      const { authz, db } = app.steward;
      const { afterCommit } = await db.db.transaction((tx) =>
        authz.assignRoleInTx(tx, { orgId: org, principalId: p.admin!.id, role: 'admin', by: null }),
      );
      await afterCommit();
    });
    after(async () => {
      await app.close();
      await store.dispose();
    });

    const get = (url: string) => app.inject({ method: 'GET', url, headers: { 'x-test-principal': 'admin' } });

    test('identical grants requested at once: one is created, the others answer 409 grant_exists', async () => {
      const body = {
        principal: p.target!.id,
        permission: 'secrets:read',
        resource_type: 'secrets',
        resource_id: 'sec_race',
        effect: 'allow',
      };
      const answers = await Promise.all(
        Array.from({ length: 10 }, () =>
          app.inject({
            method: 'POST',
            url: '/v1/authz/grants',
            headers: { 'x-test-principal': 'admin' },
            payload: body,
          }),
        ),
      );
      const statuses = answers.map((a) => a.statusCode).sort();
      assert.deepEqual(statuses, [201, ...Array<number>(9).fill(409)], answers.map((a) => a.body).join('\n'));
      const created = answers.find((a) => a.statusCode === 201)!.json();
      for (const a of answers.filter((x) => x.statusCode === 409)) {
        assert.equal(a.json().code, 'grant_exists');
        assert.equal(a.json().grant_id, created.id);
      }
      const list = (await get(`/v1/authz/grants?principal=${p.target!.id}&resource_id=sec_race`)).json();
      assert.deepEqual(
        list.data.map((g: { id: string }) => g.id),
        [created.id],
      );
      // A grant differing only in effect is another grant, even at the same time.
      const both = await Promise.all(
        (['allow', 'deny'] as const).map((effect) =>
          app.inject({
            method: 'POST',
            url: '/v1/authz/grants',
            headers: { 'x-test-principal': 'admin' },
            payload: { ...body, resource_id: 'sec_two', effect },
          }),
        ),
      );
      assert.deepEqual(
        both.map((a) => a.statusCode),
        [201, 201],
      );
    });

    test('a misspelt filter on an authz list is a 400, not a silently unfiltered list', async () => {
      for (const url of [
        '/v1/authz/grants?principle=usr_none',
        '/v1/role-assignments?rolee=admin',
        '/v1/roles?sort=name',
        `/v1/authz/principals/${p.target!.id}/resources?permission=secrets:read&resource=secrets`,
        '/v1/authz/permissions?resource=secrets',
      ]) {
        const res = await get(url);
        assert.equal(res.statusCode, 400, `${url}: ${res.body}`);
        assert.equal(res.json().code, 'validation_failed', url);
      }
      // The real names still work.
      assert.equal((await get('/v1/authz/grants?principal=usr_none')).json().data.length, 0);
      assert.equal((await get('/v1/role-assignments?role=admin')).json().data.length, 1);
    });

    test('the permission catalogue is paged like every list', async () => {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const url: string = `/v1/authz/permissions?limit=10${cursor ? `&cursor=${cursor}` : ''}`;
        const res = await get(url);
        assert.equal(res.statusCode, 200, res.body);
        const page = res.json();
        assert.ok(page.data.length <= 10);
        seen.push(...page.data.map((x: { permission: string }) => x.permission));
        cursor = page.next_cursor;
        pages++;
      } while (cursor);
      assert.deepEqual(
        seen,
        PERMISSIONS.map((x) => x.permission),
      );
      assert.equal(pages, Math.ceil(PERMISSIONS.length / 10));
      const whole = (await get('/v1/authz/permissions?limit=500')).json();
      assert.equal(whole.data.length, PERMISSIONS.length);
      assert.equal(whole.next_cursor, null);
      assert.equal((await get('/v1/authz/permissions')).json().data.length, Math.min(50, PERMISSIONS.length));
      for (const [query, code] of [
        ['cursor=abc', 'invalid_cursor'],
        [`cursor=${encodeCursor({ permission: 'nope:read' })}`, 'invalid_cursor'],
        ['limit=0', 'validation_failed'],
        ['limit=501', 'validation_failed'],
      ]) {
        const res = await get(`/v1/authz/permissions?${query}`);
        assert.equal(res.statusCode, 400, query);
        assert.equal(res.json().code, code, query);
      }
    });

    test('the DELETE routes are documented as the 204 they answer', async () => {
      const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json();
      for (const path of ['/v1/roles/{id}', '/v1/role-assignments/{id}', '/v1/authz/grants/{id}']) {
        const responses = doc.paths[path]?.delete?.responses ?? {};
        assert.ok('204' in responses, `${path}: ${JSON.stringify(responses)}`);
        assert.ok(!('200' in responses), `${path}: ${JSON.stringify(responses)}`);
      }
      const list = doc.paths['/v1/authz/permissions'].get;
      assert.deepEqual(list.parameters.map((x: { name: string }) => x.name).sort(), ['cursor', 'limit']);
    });
  });
}
