import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import { jsonSchemaTransform } from 'fastify-type-provider-zod';

type Body = { required?: boolean; content?: Record<string, { schema?: { anyOf?: { type?: string }[] } }> };

/**
 * @fastify/swagger marks every declared body required. A body schema that admits null is a route
 * that takes none (identity's `noBody`: absent or `{}`), so its requestBody is optional.
 */
function optionalNullableBodies<T extends { paths?: object | undefined }>(doc: T): T {
  for (const operations of Object.values(doc.paths ?? {}) as (object | undefined)[]) {
    for (const operation of Object.values(operations ?? {})) {
      const body = (operation as { requestBody?: Body } | null)?.requestBody;
      const schema = body?.content?.['application/json']?.schema;
      if (body && schema?.anyOf?.some((s) => s.type === 'null')) body.required = false;
    }
  }
  return doc;
}

/**
 * OpenAPI 3.1 generated from the same zod schemas that validate requests, served at
 * /openapi.json and browsable at /docs. Never written by hand.
 */
export async function installOpenApi(app: FastifyInstance, version: string): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Steward API',
        version,
        description:
          'Identity, keys, permissions, secrets, flags, audit and approvals for applications and AI agents. ' +
          'Errors are RFC 9457 application/problem+json with a stable `code` and a `request_id`.',
      },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer', description: 'Access token (JWT) or API key' },
          apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key' },
        },
      },
      security: [{ bearer: [] }, { apiKey: [] }],
    },
    transform: jsonSchemaTransform,
    transformObject: (document) =>
      'openapiObject' in document ? optionalNullableBodies(document.openapiObject) : document.swaggerObject,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}
