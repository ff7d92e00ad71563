import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import {
  generateRecoveryCodes,
  hashRecoveryCode,
  matchRecoveryCode,
  normalizeRecoveryCode,
} from './recovery-codes.ts';

describe('recovery codes', () => {
  it('generates ten distinct 80-bit codes in xxxx-xxxx-xxxx-xxxx form, with matching hashes', () => {
    const { codes, hashes } = generateRecoveryCodes();
    assert.equal(codes.length, 10);
    assert.equal(new Set(codes).size, 10);
    for (const [i, code] of codes.entries()) {
      assert.match(code, /^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$/);
      assert.equal(hashes[i], createHash('sha256').update(code.replaceAll('-', '')).digest('hex'));
      assert.ok(!hashes[i]?.includes(code.replaceAll('-', '')));
    }
  });

  it('uses every symbol of the alphabet about evenly', () => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 200; i++) {
      for (const ch of generateRecoveryCodes().codes.join('').replaceAll('-', '')) {
        counts.set(ch, (counts.get(ch) ?? 0) + 1);
      }
    }
    assert.equal(counts.size, 32);
    // 32,000 symbols: 1,000 expected each; ±25% is many standard deviations (σ ≈ 31).
    for (const n of counts.values()) assert.ok(n > 750 && n < 1250, String(n));
  });

  it('matches whatever the case, dashes, spaces or look-alike letters', () => {
    const { codes, hashes } = generateRecoveryCodes();
    const code = codes[3] ?? '';
    assert.equal(matchRecoveryCode(code, hashes), 3);
    assert.equal(matchRecoveryCode(code.toUpperCase(), hashes), 3);
    assert.equal(matchRecoveryCode(code.replaceAll('-', ''), hashes), 3);
    assert.equal(matchRecoveryCode(` ${code.replaceAll('-', ' ')} `, hashes), 3);
    assert.equal(normalizeRecoveryCode('1O0L-IIoo'), '10011100');
    assert.equal(hashRecoveryCode('ABCD-EFGH-JKMN-PQRS'), hashRecoveryCode('abcdefghjkmnpqrs'));
  });

  it('refuses unknown, used and malformed codes', () => {
    const { codes, hashes } = generateRecoveryCodes();
    const other = generateRecoveryCodes().codes[0] ?? '';
    assert.equal(matchRecoveryCode(other, hashes), -1);
    const used = hashes.filter((_, i) => i !== 0);
    assert.equal(matchRecoveryCode(codes[0] ?? '', used), -1);
    assert.equal(matchRecoveryCode(codes[1] ?? '', used), 0);
    for (const bad of ['', 'abcd', `${codes[2]}x`, (codes[2] ?? '').slice(0, -1), 'uuuu-uuuu-uuuu-uuuu']) {
      assert.equal(matchRecoveryCode(bad, hashes), -1, bad);
    }
    assert.equal(matchRecoveryCode(codes[2] ?? '', ['zz', '', ...hashes]), 4);
  });
});
