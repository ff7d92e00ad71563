import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';

/** What the error-code tests read of an operation: each response's `x-steward-codes`. */
export type DocumentedOperation = { responses: Record<string, { 'x-steward-codes'?: string[] }> };

/** The served OpenAPI document, read by route: `GET /v1/flags/{env}`. */
export interface DocumentedApi {
  /** The operation of a route; fails the test when the document has none. */
  operation(route: string): DocumentedOperation;
  /** Every route (`METHOD /path`) whose path `ours` accepts. */
  routes(ours: (path: string) => boolean): string[];
}

export async function documentedApi(app: FastifyInstance): Promise<DocumentedApi> {
  const res = await app.inject({ method: 'GET', url: '/openapi.json' });
  assert.equal(res.statusCode, 200, res.body);
  const paths = res.json().paths as Record<string, Record<string, DocumentedOperation>>;
  return {
    operation(route) {
      const [method = '', path = ''] = route.split(' ');
      const op = paths[path]?.[method.toLowerCase()];
      assert.ok(op, `${route} is in the document`);
      return op;
    },
    routes: (ours) =>
      Object.entries(paths)
        .filter(([path]) => ours(path))
        .flatMap(([path, ops]) => Object.keys(ops).map((method) => `${method.toUpperCase()} ${path}`)),
  };
}
