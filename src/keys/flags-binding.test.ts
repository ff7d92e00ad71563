// The flags environment a key is bound to (`metadata.flags_environment`, or `development` for a
// `stw_test_…` key) is one of its bounds, like its allowlist or expiry: a key acting on keys cannot
// make or leave a key less bound than itself. Before, a bound key minted an unbound child, emptied
// its own metadata, or (a test key) minted a live key, and read production's flags through it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { STORES } from '../../test/helpers/stores.ts';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

const KEY_SCOPES = ['api_keys:create', 'api_keys:update', 'api_keys:read', 'flags:read'];

for (const store of STORES) {
  describe(`a key's flags environment is one of its bounds (${store.kind})`, { skip: store.skip }, () => {
    let v: VaultTestApp;
    before(async () => {
      v = await vaultTestApp(store.kind);
      for (const env of ['development', 'production']) {
        const res = await v.req('POST', `/v1/flags/${env}`, {
          token: v.tokens.manager,
          body: { name: 'f', enabled: true, strategies: [] },
        });
        assert.equal(res.statusCode, 201, res.body);
      }
    });
    after(() => v?.close());

    type Made = { id: string; key: string; metadata: Record<string, unknown> };
    async function newKey(body: Record<string, unknown>, token = v.tokens.manager) {
      const res = await v.req('POST', '/v1/keys', {
        token,
        body: { name: 'k', scopes: KEY_SCOPES, tier: 'enterprise', ...body },
      });
      assert.equal(res.statusCode, 201, res.body);
      return res.json() as Made;
    }
    const reads = async (key: string, env: string) =>
      (await v.req('GET', `/v1/flags/${env}/f`, { token: key })).statusCode;
    const refused = (res: { statusCode: number; body: string; json(): unknown }) => {
      assert.equal(res.statusCode, 403, res.body);
      const body = res.json() as { code: string; field: string };
      assert.equal(body.code, 'key_bounds_exceeded', res.body);
      assert.equal(body.field, 'metadata.flags_environment');
    };

    test('a bound key mints only children bound to its environment (filled in when absent)', async () => {
      const parent = await newKey({ metadata: { flags_environment: 'development' } });
      const res = await v.req('POST', '/v1/keys', {
        token: parent.key,
        body: { name: 'child', scopes: ['flags:read'] },
      });
      assert.equal(res.statusCode, 201, res.body);
      const child = res.json() as Made;
      assert.deepEqual(child.metadata, { flags_environment: 'development' });
      assert.equal(await reads(child.key, 'production'), 403);
      assert.equal(await reads(child.key, 'development'), 200);
      // Other metadata is kept, the binding added.
      const noted = await v.req('POST', '/v1/keys', {
        token: parent.key,
        body: { name: 'noted', scopes: ['flags:read'], metadata: { team: 'a' } },
      });
      assert.deepEqual(noted.json().metadata, { team: 'a', flags_environment: 'development' });
      // Another environment, or a value that binds nothing, is refused; the same one is fine.
      for (const flags_environment of ['production', '', 7, null]) {
        refused(
          await v.req('POST', '/v1/keys', {
            token: parent.key,
            body: { name: 'x', scopes: ['flags:read'], metadata: { flags_environment } },
          }),
        );
      }
      const same = await v.req('POST', '/v1/keys', {
        token: parent.key,
        body: { name: 'same', scopes: ['flags:read'], metadata: { flags_environment: 'development' } },
      });
      assert.equal(same.statusCode, 201, same.body);
    });

    test('a bound key cannot unbind or move itself, nor its parent; other metadata still changes', async () => {
      const k = await newKey({ metadata: { flags_environment: 'development', team: 'a' } });
      for (const metadata of [{}, { flags_environment: 'production' }, { flags_environment: '' }]) {
        refused(await v.req('PATCH', `/v1/keys/${k.id}`, { token: k.key, body: { metadata } }));
      }
      assert.equal(await reads(k.key, 'production'), 403);
      const own = await v.req('PATCH', `/v1/keys/${k.id}`, {
        token: k.key,
        body: { name: 'renamed', metadata: { flags_environment: 'development', team: 'b' } },
      });
      assert.equal(own.statusCode, 200, own.body);
      // Its child (as loose as it, bar the binding) cannot unbind the parent either.
      const made = await v.req('POST', '/v1/keys', {
        token: k.key,
        body: { name: 'child', scopes: KEY_SCOPES, tier: 'enterprise' },
      });
      assert.equal(made.statusCode, 201, made.body);
      const child = made.json() as Made;
      refused(await v.req('PATCH', `/v1/keys/${k.id}`, { token: child.key, body: { metadata: {} } }));
      // Nor touch, nor roll (its secret would come back), an unbound key.
      const unbound = await newKey({});
      refused(await v.req('PATCH', `/v1/keys/${unbound.id}`, { token: k.key, body: { name: 'mine' } }));
      refused(
        await v.req('POST', `/v1/keys/${unbound.id}/roll`, { token: k.key, body: { grace_seconds: 0 } }),
      );
      // A user is not bounded: it moves or removes the binding.
      const byUser = await v.req('PATCH', `/v1/keys/${k.id}`, {
        token: v.tokens.manager,
        body: { metadata: {} },
      });
      assert.equal(byUser.statusCode, 200, byUser.body);
      assert.equal(await reads(k.key, 'production'), 200);
    });

    test('a test key mints no key beyond development: a live child is bound to development', async () => {
      const k = await newKey({ environment: 'test' });
      assert.match(k.key, /^stw_test_/);
      const res = await v.req('POST', '/v1/keys', {
        token: k.key,
        body: { name: 'live-child', scopes: ['flags:read'], environment: 'live' },
      });
      assert.equal(res.statusCode, 201, res.body);
      const child = res.json() as Made;
      assert.match(child.key, /^stw_live_/);
      assert.deepEqual(child.metadata, { flags_environment: 'development' });
      assert.equal(await reads(child.key, 'production'), 403);
      assert.equal(await reads(child.key, 'development'), 200);
      refused(
        await v.req('POST', '/v1/keys', {
          token: k.key,
          body: { name: 'x', scopes: ['flags:read'], metadata: { flags_environment: 'production' } },
        }),
      );
      // Naming development on itself changes nothing of its binding: allowed; another is not.
      const named = await v.req('PATCH', `/v1/keys/${k.id}`, {
        token: k.key,
        body: { metadata: { flags_environment: 'development' } },
      });
      assert.equal(named.statusCode, 200, named.body);
      refused(
        await v.req('PATCH', `/v1/keys/${k.id}`, {
          token: k.key,
          body: { metadata: { flags_environment: 'production' } },
        }),
      );
    });

    test('an unbound key is unaffected: it mints unbound keys and may bind itself', async () => {
      const k = await newKey({});
      const child = await v.req('POST', '/v1/keys', {
        token: k.key,
        body: { name: 'child', scopes: ['flags:read'] },
      });
      assert.equal(child.statusCode, 201, child.body);
      assert.deepEqual(child.json().metadata, {});
      const bind = await v.req('PATCH', `/v1/keys/${k.id}`, {
        token: k.key,
        body: { metadata: { flags_environment: 'development' } },
      });
      assert.equal(bind.statusCode, 200, bind.body);
      refused(await v.req('PATCH', `/v1/keys/${k.id}`, { token: k.key, body: { metadata: {} } }));
    });
  });
}
