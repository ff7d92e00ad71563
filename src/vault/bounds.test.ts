// Input PostgreSQL cannot take — an int4 out of range, a NUL in a query parameter — is a 400 from
// the route's schema, never a query that fails (a 500).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { STORES } from '../../test/helpers/stores.ts';
import { encodeCursor } from '../http/pagination.ts';
import { type VaultTestApp, vaultTestApp } from './test-support.ts';

const INT4_OVER = 2_147_483_648;

for (const { kind, skip } of STORES) {
  describe(`vault input bounds (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    let secretId = '';
    before(async () => {
      v = await vaultTestApp(kind);
      const created = await v.req('POST', '/v1/secrets', {
        token: v.tokens.admin,
        body: { name: 'BOUNDS', environment: 'development', value: 'v', tags: ['t'] },
      });
      assert.equal(created.statusCode, 201, created.body);
      secretId = created.json().id;
      const setting = await v.req('PUT', '/v1/settings/development/bounds', {
        token: v.tokens.admin,
        body: { value: 1, value_type: 'int', category: 'c' },
      });
      assert.equal(setting.statusCode, 201, setting.body);
    });
    after(() => v?.close());

    const refused = (res: LightMyRequestResponse, codes: string[], what: string) => {
      assert.equal(res.statusCode, 400, `${what}: ${res.body}`);
      assert.ok(codes.includes(res.json().code), `${what}: ${res.body}`);
    };

    test('version numbers beyond int4 are 400 validation_failed (reveal, rollbacks)', async () => {
      const admin = v.tokens.admin;
      for (const [what, url] of [
        ['secret reveal', `/v1/secrets/${secretId}/reveal`],
        ['secret rollback', `/v1/secrets/${secretId}/rollback`],
        ['setting rollback', '/v1/settings/development/bounds/rollback'],
      ] as const) {
        const over = await v.req('POST', url, { token: admin, body: { version: INT4_OVER } });
        refused(over, ['validation_failed'], what);
        assert.ok(
          over.json().errors.some((e: { path: string }) => e.path === 'body.version'),
          over.body,
        );
        // The largest int4 is a version that does not exist: 404, as any unknown version.
        const max = await v.req('POST', url, { token: admin, body: { version: INT4_OVER - 1 } });
        assert.equal(max.statusCode, 404, `${what}: ${max.body}`);
      }
    });

    test('version cursors beyond int4 are 400 invalid_cursor', async () => {
      const cursor = encodeCursor({ v: INT4_OVER });
      for (const url of [
        `/v1/secrets/${secretId}/versions?cursor=${cursor}`,
        `/v1/settings/development/bounds/history?cursor=${cursor}`,
      ]) {
        refused(await v.req('GET', url, { token: v.tokens.admin }), ['invalid_cursor'], url);
      }
    });

    test('a NUL in a query, path or cursor string is 400, never reaching SQL', async () => {
      const nul = ['validation_failed', 'unsupported_character'];
      for (const url of [
        '/v1/secrets?tag=%00',
        '/v1/secrets?tag=a%00b',
        '/v1/secrets?environment=%00',
        '/v1/settings/development?category=%00',
        '/v1/settings/dev%00',
        '/v1/settings/dev%00/bounds',
        `/v1/secrets?cursor=${encodeCursor({ id: 'sec_\u0000' })}`,
        `/v1/settings/development?cursor=${encodeCursor({ key: 'a\u0000' })}`,
      ]) {
        refused(await v.req('GET', url, { token: v.tokens.admin }), [...nul, 'invalid_cursor'], url);
      }
      const id = await v.req('GET', '/v1/secrets/sec_%00', { token: v.tokens.admin });
      assert.ok([400, 404].includes(id.statusCode), id.body);
      // The filters still work.
      const byTag = await v.req('GET', '/v1/secrets?tag=t', { token: v.tokens.admin });
      assert.deepEqual(
        byTag.json().data.map((s: { id: string }) => s.id),
        [secretId],
      );
      const byCategory = await v.req('GET', '/v1/settings/development?category=c', { token: v.tokens.admin });
      assert.equal(byCategory.json().data.length, 1);
    });
  });
}
