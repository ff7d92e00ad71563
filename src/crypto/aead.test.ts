import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { aeadDecrypt, aeadEncrypt } from './aead.ts';
import { CryptoError } from './errors.ts';

const testdata = new URL('../../../shared/testdata/', import.meta.url);
const load = (path: string): unknown => JSON.parse(readFileSync(new URL(path, testdata), 'utf8'));
const hex = (s: string) => Buffer.from(s, 'hex');

interface WycheproofAead {
  numberOfTests: number;
  testGroups: {
    keySize: number;
    ivSize: number;
    tagSize: number;
    tests: {
      tcId: number;
      key: string;
      iv: string;
      aad: string;
      msg: string;
      ct: string;
      tag: string;
      result: 'valid' | 'invalid' | 'acceptable';
    }[];
  }[];
}

const isRefused = (err: unknown) => err instanceof CryptoError && err.code === 'unsupported_parameters';
const isAuthFailure = (err: unknown) => err instanceof CryptoError && err.code === 'decrypt_failed';

describe('AES-256-GCM against Wycheproof aes_gcm_test.json', () => {
  const file = load('wycheproof/aes_gcm_test.json') as WycheproofAead;
  const counts = { valid: 0, invalid: 0, refused: 0 };

  for (const group of file.testGroups) {
    const supported = group.keySize === 256 && group.ivSize === 96 && group.tagSize === 128;
    for (const t of group.tests) {
      const key = hex(t.key);
      const box = { iv: hex(t.iv), ciphertext: hex(t.ct), tag: hex(t.tag) };
      const aad = hex(t.aad);
      if (!supported) {
        it(`tc ${t.tcId}: key ${group.keySize} / iv ${group.ivSize} bits is refused`, () => {
          assert.throws(() => aeadDecrypt(key, box, aad), isRefused);
          assert.throws(() => aeadEncrypt(key, hex(t.msg), aad, box.iv), isRefused);
        });
        counts.refused++;
        continue;
      }
      assert.notEqual(t.result, 'acceptable', 'no acceptable cases expected in this file');
      if (t.result === 'valid') {
        counts.valid++;
        it(`tc ${t.tcId}: valid decrypts and re-encrypts to the same bytes`, () => {
          assert.deepEqual(aeadDecrypt(key, box, aad), hex(t.msg));
          const enc = aeadEncrypt(key, hex(t.msg), aad, box.iv);
          assert.deepEqual(enc.ciphertext, box.ciphertext);
          assert.deepEqual(enc.tag, box.tag);
        });
      } else {
        counts.invalid++;
        it(`tc ${t.tcId}: invalid is rejected`, () => {
          assert.throws(() => aeadDecrypt(key, box, aad), isAuthFailure);
        });
      }
    }
  }

  it('covers every case in the file', () => {
    assert.equal(counts.valid + counts.invalid + counts.refused, file.numberOfTests);
    // 66 AES-256 / 96-bit-IV cases run through the cipher; the other 250 are refused.
    assert.deepEqual(counts, { valid: 39, invalid: 27, refused: 250 });
  });
});

describe('AES-256-GCM known answers (GCM spec test cases 13-17)', () => {
  const file = load('crypto-kat/aes256gcm-vectors.json') as {
    vectors: {
      name: string;
      key: string;
      iv: string;
      aad: string;
      pt: string;
      ct: string;
      tag: string;
      expect: string;
    }[];
  };
  assert.equal(file.vectors.length, 6);
  for (const v of file.vectors) {
    const key = hex(v.key);
    const box = { iv: hex(v.iv), ciphertext: hex(v.ct), tag: hex(v.tag) };
    it(v.name, () => {
      if (box.iv.length !== 12) {
        // Test case 17 uses a 64-bit IV, which this module refuses by design.
        assert.throws(() => aeadDecrypt(key, box, hex(v.aad)), isRefused);
      } else if (v.expect === 'valid') {
        assert.deepEqual(aeadDecrypt(key, box, hex(v.aad)), hex(v.pt));
        assert.deepEqual(aeadEncrypt(key, hex(v.pt), hex(v.aad), box.iv).tag, box.tag);
      } else {
        assert.throws(() => aeadDecrypt(key, box, hex(v.aad)), isAuthFailure);
      }
    });
  }
});

describe('aeadEncrypt', () => {
  const key = Buffer.alloc(32, 7);
  it('uses a fresh random IV each time', () => {
    const a = aeadEncrypt(key, Buffer.from('same'), Buffer.alloc(0));
    const b = aeadEncrypt(key, Buffer.from('same'), Buffer.alloc(0));
    assert.equal(a.iv.length, 12);
    assert.notDeepEqual(a.iv, b.iv);
    assert.notDeepEqual(a.ciphertext, b.ciphertext);
  });
  it('refuses a truncated tag instead of checking a prefix', () => {
    const enc = aeadEncrypt(key, Buffer.from('payload'), Buffer.from('ctx'));
    assert.throws(
      () => aeadDecrypt(key, { ...enc, tag: enc.tag.subarray(0, 12) }, Buffer.from('ctx')),
      isRefused,
    );
  });
});
