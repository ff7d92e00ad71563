// Two Steward instances on one PostgreSQL database with no bus between them (the worst case: the
// invalidation of a change never arrives): once an instance has answered a change, a reveal on
// the other never answers from the state before it, however warm its cache.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { postgresSkip } from '../../../test/helpers/postgres.ts';
import { buildApp } from '../../app.ts';
import { loadConfig } from '../../config.ts';
import { type DbHandle, openDatabase } from '../../db/client.ts';
import type { Principal } from '../../http/principal.ts';
import { type VaultTestApp, vaultTestApp } from '../test-support.ts';
import { type Access, createSecretService, type SecretService } from './service.ts';

const HOUR_MS = 3_600_000;

describe('secret reveals across two instances (PostgreSQL, no shared bus)', { skip: postgresSkip }, () => {
  let v: VaultTestApp;
  let dbB: DbHandle;
  let b: FastifyInstance;
  /** Instance B's secrets service: its reveal cache outlives the test, so only the check can refuse. */
  let onB: SecretService;
  let manager: Principal;
  let requests = 0;

  before(async () => {
    v = await vaultTestApp('postgres');
    const url = v.t.store.url;
    assert.ok(url);
    dbB = await openDatabase({ dataDir: 'unused', databaseUrl: url, poolSize: 5 });
    const a = v.t.app.steward;
    // Its own pool, caches and in-memory bus: nothing A publishes reaches it.
    b = await buildApp(loadConfig({ LOG_LEVEL: 'silent' }), { db: dbB, keyring: a.keyring, clock: a.clock });
    await b.ready();
    onB = createSecretService({
      db: dbB,
      keyring: a.keyring,
      audit: b.steward.audit,
      authz: b.steward.authz,
      tenancy: b.steward.tenancy,
      identity: b.steward.identity,
      clock: a.clock,
      cacheTtlMs: HOUR_MS,
    });
    const found = await b.steward.identity.authenticate(`Bearer ${v.tokens.manager}`);
    assert.ok(found);
    manager = found;
  });
  after(async () => {
    await b?.close();
    await dbB?.close();
    await v?.close();
  });

  const accessOn = (): Access => ({
    principal: manager,
    context: { ip: '127.0.0.1', userAgent: 'instance-b', sessionId: null, requestId: `req-b-${++requests}` },
    toolId: null,
  });
  /** A reveal on B: the value, or the refusal's code; and the request id it was recorded under. */
  const revealOnB = async (id: string) => {
    const access = accessOn();
    try {
      const out = await onB.reveal(access, id);
      return { value: out.value, version: out.version, code: null, requestId: access.context.requestId };
    } catch (error) {
      const code = (error as { code?: string }).code ?? String(error);
      return { value: null, version: null, code, requestId: access.context.requestId };
    }
  };
  /** The reveal's records: exactly one access-log row and one audit event per request. */
  const recordsOf = async (requestId: string) => {
    const logs = await v.t.store.db.query<{ success: boolean; error_code: string | null; version: number }>(
      `select success, error_code, version from secret_access_logs where request_id = $1`,
      [requestId],
    );
    const events = await v.t.store.db.query<{ success: boolean; details: { reason?: string } }>(
      `select success, details from audit_events where action = 'secret.revealed' and request_id = $1`,
      [requestId],
    );
    return { logs, events };
  };
  const secretOnA = async (name: string) => {
    const res = await v.req('POST', '/v1/secrets', {
      token: v.tokens.developer,
      body: { name, environment: 'development', value: `${name}-v1` },
    });
    assert.equal(res.statusCode, 201, res.body);
    const id: string = res.json().id;
    const warm = await revealOnB(id);
    assert.equal(warm.value, `${name}-v1`, 'B has the row cached');
    return id;
  };
  const onA = async (
    method: 'PATCH' | 'PUT' | 'DELETE',
    url: string,
    body?: unknown,
    token = v.tokens.admin,
  ) => {
    const res = await v.req(method, url, { token, body });
    assert.ok(res.statusCode === 200 || res.statusCode === 204, `${method} ${url}: ${res.body}`);
  };

  test('deactivated on A: refused on B at once, recorded once', async () => {
    const id = await secretOnA('CROSS_INACTIVE');
    await onA('PATCH', `/v1/secrets/${id}`, { active: false });
    const after = await revealOnB(id);
    assert.equal(after.code, 'secret_inactive', `B revealed ${after.value}`);
    const { logs, events } = await recordsOf(after.requestId);
    assert.deepEqual(
      logs.map((l) => [l.success, l.error_code]),
      [[false, 'secret_inactive']],
      'the stale grant was not recorded; the refusal was, once',
    );
    assert.deepEqual(
      events.map((e) => [e.success, e.details.reason]),
      [[false, 'secret_inactive']],
    );
  });

  test('a new value on A: B reveals the new version, never the old one', async () => {
    const id = await secretOnA('CROSS_VALUE');
    await onA('PUT', `/v1/secrets/${id}/value`, { value: 'CROSS_VALUE-v2' });
    const after = await revealOnB(id);
    assert.deepEqual([after.value, after.version], ['CROSS_VALUE-v2', 2]);
    const { logs, events } = await recordsOf(after.requestId);
    assert.deepEqual(
      logs.map((l) => [l.success, l.version]),
      [[true, 2]],
    );
    assert.equal(events.length, 1);
    // B's cache now holds the new row: it answers from it (the check passes) until the next change.
    assert.equal((await revealOnB(id)).value, 'CROSS_VALUE-v2');
  });

  test('deleted on A (204): 404 on B', async () => {
    const id = await secretOnA('CROSS_DELETED');
    await onA('DELETE', `/v1/secrets/${id}`);
    const after = await revealOnB(id);
    assert.equal(after.code, 'secret_not_found', `B revealed ${after.value}`);
    const { logs } = await recordsOf(after.requestId);
    assert.deepEqual(
      logs.map((l) => [l.success, l.error_code]),
      [[false, 'secret_not_found']],
    );
  });

  test('a required permission the caller lacks, set on A: 403 on B', async () => {
    const id = await secretOnA('CROSS_RESTRICTED');
    await onA('PATCH', `/v1/secrets/${id}`, { required_permission: 'secrets:admin' });
    const after = await revealOnB(id);
    assert.equal(after.code, 'permission_denied', `B revealed ${after.value}`);
  });

  test('reveals recorded together: only those decided on a changed row are decided again', async () => {
    const changed = await secretOnA('CROSS_BATCH_CHANGED');
    const same = await secretOnA('CROSS_BATCH_SAME');
    await onA('PUT', `/v1/secrets/${changed}/value`, { value: 'CROSS_BATCH_CHANGED-v2' });
    const answers = await Promise.all(
      Array.from({ length: 6 }, (_, i) => revealOnB(i % 2 === 0 ? changed : same)),
    );
    assert.deepEqual(
      answers.map((a) => a.value),
      Array.from({ length: 3 }, () => ['CROSS_BATCH_CHANGED-v2', 'CROSS_BATCH_SAME-v1']).flat(),
    );
    for (const a of answers) {
      const { logs, events } = await recordsOf(a.requestId);
      assert.deepEqual(
        logs.map((l) => [l.success, l.version]),
        [[true, a.version]],
        a.requestId,
      );
      assert.equal(events.length, 1, a.requestId);
    }
  });

  test('expired on A: 409 on B; reactivated and unexpired on A: B reveals again', async () => {
    const id = await secretOnA('CROSS_EXPIRED');
    const past = new Date(v.t.now.ms - 1000).toISOString();
    await onA('PATCH', `/v1/secrets/${id}`, { expires_at: past });
    assert.equal((await revealOnB(id)).code, 'secret_expired');
    // A refusal decided on a cached row is checked too: B does not keep refusing what A restored.
    await onA('PATCH', `/v1/secrets/${id}`, { expires_at: null });
    const again = await revealOnB(id);
    assert.equal(again.value, 'CROSS_EXPIRED-v1', `B answered ${again.code}`);
    const { logs } = await recordsOf(again.requestId);
    assert.deepEqual(
      logs.map((l) => l.success),
      [true],
    );
  });
});
