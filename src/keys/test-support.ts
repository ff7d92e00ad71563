// Shared by the keys tests only (never imported by src/): tiers with a tiny quota, problem+json
// assertions, and key creation over HTTP.
import assert from 'node:assert/strict';
import type { LightMyRequestResponse } from 'fastify';
import type { IdentityTestApp } from '../identity/test-support.ts';

export const TEST_TIERS = JSON.stringify({
  free: { quota: 10_000, ratelimit: null },
  tiny: { quota: 3, ratelimit: null },
  enterprise: { quota: null, ratelimit: null },
});

/** Asserts an RFC 9457 answer with this status and code; returns its body. */
export function problem(res: LightMyRequestResponse, status: number, code: string): Record<string, unknown> {
  assert.equal(res.statusCode, status, res.body);
  assert.match(String(res.headers['content-type']), /application\/problem\+json/);
  const body = res.json() as Record<string, unknown>;
  assert.equal(body.code, code, res.body);
  return body;
}

/** `POST /v1/keys` (default: every scope, the unlimited tier), asserting 201. */
export async function createKey(t: IdentityTestApp, token: string, body: Record<string, unknown> = {}) {
  const res = await t.call('POST', '/v1/keys', {
    token,
    body: { name: 'k', scopes: ['*'], tier: 'enterprise', ...body },
  });
  assert.equal(res.statusCode, 201, res.body);
  return res.json() as { id: string; key: string; prefix: string };
}
