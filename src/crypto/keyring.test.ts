import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { inspect } from 'node:util';
import { CryptoError } from './errors.ts';
import { createKeyring, loadKeyring, masterKeyId } from './keyring.ts';

const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'steward-keyring-'));
  dirs.push(d);
  return d;
};
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const isInvalid = (needle: string) => (e: unknown) =>
  e instanceof CryptoError && e.code === 'invalid_master_key' && e.message.includes(needle);

describe('loadKeyring', () => {
  it('uses STEWARD_MASTER_KEY when set, without touching the data folder', () => {
    const key = randomBytes(32);
    const warnings: string[] = [];
    const dir = tempDir();
    const ring = loadKeyring({
      masterKey: key.toString('base64'),
      dataDir: dir,
      embedded: true,
      warn: (m) => warnings.push(m),
    });
    assert.equal(ring.current.id, masterKeyId(key));
    assert.deepEqual(warnings, []);
    assert.throws(() => statSync(join(dir, 'master.key')));
  });

  it('generates master.key with mode 0600 in embedded mode, warns once, and reuses it', () => {
    const dir = join(tempDir(), 'nested', 'data');
    const warnings: string[] = [];
    const first = loadKeyring({ dataDir: dir, embedded: true, warn: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /STEWARD_MASTER_KEY/);
    const path = join(dir, 'master.key');
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const second = loadKeyring({ dataDir: dir, embedded: true, warn: (m) => warnings.push(m) });
    assert.equal(second.current.id, first.current.id);
    assert.equal(warnings.length, 1);
    // The file holds the same base64 an operator would put in STEWARD_MASTER_KEY.
    const fromEnv = loadKeyring({ masterKey: readFileSync(path, 'utf8'), embedded: false, warn: () => {} });
    assert.equal(fromEnv.current.id, first.current.id);
  });

  it('warns when an existing master.key is readable by others', () => {
    const dir = tempDir();
    loadKeyring({ dataDir: dir, embedded: true, warn: () => {} });
    chmodSync(join(dir, 'master.key'), 0o644);
    const warnings: string[] = [];
    loadKeyring({ dataDir: dir, embedded: true, warn: (m) => warnings.push(m) });
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] ?? '', /chmod 600/);
  });

  it('refuses to run without a key outside embedded mode', () => {
    assert.throws(
      () => loadKeyring({ embedded: false, dataDir: tempDir(), warn: () => {} }),
      isInvalid('STEWARD_MASTER_KEY'),
    );
  });

  it('rejects a malformed key, naming the variable and never echoing the value', () => {
    const bad = [
      'c2hvcnQ=',
      randomBytes(33).toString('base64'),
      `${randomBytes(32).toString('base64').slice(0, 40)}!!!=`,
      Buffer.alloc(32).toString('base64'),
    ];
    for (const value of bad) {
      assert.throws(
        () => loadKeyring({ masterKey: value, embedded: true, warn: () => {} }),
        (e) => isInvalid('STEWARD_MASTER_KEY')(e) && !(e as Error).message.includes(value),
      );
    }
    const previous = 'bm90IGEga2V5';
    assert.throws(
      () =>
        loadKeyring({
          masterKey: randomBytes(32).toString('base64'),
          previousKeys: [previous],
          embedded: false,
          warn: () => {},
        }),
      (e) => isInvalid('STEWARD_MASTER_KEY_PREVIOUS entry 1')(e) && !(e as Error).message.includes(previous),
    );
  });

  it('names the file when master.key is corrupt', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'master.key'), 'garbage\n', { mode: 0o600 });
    assert.throws(
      () => loadKeyring({ dataDir: dir, embedded: true, warn: () => {} }),
      isInvalid('master.key'),
    );
  });

  it('accepts base64url and surrounding whitespace', () => {
    const key = randomBytes(32);
    const ring = loadKeyring({
      masterKey: ` ${key.toString('base64url')}\n`,
      embedded: false,
      warn: () => {},
    });
    assert.equal(ring.current.id, masterKeyId(key));
  });
});

describe('createKeyring', () => {
  const a = randomBytes(32);
  const b = randomBytes(32);

  it('gives each key a stable 16-hex id that is not a prefix of the key', () => {
    assert.match(masterKeyId(a), /^[0-9a-f]{16}$/);
    assert.equal(masterKeyId(a), masterKeyId(Buffer.from(a)));
    assert.notEqual(masterKeyId(a), masterKeyId(b));
    assert.ok(!a.toString('hex').startsWith(masterKeyId(a)));
  });

  it('knows its current and previous keys', () => {
    const ring = createKeyring(b, [a, b]);
    assert.equal(ring.current.id, masterKeyId(b));
    assert.deepEqual(ring.ids, [masterKeyId(b), masterKeyId(a)]);
    assert.ok(ring.has(masterKeyId(a)));
    assert.ok(!ring.has('0000000000000000'));
  });

  it('derives distinct, repeatable subkeys per purpose and per key', () => {
    const ring = createKeyring(b, [a]);
    const k1 = ring.deriveKey('audit-checkpoint');
    assert.equal(k1.length, 32);
    assert.deepEqual(ring.deriveKey('audit-checkpoint'), k1);
    assert.notDeepEqual(ring.deriveKey('webhook-secrets'), k1);
    assert.equal(ring.deriveKey('audit-checkpoint', 64).length, 64);
    assert.deepEqual(
      ring.deriveKey('audit-checkpoint', 32, masterKeyId(a)),
      createKeyring(a).deriveKey('audit-checkpoint'),
    );
    assert.throws(
      () => ring.deriveKey('x', 32, 'ffffffffffffffff'),
      (e) => e instanceof CryptoError && e.code === 'unknown_key',
    );
  });

  it('wraps under the current key and refuses unknown ids', () => {
    const ring = createKeyring(a);
    const dek = randomBytes(32);
    const w = ring.wrap(dek);
    assert.equal(w.keyId, ring.current.id);
    assert.deepEqual(ring.unwrap(w), dek);
    assert.throws(
      () => createKeyring(b).unwrap(w),
      (e) => e instanceof CryptoError && e.code === 'unknown_key',
    );
    // Relabelling a wrap as another loaded key's fails: the key id is bound as AAD.
    const both = createKeyring(b, [a]);
    assert.throws(
      () => both.unwrap({ ...w, keyId: masterKeyId(b) }),
      (e) => e instanceof CryptoError && e.code === 'decrypt_failed',
    );
  });

  it('never shows key bytes when inspected or serialised', () => {
    const ring = createKeyring(a, [b]);
    const shown = inspect(ring, { depth: 10, showHidden: true }) + JSON.stringify(ring);
    for (const k of [a, b]) {
      assert.ok(!shown.includes(k.toString('base64')));
      assert.ok(!shown.includes(k.toString('hex')));
    }
  });
});
