import { STATUS_CODES } from 'node:http';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance, FastifySchema, RouteOptions } from 'fastify';
import { jsonSchemaTransform } from 'fastify-type-provider-zod';
import type { RouteAccess } from './auth.ts';
import { ANY_REQUEST_CODES, codesByStatus, openApiPath, specOf } from './documented-errors.ts';

/**
 * The document's security schemes. The access layer accepts an access token or an API key, as a
 * bearer token or in X-API-Key (the global requirement); a route that takes another credential
 * declares `schema.security` with the schemes below, and a public route that declares none gets
 * `security: []`.
 */
const securitySchemes = {
  bearer: { type: 'http', scheme: 'bearer', description: 'Access token (JWT) or API key (`stw_…`)' },
  apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'API key (`stw_…`)' },
  unleashClientKey: {
    type: 'apiKey',
    in: 'header',
    name: 'Authorization',
    description: 'API key (`stw_…`) as the raw Authorization value, as Unleash SDKs send it',
  },
  webhookKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'Inbound webhook key' },
  webhookSignature: {
    type: 'apiKey',
    in: 'header',
    name: 'webhook-signature',
    description: 'Standard Webhooks signature of `webhook-id`, `webhook-timestamp` and the raw body',
  },
} as const;

type SecurityRequirement = Partial<Record<keyof typeof securitySchemes, string[]>>;

const ACCESS_LAYER_SECURITY: SecurityRequirement[] = [{ bearer: [] }, { apiKey: [] }];
/** The Unleash client API (`/api/client/*`): the key raw in Authorization, or in X-API-Key. */
export const unleashClientSecurity: SecurityRequirement[] = [{ unleashClientKey: [] }, { apiKey: [] }];
/** Inbound webhooks: a webhook key and the Standard Webhooks signature, both required. */
export const webhookSecurity: SecurityRequirement[] = [{ webhookKey: [], webhookSignature: [] }];

const PROBLEM_TYPE = 'application/problem+json';

/** What every problem document carries (problem.ts `sendProblem`), and the optional members in use. */
const problemSchema = {
  type: 'object',
  description:
    'RFC 9457 problem details. `code` is stable and names the error; domains may add members ' +
    '(e.g. `locked_until`, `retry_after`, `reason`).',
  required: ['type', 'title', 'status', 'detail', 'code', 'request_id'],
  properties: {
    type: { type: 'string', format: 'uri', examples: ['https://steward.dev/problems/validation_failed'] },
    title: { type: 'string' },
    status: { type: 'integer', minimum: 400, maximum: 599 },
    detail: { type: 'string' },
    code: { type: 'string', examples: ['validation_failed'] },
    request_id: { type: 'string', description: 'Also in the X-Request-Id header' },
    errors: {
      type: 'array',
      description: 'With `validation_failed`: each field that failed, as `body.items.0.name`',
      items: {
        type: 'object',
        required: ['path', 'message'],
        properties: { path: { type: 'string' }, message: { type: 'string' } },
      },
    },
    permission: { type: 'string', description: 'With `permission_denied`: the permission needed' },
    reason: { type: 'string', description: 'A finer cause, where the code has several' },
  },
  additionalProperties: true,
} as const;

/** Methods whose requests Fastify reads a body for (GET and HEAD bodies are ignored). */
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

type ResponseDoc = {
  description: string;
  content: Record<string, { schema: object }>;
  headers?: Record<string, { type: string; description: string }>;
  /** Every `code` a problem of this status may carry on this operation. */
  'x-steward-codes': string[];
};

const problem = (description: string, codes: string[], headers?: ResponseDoc['headers']): ResponseDoc => ({
  description,
  content: { [PROBLEM_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } },
  ...(headers && { headers }),
  'x-steward-codes': codes,
});

/** `code` (its title), as the description lists a route's own codes. */
const described = (codes: readonly string[], where: string): string =>
  codes.map((code) => `\`${code}\` (${specOf(code, where).title})`).join(', ');

/** The sentence appended to each operation's description. */
function accessSentence(access: RouteAccess, ownSecurity: boolean): string {
  if (access === 'public') {
    return ownSecurity
      ? 'No token or API key: the route checks its own credential (see security).'
      : 'Public: no token or API key needed.';
  }
  if (access === 'authenticated') {
    return 'Authenticated (any caller); what it may read or change is checked on the resource.';
  }
  return `Requires \`${access.permission}\`.`;
}

interface RouteFacts {
  access: RouteAccess;
  methods: string[];
  url: string;
  /**
   * The route's context replaced the JSON parser with its own (keys' /v1/ingest reads every media
   * type as raw bytes): the JSON parser's refusals (`invalid_json`, `unsupported_character`, 415)
   * are not the shared layer's to document there.
   */
  ownBodyParser: boolean;
  /** The route's own error codes (`config.errors`). */
  errors: readonly string[];
  /** The access layer's codes, answered on any route that needs a caller. */
  accessCodes: readonly string[];
}

/**
 * The error responses a route can give: the shared layer's, from what it declares (its schemas:
 * 400; whether it reads a body: 400, 413, 415; its access: 401, 403, 429 with the access layer's
 * codes; path parameters: 404; 500 for all), then the route's own codes (`config.errors`) under
 * their statuses, each response listing its codes in `x-steward-codes`. A status the route
 * declares a response schema for is never replaced.
 */
function errorResponses(
  schema: FastifySchema,
  facts: RouteFacts,
  security: unknown[],
): Record<string, ResponseDoc> {
  const where = `${facts.methods.join(',')} ${facts.url}`;
  const readsBody = schema.body !== undefined || facts.methods.some((m) => BODY_METHODS.has(m));
  const parsesJson = readsBody && !facts.ownBodyParser;
  const validated = [schema.body, schema.querystring, schema.params, schema.headers].some(
    (s) => s !== undefined,
  );
  const needsCaller = facts.access !== 'public';
  const access = codesByStatus(needsCaller ? facts.accessCodes : [], where);
  const accessText = (status: number) => {
    const codes = access.get(status) ?? [];
    return codes.length > 0 ? `; the access layer's ${described(codes, where)}` : '';
  };
  const out: Record<string, ResponseDoc> = {};
  const bad = [
    validated && '`validation_failed` (the fields in `errors`)',
    parsesJson && '`invalid_json`, `json_too_deep`, `unsupported_character`, `number_out_of_range`',
  ].filter((s) => typeof s === 'string');
  const pages = (schema.querystring as { properties?: Record<string, unknown> } | undefined)?.properties
    ?.cursor;
  if (pages !== undefined) bad.push('`invalid_cursor`');
  // The path and query check (validation.ts `refusingUnstorable`) refuses NUL in either.
  const pathOrQuery = schema.params !== undefined || schema.querystring !== undefined;
  if (pathOrQuery && !parsesJson) bad.push('`unsupported_character` (in the path or query)');
  const badCodes = [
    ...(validated ? ['validation_failed'] : []),
    ...(pages !== undefined ? ['invalid_cursor'] : []),
    ...(pathOrQuery && !parsesJson ? ['unsupported_character'] : []),
    ...(parsesJson ? ['invalid_json', 'json_too_deep', 'unsupported_character', 'number_out_of_range'] : []),
  ];
  if (bad.length > 0) out['400'] = problem(`Bad request: ${bad.join(', ')}`, badCodes);
  if (security.length > 0) {
    out['401'] = problem(
      `No credential, or a refused one (\`unauthenticated\`${accessText(401)})`,
      ['unauthenticated', ...(access.get(401) ?? [])],
      { 'WWW-Authenticate': { type: 'string', description: 'Bearer realm="steward" (RFC 6750)' } },
    );
  }
  if (typeof facts.access === 'object') {
    out['403'] = problem(
      `\`permission_denied\`: the caller does not hold \`${facts.access.permission}\`${accessText(403)}`,
      ['permission_denied', ...(access.get(403) ?? [])],
    );
  } else if (access.has(403)) {
    out['403'] = problem(`Refused by the access layer${accessText(403)}`, access.get(403) ?? []);
  }
  if (facts.url.includes(':') || facts.url.includes('{')) {
    out['404'] = problem("`not_found`: no such resource in the caller's organization", ['not_found']);
  }
  if (readsBody) {
    out['413'] = problem('`payload_too_large`: the body exceeds BODY_LIMIT_BYTES', ['payload_too_large']);
    if (parsesJson)
      out['415'] = problem('`unsupported_media_type`: bodies are `application/json` in UTF-8', [
        'unsupported_media_type',
      ]);
  }
  if (needsCaller) {
    out['429'] = problem(
      `\`rate_limited\`: the API key's rate limit is used up${accessText(429)}`,
      ['rate_limited', ...(access.get(429) ?? [])],
      { 'Retry-After': { type: 'string', description: 'Seconds to wait' } },
    );
  }
  out['500'] = problem('`internal_error`: nothing specific; the log has the detail (by `request_id`)', [
    'internal_error',
  ]);
  const sharedCodes = new Set(Object.values(out).flatMap((doc) => doc['x-steward-codes']));
  const own = facts.errors.filter((code) => !sharedCodes.has(code));
  for (const [status, codes] of codesByStatus(own, where)) {
    const key = String(status);
    const shared = out[key];
    out[key] =
      shared === undefined
        ? problem(`${STATUS_CODES[status] ?? 'Error'}: ${described(codes, where)}`, codes)
        : {
            ...shared,
            description: `${shared.description}; or ${described(codes, where)}`,
            'x-steward-codes': [...shared['x-steward-codes'], ...codes],
          };
  }
  return out;
}

/**
 * Adds to one route's generated schema what the document must say and the zod schemas cannot:
 * its access (`x-steward-access`, `x-steward-permission`, a sentence in the description, and
 * `security: []` when it is public), its error responses, and a success response when it
 * declares none (the media types of `produces`, else `2XX`: swagger's invented
 * `200 Default Response` was wrong for every route answering 204 or 202). Runs once, when the
 * document is first generated.
 */
function documentRoute(schema: FastifySchema, facts: RouteFacts): FastifySchema {
  const declared = schema as FastifySchema & {
    security?: SecurityRequirement[];
    description?: string;
    produces?: string[];
    response?: Record<string, unknown>;
  };
  const ownSecurity = declared.security !== undefined;
  const security = declared.security ?? (facts.access === 'public' ? [] : ACCESS_LAYER_SECURITY);
  const responses: Record<string, unknown> = { ...declared.response };
  if (!Object.keys(responses).some((status) => status.startsWith('2'))) {
    const produces = declared.produces ?? [];
    if (produces.length > 0) {
      responses['200'] = {
        description: 'OK',
        content: Object.fromEntries(produces.map((type) => [type, { schema: { type: 'string' } }])),
      };
    } else {
      responses['2XX'] = { description: 'Success (the response body is not described)', type: 'null' };
    }
  }
  for (const [status, doc] of Object.entries(errorResponses(schema, facts, security))) {
    if (responses[status] === undefined) responses[status] = doc;
  }
  const sentence = accessSentence(facts.access, ownSecurity && facts.access === 'public');
  return {
    ...schema,
    description: declared.description ? `${declared.description}\n\n${sentence}` : sentence,
    security,
    response: responses,
    'x-steward-access': typeof facts.access === 'object' ? 'permission' : facts.access,
    ...(typeof facts.access === 'object' && { 'x-steward-permission': facts.access.permission }),
  } as FastifySchema;
}

/**
 * Each operation's problem codes by status, as `errorResponses` listed them: @fastify/swagger keeps
 * a response's description, content and headers but drops extensions, so `finishDocument` puts
 * `x-steward-codes` back from here. Keyed by `METHOD /path/{param}`.
 */
type CodesByOperation = Map<string, Record<string, string[]>>;

type Document = { paths?: object | undefined; components?: { schemas?: Record<string, unknown> } };
type Operation = {
  requestBody?: {
    required?: boolean;
    content?: Record<string, { schema?: { anyOf?: { type?: string }[] } }>;
  };
  responses?: Record<string, { description?: string }>;
  security?: Record<string, string[]>[];
};

/** `code` (status): the HTTP layer's codes any request may get, for the document's description. */
function anyRequestCodes(): string {
  return [...ANY_REQUEST_CODES]
    .map((code) => `\`${code}\` (${specOf(code, 'ANY_REQUEST_CODES').status})`)
    .join(', ');
}

/** Every operation of the document, with its path and method. */
function operationsOf(doc: Document): [string, string, Operation][] {
  return Object.entries(doc.paths ?? {}).flatMap(([path, operations]) =>
    Object.entries((operations ?? {}) as Record<string, Operation>).map(
      ([method, operation]) => [path, method, operation] as [string, string, Operation],
    ),
  );
}

/**
 * The whole document, once generated: the Problem component, reason phrases for swagger's
 * "Default Response" descriptions, optional body-less bodies (below), and a check that every
 * security requirement names a scheme (a typo would otherwise publish a broken document).
 */
function finishDocument<T extends Document>(doc: T, codes: CodesByOperation): T {
  doc.components = { ...doc.components, schemas: { ...doc.components?.schemas, Problem: problemSchema } };
  for (const [path, method, operation] of operationsOf(doc)) {
    // @fastify/swagger marks every declared body required. A body schema that admits null is a
    // route that takes none (identity's `noBody`: absent or `{}`), so its requestBody is optional.
    const body = operation.requestBody;
    if (body?.content?.['application/json']?.schema?.anyOf?.some((s) => s.type === 'null'))
      body.required = false;
    for (const [status, response] of Object.entries(operation.responses ?? {})) {
      if (response.description === 'Default Response')
        response.description = STATUS_CODES[status] ?? 'Response';
      const listed = codes.get(`${method.toUpperCase()} ${path}`)?.[status];
      if (listed !== undefined) (response as { 'x-steward-codes'?: string[] })['x-steward-codes'] = listed;
    }
    for (const requirement of operation.security ?? []) {
      for (const scheme of Object.keys(requirement)) {
        if (!(scheme in securitySchemes))
          throw new Error(`${method.toUpperCase()} ${path}: unknown security scheme ${scheme}`);
      }
    }
  }
  return doc;
}

/**
 * OpenAPI 3.1 generated from the same zod schemas that validate requests, served at
 * /openapi.json and browsable at /docs. Never written by hand: each operation's access,
 * security and error responses come from the route's declaration (`documentRoute`). Nothing
 * here runs per request: the document is built once, on its first request.
 */
export async function installOpenApi(
  app: FastifyInstance,
  version: string,
  accessCodes: () => ReadonlySet<string>,
): Promise<void> {
  // Routes whose context dropped the JSON parser for its own (keys' /v1/ingest). Fastify cannot be
  // asked about a catch-all parser, only about a media type's.
  const ownBodyParser = new WeakSet<RouteOptions>();
  const codes: CodesByOperation = new Map();
  app.addHook('onRoute', function noteBodyParser(route) {
    if (!this.hasContentTypeParser('application/json')) ownBodyParser.add(route);
  });
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Steward API',
        version,
        description:
          'Identity, keys, permissions, secrets, flags, audit and approvals for applications and AI agents. ' +
          'Errors are RFC 9457 application/problem+json with a stable `code` and a `request_id`. ' +
          'Each operation states the access it needs (`x-steward-access`, `x-steward-permission`) and ' +
          'lists, under each error status, the codes it may answer (`x-steward-codes`). ' +
          `Any request may also get: ${anyRequestCodes()}.`,
      },
      components: { securitySchemes },
      security: ACCESS_LAYER_SECURITY,
    },
    transform: (input) => {
      const generated = jsonSchemaTransform(input);
      // A route that declares no schema at all has none here either.
      const schema = (generated.schema ?? {}) as FastifySchema & { hide?: boolean };
      if (schema.hide) return generated;
      const { route } = input;
      const facts: RouteFacts = {
        access: route.config?.access ?? 'public',
        methods: typeof route.method === 'string' ? [route.method] : route.method,
        url: route.url,
        ownBodyParser: ownBodyParser.has(route),
        errors: route.config?.errors ?? [],
        accessCodes: [...accessCodes()],
      };
      const documented = documentRoute(schema, facts) as { response: Record<string, Partial<ResponseDoc>> };
      const byStatus = Object.fromEntries(
        Object.entries(documented.response).flatMap(([status, doc]) =>
          doc['x-steward-codes'] === undefined ? [] : [[status, doc['x-steward-codes']]],
        ),
      );
      for (const method of facts.methods) codes.set(`${method} ${openApiPath(route.url)}`, byStatus);
      return { ...generated, schema: documented as FastifySchema };
    },
    transformObject: (document) =>
      'openapiObject' in document ? finishDocument(document.openapiObject, codes) : document.swaggerObject,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}
