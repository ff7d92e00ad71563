import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { installTestPrincipals, type TestApp, testApp } from '../../test/helpers/app.ts';
import { authzErrors } from '../authz/errors.ts';
import { ANY_REQUEST_CODES, UNDOCUMENTED_ERRORS_FILE } from './documented-errors.ts';
import { httpErrors, registeredErrorCodes } from './errors.ts';
import type { Principal } from './principal.ts';

/** A caller with no role and no grant: every permission route refuses it. */
const nobody: Principal = {
  orgId: 'org_01JAAAAAAAAAAAAAAAAAAAAAAA',
  kind: 'user',
  id: 'usr_01JCCCCCCCCCCCCCCCCCCCCCCC',
  name: 'Nobody',
  roles: [],
  scopes: null,
  superuser: false,
};

/** Routes for the cases no domain route has today: a declared error response, its own security. */
function addProbeRoutes(app: FastifyInstance) {
  installTestPrincipals(app, { nobody });
  app.post(
    '/v1/probe/echo',
    {
      config: { access: 'authenticated' },
      schema: { body: z.strictObject({ name: z.string().min(1), count: z.number().int().min(0) }) },
    },
    async (request) => request.body,
  );
  app.get(
    '/v1/probe/things/:id',
    {
      config: { access: { permission: 'org:read' } },
      schema: {
        description: 'A thing.',
        params: z.object({ id: z.string() }),
        response: { 200: z.object({ id: z.string() }), 404: z.object({ missing: z.string() }) },
      },
    },
    async (request) => request.params,
  );
  // Declares two authz codes (and a shared one, listed once); answers the code the body names.
  app.post(
    '/v1/probe/grant',
    {
      config: { access: 'authenticated', errors: ['grant_exists', 'grant_escalation', 'invalid_cursor'] },
      schema: { body: z.strictObject({ answer: z.enum(['grant_exists', 'role_exists', 'conflict']) }) },
    },
    async (request) => {
      const { answer } = request.body as { answer: 'grant_exists' | 'role_exists' | 'conflict' };
      if (answer === 'conflict') throw httpErrors.conflict();
      throw authzErrors[answer]();
    },
  );
  app.post(
    '/v1/probe/signed',
    { config: { access: 'public' }, schema: { security: [{ webhookKey: [], webhookSignature: [] }] } },
    async () => ({}),
  );
}

type Response = {
  description: string;
  content?: Record<string, { schema?: { $ref?: string } }>;
  headers?: Record<string, unknown>;
};
type Operation = {
  description?: string;
  parameters?: { in: string; name: string }[];
  requestBody?: object;
  security?: Record<string, string[]>[];
  responses: Record<string, Response & { 'x-steward-codes'?: string[] }>;
  'x-steward-access'?: string;
  'x-steward-permission'?: string;
};
type Document = {
  openapi: string;
  security: Record<string, string[]>[];
  paths: Record<string, Record<string, Operation>>;
  components: { securitySchemes: Record<string, object>; schemas: Record<string, { required?: string[] }> };
};

const PROBLEM_REF = '#/components/schemas/Problem';
const ERROR_CODES = ['400', '401', '403', '404', '413', '415', '429', '500'];

describe('OpenAPI document', () => {
  let t: TestApp;
  let doc: Document;
  let operations: [string, string, Operation][];
  before(async () => {
    t = await testApp('pglite', {}, addProbeRoutes);
    const res = await t.app.inject({ method: 'GET', url: '/openapi.json' });
    doc = JSON.parse(res.body);
    operations = Object.entries(doc.paths).flatMap(([path, ops]) =>
      Object.entries(ops).map(([method, op]) => [path, method, op] as [string, string, Operation]),
    );
  });
  after(() => t.close());

  test('is valid OpenAPI 3.1, generated from the route schemas', async () => {
    assert.equal(doc.openapi, '3.1.0');
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc));
    assert.equal(result.valid, true, JSON.stringify(result.errors, null, 1));
    assert.equal(validator.version, '3.1');
    assert.ok(operations.length > 100, `${operations.length} operations`);
    const events = doc.paths['/v1/audit/events']?.get;
    const params = events?.parameters?.map((p) => p.name) ?? [];
    for (const name of ['actor_id', 'action', 'since', 'limit', 'cursor'])
      assert.ok(params.includes(name), name);
    type Body = {
      content: Record<string, { schema: { required: string[]; additionalProperties: boolean } }>;
    };
    const echoBody = (doc.paths['/v1/probe/echo']?.post?.requestBody as Body | undefined)?.content[
      'application/json'
    ]?.schema;
    assert.deepEqual(echoBody?.required.sort(), ['count', 'name']);
    assert.equal(echoBody?.additionalProperties, false);
    const docs = await t.app.inject({ method: 'GET', url: '/docs/' });
    assert.equal(docs.statusCode, 200);
    assert.match(docs.body, /swagger/i);
  });

  test('the Problem component holds what every problem document carries', () => {
    const problem = doc.components.schemas.Problem;
    assert.deepEqual(problem?.required?.sort(), ['code', 'detail', 'request_id', 'status', 'title', 'type']);
  });

  test("every operation states its access: extension, description's sentence, security", () => {
    const schemes = Object.keys(doc.components.securitySchemes);
    for (const [path, method, op] of operations) {
      const where = `${method.toUpperCase()} ${path}`;
      const access = op['x-steward-access'];
      const security = op.security ?? doc.security;
      for (const requirement of security)
        for (const scheme of Object.keys(requirement))
          assert.ok(schemes.includes(scheme), `${where}: ${scheme}`);
      if (access === 'permission') {
        assert.match(op['x-steward-permission'] ?? '', /^[a-z_]+:[a-z_]+$/, where);
        assert.ok(op.description?.endsWith(`Requires \`${op['x-steward-permission']}\`.`), where);
        assert.ok(security.length > 0, where);
      } else if (access === 'authenticated') {
        assert.equal(op['x-steward-permission'], undefined, where);
        assert.match(
          op.description ?? '',
          /Authenticated \(any caller\); what it may read or change is checked on the resource\.$/,
          where,
        );
        assert.ok(security.length > 0, where);
      } else {
        assert.equal(access, 'public', where);
        assert.equal(op['x-steward-permission'], undefined, where);
        if (op.security?.length === 0)
          assert.match(op.description ?? '', /Public: no token or API key needed\.$/, where);
        else assert.match(op.description ?? '', /checks its own credential/, where);
      }
    }
    // The routes the tester named, public by declaration.
    for (const [path, method] of [
      ['/v1/auth/login', 'post'],
      ['/v1/auth/refresh', 'post'],
      ['/v1/auth/signup', 'post'],
      ['/v1/auth/invitations/accept', 'post'],
      ['/.well-known/jwks.json', 'get'],
    ] as const) {
      assert.deepEqual(doc.paths[path]?.[method]?.security, [], path);
    }
    assert.deepEqual(doc.paths['/v1/probe/signed']?.post?.security, [
      { webhookKey: [], webhookSignature: [] },
    ]);
    assert.equal(doc.paths['/v1/probe/things/{id}']?.get?.description, 'A thing.\n\nRequires `org:read`.');
  });

  test('every operation lists the error responses the shared layer can give it, as problem+json', () => {
    for (const [path, method, op] of operations) {
      const where = `${method.toUpperCase()} ${path}`;
      const access = op['x-steward-access'];
      const security = op.security ?? doc.security;
      const readsBody = op.requestBody !== undefined || ['post', 'put', 'patch', 'delete'].includes(method);
      // /v1/ingest reads raw bytes with its own parser: the JSON parser's refusals are not its.
      const parsesJson = readsBody && !path.startsWith('/v1/ingest');
      const validated = op.requestBody !== undefined || (op.parameters ?? []).length > 0;
      const expected = new Set(['500']);
      if (validated || parsesJson) expected.add('400');
      if (security.length > 0) expected.add('401');
      if (access === 'permission') expected.add('403');
      if (path.includes('{')) expected.add('404');
      if (readsBody) expected.add('413');
      if (access !== 'public') expected.add('429');
      const statuses = Object.keys(op.responses);
      for (const status of expected)
        assert.ok(statuses.includes(status), `${where}: no ${status} in ${statuses}`);
      // 415 wherever the shared JSON parser reads the body (not where the route reads raw bytes).
      if (parsesJson) assert.ok(statuses.includes('415'), `${where}: no 415`);
      else assert.ok(!statuses.includes('415'), `${where}: 415`);
      for (const status of statuses.filter((s) => ERROR_CODES.includes(s))) {
        if (where === 'GET /v1/probe/things/{id}' && status === '404') continue; // declared by the route
        const response = op.responses[status] as Response;
        assert.deepEqual(
          Object.keys(response.content ?? {}),
          ['application/problem+json'],
          `${where} ${status}`,
        );
        assert.equal(
          response.content?.['application/problem+json']?.schema?.$ref,
          PROBLEM_REF,
          `${where} ${status}`,
        );
        assert.notEqual(response.description, 'Default Response', `${where} ${status}`);
      }
      if (expected.has('401')) assert.ok(op.responses['401']?.headers?.['WWW-Authenticate'], where);
      if (expected.has('429')) assert.ok(op.responses['429']?.headers?.['Retry-After'], where);
      // A success is documented, and never as swagger's invented "200 Default Response".
      assert.ok(
        statuses.some((s) => s.startsWith('2')),
        `${where}: no 2xx in ${statuses}`,
      );
      for (const [status, response] of Object.entries(op.responses))
        assert.notEqual(response.description, 'Default Response', `${where} ${status}`);
    }
  });

  test("a route's own error response is kept; produces gives the success its media types", () => {
    const things = doc.paths['/v1/probe/things/{id}']?.get;
    assert.deepEqual(Object.keys(things?.responses['404']?.content ?? {}), ['application/json']);
    assert.ok(things?.responses['403'], 'the others are still added');
    const exported = doc.paths['/v1/audit/export']?.get;
    assert.deepEqual(Object.keys(exported?.responses['200']?.content ?? {}).sort(), [
      'application/x-ndjson',
      'text/csv',
    ]);
    // A route that declares no success response gets no invented 200.
    const echo = doc.paths['/v1/probe/echo']?.post;
    assert.equal(echo?.responses['200'], undefined);
    assert.ok(echo?.responses['2XX']);
    // A route answering 204 that declares it has no 200 beside it.
    const logout = doc.paths['/v1/auth/logout']?.post;
    assert.deepEqual(
      Object.keys(logout?.responses ?? {}).filter((s) => s.startsWith('2')),
      ['204'],
    );
  });

  test("a route's own error codes are listed under their statuses, beside the shared layer's", () => {
    const grant = doc.paths['/v1/probe/grant']?.post;
    const codes = (status: string) => grant?.responses[status]?.['x-steward-codes'];
    assert.deepEqual(codes('409'), ['grant_exists']);
    assert.match(grant?.responses['409']?.description ?? '', /`grant_exists` \(An identical active grant/);
    assert.equal(grant?.responses['409']?.content?.['application/problem+json']?.schema?.$ref, PROBLEM_REF);
    // An authenticated route has no permission to refuse: its 403 is the access layer's and its own.
    assert.deepEqual(codes('403'), ['key_ip_not_allowed', 'grant_escalation']);
    // A code the route declares is listed once: invalid_cursor, which routes with a cursor share.
    assert.deepEqual(codes('400'), [
      'validation_failed',
      'invalid_json',
      'json_too_deep',
      'unsupported_character',
      'number_out_of_range',
      'invalid_cursor',
    ]);
    // The access layer's codes, under every route that needs a caller.
    for (const code of ['token_expired', 'session_revoked', 'key_revoked', 'key_expired'])
      assert.ok(codes('401')?.includes(code), code);
    assert.ok(codes('429')?.includes('quota_exceeded'));
    // A route taking a cursor lists invalid_cursor; public routes list no access-layer code.
    const events = doc.paths['/v1/audit/events']?.get;
    assert.ok(events?.responses['400']?.['x-steward-codes']?.includes('invalid_cursor'));
    const login = doc.paths['/v1/auth/login']?.post;
    assert.equal(login?.responses['401']?.['x-steward-codes']?.includes('key_revoked') ?? false, false);
  });

  test("with the test runner's file set, an answered code the route does not declare is recorded", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'steward-undoc-'));
    const file = join(dir, 'undocumented.txt');
    process.env[UNDOCUMENTED_ERRORS_FILE] = file;
    try {
      const send = (payload: object) =>
        t.app.inject({
          method: 'POST',
          url: '/v1/probe/grant',
          headers: { 'x-test-principal': 'nobody' },
          payload,
        });
      for (const answer of ['grant_exists', 'conflict', 'role_exists'])
        assert.equal((await send({ answer })).json().code, answer);
      assert.equal((await send({ answer: 1 })).json().code, 'validation_failed');
      // Declared (grant_exists) and listed by the shared layer (validation_failed) codes pass;
      // conflict is the HTTP layer's but not listed for this route, role_exists is not declared.
      assert.equal(
        readFileSync(file, 'utf8'),
        'POST /v1/probe/grant 409 conflict\nPOST /v1/probe/grant 409 role_exists\n',
      );
    } finally {
      delete process.env[UNDOCUMENTED_ERRORS_FILE];
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('every error code is listed by some operation, or in the description as one any request may get', () => {
    // Answered only at start (the bootstrap of the first superuser), never by a route.
    const notHttp = new Set(['superuser_exists']);
    const listed = new Set(
      operations.flatMap(([, , op]) =>
        Object.values(op.responses).flatMap((r) => r['x-steward-codes'] ?? []),
      ),
    );
    const missing = [...registeredErrorCodes().keys()].filter(
      (code) => !listed.has(code) && !ANY_REQUEST_CODES.has(code) && !notHttp.has(code),
    );
    assert.deepEqual(missing, [], 'defined by a domain or the HTTP layer, listed by no operation');
    const info = (doc as unknown as { info: { description: string } }).info.description;
    for (const code of ANY_REQUEST_CODES) assert.ok(info.includes(`\`${code}\``), code);
  });

  test('a route declaring a code no domain defines fails the document, naming it', async () => {
    const broken = await testApp('pglite', {}, (app) => {
      app.get('/v1/probe/typo', { config: { access: 'public', errors: ['grant_exsts'] } }, async () => ({}));
    });
    try {
      const res = await broken.app.inject({ method: 'GET', url: '/openapi.json' });
      assert.equal(res.statusCode, 500);
    } finally {
      await broken.close();
    }
  });

  test('what the document says of access is what every route does', async () => {
    for (const [path, method, op] of operations) {
      const where = `${method.toUpperCase()} ${path}`;
      const url = path.replaceAll(/\{[^}]+\}/g, 'x');
      const verb = method.toUpperCase() as 'GET';
      const anonymous = await t.app.inject({ method: verb, url });
      const refusedByAccessLayer =
        anonymous.statusCode === 401 && anonymous.json().detail === 'Send a bearer token or an API key';
      assert.equal(refusedByAccessLayer, op['x-steward-access'] !== 'public', `${where}: ${anonymous.body}`);
      if (op['x-steward-access'] !== 'permission') continue;
      const denied = await t.app.inject({ method: verb, url, headers: { 'x-test-principal': 'nobody' } });
      assert.equal(denied.statusCode, 403, `${where}: ${denied.body}`);
      assert.equal(denied.json().permission, op['x-steward-permission'], where);
    }
  });
});
