import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { hmacSha256, verifyHmacSha256 } from './mac.ts';

const testdata = new URL('../../../shared/testdata/', import.meta.url);
const load = (path: string): unknown => JSON.parse(readFileSync(new URL(path, testdata), 'utf8'));
const hex = (s: string) => Buffer.from(s, 'hex');

describe('HMAC-SHA256 against RFC 4231', () => {
  const file = load('crypto-kat/rfc4231-hmac-sha256.json') as {
    vectors: { case: number; key: string; data: string; hmacSha256: string }[];
  };
  assert.equal(file.vectors.length, 7);
  for (const v of file.vectors) {
    it(`test case ${v.case}`, () => {
      const expected = hex(v.hmacSha256);
      // Case 5 publishes only the first 128 bits.
      assert.deepEqual(hmacSha256(hex(v.key), hex(v.data)).subarray(0, expected.length), expected);
      assert.equal(verifyHmacSha256(hex(v.key), hex(v.data), expected), expected.length === 32);
    });
  }
});

describe('HMAC-SHA256 against Wycheproof hmac_sha256_test.json', () => {
  const file = load('wycheproof/hmac_sha256_test.json') as {
    numberOfTests: number;
    testGroups: {
      tagSize: number;
      tests: { tcId: number; key: string; msg: string; tag: string; result: string }[];
    }[];
  };
  const counts = { verified: 0, rejected: 0, truncatedRefused: 0 };
  for (const group of file.testGroups) {
    for (const t of group.tests) {
      const [key, msg, tag] = [hex(t.key), hex(t.msg), hex(t.tag)];
      if (group.tagSize !== 256) {
        counts.truncatedRefused++;
        it(`tc ${t.tcId}: ${group.tagSize}-bit tag is refused by verify`, () => {
          assert.equal(verifyHmacSha256(key, msg, tag), false);
          if (t.result === 'valid') assert.deepEqual(hmacSha256(key, msg).subarray(0, tag.length), tag);
        });
      } else if (t.result === 'valid') {
        counts.verified++;
        it(`tc ${t.tcId}: valid tag verifies`, () => {
          assert.deepEqual(hmacSha256(key, msg), tag);
          assert.equal(verifyHmacSha256(key, msg, tag), true);
        });
      } else {
        counts.rejected++;
        it(`tc ${t.tcId}: modified tag is rejected`, () =>
          assert.equal(verifyHmacSha256(key, msg, tag), false));
      }
    }
  }
  it('covers every case in the file', () => {
    assert.deepEqual(counts, { verified: 33, rejected: 54, truncatedRefused: 87 });
    assert.equal(counts.verified + counts.rejected + counts.truncatedRefused, file.numberOfTests);
  });
});
