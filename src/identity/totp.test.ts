import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { HOTP, Secret, TOTP } from 'otpauth';
import { generateTotpSecret, otpauthUri, totpStep, verifyTotp } from './totp.ts';

interface OtpVectors {
  hotp_rfc4226: { secretBase32: string; digits: number; cases: { counter: number; hotp6: string }[] };
  totp_rfc6238: {
    stepSeconds: number;
    digits: number;
    secrets: Record<string, { base32: string; hex: string }>;
    cases: { timeSeconds: number; counterHex: string; algorithm: string; totp8: string }[];
  };
}
const vectors = JSON.parse(
  readFileSync(
    new URL('../../../shared/testdata/otp-rfc4226-rfc6238/otp-vectors.json', import.meta.url),
    'utf8',
  ),
) as OtpVectors;

describe('RFC 4226 HOTP vectors (the primitive under verifyTotp)', () => {
  const { hotp_rfc4226: h } = vectors;
  assert.equal(h.cases.length, 10);
  for (const c of h.cases) {
    it(`counter ${c.counter} → ${c.hotp6}`, () => {
      const secret = Secret.fromBase32(h.secretBase32);
      assert.equal(HOTP.generate({ secret, counter: c.counter, digits: h.digits }), c.hotp6);
      // verifyTotp at the time of that counter accepts the same code.
      assert.deepEqual(verifyTotp(h.secretBase32, c.hotp6, { nowMs: c.counter * 30_000 }), {
        ok: true,
        step: c.counter,
      });
    });
  }
});

describe('RFC 6238 TOTP vectors', () => {
  const { totp_rfc6238: t } = vectors;
  assert.equal(t.cases.length, 18);
  for (const c of t.cases) {
    it(`${c.algorithm} at ${c.timeSeconds}s → ${c.totp8}`, () => {
      const seed = t.secrets[c.algorithm];
      assert.ok(seed);
      assert.equal(totpStep(c.timeSeconds * 1000), Number.parseInt(c.counterHex, 16));
      const secret = Secret.fromBase32(seed.base32);
      assert.deepEqual(secret.bytes, new Uint8Array(Buffer.from(seed.hex, 'hex')));
      const code = TOTP.generate({
        secret,
        algorithm: c.algorithm,
        digits: t.digits,
        period: t.stepSeconds,
        timestamp: c.timeSeconds * 1000,
      });
      assert.equal(code, c.totp8);
      // The 6-digit code Steward accepts is the last 6 digits of the 8-digit one (same truncation, mod 10^6).
      if (c.algorithm === 'SHA1') {
        assert.equal(verifyTotp(seed.base32, c.totp8.slice(2), { nowMs: c.timeSeconds * 1000 }).ok, true);
      }
    });
  }
});

describe('verifyTotp', () => {
  const secret = generateTotpSecret();
  const at = (ms: number) => TOTP.generate({ secret: Secret.fromBase32(secret), timestamp: ms });
  const now = 1_700_000_015_000;
  const step = totpStep(now);

  it('generates 160-bit base32 seeds', () => {
    assert.match(secret, /^[A-Z2-7]{32}$/);
    assert.notEqual(generateTotpSecret(), secret);
  });

  it('accepts the current step and one step either side, but not two', () => {
    assert.deepEqual(verifyTotp(secret, at(now), { nowMs: now }), { ok: true, step });
    assert.deepEqual(verifyTotp(secret, at(now - 30_000), { nowMs: now }), { ok: true, step: step - 1 });
    assert.deepEqual(verifyTotp(secret, at(now + 30_000), { nowMs: now }), { ok: true, step: step + 1 });
    assert.deepEqual(verifyTotp(secret, at(now - 60_000), { nowMs: now }), { ok: false, reason: 'invalid' });
    assert.deepEqual(verifyTotp(secret, at(now + 60_000), { nowMs: now }), { ok: false, reason: 'invalid' });
  });

  it('refuses a replay of the same code, and an older code, within the window', () => {
    const first = verifyTotp(secret, at(now), { nowMs: now });
    assert.ok(first.ok);
    assert.deepEqual(verifyTotp(secret, at(now), { nowMs: now + 5_000, lastUsedStep: first.step }), {
      ok: false,
      reason: 'replayed',
    });
    assert.deepEqual(verifyTotp(secret, at(now - 30_000), { nowMs: now, lastUsedStep: first.step }), {
      ok: false,
      reason: 'replayed',
    });
    // The next step's code is still good.
    assert.deepEqual(
      verifyTotp(secret, at(now + 30_000), { nowMs: now + 30_000, lastUsedStep: first.step }),
      {
        ok: true,
        step: step + 1,
      },
    );
  });

  it('tolerates spaces and rejects malformed codes', () => {
    const code = at(now);
    assert.equal(verifyTotp(secret, `${code.slice(0, 3)} ${code.slice(3)}`, { nowMs: now }).ok, true);
    for (const bad of ['', '12345', '1234567', 'abcdef', `${code}0`]) {
      assert.deepEqual(verifyTotp(secret, bad, { nowMs: now }), { ok: false, reason: 'invalid' });
    }
  });

  it('builds an otpauth URI authenticator apps understand', () => {
    const uri = new URL(otpauthUri({ secret, account: 'ada@example.com', issuer: 'Steward' }));
    assert.equal(uri.protocol, 'otpauth:');
    assert.equal(uri.host, 'totp');
    assert.equal(decodeURIComponent(uri.pathname), '/Steward:ada@example.com');
    assert.equal(uri.searchParams.get('secret'), secret);
    assert.equal(uri.searchParams.get('issuer'), 'Steward');
    assert.equal(uri.searchParams.get('algorithm'), 'SHA1');
    assert.equal(uri.searchParams.get('digits'), '6');
    assert.equal(uri.searchParams.get('period'), '30');
  });
});
