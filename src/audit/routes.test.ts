import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { installTestPrincipals, type TestApp, testApp } from '../../test/helpers/app.ts';
import type { Principal } from '../http/principal.ts';

describe('audit and tenancy routes', () => {
  let t: TestApp;
  let alice: Principal; // superuser in org A
  let bob: Principal; // superuser in org B
  let carol: Principal; // org A, not allowed anything yet

  before(async () => {
    t = await testApp('pglite');
    const { tenancy } = t.app.steward;
    const orgA = await tenancy.createOrg({ slug: 'acme', name: 'Acme' });
    const orgB = await tenancy.createOrg({ slug: 'globex', name: 'Globex' });
    alice = {
      orgId: orgA.id,
      kind: 'user',
      id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA',
      name: 'Alice',
      roles: [],
      scopes: null,
      superuser: true,
    };
    bob = { ...alice, orgId: orgB.id, id: 'usr_01JBBBBBBBBBBBBBBBBBBBBBBB', name: 'Bob' };
    carol = { ...alice, id: 'usr_01JCCCCCCCCCCCCCCCCCCCCCCC', name: 'Carol', superuser: false };
    installTestPrincipals(t.app, { alice, bob, carol });
  });
  after(() => t.close());

  const as = (who: string, method: 'GET' | 'POST', url: string, payload?: unknown) =>
    t.app.inject({
      method,
      url,
      headers: { 'x-test-principal': who, 'user-agent': 'routes-test' },
      ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }),
    });

  test('an org starts with three environments, and more can be added (audited)', async () => {
    const list = await as('alice', 'GET', '/v1/environments');
    assert.deepEqual(
      list.json().data.map((e: { name: string }) => e.name),
      ['development', 'staging', 'production'],
    );
    const created = await as('alice', 'POST', '/v1/environments', { name: 'qa', description: 'Quality' });
    assert.equal(created.statusCode, 201);
    assert.match(created.json().id, /^env_/);
    const again = await as('alice', 'POST', '/v1/environments', { name: 'qa' });
    assert.equal(again.statusCode, 409);
    assert.equal(again.json().code, 'environment_exists');
    const bad = await as('alice', 'POST', '/v1/environments', { name: 'Bad Name!', extra: 1 });
    assert.equal(bad.statusCode, 400);
    assert.deepEqual(
      bad
        .json()
        .errors.map((e: { path: string }) => e.path)
        .sort(),
      ['body.extra', 'body.name'],
    );
    const events = await as('alice', 'GET', '/v1/audit/events?action=environment.created');
    const [event] = events.json().data;
    assert.equal(event.actor.id, alice.id);
    assert.equal(event.user_agent, 'routes-test');
    assert.deepEqual(event.changes, { after: { name: 'qa', description: 'Quality' } });
  });

  test('an org sees only its own org, environments and events', async () => {
    const orgA = await as('alice', 'GET', '/v1/org');
    const orgB = await as('bob', 'GET', '/v1/org');
    assert.equal(orgA.json().slug, 'acme');
    assert.equal(orgB.json().slug, 'globex');
    const bobEnvs = await as('bob', 'GET', '/v1/environments');
    assert.ok(!bobEnvs.json().data.some((e: { name: string }) => e.name === 'qa'));
    const bobEvents = await as('bob', 'GET', '/v1/audit/events?limit=500');
    assert.ok(bobEvents.json().data.every((e: { org_id: string }) => e.org_id === bob.orgId));
    // Filtering on another org's resource id finds nothing rather than leaking it.
    const envA = (await as('alice', 'GET', '/v1/environments')).json().data[0].id;
    const probe = await as('bob', 'GET', `/v1/audit/events?resource_id=${envA}`);
    assert.deepEqual(probe.json().data, []);
  });

  test('denied by default: a caller without audit:read gets 403', async () => {
    const res = await as('carol', 'GET', '/v1/audit/events');
    assert.equal(res.statusCode, 403);
    assert.equal(res.json().code, 'permission_denied');
    assert.equal((await t.app.inject({ method: 'GET', url: '/v1/audit/events' })).statusCode, 401);
  });

  test('cursor pagination walks every event once, newest first', async () => {
    for (let i = 0; i < 5; i++) await as('alice', 'POST', '/v1/environments', { name: `env${i}` });
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const url: string = `/v1/audit/events?limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = (await as('alice', 'GET', url)).json();
      seen.push(...page.data.map((e: { id: string }) => e.id));
      cursor = page.next_cursor;
    } while (cursor);
    assert.equal(new Set(seen).size, seen.length);
    assert.deepEqual([...seen].sort().reverse(), seen);
    const total = (await as('alice', 'GET', '/v1/audit/events?limit=500')).json().data.length;
    assert.equal(seen.length, total);
  });

  test('bad query parameters are 400s, never 500s', async () => {
    for (const query of [
      'limit=0',
      'limit=501',
      'limit=abc',
      'success=maybe',
      'since=yesterday',
      'actor_type=robot',
      'cursor=%%%',
      'cursor=eyJzIjoxfQ',
    ]) {
      const res = await as('alice', 'GET', `/v1/audit/events?${query}`);
      assert.equal(res.statusCode, 400, query);
      assert.ok(['validation_failed', 'invalid_cursor'].includes(res.json().code), query);
    }
  });

  test('a misspelt filter is a 400, not the whole trail (list and export)', async () => {
    for (const url of ['/v1/audit/events?actor=usr_x', '/v1/audit/export?format=csv&actor=usr_x']) {
      const res = await as('alice', 'GET', url);
      assert.equal(res.statusCode, 400, url);
      assert.equal(res.json().code, 'validation_failed', url);
      assert.deepEqual(
        res.json().errors.map((e: { path: string }) => e.path),
        ['querystring.actor'],
        url,
      );
    }
  });

  test('HEAD on the export neither runs it nor records an audit.exported event', async () => {
    const count = async () =>
      (await as('alice', 'GET', '/v1/audit/events?action=audit.exported&limit=500')).json().data.length;
    const before = await count();
    const head = await t.app.inject({
      method: 'HEAD',
      url: '/v1/audit/export?format=ndjson',
      headers: { 'x-test-principal': 'alice' },
    });
    assert.notEqual(head.statusCode, 200);
    assert.equal(await count(), before);
  });

  test('time-range and success filters', async () => {
    const future = await as('alice', 'GET', '/v1/audit/events?since=2999-01-01T00:00:00Z');
    assert.deepEqual(future.json().data, []);
    const past = await as('alice', 'GET', '/v1/audit/events?until=2000-01-01T00:00:00Z');
    assert.deepEqual(past.json().data, []);
    const failed = await as('alice', 'GET', '/v1/audit/events?success=false');
    assert.deepEqual(failed.json().data, []);
  });

  test('export streams NDJSON and CSV, and is itself audited', async () => {
    const ndjson = await as('alice', 'GET', '/v1/audit/export?format=ndjson');
    assert.equal(ndjson.statusCode, 200);
    assert.match(String(ndjson.headers['content-type']), /application\/x-ndjson/);
    const lines = ndjson.body
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.ok(lines.length >= 8);
    assert.ok(lines.every((e) => e.org_id === alice.orgId));
    const csv = await as('alice', 'GET', '/v1/audit/export?format=csv&action=environment.created');
    assert.match(String(csv.headers['content-type']), /text\/csv/);
    const rows = csv.body.trim().split('\r\n');
    assert.match(rows[0] ?? '', /^sequence,id,created_at,actor_type/);
    assert.equal(rows.length - 1, 6);
    const exported = await as('alice', 'GET', '/v1/audit/events?action=audit.exported');
    assert.equal(exported.json().data.length, 2);
    assert.equal((await as('alice', 'GET', '/v1/audit/export?format=xml')).statusCode, 400);
  });

  test('verify answers valid with the count, then detects tampering', async () => {
    await as('alice', 'POST', '/v1/environments', { name: 'verify-probe' });
    const total = (await as('alice', 'GET', '/v1/audit/events?limit=500')).json().data.length;
    // It verifies the caller's org and takes no body: naming another org is refused, not ignored.
    const other = await as('alice', 'POST', '/v1/audit/verify', { org_id: 'org_01JAAAAAAAAAAAAAAAAAAAAAAA' });
    assert.equal(other.statusCode, 400, other.body);
    assert.equal(other.json().code, 'validation_failed');
    assert.equal((await as('alice', 'POST', '/v1/audit/verify', {})).statusCode, 200);
    const ok = await as('alice', 'POST', '/v1/audit/verify');
    assert.equal(ok.statusCode, 200);
    const body = ok.json();
    assert.equal(body.valid, true, JSON.stringify(body));
    assert.equal(body.checked, total);
    assert.equal(body.first_bad_sequence, null);
    await t.store.db.query('alter table audit_events disable trigger audit_events_append_only');
    await t.store.db.query("update audit_events set actor_name = 'Mallory' where org_id = $1 and seq = 2", [
      alice.orgId,
    ]);
    await t.store.db.query('alter table audit_events enable trigger audit_events_append_only');
    const [edited] = await t.store.db.query<{ id: string }>(
      'select id from audit_events where org_id = $1 and seq = 2',
      [alice.orgId],
    );
    const bad = (await as('alice', 'POST', '/v1/audit/verify')).json();
    assert.deepEqual(bad, {
      valid: false,
      checked: 1,
      first_bad_sequence: 2,
      first_bad_event_id: edited?.id,
      reason: 'hash_mismatch',
    });
    // Bob's chain is untouched.
    assert.equal((await as('bob', 'POST', '/v1/audit/verify')).json().valid, true);
  });
});
