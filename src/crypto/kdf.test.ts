import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { CryptoError } from './errors.ts';
import { hkdfSha256 } from './kdf.ts';

const testdata = new URL('../../../shared/testdata/', import.meta.url);
const hex = (s: string) => Buffer.from(s, 'hex');

describe('HKDF-SHA256 against Wycheproof hkdf_sha256_test.json', () => {
  const file = JSON.parse(readFileSync(new URL('wycheproof/hkdf_sha256_test.json', testdata), 'utf8')) as {
    numberOfTests: number;
    testGroups: {
      tests: {
        tcId: number;
        ikm: string;
        salt: string;
        info: string;
        size: number;
        okm: string;
        result: string;
      }[];
    }[];
  };
  let seen = 0;
  for (const t of file.testGroups.flatMap((g) => g.tests)) {
    seen++;
    it(`tc ${t.tcId} (${t.result})`, () => {
      const run = () => hkdfSha256(hex(t.ikm), hex(t.salt), hex(t.info), t.size);
      if (t.result === 'valid') assert.deepEqual(run(), hex(t.okm));
      else assert.throws(run, (e) => e instanceof CryptoError && e.code === 'unsupported_parameters');
    });
  }
  it('covers every case in the file', () => assert.equal(seen, file.numberOfTests));
});
