import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// `/v1/flags/{env}/stream` is re-authenticated like `/api/client/streaming` (stream-guard.ts).
describe('flag stream re-authentication', () => {
  let v: VaultTestApp;
  let address: string;
  before(async () => {
    v = await vaultTestApp('pglite');
    address = await v.t.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(() => v.close());

  /** Opens the stream, waits for its hydration; `ended` resolves when the server ends it. */
  async function open(authorization: string) {
    const res = await fetch(`${address}/v1/flags/staging/stream`, { headers: { authorization } });
    assert.equal(res.status, 200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = '';
    while (!text.includes('event: unleash-connected')) {
      const { value, done } = await reader.read();
      assert.ok(!done, 'ended before its hydration');
      text += decoder.decode(value, { stream: true });
    }
    const ended = (async () => {
      while (!(await reader.read()).done) {}
    })();
    return { ended, cancel: () => reader.cancel() };
  }

  const endsWithin = async (ended: Promise<void>, ms: number) => {
    const start = Date.now();
    await Promise.race([ended, sleep(ms).then(() => assert.fail(`stream not ended within ${ms} ms`))]);
    return Date.now() - start;
  };

  async function newKey(name: string, extra: Record<string, unknown> = {}) {
    const res = await v.req('POST', '/v1/keys', {
      token: v.tokens.manager,
      body: { name, scopes: ['flags:read'], ...extra },
    });
    assert.equal(res.statusCode, 201, res.body);
    return res.json() as { id: string; key: string };
  }

  test('a revoked key: its /v1 stream ends within 2 s, reconnecting is refused', async () => {
    const { id, key } = await newKey('provider-revoked');
    const s = await open(`Bearer ${key}`);
    const kept = await open(`Bearer ${(await newKey('provider-kept')).key}`);
    assert.ok((await v.req('DELETE', `/v1/keys/${id}`, { token: v.tokens.manager })).statusCode < 300);
    await endsWithin(s.ended, 2000);
    const again = await fetch(`${address}/v1/flags/staging/stream`, {
      headers: { authorization: `Bearer ${key}` },
    });
    assert.equal(again.status, 401);
    // Another key's stream goes on.
    const still = await Promise.race([kept.ended.then(() => 'ended'), sleep(300).then(() => 'open')]);
    assert.equal(still, 'open');
    await kept.cancel();
  });

  test('a logged-out session: its /v1 stream ends within 2 s, reconnecting is refused; other sessions go on', async () => {
    const session = await v.t.tokensFor('viewer@example.com', 'a sturdy vault passphrase');
    const other = await v.t.tokensFor('viewer@example.com', 'a sturdy vault passphrase');
    const s = await open(`Bearer ${session.access_token}`);
    const kept = await open(`Bearer ${other.access_token}`);
    const out = await v.req('POST', '/v1/auth/logout', { token: session.access_token });
    assert.equal(out.statusCode, 204, out.body);
    await endsWithin(s.ended, 2000);
    const again = await fetch(`${address}/v1/flags/staging/stream`, {
      headers: { authorization: `Bearer ${session.access_token}` },
    });
    assert.equal(again.status, 401);
    const still = await Promise.race([kept.ended.then(() => 'ended'), sleep(1500).then(() => 'open')]);
    assert.equal(still, 'open', "another session's stream is not ended (the sweep checks each session)");
    await kept.cancel();
  });

  test("a key's /v1 stream ends when the key expires (Steward's clock)", async () => {
    const { key } = await newKey('provider-expiring', {
      expires_at: new Date(v.t.now.ms + 1500).toISOString(),
    });
    const s = await open(`Bearer ${key}`);
    await endsWithin(s.ended, 3000);
  });
});
