import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { encodeCursor } from '../http/pagination.ts';
import { fourEyesTestApp, type VaultTestApp } from './test-support.ts';

const CHANGES = 25;

for (const { kind, skip } of STORES) {
  describe(`GET /v1/vault/changes pages (${kind})`, { skip }, () => {
    let v: VaultTestApp;
    const ids: string[] = [];
    before(async () => {
      v = await fourEyesTestApp(kind);
      // The test clock stands still: every change below is requested in the same millisecond.
      for (let i = 0; i < CHANGES; i++) {
        const held = await v.req('PUT', `/v1/settings/production/same_ms_${i}`, {
          token: v.tokens.developer,
          body: { value: i, value_type: 'int' },
        });
        assert.equal(held.statusCode, 202, held.body);
        ids.push(held.json().change_id);
      }
    });
    after(() => v?.close());

    const walk = async (limit: number, status = '') => {
      const seen: string[] = [];
      let cursor: string | null = null;
      for (let pages = 0; pages < 100; pages++) {
        const query = `limit=${limit}${status}${cursor ? `&cursor=${cursor}` : ''}`;
        const res = await v.req('GET', `/v1/vault/changes?${query}`, { token: v.tokens.manager });
        assert.equal(res.statusCode, 200, res.body);
        const body = res.json() as { data: { id: string; created_at: string }[]; next_cursor: string | null };
        seen.push(...body.data.map((c) => c.id));
        cursor = body.next_cursor;
        if (cursor === null) break;
      }
      return seen;
    };

    test('changes sharing a millisecond: every one exactly once, at any page size', async () => {
      const all = await walk(500);
      const instants = new Set(
        (await v.req('GET', '/v1/vault/changes?limit=500', { token: v.tokens.manager }))
          .json()
          .data.map((c: { created_at: string }) => c.created_at),
      );
      assert.equal(instants.size, 1, 'the changes do share one millisecond');
      for (const limit of [1, 3, 7, 24, 25]) {
        const seen = await walk(limit);
        assert.equal(seen.length, CHANGES, `limit ${limit}: ${seen.length} seen`);
        assert.equal(new Set(seen).size, CHANGES, `limit ${limit}: no repeats`);
        assert.deepEqual(seen, all, `limit ${limit}: the same order`);
        assert.deepEqual([...seen].sort(), [...ids].sort());
      }
      assert.equal((await walk(4, '&status=pending')).length, CHANGES);
    });

    test('a cursor that is not one the API issued is 400 invalid_cursor, never a query', async () => {
      const at = new Date().toISOString();
      for (const cursor of [
        encodeCursor({ at: 'garbage' }),
        encodeCursor({ at: '2026-02-31T00:00:00.000Z' }),
        encodeCursor({ at: '2026-03-01T12:00:00Z' }),
        encodeCursor({ at: '-000001-01-01T00:00:00.000Z' }),
        encodeCursor({ at, id: 'chg_\u0000' }),
        encodeCursor({ at: 5 }),
      ]) {
        const res = await v.req('GET', `/v1/vault/changes?cursor=${cursor}`, { token: v.tokens.manager });
        assert.equal(res.statusCode, 400, `${Buffer.from(cursor, 'base64url')}: ${res.body}`);
        assert.equal(res.json().code, 'invalid_cursor');
      }
      // A cursor of the earlier form ({at} alone) still reads as "older than".
      const old = await v.req('GET', `/v1/vault/changes?cursor=${encodeCursor({ at })}`, {
        token: v.tokens.manager,
      });
      assert.equal(old.statusCode, 200, old.body);
    });

    test('a NUL in a change id is 400 (or 404), never a 500', async () => {
      for (const action of ['approve', 'reject']) {
        const res = await v.req('POST', `/v1/vault/changes/chg_%00/${action}`, { token: v.tokens.admin });
        assert.ok([400, 404].includes(res.statusCode), `${action}: ${res.statusCode} ${res.body}`);
      }
    });
  });
}
