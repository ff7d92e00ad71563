import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { installTestPrincipals } from '../../test/helpers/app.ts';
import { openTestStore, type TestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { type DbHandle, openDatabase } from '../db/client.ts';
import { newId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';

const skip =
  process.env.DATABASE_URL && process.env.REDIS_URL
    ? false
    : 'DATABASE_URL and REDIS_URL are needed: two instances share a Postgres database and Redis';

describe('a change on one instance is honoured on another within 1 s', { skip }, () => {
  let store: TestStore;
  let secondDb: DbHandle;
  let a: FastifyInstance;
  let b: FastifyInstance;
  const principals: Record<string, Principal> = {};

  before(async () => {
    store = await openTestStore('postgres');
    secondDb = await openDatabase({ dataDir: 'unused', databaseUrl: store.url, poolSize: 5 });
    const keyring = createKeyring(randomBytes(32));
    const env = { LOG_LEVEL: 'silent', REDIS_URL: process.env.REDIS_URL ?? '' };
    a = await buildApp(loadConfig(env), { db: store.db, keyring });
    b = await buildApp(loadConfig({ ...env, DATABASE_URL: store.url ?? '' }), { db: secondDb, keyring });
    const orgId = (await a.steward.tenancy.createOrg({ slug: 'acme', name: 'Acme' })).id;
    const base = { orgId, kind: 'user' as const, roles: [], scopes: null };
    principals.root = { ...base, id: newId('usr'), name: 'Root', superuser: true };
    principals.alice = { ...base, id: newId('usr'), name: 'Alice', superuser: false };
    for (const app of [a, b]) {
      installTestPrincipals(app, principals);
      await app.ready();
      app.steward.authz.usePrincipalDirectory({
        find: async (org, id) =>
          Object.values(principals).find((p) => p.id === id && p.orgId === org) ?? null,
      });
    }
  });
  after(async () => {
    await b?.close();
    await a?.close();
    await secondDb?.close();
    await store?.dispose();
  });

  const call = (
    app: FastifyInstance,
    who: string,
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
    url: string,
    payload?: object,
  ) => app.inject({ method, url, headers: { 'x-test-principal': who }, ...(payload ? { payload } : {}) });

  /** Milliseconds until `alice` gets `expected` for secrets:reveal on instance B. */
  async function untilOnB(expected: boolean): Promise<number> {
    const start = performance.now();
    for (;;) {
      const res = await call(b, 'alice', 'POST', '/v1/authz/check', { permission: 'secrets:reveal' });
      if (res.json().allowed === expected) return performance.now() - start;
      if (performance.now() - start > 2_000) throw new Error(`instance B still says ${!expected}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  test('grant, revoke, assign and unassign made on A reach B', async () => {
    // Warm both indexes first: B must not merely be loading fresh from the database.
    assert.equal(
      (await call(b, 'alice', 'POST', '/v1/authz/check', { permission: 'secrets:reveal' })).json().allowed,
      false,
    );
    assert.equal(
      (await call(a, 'alice', 'POST', '/v1/authz/check', { permission: 'secrets:reveal' })).json().allowed,
      false,
    );
    assert.ok(b.steward.authz.cache.orgs().includes(principals.alice!.orgId));

    const grant = await call(a, 'root', 'POST', '/v1/authz/grants', {
      principal: principals.alice!.id,
      permission: 'secrets:reveal',
      resource_type: 'secrets',
      effect: 'allow',
    });
    assert.equal(grant.statusCode, 201, grant.body);
    // Read-your-writes on A, at once.
    assert.equal(
      (await call(a, 'alice', 'POST', '/v1/authz/check', { permission: 'secrets:reveal' })).json().allowed,
      true,
    );
    const granted = await untilOnB(true);
    assert.ok(granted < 1_000, `grant took ${granted} ms to reach B`);

    assert.equal((await call(a, 'root', 'DELETE', `/v1/authz/grants/${grant.json().id}`)).statusCode, 204);
    const revoked = await untilOnB(false);
    assert.ok(revoked < 1_000, `revoke took ${revoked} ms to reach B`);

    const ras = await call(a, 'root', 'POST', '/v1/role-assignments', {
      principal: principals.alice!.id,
      role: 'manager',
    });
    assert.equal(ras.statusCode, 201, ras.body);
    assert.ok((await untilOnB(true)) < 1_000);
    assert.equal((await call(a, 'root', 'DELETE', `/v1/role-assignments/${ras.json().id}`)).statusCode, 204);
    assert.ok((await untilOnB(false)) < 1_000);
  });

  test('a role edited on B changes checks on A', async () => {
    const role = await call(b, 'root', 'POST', '/v1/roles', { name: 'vault', permissions: ['secrets:read'] });
    assert.equal(role.statusCode, 201, role.body);
    await call(b, 'root', 'POST', '/v1/role-assignments', { principal: principals.alice!.id, role: 'vault' });
    const onA = async () =>
      (await call(a, 'alice', 'POST', '/v1/authz/check', { permission: 'secrets:reveal' })).json()
        .allowed as boolean;
    await call(b, 'root', 'PATCH', `/v1/roles/${role.json().id}`, {
      permissions: ['secrets:read', 'secrets:reveal'],
    });
    const start = performance.now();
    while (!(await onA())) {
      assert.ok(performance.now() - start < 1_000, 'role change did not reach A within 1 s');
      await new Promise((r) => setTimeout(r, 5));
    }
  });
});
