import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { needsRewrap, open, rewrap, seal, sealedKeyId } from './envelope.ts';
import { CryptoError, type CryptoErrorCode } from './errors.ts';
import { createKeyring } from './keyring.ts';

const oldKey = randomBytes(32);
const newKey = randomBytes(32);
const ring = createKeyring(oldKey);
const aad = 'org/org_1/secret/sec_1/v/1';
const fails = (code: CryptoErrorCode) => (e: unknown) => e instanceof CryptoError && e.code === code;

// Replaces one base64url part of a sealed value with a version whose byte at `index` is flipped.
function flip(sealed: string, part: number, index: number): string {
  const parts = sealed.split('.');
  const bytes = Buffer.from(parts[part] ?? '', 'base64url');
  const at = index < 0 ? bytes.length + index : index;
  bytes[at] = (bytes[at] ?? 0) ^ 0x01;
  parts[part] = bytes.toString('base64url');
  return parts.join('.');
}

describe('envelope', () => {
  it('round-trips text and bytes in the documented format', () => {
    const sealed = seal(ring, 'hunter2 – ünïcode', aad);
    assert.match(sealed, /^v1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{80}\.[A-Za-z0-9_-]+$/);
    assert.equal(sealedKeyId(sealed), ring.current.id);
    assert.equal(open(ring, sealed, aad).toString('utf8'), 'hunter2 – ünïcode');
    const bytes = randomBytes(1000);
    assert.deepEqual(open(ring, seal(ring, bytes, aad), aad), bytes);
    assert.deepEqual(open(ring, seal(ring, '', aad), aad), Buffer.alloc(0));
  });

  it('uses a fresh data key each time', () => {
    const a = seal(ring, 'same', aad).split('.');
    const b = seal(ring, 'same', aad).split('.');
    assert.notEqual(a[2], b[2]);
    assert.notEqual(a[3], b[3]);
  });

  it('does not open under another row’s AAD', () => {
    const sealed = seal(ring, 'value', aad);
    assert.throws(() => open(ring, sealed, 'org/org_1/secret/sec_2/v/1'), fails('decrypt_failed'));
    assert.throws(() => open(ring, sealed, 'org/org_1/secret/sec_1/v/2'), fails('decrypt_failed'));
  });

  it('detects a tampered payload tag, payload ciphertext or wrapped key', () => {
    const sealed = seal(ring, 'value', aad);
    assert.throws(() => open(ring, flip(sealed, 3, -1), aad), fails('decrypt_failed'));
    assert.throws(() => open(ring, flip(sealed, 3, 12), aad), fails('decrypt_failed'));
    assert.throws(() => open(ring, flip(sealed, 2, 20), aad), fails('decrypt_failed'));
    assert.throws(() => open(ring, flip(sealed, 2, -1), aad), fails('decrypt_failed'));
  });

  it('fails with unknown_key for a key id the keyring lacks', () => {
    const sealed = seal(ring, 'value', aad);
    assert.throws(() => open(createKeyring(newKey), sealed, aad), fails('unknown_key'));
    const relabelled = sealed.replace(/^v1\.[0-9a-f]{16}\./, 'v1.0123456789abcdef.');
    assert.throws(() => open(ring, relabelled, aad), fails('unknown_key'));
  });

  it('rejects malformed values', () => {
    const sealed = seal(ring, 'value', aad);
    const [, id, w, p] = sealed.split('.');
    for (const bad of [
      '',
      `v2${sealed.slice(2)}`,
      `v1.${id}.${w}`,
      `v1.${id}.${w}.${p}.extra`,
      `v1.${id?.toUpperCase()}.${w}.${p}`,
      `v1.${id}.${w?.slice(0, -4)}.${p}`,
      `v1.${id}.${w}.${p?.slice(0, 10)}`,
      `v1.${id}.${w}.${p}=`,
      `v1.${id}.${w}.${p?.replace(/.$/, '+')}`,
    ]) {
      assert.throws(() => open(ring, bad, aad), fails('malformed'), bad);
    }
  });

  it('rewraps under a new master key without touching the payload', () => {
    const sealed = seal(ring, 'rotate me', aad);
    const rotated = createKeyring(newKey, [oldKey]);
    assert.ok(needsRewrap(rotated, sealed));
    const rewrapped = rewrap(rotated, sealed);
    assert.equal(sealedKeyId(rewrapped), rotated.current.id);
    assert.equal(rewrapped.split('.')[3], sealed.split('.')[3]);
    assert.notEqual(rewrapped.split('.')[2], sealed.split('.')[2]);
    assert.ok(!needsRewrap(rotated, rewrapped));
    assert.equal(rewrap(rotated, rewrapped), rewrapped);
    assert.equal(open(rotated, rewrapped, aad).toString(), 'rotate me');
    assert.equal(open(rotated, sealed, aad).toString(), 'rotate me');
    // Once the old key is retired, only the re-wrapped value opens.
    const retired = createKeyring(newKey);
    assert.equal(open(retired, rewrapped, aad).toString(), 'rotate me');
    assert.throws(() => open(retired, sealed, aad), fails('unknown_key'));
  });

  it('still binds the AAD after a rewrap', () => {
    const rotated = createKeyring(newKey, [oldKey]);
    const rewrapped = rewrap(rotated, seal(ring, 'value', aad));
    assert.throws(() => open(rotated, rewrapped, 'org/org_2/secret/sec_1/v/1'), fails('decrypt_failed'));
  });
});
