// The error codes the vault's routes declare (config.errors), as the OpenAPI document lists them:
// the secrets routes' own, and the approval route's, which include every applier's refusals.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createVaultServices } from './index.ts';
import { type VaultTestApp, vaultTestApp } from './test-support.ts';

type Operation = { responses: Record<string, { 'x-steward-codes'?: string[] }> };

describe('vault routes: declared error codes', () => {
  let v: VaultTestApp;
  let paths: Record<string, Record<string, Operation>>;
  before(async () => {
    v = await vaultTestApp('pglite');
    const res = await v.t.app.inject({ method: 'GET', url: '/openapi.json' });
    assert.equal(res.statusCode, 200, res.body);
    paths = res.json().paths;
  });
  after(() => v?.close());

  /** The codes an operation lists under one status. */
  const codes = (path: string, method: string, status: number) =>
    paths[path]?.[method]?.responses[String(status)]?.['x-steward-codes'] ?? [];

  /** Every code of `wanted` is listed by the operation under its status. */
  const assertListed = (wanted: [string, string, number, string[]][]) => {
    for (const [path, method, status, expected] of wanted) {
      const listed = codes(path, method, status);
      for (const code of expected) assert.ok(listed.includes(code), `${method} ${path} ${status}: ${listed}`);
    }
  };

  test('each secrets route lists the codes its service answers', () => {
    assertListed([
      ['/v1/secrets', 'post', 404, ['environment_not_found', 'owner_not_found']],
      ['/v1/secrets', 'post', 409, ['secret_name_taken']],
      ['/v1/secrets', 'post', 400, ['invalid_required_permission']],
      ['/v1/secrets', 'get', 404, ['environment_not_found']],
      ['/v1/secrets/{id}', 'get', 404, ['secret_not_found']],
      ['/v1/secrets/{id}', 'patch', 404, ['secret_not_found', 'owner_not_found']],
      ['/v1/secrets/{id}', 'patch', 400, ['invalid_required_permission']],
      ['/v1/secrets/{id}', 'delete', 404, ['secret_not_found']],
      ['/v1/secrets/{id}/reveal', 'post', 404, ['secret_not_found', 'secret_version_not_found']],
      ['/v1/secrets/{id}/reveal', 'post', 409, ['secret_inactive', 'secret_expired', 'secret_undecryptable']],
      ['/v1/secrets/{id}/value', 'put', 404, ['secret_not_found']],
      ['/v1/secrets/{id}/versions', 'get', 404, ['secret_not_found']],
      ['/v1/secrets/{id}/rollback', 'post', 404, ['secret_not_found', 'secret_version_not_found']],
      ['/v1/secrets/{id}/rollback', 'post', 409, ['secret_undecryptable']],
    ]);
    // Nothing a route cannot answer: a value is never refused as expired on a metadata read.
    assert.equal(codes('/v1/secrets/{id}', 'get', 409).includes('secret_expired'), false);
  });

  test("the approval route lists four-eyes' codes and every applier's refusals", () => {
    const approve = '/v1/vault/changes/{id}/approve';
    assertListed(
      (
        [
          [409, ['change_decided', 'change_undecryptable', 'secret_name_taken', 'secret_undecryptable']],
          [409, ['setting_undecryptable']],
          [412, ['version_conflict']],
          [404, ['change_not_found', 'secret_not_found', 'setting_not_found', 'environment_not_found']],
          [403, ['requester_not_permitted']],
          [400, ['invalid_required_permission']],
        ] as const
      ).map(([status, wanted]) => [approve, 'post', status, [...wanted]]),
    );
    // Each code once, even where two appliers declare it.
    const conflicts = codes(approve, 'post', 412).filter((c) => c === 'version_conflict');
    assert.equal(conflicts.length, 1);
  });

  test('an applier registered after the approval route read the codes is refused, not left undocumented', () => {
    const { changes } = createVaultServices(v.t.app.steward);
    const declared = changes.applierErrors();
    assert.ok(
      declared.includes('secret_name_taken') && declared.includes('setting_not_found'),
      `${declared}`,
    );
    assert.throws(
      () => changes.register('late.kind', async () => ({ resultId: null }), ['secret_not_found']),
      /registered after the approval route/,
    );
  });
});
