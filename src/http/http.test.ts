import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { sql } from 'drizzle-orm';
import type { FastifyInstance } from 'fastify';
import { Webhook } from 'standardwebhooks';
import { z } from 'zod';
import { installTestPrincipals, type TestApp, testApp } from '../../test/helpers/app.ts';
import { ADMIN, type IdentityTestApp, identityTestApp, totpAt } from '../identity/test-support.ts';
import type { Principal } from './principal.ts';

const root: Principal = {
  orgId: 'org_01JAAAAAAAAAAAAAAAAAAAAAAA',
  kind: 'user',
  id: 'usr_01JAAAAAAAAAAAAAAAAAAAAAAA',
  name: 'Root',
  roles: ['admin'],
  scopes: null,
  superuser: true,
};
const plain: Principal = { ...root, id: 'usr_01JBBBBBBBBBBBBBBBBBBBBBBB', name: 'Plain', superuser: false };

/** Test-only routes exercising the plumbing: a validated body, a crash, a slow answer. */
function addProbeRoutes(app: FastifyInstance) {
  installTestPrincipals(app, { root, plain });
  app.post(
    '/v1/probe/echo',
    {
      config: { access: 'authenticated' },
      schema: {
        body: z.strictObject({
          name: z.string().min(1),
          count: z.number().int().min(0),
          tags: z.array(z.string().max(5)).optional(),
        }),
      },
    },
    async (request) => request.body,
  );
  app.get('/v1/probe/boom', { config: { access: 'public' } }, async () => {
    throw new Error('select password from users -- secret detail');
  });
  app.get('/v1/probe/admin', { config: { access: { permission: 'org:admin' } } }, async () => ({ ok: true }));
  // Body-less routes: no body schema at all, and identity's style (`{}` or nothing).
  const seen = async (request: { body: unknown }) => ({ body: request.body ?? null });
  app.post('/v1/probe/nobody', { config: { access: 'public' } }, seen);
  app.delete('/v1/probe/nobody', { config: { access: 'public' } }, seen);
  app.post(
    '/v1/probe/optional',
    { config: { access: 'public' }, schema: { body: z.strictObject({}).nullish() } },
    seen,
  );
  app.get(
    '/v1/probe/items/:id',
    { config: { access: 'public' }, schema: { params: z.object({ id: z.string() }) } },
    async (request) => request.params,
  );
}

/** Sends raw bytes to a listening app and returns everything it answers before closing. */
function rawExchange(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.end(request);
  });
}

describe('HTTP plumbing', () => {
  let t: TestApp;
  before(async () => {
    t = await testApp('pglite', { BODY_LIMIT_BYTES: '2048' }, addProbeRoutes);
  });
  after(() => t.close());

  const echo = (payload: string, headers: Record<string, string> = {}) =>
    t.app.inject({
      method: 'POST',
      url: '/v1/probe/echo',
      payload,
      headers: { 'content-type': 'application/json', 'x-test-principal': 'root', ...headers },
    });

  function assertProblem(
    res: { statusCode: number; headers: Record<string, unknown>; body: string },
    status: number,
    code: string,
  ) {
    assert.equal(res.statusCode, status, res.body);
    assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
    const body = JSON.parse(res.body);
    assert.equal(body.status, status);
    assert.equal(body.code, code);
    assert.equal(typeof body.title, 'string');
    assert.equal(typeof body.detail, 'string');
    assert.match(body.type, /^https:\/\/steward\.dev\/problems\//);
    assert.equal(body.request_id, res.headers['x-request-id']);
    assert.doesNotMatch(res.body, /at .*\.ts:\d+|stack/i, 'no stack trace');
    return body;
  }

  test('a valid body passes', async () => {
    const res = await echo(JSON.stringify({ name: 'a', count: 1 }));
    assert.equal(res.statusCode, 200);
    assert.deepEqual(JSON.parse(res.body), { name: 'a', count: 1 });
  });

  test('malformed JSON → 400 invalid_json', async () => {
    assertProblem(await echo('{"name": "a",'), 400, 'invalid_json');
    assertProblem(await echo(''), 400, 'invalid_json');
  });

  test('a NUL or an unpaired surrogate anywhere in a JSON body → 400 unsupported_character, handler not run', async () => {
    const refused: [string, RegExp][] = [
      ['{"name":"a\\u0000b","count":1}', /^body\.name: contains U\+0000/],
      [
        '{"name":"x","count":1,"tags":["ok","\\ud800"]}',
        /^body\.tags\.1: contains an unpaired surrogate \(\\ud800\)/,
      ],
      ['{"name":"\\uDFFFx","count":1}', /^body\.name: .*unpaired surrogate \(\\udfff\)/],
      ['{"name":"\\udc00\\ud800","count":1}', /^body\.name: .*unpaired surrogate/],
      ['{"name":"x","count":1,"meta":{"k\\u0000":1}}', /^body\.meta \(a key\): contains U\+0000/],
    ];
    for (const [payload, detail] of refused) {
      // Refused by the parser, before validation: the unknown `meta` field is never reached.
      const body = assertProblem(await echo(payload), 400, 'unsupported_character');
      assert.match(body.detail, detail, payload);
    }
    // A raw NUL is not JSON at all.
    assertProblem(await echo('{"name":"a\u0000b","count":1}'), 400, 'invalid_json');
    // A surrogate pair written as escapes is one character; an escaped backslash is no escape.
    const pair = await echo('{"name":"\\ud83d\\ude00","count":1}');
    assert.equal(pair.statusCode, 200, pair.body);
    assert.equal(pair.json().name, '\u{1F600}');
    const literal = await echo('{"name":"\\\\u0000 \\\\ud800","count":1}');
    assert.equal(literal.statusCode, 200, literal.body);
    assert.equal(literal.json().name, '\\u0000 \\ud800');
  });

  test('a number no double holds (1e400) anywhere in a JSON body → 400 number_out_of_range, naming the top-level member only', async () => {
    // Before, JSON.parse read it as Infinity and it was stored as null: secret and key metadata,
    // flag payloads, settings values answered 201 for a value they did not keep.
    const refused: [string, RegExp][] = [
      ['{"name":"a","count":1e400}', /^body\.count: holds numbers beyond ±1\.8e308/],
      ['{"name":"a","count":1,"meta":{"deep":[1,{"n":-1e999}]}}', /^body\.meta: /],
      [`{"name":"a","count":1,"meta":${'9'.repeat(400)}}`, /^body\.meta: /],
      ['[1e400]', /^body: /],
    ];
    for (const [payload, detail] of refused) {
      const body = assertProblem(await echo(payload), 400, 'number_out_of_range');
      assert.match(body.detail, detail, payload);
      assert.doesNotMatch(body.detail, /deep|\bn\b/, 'nothing below the top-level member');
    }
    // Strings that merely look huge pass the check; large finite numbers reach validation.
    for (const payload of ['{"name":"1e400 9e999","count":1}', `{"name":"${'9'.repeat(400)}","count":1}`]) {
      const res = await echo(payload);
      assert.equal(res.statusCode, 200, `${payload.slice(0, 40)}: ${res.body}`);
    }
    for (const payload of ['{"name":"a","count":1.7e308}', '{"name":"a","count":-5e-324}']) {
      assertProblem(await echo(payload), 400, 'validation_failed');
    }
  });

  test('a body nested deeper than 64 levels → 400 json_too_deep before parsing; 64 levels and brackets in strings pass', async () => {
    const nested = (levels: number, open: string, close: string) =>
      `{"name":"a","count":1,"tags":${open.repeat(levels - 1)}${close.repeat(levels - 1)}}`;
    // The body object is level 1: 65 in all is one too many, in arrays or in objects.
    const deepArrays = nested(65, '[', ']');
    const deepObjects = `{"name":"a","count":1,"tags":${'{"k":'.repeat(64)}1${'}'.repeat(64)}}`;
    for (const payload of [deepArrays, deepObjects]) {
      const body = assertProblem(await echo(payload), 400, 'json_too_deep');
      assert.match(body.detail, /at most 64 levels/);
    }
    // 64 levels reach validation (the tags are not strings), as does malformed JSON within the limit.
    assertProblem(await echo(nested(64, '[', ']')), 400, 'validation_failed');
    // Brackets inside strings, escaped quotes included, are text, not nesting.
    const inStrings = JSON.stringify({ name: `"\${'[{'.repeat(300)}`, count: 1 });
    const res = await echo(inStrings);
    assert.equal(res.statusCode, 200, res.body);
    // Many openers side by side are no depth: 100 sibling arrays pass the check.
    const siblings = `{"name":"a","count":1,"tags":[${Array(100).fill('[]').join(',')}]}`;
    assertProblem(await echo(siblings), 400, 'validation_failed');
  });

  test('an empty JSON body is no body where the route takes none; refused where it needs one', async () => {
    const send = (method: 'POST' | 'DELETE', url: string, payload?: string) =>
      t.app.inject({ method, url, payload, headers: { 'content-type': 'application/json' } });
    for (const [method, url] of [
      ['POST', '/v1/probe/nobody'],
      ['DELETE', '/v1/probe/nobody'],
      ['POST', '/v1/probe/optional'],
    ] as const) {
      const empty = await send(method, url, '');
      assert.equal(empty.statusCode, 200, `${method} ${url}: ${empty.body}`);
      assert.deepEqual(empty.json(), { body: null });
      const object = await send(method, url, '{}');
      assert.equal(object.statusCode, 200, object.body);
      assert.deepEqual(object.json(), { body: {} });
    }
    // A route whose schema needs a body says so.
    const body = assertProblem(await echo(''), 400, 'invalid_json');
    assert.match(body.detail, /empty/);
    // Malformed JSON on a body-less route is still malformed.
    assertProblem(await send('POST', '/v1/probe/nobody', '{'), 400, 'invalid_json');
  });

  test('an over-long path parameter → 414 uri_too_long, a malformed URL → 400 bad_request (problem+json)', async () => {
    const ok = await t.app.inject({ method: 'GET', url: `/v1/probe/items/${'a'.repeat(90)}` });
    assert.equal(ok.statusCode, 200, ok.body);
    const long = await t.app.inject({ method: 'GET', url: `/v1/probe/items/${'a'.repeat(500)}` });
    const problem = assertProblem(long, 414, 'uri_too_long');
    assert.doesNotMatch(JSON.stringify(problem), /aaaa/, 'the path is not echoed');
    assert.equal(long.headers['x-content-type-options'], 'nosniff');
    assertProblem(await t.app.inject({ method: 'GET', url: '/v1/probe/items/%zz' }), 400, 'bad_request');
  });

  test("the HTTP parser's refusals (431, 400) leave as problem+json too (real socket)", async () => {
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const port = (t.app.server.address() as { port: number }).port;
    const parse = (raw: string) => {
      const [head = '', body = ''] = raw.split('\r\n\r\n');
      const headers = Object.fromEntries(
        head
          .split('\r\n')
          .slice(1)
          .map((line) => [
            line.slice(0, line.indexOf(':')).toLowerCase(),
            line.slice(line.indexOf(':') + 1).trim(),
          ]),
      );
      return { statusCode: Number(head.split(' ')[1]), headers, body };
    };
    const big = parse(
      await rawExchange(port, `GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`),
    );
    const problem = assertProblem(big, 431, 'headers_too_large');
    assert.match(problem.request_id, /\S/);
    assert.equal(big.headers.connection, 'close');
    assertProblem(parse(await rawExchange(port, 'NOT HTTP AT ALL\r\n\r\n')), 400, 'bad_request');
    // The server still answers afterwards.
    assert.match(
      await rawExchange(port, 'GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'),
      /^HTTP\/1\.1 200/,
    );
  });

  test('schema violation → 400 validation_failed with the field paths', async () => {
    const body = assertProblem(
      await echo(JSON.stringify({ name: 7, count: -1, tags: ['ok', 'toolong'] })),
      400,
      'validation_failed',
    );
    const paths = body.errors.map((e: { path: string }) => e.path).sort();
    assert.deepEqual(paths, ['body.count', 'body.name', 'body.tags.1']);
  });

  test('missing required field is named', async () => {
    const body = assertProblem(await echo(JSON.stringify({ name: 'x' })), 400, 'validation_failed');
    assert.deepEqual(
      body.errors.map((e: { path: string }) => e.path),
      ['body.count'],
    );
  });

  test('unknown body fields are rejected, each named', async () => {
    const body = assertProblem(
      await echo(JSON.stringify({ name: 'a', count: 1, admin: true, x: 1 })),
      400,
      'validation_failed',
    );
    assert.deepEqual(body.errors.map((e: { path: string }) => e.path).sort(), ['body.admin', 'body.x']);
  });

  test('body over the limit → 413 payload_too_large', async () => {
    assertProblem(await echo(JSON.stringify({ name: 'a'.repeat(5000), count: 1 })), 413, 'payload_too_large');
  });

  test('unsupported media type → 415', async () => {
    const res = await t.app.inject({
      method: 'POST',
      url: '/v1/probe/echo',
      payload: 'name=a',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-test-principal': 'root' },
    });
    assertProblem(res, 415, 'unsupported_media_type');
  });

  test('text/plain → 415 as well (Fastify parses it by default; we do not)', async () => {
    for (const type of ['text/plain', 'text/plain; charset=utf-8']) {
      const res = await t.app.inject({
        method: 'POST',
        url: '/v1/probe/echo',
        payload: JSON.stringify({ name: 'a', count: 1 }),
        headers: { 'content-type': type, 'x-test-principal': 'root' },
      });
      assertProblem(res, 415, 'unsupported_media_type');
    }
  });

  test('a JSON body declared in a charset other than UTF-8 → 415 unsupported_media_type, handler not run', async () => {
    // {"name":"café","count":1} in Latin-1: é is the single byte 0xE9 (not UTF-8).
    const latin1 = Buffer.concat([
      Buffer.from('{"name":"caf'),
      Buffer.from([0xe9]),
      Buffer.from('","count":1}'),
    ]);
    for (const type of [
      'application/json; charset=iso-8859-1',
      'application/json;charset=ISO-8859-1',
      'application/json; charset="latin1"',
      'application/json; charset=utf-16',
      'application/json; charset=',
    ]) {
      const body = assertProblem(
        await echo(latin1 as unknown as string, { 'content-type': type }),
        415,
        'unsupported_media_type',
      );
      assert.match(body.detail, /UTF-8/, type);
    }
    // Declared in another charset, even when the bytes happen to be ASCII.
    assertProblem(
      await echo('{"name":"a","count":1}', { 'content-type': 'application/json; charset=us-ascii' }),
      415,
      'unsupported_media_type',
    );
    const utf8 = JSON.stringify({ name: 'café', count: 1 });
    for (const type of [
      'application/json',
      'application/json; charset=utf-8',
      'application/json; charset=UTF-8',
      'application/json;charset=utf8',
      'application/json; charset="utf-8"',
      'application/json; foo=bar',
    ]) {
      const res = await echo(utf8, { 'content-type': type });
      assert.equal(res.statusCode, 200, `${type}: ${res.body}`);
      assert.equal(res.json().name, 'café', type);
    }
  });

  test('a known path asked with another method → 405 method_not_allowed with Allow; unknown paths stay 404', async () => {
    const cases: [string, string, string][] = [
      ['PUT', '/v1/probe/echo', 'POST'],
      ['GET', '/v1/probe/echo?x=1', 'POST'],
      ['DELETE', '/v1/probe/items/abc', 'GET, HEAD'],
      ['PATCH', '/v1/probe/nobody', 'POST, DELETE'],
      ['PUT', '/v1/roles', 'GET, HEAD, POST'],
    ];
    for (const [method, url, allow] of cases) {
      const res = await t.app.inject({
        method: method as 'PUT',
        url,
        headers: { 'x-test-principal': 'root' },
      });
      const body = assertProblem(res, 405, 'method_not_allowed');
      assert.equal(res.headers.allow, allow, `${method} ${url}`);
      assert.equal(body.detail, `This path answers ${allow}`);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
    }
    // Anonymous too: the router answers before any route's access check, and says nothing of a resource.
    assert.equal(
      (await t.app.inject({ method: 'PUT', url: '/v1/roles/rol_does_not_exist' })).headers.allow,
      'GET, HEAD, PATCH, DELETE',
    );
    for (const [method, url] of [
      ['PUT', '/v1/nothing-here'],
      ['GET', '/v1/probe/items/a/b'],
      // HEAD and OPTIONS keep their 404 (HEAD routes are Fastify's; OPTIONS is CORS's).
      ['HEAD', '/v1/probe/echo'],
      ['OPTIONS', '/v1/probe/echo'],
    ] as const) {
      const res = await t.app.inject({ method, url });
      assert.equal(res.statusCode, 404, `${method} ${url}`);
      assert.equal(res.headers.allow, undefined, `${method} ${url}`);
    }
    const metrics = (await t.app.inject({ method: 'GET', url: '/metrics' })).body;
    assert.match(
      metrics,
      /steward_http_requests_total\{method="PUT",route="\(unmatched\)",status_code="405"\} \d+/,
    );
  });

  test('unknown route → 404 not_found, path not echoed', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/v1/nothing-here?token=stw_live_secret' });
    const body = assertProblem(res, 404, 'not_found');
    assert.doesNotMatch(JSON.stringify(body), /stw_live_secret/);
  });

  test('an unexpected error → 500 that says nothing specific', async () => {
    const res = await t.app.inject({ method: 'GET', url: '/v1/probe/boom' });
    const body = assertProblem(res, 500, 'internal_error');
    assert.doesNotMatch(res.body, /password|select|secret/i);
    assert.equal(body.detail, 'An unexpected error occurred');
  });

  test('no credentials → 401 before the body is even validated', async () => {
    const res = await echo('{not json', { 'x-test-principal': 'nobody' });
    assertProblem(res, 401, 'unauthenticated');
    assert.equal(res.headers['www-authenticate'], 'Bearer realm="steward"', 'RFC 6750 §3: no error');
  });

  test('a refused bearer token → 401 with WWW-Authenticate error="invalid_token"', async () => {
    const invalid = 'Bearer realm="steward", error="invalid_token"';
    const get = (headers: Record<string, string>) =>
      t.app.inject({ method: 'GET', url: '/v1/probe/admin', headers });
    const cases: [Record<string, string>, string, string][] = [
      [{ authorization: 'Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln' }, 'token_invalid', invalid],
      [{ authorization: 'bearer not-a-token-at-all' }, 'unauthenticated', invalid],
      [{ authorization: 'Bearer stw_live_000000000000000000000000' }, '', invalid],
      [{ 'x-api-key': 'stw_live_000000000000000000000000' }, '', 'Bearer realm="steward"'],
      [{ authorization: 'Basic dXNlcjpwYXNz' }, 'unauthenticated', 'Bearer realm="steward"'],
    ];
    for (const [headers, code, challenge] of cases) {
      const res = await get(headers);
      assert.equal(res.statusCode, 401, `${JSON.stringify(headers)}: ${res.body}`);
      if (code) assert.equal(res.json().code, code);
      assert.equal(res.headers['www-authenticate'], challenge, JSON.stringify(headers));
    }
    // Not on other statuses; a public route's 401 gets the plain challenge (a login refusal is not
    // a token's), even with a bearer token sent along: the table below has every kind.
    assert.equal((await get({ 'x-test-principal': 'plain' })).headers['www-authenticate'], undefined);
    const login = await t.app.inject({
      method: 'POST',
      url: '/v1/auth/login',
      headers: { authorization: 'Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln' },
      payload: { email: 'nobody@example.com', password: 'not the password' },
    });
    assert.equal(login.statusCode, 401);
    assert.equal(login.headers['www-authenticate'], 'Bearer realm="steward"');
  });

  test('a caller without the permission → 403 permission_denied', async () => {
    const res = await t.app.inject({
      method: 'GET',
      url: '/v1/probe/admin',
      headers: { 'x-test-principal': 'plain' },
    });
    const body = assertProblem(res, 403, 'permission_denied');
    assert.equal(body.permission, 'org:admin');
    const ok = await t.app.inject({
      method: 'GET',
      url: '/v1/probe/admin',
      headers: { 'x-test-principal': 'root' },
    });
    assert.equal(ok.statusCode, 200);
  });

  test('request id: a plain one is echoed, a hostile one replaced', async () => {
    const kept = await t.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { 'x-request-id': 'abc-123' },
    });
    assert.equal(kept.headers['x-request-id'], 'abc-123');
    const replaced = await t.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { 'x-request-id': 'a b<script>' },
    });
    // Generated: <64 random bits of this instance, base32>-<counter, base36>.
    const GENERATED = /^([0-9a-v]{13})-([0-9a-z]+)$/;
    const fromHostile = GENERATED.exec(String(replaced.headers['x-request-id']));
    assert.ok(fromHostile, String(replaced.headers['x-request-id']));
    const generated = await t.app.inject({ method: 'GET', url: '/healthz' });
    const fresh = GENERATED.exec(String(generated.headers['x-request-id']));
    assert.ok(fresh, String(generated.headers['x-request-id']));
    assert.equal(fresh[1], fromHostile[1], 'one instance part per process');
    assert.ok(
      Number.parseInt(fresh[2] as string, 36) > Number.parseInt(fromHostile[2] as string, 36),
      'the counter moves on',
    );
  });

  test('security headers on API responses, not on the ops probes', async () => {
    const probe = await t.app.inject({ method: 'GET', url: '/healthz' });
    assert.equal(probe.headers['content-security-policy'], undefined);
    assert.ok(probe.headers['x-request-id']);
    const res = await t.app.inject({ method: 'GET', url: '/v1/nothing-here' });
    assert.equal(res.headers['x-content-type-options'], 'nosniff');
    assert.equal(res.headers['content-security-policy'], "default-src 'none'; frame-ancestors 'none'");
    assert.equal(res.headers['cache-control'], 'no-store');
  });

  test('a route that declares no access refuses to register', async () => {
    const extra = await testApp('pglite', { LOG_LEVEL: 'silent' }, (app) => {
      app.get('/v1/undeclared', async () => ({}));
    }).then(
      (made) => made.close().then(() => null),
      (error: Error) => error,
    );
    assert.ok(extra instanceof Error);
    assert.match(extra.message, /declares no access/);
  });

  test('/healthz, /readyz and /metrics', async () => {
    const health = await t.app.inject({ method: 'GET', url: '/healthz' });
    assert.deepEqual(JSON.parse(health.body), { status: 'ok' });
    const ready = await t.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 200);
    const body = JSON.parse(ready.body);
    assert.equal(body.status, 'ready');
    assert.equal(body.migrations.current, true);
    const metrics = await t.app.inject({ method: 'GET', url: '/metrics' });
    assert.match(
      metrics.body,
      /steward_http_requests_total\{method="GET",route="\/healthz",status_code="200"\} \d+/,
    );
    assert.match(
      metrics.body,
      /steward_http_request_duration_seconds_bucket\{le="0.001",method="GET",route="\/healthz"\}/,
    );
  });

  test('every reply is counted under its route template and method, errors and 404s included', async () => {
    const count = async (series: string) => {
      const text = (await t.app.inject({ method: 'GET', url: '/metrics' })).body;
      const line = text.split('\n').find((l) => l.startsWith(`steward_http_requests_total{${series}} `));
      return line === undefined ? 0 : Number(line.split(' ')[1]);
    };
    const unmatched = 'method="GET",route="(unmatched)",status_code="404"';
    const refused = 'method="GET",route="/v1/probe/admin",status_code="401"';
    const head = 'method="HEAD",route="/healthz",status_code="200"';
    const before = [await count(unmatched), await count(refused), await count(head)];

    const missing = await t.app.inject({ method: 'GET', url: '/v1/nothing-here/at-all' });
    assert.equal(missing.statusCode, 404);
    const anonymous = await t.app.inject({ method: 'GET', url: '/v1/probe/admin' });
    assert.equal(anonymous.statusCode, 401);
    // An error reply of a route carries the same headers as its successes.
    assert.equal(anonymous.headers['x-content-type-options'], 'nosniff');
    assert.equal(anonymous.headers['cache-control'], 'no-store');
    assert.equal(JSON.parse(anonymous.body).request_id, anonymous.headers['x-request-id']);
    const probe = await t.app.inject({ method: 'HEAD', url: '/healthz' });
    assert.equal(probe.statusCode, 200);
    assert.ok(probe.headers['x-request-id']);

    assert.deepEqual(
      [await count(unmatched), await count(refused), await count(head)],
      before.map((n) => n + 1),
    );
  });

  test('/readyz reports pending migrations as 503', async () => {
    await t.store.db.query(
      'delete from drizzle.__drizzle_migrations where id = (select max(id) from drizzle.__drizzle_migrations)',
    );
    const ready = await t.app.inject({ method: 'GET', url: '/readyz' });
    assert.equal(ready.statusCode, 503);
    assert.equal(JSON.parse(ready.body).status, 'migrations_pending');
  });
});

describe('CORS', () => {
  test('off by default; on for the configured origins only', async () => {
    const off = await testApp('pglite');
    const none = await off.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { origin: 'https://app.example' },
    });
    assert.equal(none.headers['access-control-allow-origin'], undefined);
    await off.close();
    const on = await testApp('pglite', { CORS_ORIGINS: 'https://app.example' });
    const preflight = await on.app.inject({
      method: 'OPTIONS',
      url: '/v1/audit/events',
      headers: { origin: 'https://app.example', 'access-control-request-method': 'GET' },
    });
    assert.equal(preflight.statusCode, 204);
    assert.equal(preflight.headers['access-control-allow-origin'], 'https://app.example');
    const other = await on.app.inject({
      method: 'GET',
      url: '/healthz',
      headers: { origin: 'https://evil.example' },
    });
    assert.equal(other.headers['access-control-allow-origin'], undefined);
    // CORS answers OPTIONS at every path: an unknown path stays 404, a known one lists OPTIONS too.
    assert.equal((await on.app.inject({ method: 'GET', url: '/v1/nothing-here' })).statusCode, 404);
    const wrong = await on.app.inject({ method: 'PUT', url: '/v1/audit/events' });
    assert.equal(wrong.statusCode, 405);
    assert.equal(wrong.headers.allow, 'GET, HEAD, OPTIONS');
    await on.close();
  });
});

describe('graceful shutdown', () => {
  test('in-flight requests finish after close() is called; new ones are refused', async () => {
    let arrived: () => void = () => {};
    const hasArrived = new Promise<void>((resolve) => {
      arrived = resolve;
    });
    const t = await testApp('pglite', {}, (app) => {
      app.get('/v1/probe/slow', { config: { access: 'public' } }, async () => {
        arrived();
        await new Promise((resolve) => setTimeout(resolve, 300));
        return { done: true };
      });
    });
    await t.app.listen({ port: 0, host: '127.0.0.1' });
    const address = t.app.server.address();
    assert.ok(address && typeof address === 'object');
    const inFlight = fetch(`http://127.0.0.1:${address.port}/v1/probe/slow`);
    await hasArrived; // in flight for certain, however slow the machine
    const closing = t.app.close();
    const res = await inFlight;
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { done: true });
    await closing;
    await assert.rejects(fetch(`http://127.0.0.1:${address.port}/healthz`));
    await t.store.dispose();
  });
});

const QUERY_SECRET = 'sealed-secret-9f8e7d6c5b4a';

describe('logging', () => {
  const lines: Record<string, unknown>[] = [];
  let t: TestApp;
  before(async () => {
    t = await testApp(
      'pglite',
      { LOG_LEVEL: 'info' },
      (app) => {
        addProbeRoutes(app);
        app.get('/v1/probe/twice', { config: { access: 'public' } }, async (_request, reply) => {
          reply.send({ first: true });
          return reply.send({ second: true });
        });
        app.get('/v1/probe/slow', { config: { access: 'public' } }, async () => {
          await new Promise((resolve) => setTimeout(resolve, 30));
          return { ok: true };
        });
        // Queries that fail with a secret-looking parameter: through Drizzle, wrapped by a
        // service, and straight to the driver (PGlite puts the parameters on its error too).
        const { db, query } = app.steward.db;
        app.post('/v1/probe/dup', { config: { access: 'public' } }, async () => {
          await db.execute(sql`insert into probe_unique (v) values (${QUERY_SECRET})`);
          return { ok: true };
        });
        app.post('/v1/probe/dup-wrapped', { config: { access: 'public' } }, async () => {
          try {
            await db.execute(sql`insert into probe_unique (v) values (${QUERY_SECRET})`);
          } catch (error) {
            throw new Error('saving the probe failed', { cause: error });
          }
          return { ok: true };
        });
        app.post('/v1/probe/dup-raw', { config: { access: 'public' } }, async () => {
          await query('insert into probe_unique (v) values ($1)', [QUERY_SECRET]);
          return { ok: true };
        });
        app.get('/v1/probe/note', { config: { access: 'public' } }, async (request) => {
          request.server.log.warn({ note: 'from a plugin' }, 'plugin note');
          return { ok: true };
        });
      },
      { logDestination: { write: (line: string) => lines.push(JSON.parse(line)) } },
    );
  });
  after(() => t.close());

  test('a 5xx is logged once, with its request id and the detail; credentials never', async () => {
    lines.length = 0;
    const res = await t.app.inject({
      method: 'GET',
      url: '/v1/probe/boom',
      headers: { authorization: 'Bearer stw_live_secret-looking-token', 'x-api-key': 'stw_live_other' },
    });
    assert.equal(res.statusCode, 500);
    const failed = lines.filter((l) => l.msg === 'request failed');
    assert.equal(failed.length, 1, JSON.stringify(lines));
    assert.equal(failed[0]?.request_id, res.headers['x-request-id']);
    assert.equal(failed[0]?.route, '/v1/probe/boom');
    assert.match(String((failed[0]?.err as { message?: string } | undefined)?.message), /secret detail/);
    assert.doesNotMatch(JSON.stringify(lines), /stw_live_secret|stw_live_other/);
  });

  test("a failed query's 5xx logs the driver's message, code and constraint, never the parameters", async () => {
    await t.store.db.query('create table probe_unique (v text primary key)');
    await t.store.db.query('insert into probe_unique (v) values ($1)', [QUERY_SECRET]);
    for (const url of ['/v1/probe/dup', '/v1/probe/dup-wrapped', '/v1/probe/dup-raw']) {
      lines.length = 0;
      const res = await t.app.inject({ method: 'POST', url });
      assert.equal(res.statusCode, 500, url);
      assert.doesNotMatch(res.body, /probe_unique|duplicate/);
      const failed = lines.filter((l) => l.msg === 'request failed');
      assert.equal(failed.length, 1, JSON.stringify(lines));
      const logged = JSON.stringify(failed[0]);
      assert.doesNotMatch(JSON.stringify(lines), new RegExp(QUERY_SECRET), `${url}: ${logged}`);
      assert.doesNotMatch(logged, /params/, logged);
      // The driver's error, wherever it sits in the chain.
      type Logged = { type?: string; message?: string; stack?: string; cause?: Logged } & Record<
        string,
        unknown
      >;
      let driver = failed[0]?.err as Logged | undefined;
      while (driver && driver.type !== 'DatabaseError') driver = driver.cause;
      assert.ok(driver, logged);
      assert.match(
        String(driver.message),
        /duplicate key value violates unique constraint "probe_unique_pkey"/,
      );
      assert.equal(driver.code, '23505');
      assert.equal(driver.constraint, 'probe_unique_pkey');
      assert.equal(driver.table, 'probe_unique');
      assert.equal(driver.detail, undefined, 'detail quotes the row');
      const top = failed[0]?.err as Logged;
      assert.match(String(top.stack), /\n {4}at /, 'the stack frames are kept');
      if (url === '/v1/probe/dup') {
        assert.equal(top.type, 'DrizzleQueryError');
        assert.match(String(top.message), /^Failed query: insert into probe_unique \(v\) values \(\$1\)$/);
      }
      if (url === '/v1/probe/dup-wrapped') {
        assert.equal(top.message, 'saving the probe failed');
        assert.equal(top.cause?.type, 'DrizzleQueryError');
      }
    }
  });

  test("Fastify's own per-request warnings and plugins' lines reach the same log", async () => {
    lines.length = 0;
    const twice = await t.app.inject({ method: 'GET', url: '/v1/probe/twice' });
    assert.deepEqual(twice.json(), { first: true });
    assert.ok(
      lines.some((l) => (l.level as number) === 40 && /already sent/i.test(JSON.stringify(l))),
      JSON.stringify(lines),
    );
    const note = await t.app.inject({ method: 'GET', url: '/v1/probe/note' });
    assert.equal(note.statusCode, 200);
    assert.ok(lines.some((l) => l.msg === 'plugin note' && l.note === 'from a plugin'));
  });

  test('no line per request', async () => {
    lines.length = 0;
    for (let i = 0; i < 5; i++) await t.app.inject({ method: 'GET', url: '/healthz' });
    assert.deepEqual(lines, []);
  });

  test('replies are timed from arrival: a 30 ms answer is observed as at least 30 ms', async () => {
    const slow = await t.app.inject({ method: 'GET', url: '/v1/probe/slow' });
    assert.equal(slow.statusCode, 200);
    const text = (await t.app.inject({ method: 'GET', url: '/metrics' })).body;
    const value = (name: string) =>
      Number(
        text
          .split('\n')
          .find((l) => l.startsWith(`${name} `))
          ?.split(' ')[1],
      );
    const series = 'method="GET",route="/v1/probe/slow"';
    assert.equal(value(`steward_http_request_duration_seconds_count{${series}}`), 1);
    const seconds = value(`steward_http_request_duration_seconds_sum{${series}}`);
    assert.ok(seconds >= 0.029 && seconds < 5, String(seconds));
    assert.equal(value(`steward_http_request_duration_seconds_bucket{le="0.025",${series}}`), 0);
  });
});

describe('bodies over real routes', () => {
  let t: IdentityTestApp;
  before(async () => {
    t = await identityTestApp('pglite');
  });
  after(() => t.close());

  test('logout and unlock accept an empty JSON body; a NUL in a name is refused, not a 500', async () => {
    const { access_token } = await t.tokensFor(ADMIN.email, ADMIN.password);
    const empty = (url: string) =>
      t.call('POST', url, { token: access_token, headers: { 'content-type': 'application/json' }, body: '' });
    // (TOTP enrolment, used here before, now takes the current password.)
    const unlock = await empty(`/v1/users/${t.adminId}/unlock`);
    assert.equal(unlock.statusCode, 200, unlock.body);
    for (const name of ['a\u0000b', 'a\ud800b']) {
      const res = await t.call('POST', '/v1/webhook-keys', { token: access_token, body: { name } });
      assert.equal(res.statusCode, 400, res.body);
      assert.equal(res.json().code, 'unsupported_character');
      assert.match(res.json().detail, /^body\.name: /);
    }
    const logout = await empty('/v1/auth/logout');
    assert.equal(logout.statusCode, 204, logout.body);
    assert.equal(
      (await t.call('GET', '/v1/me', { token: access_token })).statusCode,
      401,
      'the session ended',
    );
  });
  test('values nested thousands deep are 400 json_too_deep, not a stack overflow (500) in a domain', async () => {
    const { access_token } = await t.tokensFor(ADMIN.email, ADMIN.password);
    // Sent as text: JSON.stringify itself overflows on such a value.
    const deep = (levels: number) => `${'{"k":'.repeat(levels)}1${'}'.repeat(levels)}`;
    const cases: [string, string, string][] = [
      [
        'POST',
        '/v1/secrets',
        `{"name":"DEEP","environment":"development","value":"v","metadata":${deep(2000)}}`,
      ],
      ['PUT', '/v1/settings/development/deep', `{"value_type":"json","value":${deep(5000)}}`],
    ];
    for (const [method, url, body] of cases) {
      const res = await t.call(method as 'POST', url, {
        token: access_token,
        body,
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(res.statusCode, 400, `${url}: ${res.body}`);
      assert.equal(res.json().code, 'json_too_deep', url);
    }
  });

  test('a NUL in a path parameter or a query value is 400 unsupported_character in every domain, not a 500', async () => {
    const { access_token } = await t.tokensFor(ADMIN.email, ADMIN.password);
    const cases: [string, string, RegExp][] = [
      ['GET', '/v1/secrets?tag=%00', /^query\.tag: /],
      ['GET', '/v1/secrets?environment=a%00b', /^query\.environment: /],
      ['GET', '/v1/settings/dev%00', /^params\.env: /],
      ['GET', '/v1/settings/development?category=%00', /^query\.category: /],
      ['GET', '/v1/keys/key_%00', /^params\.id: /],
      ['GET', '/v1/users?cursor=%00', /^query\.cursor: /],
      ['GET', '/v1/audit/events?actor_id=usr_%00', /^query\.actor_id: /],
      ['GET', '/v1/audit/events?action=a&action=b%00', /^query\.action\.1: /],
      ['POST', '/v1/vault/changes/chg_%00/reject', /^params\.id: /],
    ];
    for (const [method, url, detail] of cases) {
      const res = await t.call(method as 'GET', url, { token: access_token });
      assert.equal(res.statusCode, 400, `${method} ${url}: ${res.body}`);
      assert.equal(res.json().code, 'unsupported_character', url);
      assert.match(res.json().detail, detail, url);
    }
    // A cursor is base64url JSON: a NUL inside it passes the URL check and is refused when decoded.
    const nulCursor = Buffer.from(JSON.stringify({ id: 'usr_\u0000' })).toString('base64url');
    for (const url of ['/v1/users', '/v1/keys', '/v1/secrets', '/v1/audit/events']) {
      const res = await t.call('GET', `${url}?cursor=${nulCursor}`, { token: access_token });
      assert.equal(res.statusCode, 400, `${url}: ${res.body}`);
      assert.equal(res.json().code, 'invalid_cursor', url);
    }
    // A public route with a path parameter: refused before its handler reads the key.
    const ingest = await t.call('POST', '/v1/ingest/a%00b', { body: {} });
    assert.equal(ingest.statusCode, 400, ingest.body);
    assert.equal(ingest.json().code, 'unsupported_character');
    // Without credentials the access layer answers first, as for any other validation error.
    assert.equal((await t.call('GET', '/v1/secrets?tag=%00')).statusCode, 401);
    // Ordinary values pass the check and reach the route.
    const fine = await t.call('GET', '/v1/secrets?tag=prod', { token: access_token });
    assert.equal(fine.statusCode, 200, fine.body);
  });
});

describe('every 401 carries WWW-Authenticate (RFC 9110 §15.5.2), public routes included', () => {
  let t: IdentityTestApp;
  before(async () => {
    t = await identityTestApp('pglite', { LOGIN_IP_MAX_FAILURES: '1000' });
  });
  after(() => t.close());

  test('login, 2FA, refresh, invitation, ingest and the access layer: one table', async () => {
    const PLAIN = 'Bearer realm="steward"';
    const INVALID = 'Bearer realm="steward", error="invalid_token"';
    const PASS = 'seven quiet harbours';
    const admin = await t.tokensFor(ADMIN.email, ADMIN.password);
    // A user with 2FA on, for the mfa_token refusals.
    const email = 'mona@example.com';
    assert.equal(
      (await t.call('POST', '/v1/users', { token: admin.access_token, body: { email, password: PASS } }))
        .statusCode,
      201,
    );
    const own = await t.tokensFor(email, PASS);
    const { secret } = (
      await t.call('POST', '/v1/auth/totp/enroll', { token: own.access_token, body: { password: PASS } })
    ).json();
    await t.call('POST', '/v1/auth/totp/confirm', {
      token: own.access_token,
      body: { code: totpAt(secret, t.now.ms) },
    });
    const mfaToken = async () => (await t.login(email, PASS)).json().mfa_token as string;
    // A refresh token rotated once (its first generation is then a reuse), and a logged-out one.
    const rotated = await t.tokensFor(ADMIN.email, ADMIN.password);
    await t.call('POST', '/v1/auth/refresh', { body: { refresh_token: rotated.refresh_token } });
    const ended = await t.tokensFor(ADMIN.email, ADMIN.password);
    await t.call('POST', '/v1/auth/logout', { token: ended.access_token });
    // An invitation to another org for an existing account (its password is the credential).
    const other = await t.call('POST', '/v1/orgs', {
      token: admin.access_token,
      body: { slug: 'other', name: 'Other' },
    });
    assert.equal(other.statusCode, 201, other.body);
    const inOther = (await t.login(ADMIN.email, ADMIN.password, { org: 'other' })).json().access_token;
    const invitation = (await t.call('POST', '/v1/invitations', { token: inOther, body: { email } })).json()
      .token;
    // A webhook key for the ingest refusals.
    const hook = (
      await t.call('POST', '/v1/webhook-keys', { token: admin.access_token, body: { name: 'Probe' } })
    ).json();
    const ingest = (headers: Record<string, string>, body = '{"type":"x"}') =>
      t.app.inject({
        method: 'POST',
        url: '/v1/ingest',
        headers: { 'content-type': 'application/json', ...headers },
        payload: body,
      });
    const signed = (sig?: string) => {
      const ts = Math.floor(t.now.ms / 1000);
      return {
        'x-api-key': hook.key,
        'webhook-id': 'msg_probe',
        'webhook-timestamp': String(ts),
        'webhook-signature': sig ?? new Webhook(hook.secret).sign('msg_probe', new Date(ts * 1000), '{}'),
      };
    };
    const bearer = { authorization: `Bearer ${admin.access_token}` };
    const expiredMfa = await mfaToken();
    const wrongCode = await mfaToken();

    const cases: [
      string,
      () => Promise<{ statusCode: number; headers: Record<string, unknown>; body: string }>,
      string,
    ][] = [
      ['invalid_credentials', () => t.login(email, 'not the password at all'), PLAIN],
      [
        'invalid_credentials',
        () =>
          t.call('POST', '/v1/auth/invitations/accept', {
            body: { token: invitation, password: 'wrong one!' },
          }),
        PLAIN,
      ],
      [
        'mfa_token_invalid',
        () => t.call('POST', '/v1/auth/login/mfa', { body: { mfa_token: 'mfa_x', code: '123456' } }),
        PLAIN,
      ],
      [
        'mfa_code_invalid',
        () => t.call('POST', '/v1/auth/login/mfa', { body: { mfa_token: wrongCode, code: '000000' } }),
        PLAIN,
      ],
      [
        'mfa_token_expired',
        async () => {
          t.now.ms += 301_000;
          const res = await t.call('POST', '/v1/auth/login/mfa', {
            body: { mfa_token: expiredMfa, code: '000000' },
          });
          t.now.ms -= 301_000;
          return res;
        },
        PLAIN,
      ],
      [
        'refresh_token_invalid',
        () => t.call('POST', '/v1/auth/refresh', { body: { refresh_token: 'nope' } }),
        PLAIN,
      ],
      [
        'refresh_token_invalid',
        // A bearer token sent to a public route is not what it refused: still the plain challenge.
        () => t.call('POST', '/v1/auth/refresh', { body: { refresh_token: 'nope' }, headers: bearer }),
        PLAIN,
      ],
      [
        'refresh_token_reused',
        () => t.call('POST', '/v1/auth/refresh', { body: { refresh_token: rotated.refresh_token } }),
        PLAIN,
      ],
      [
        'session_revoked',
        () => t.call('POST', '/v1/auth/refresh', { body: { refresh_token: ended.refresh_token } }),
        PLAIN,
      ],
      ['webhook_key_invalid', () => ingest({}), PLAIN],
      ['webhook_headers_missing', () => ingest({ 'x-api-key': hook.key }), PLAIN],
      [
        'webhook_signature_invalid',
        () => ingest(signed('v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc='), '{}'),
        PLAIN,
      ],
      // The access layer keeps its own: no credential, and a refused bearer token.
      ['unauthenticated', () => t.call('GET', '/v1/me'), PLAIN],
      ['session_revoked', () => t.call('GET', '/v1/me', { token: ended.access_token }), INVALID],
    ];
    for (const [code, send, challenge] of cases) {
      const res = await send();
      assert.equal(res.statusCode, 401, `${code}: ${res.body}`);
      assert.equal(JSON.parse(res.body).code, code);
      assert.equal(res.headers['www-authenticate'], challenge, code);
    }
    // Other statuses carry none.
    const denied = await t.call('GET', '/v1/users', { token: own.access_token });
    assert.equal(denied.statusCode, 403);
    assert.equal(denied.headers['www-authenticate'], undefined);
  });
});
