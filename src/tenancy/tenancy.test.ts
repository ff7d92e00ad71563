// Orgs and environments: the environments list paged like every list, org:admin to add one (the
// catalogue's word), creations racing with one slug or one name answered 409, and an org created
// with its admins in one transaction.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { ADMIN, type IdentityTestApp, identityTestApp } from '../identity/test-support.ts';

const PASS = 'tidal saffron beacon 31';

for (const { kind, skip } of STORES) {
  describe(`tenancy: environments and org creation (${kind})`, { skip }, () => {
    let t: IdentityTestApp;
    let admin: string;

    before(async () => {
      t = await identityTestApp(kind, { LOGIN_IP_MAX_FAILURES: '1000' });
      admin = (await t.tokensFor(ADMIN.email, ADMIN.password)).access_token;
    });
    after(() => t.close());

    /** A user of the default org holding a custom role made of `permissions`; their token. */
    const withPermissions = async (name: string, permissions: string[]) => {
      const role = await t.call('POST', '/v1/roles', { token: admin, body: { name, permissions } });
      assert.equal(role.statusCode, 201, role.body);
      const email = `${name}@example.com`;
      const user = await t.call('POST', '/v1/users', {
        token: admin,
        body: { email, password: PASS, roles: [name] },
      });
      assert.equal(user.statusCode, 201, user.body);
      return (await t.tokensFor(email, PASS)).access_token;
    };

    test('GET /v1/environments: pages of `limit` cover every environment once, oldest first', async () => {
      for (let i = 0; i < 4; i++) {
        const res = await t.call('POST', '/v1/environments', { token: admin, body: { name: `extra${i}` } });
        assert.equal(res.statusCode, 201, res.body);
      }
      const names: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const query: string = cursor ? `limit=2&cursor=${cursor}` : 'limit=2';
        const res = await t.call('GET', `/v1/environments?${query}`, { token: admin });
        assert.equal(res.statusCode, 200, res.body);
        const body = res.json() as { data: { name: string }[]; next_cursor: string | null };
        assert.ok(body.data.length <= 2);
        names.push(...body.data.map((e) => e.name));
        cursor = body.next_cursor;
        pages++;
      } while (cursor !== null && pages < 10);
      assert.deepEqual(names, [
        'development',
        'staging',
        'production',
        'extra0',
        'extra1',
        'extra2',
        'extra3',
      ]);
      assert.equal(pages, 4);
      const all = (await t.call('GET', '/v1/environments', { token: admin })).json();
      assert.equal(all.data.length, 7);
      assert.equal(all.next_cursor, null);
    });

    test('GET /v1/environments: unknown query fields, a bad limit and a forged cursor are refused (400)', async () => {
      for (const [query, code] of [
        ['foo=1', 'validation_failed'],
        ['limit=0', 'validation_failed'],
        ['limit=501', 'validation_failed'],
        ['cursor=abc', 'invalid_cursor'],
      ] as const) {
        const res = await t.call('GET', `/v1/environments?${query}`, { token: admin });
        assert.equal(res.statusCode, 400, `${query}: ${res.body}`);
        assert.equal(res.json().code, code, query);
      }
    });

    test('POST /v1/environments needs org:admin, as the catalogue says; org:update is not enough', async () => {
      const editor = await withPermissions('org-editor', ['org:read', 'org:update']);
      const refused = await t.call('POST', '/v1/environments', {
        token: editor,
        body: { name: 'by-editor' },
      });
      assert.equal(refused.statusCode, 403, refused.body);
      assert.equal(refused.json().code, 'permission_denied');
      assert.equal((await t.call('GET', '/v1/environments', { token: editor })).statusCode, 200);
      const orgAdmin = await withPermissions('org-admin', ['org:read', 'org:admin']);
      const made = await t.call('POST', '/v1/environments', { token: orgAdmin, body: { name: 'by-admin' } });
      assert.equal(made.statusCode, 201, made.body);
    });

    test('an org whose admin cannot be added is not created: no org without its admins', async () => {
      // A deactivated account: authz refuses a role to it, after the org's insert.
      const gone = await t.call('POST', '/v1/users', {
        token: admin,
        body: { email: 'gone@example.com', password: PASS },
      });
      assert.equal(gone.statusCode, 201, gone.body);
      assert.equal((await t.call('DELETE', `/v1/users/${gone.json().id}`, { token: admin })).statusCode, 204);
      const refused = await t.call('POST', '/v1/orgs', {
        token: admin,
        body: { slug: 'half-made', name: 'Half made', admin_user_id: gone.json().id },
      });
      assert.ok(refused.statusCode >= 400 && refused.statusCode < 500, refused.body);
      const orgs = (await t.call('GET', '/v1/orgs?limit=500', { token: admin })).json().data as {
        slug: string;
      }[];
      assert.ok(!orgs.some((o) => o.slug === 'half-made'), 'the org was left behind');
      const again = await t.call('POST', '/v1/orgs', {
        token: admin,
        body: { slug: 'half-made', name: 'Half made' },
      });
      assert.equal(again.statusCode, 201, again.body);
      const mine = await t.login(ADMIN.email, ADMIN.password, { org: 'half-made' });
      assert.equal(mine.statusCode, 200, 'the creator is its admin');
    });

    // On PGlite the transactions take turns, but the requests still interleave between statements.
    test('creations racing with one slug or one name: one 201, the others 409, never 500', async () => {
      const tally = (answers: { statusCode: number; body: string }[]) =>
        answers
          .map((a) => (a.statusCode === 201 ? '201' : `${a.statusCode} ${JSON.parse(a.body).code}`))
          .sort();
      for (let round = 0; round < 2; round++) {
        const slug = `contended-${round}`;
        const orgs = await Promise.all(
          Array.from({ length: 6 }, () =>
            t.call('POST', '/v1/orgs', { token: admin, body: { slug, name: slug } }),
          ),
        );
        assert.deepEqual(tally(orgs), ['201', ...Array(5).fill('409 org_slug_taken')]);
        const name = `contended${round}`;
        const envs = await Promise.all(
          Array.from({ length: 8 }, () =>
            t.call('POST', '/v1/environments', { token: admin, body: { name } }),
          ),
        );
        assert.deepEqual(tally(envs), ['201', ...Array(7).fill('409 environment_exists')]);
      }
    });
  });
}
