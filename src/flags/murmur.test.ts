import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { z } from 'zod';
import { createBucketer, murmur3, normalizedValue, VARIANT_SEED } from './murmur.ts';

const file = new URL(
  '../../../shared/testdata/murmurhash3-x86-32/murmur3_x86_32_vectors.json',
  import.meta.url,
);
const { vectors } = z
  .object({
    vectors: z.array(
      z.object({
        inputHex: z.string(),
        inputUtf8: z.string().optional(),
        seed: z.number(),
        expectedUnsigned: z.number(),
      }),
    ),
  })
  .parse(JSON.parse(readFileSync(file, 'utf8')));

describe('murmur3_x86_32_vectors.json', () => {
  it('has all 27 vectors', () => assert.equal(vectors.length, 27));
  for (const [i, v] of vectors.entries()) {
    const label = v.inputUtf8 === undefined ? `0x${v.inputHex}` : JSON.stringify(v.inputUtf8);
    it(`#${i} ${label.slice(0, 40)} seed ${v.seed}`, () => {
      assert.equal(murmur3(Buffer.from(v.inputHex, 'hex'), v.seed), v.expectedUnsigned);
      // Keys are hashed as UTF-8 text: the text form must give the same hash as the bytes.
      if (v.inputUtf8 !== undefined) {
        assert.equal(murmur3(new TextEncoder().encode(v.inputUtf8), v.seed), v.expectedUnsigned);
      }
    });
  }
});

describe('createBucketer', () => {
  const ids = [
    '123',
    '',
    'user-42',
    'ππππ',
    'Hellø_Wørld',
    '😊_你好',
    'a'.repeat(1500),
    `x${'é'.repeat(600)}`,
  ];
  for (const groupId of ['Feature.A', 'grøup', '']) {
    it(`matches the one-off normalisation for group ${JSON.stringify(groupId)}`, () => {
      for (const id of ids) {
        assert.equal(createBucketer(groupId, 100, 0)(id), normalizedValue(id, groupId, 100, 0));
        assert.equal(
          createBucketer(groupId, 1000, VARIANT_SEED)(id),
          normalizedValue(id, groupId, 1000, VARIANT_SEED),
        );
      }
    });
  }

  it('gives the buckets the client specification relies on', () => {
    // From 10-flexible-rollout-strategy.json: user 174 is in the first 10%, user 499 is not.
    assert.ok(normalizedValue('174', 'Feature.flexibleRollout.10') <= 10);
    assert.ok(normalizedValue('499', 'Feature.flexibleRollout.10') > 10);
  });
});
