import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { describe, it } from 'node:test';
import { hash, parseOptions } from '@node-rs/argon2';
import {
  ARGON2_CONCURRENCY,
  ARGON2_PARAMS,
  argon2Running,
  checkPasswordPolicy,
  DUMMY_HASH,
  hashPassword,
  verifyDummy,
  verifyPassword,
} from './password.ts';

describe('hashPassword / verifyPassword', () => {
  it('hashes with Argon2id and the OWASP parameters, salted', async () => {
    const h = await hashPassword('correct horse battery staple');
    assert.match(h, /^\$argon2id\$v=19\$m=12288,t=3,p=1\$/);
    assert.notEqual(await hashPassword('correct horse battery staple'), h);
    assert.deepEqual(await verifyPassword(h, 'correct horse battery staple'), {
      ok: true,
      needsRehash: false,
    });
    assert.deepEqual(await verifyPassword(h, 'correct horse battery stapl'), {
      ok: false,
      needsRehash: false,
    });
  });

  it('asks for a rehash when the stored parameters are not the current ones', async () => {
    const weak = await hash('correct horse battery staple', {
      algorithm: 2,
      memoryCost: 4096,
      timeCost: 3,
      parallelism: 1,
    });
    assert.deepEqual(await verifyPassword(weak, 'correct horse battery staple'), {
      ok: true,
      needsRehash: true,
    });
    assert.deepEqual(await verifyPassword(weak, 'wrong password here'), { ok: false, needsRehash: false });
    const argon2i = await hash('correct horse battery staple', { ...ARGON2_PARAMS, algorithm: 1 });
    assert.deepEqual(await verifyPassword(argon2i, 'correct horse battery staple'), {
      ok: true,
      needsRehash: true,
    });
  });

  it('matches composed and decomposed Unicode forms of the same password', async () => {
    const h = await hashPassword('caf\u00e9 au lait, s’il vous plaît');
    assert.equal((await verifyPassword(h, 'cafe\u0301 au lait, s’il vous plaît')).ok, true);
  });

  it('refuses, without throwing, a stored value that is not an Argon2 hash or an oversized input', async () => {
    assert.deepEqual(await verifyPassword('not-a-hash', 'whatever password'), {
      ok: false,
      needsRehash: false,
    });
    const h = await hashPassword('correct horse battery staple');
    assert.deepEqual(await verifyPassword(h, 'x'.repeat(100_000)), { ok: false, needsRehash: false });
  });

  it('keeps the dummy hash on the current parameters', () => {
    const p = parseOptions(DUMMY_HASH);
    assert.deepEqual(
      { m: p.memoryCost, t: p.timeCost, p: p.parallelism, len: p.outputLen, alg: p.algorithm, v: p.version },
      {
        m: ARGON2_PARAMS.memoryCost,
        t: ARGON2_PARAMS.timeCost,
        p: ARGON2_PARAMS.parallelism,
        len: 32,
        alg: 2,
        v: 1,
      },
    );
  });

  it('runs at most one Argon2 computation per core, and every queued one completes', async () => {
    const h = await hashPassword('correct horse battery staple');
    let peak = 0;
    const sample = setInterval(() => {
      peak = Math.max(peak, argon2Running());
    }, 1);
    const many = 3 * ARGON2_CONCURRENCY + 1;
    const results = await Promise.all(
      Array.from({ length: many }, (_, i) =>
        i % 3 === 2
          ? verifyDummy().then(() => false)
          : verifyPassword(h, i % 3 === 0 ? 'correct horse battery staple' : 'wrong').then((c) => c.ok),
      ),
    );
    clearInterval(sample);
    assert.deepEqual(
      results,
      Array.from({ length: many }, (_, i) => i % 3 === 0),
    );
    assert.ok(peak >= 1 && peak <= ARGON2_CONCURRENCY, `peak ${peak}, limit ${ARGON2_CONCURRENCY}`);
    assert.equal(argon2Running(), 0, 'every slot handed back');
  });

  it('spends about as long on an unknown user as on a wrong password', async () => {
    const h = await hashPassword('correct horse battery staple');
    // Interleaved, so a busy machine slows both sides alike; medians, so one stall does not count.
    const wrongTimes: number[] = [];
    const dummyTimes: number[] = [];
    const time = async (fn: () => Promise<unknown>, into: number[]) => {
      const t = performance.now();
      await fn();
      into.push(performance.now() - t);
    };
    for (let i = 0; i < 9; i++) {
      await time(() => verifyPassword(h, 'wrong password!'), wrongTimes);
      await time(() => verifyDummy(), dummyTimes);
    }
    const median = (times: number[]) => times.sort((a, b) => a - b)[Math.floor(times.length / 2)] ?? 0;
    const wrong = median(wrongTimes);
    const dummy = median(dummyTimes);
    const ratio = dummy / wrong;
    assert.ok(ratio > 0.5 && ratio < 2, `dummy ${dummy.toFixed(1)} ms vs wrong ${wrong.toFixed(1)} ms`);
    assert.ok(wrong > 2, 'a verify this fast means the parameters are not applied');
  });
});

describe('checkPasswordPolicy', () => {
  const cases: [string, ReturnType<typeof checkPasswordPolicy>, { email?: string; username?: string }?][] = [
    ['short1!', 'password_too_short'],
    ['elevenchars', 'password_too_short'],
    ['twelve chars', null],
    // 11 code points although 22 UTF-16 units: length is counted in characters.
    ['😀😀😀😀😀😀😀😀😀😀😀', 'password_too_short'],
    ['x'.repeat(256).replace(/x/g, (_, i: number) => String.fromCharCode(97 + (i % 26))), null],
    ['a'.repeat(257), 'password_too_long'],
    ['1q2w3e4r5t6y', 'password_too_common'],
    ['QWERTY123456', 'password_too_common'],
    ['123qweASDzxc', 'password_too_common'],
    ['Password2024!', 'password_too_common'],
    ['!!Sunshine1234', 'password_too_common'],
    ['dragondragon', 'password_too_common'],
    ['abcabcabcabc', 'password_too_common'],
    ['aaaaaaaaaaaaaaa', 'password_too_common'],
    ['Steward12345!', 'password_too_common'],
    ['plum-orbit-canal-92', null],
    ['jane.doe-secure-9921', 'password_contains_identity', { email: 'Jane.Doe@example.com' }],
    ['my-name-is-JDOE-really', 'password_contains_identity', { username: 'jdoe' }],
    ['plum-orbit-canal-92', null, { email: 'jane@example.com', username: 'jane' }],
    ['ann-plum-orbit-canal', null, { username: 'ann' }],
  ];
  for (const [pw, expected, identity] of cases) {
    it(`${JSON.stringify(pw.length > 30 ? `${pw.slice(0, 12)}…(${pw.length})` : pw)} → ${expected}`, () => {
      assert.equal(checkPasswordPolicy(pw, identity), expected);
    });
  }

  it('refuses every 12+ character entry of the shipped list, in any case', async () => {
    const { readFileSync } = await import('node:fs');
    const entries = readFileSync(new URL('./common-passwords.txt', import.meta.url), 'utf8')
      .split('\n')
      .filter((l) => l.length >= 12 && !l.startsWith('# '));
    assert.ok(entries.length > 250, `only ${entries.length} long entries`);
    for (const e of entries) {
      if ([...e].length > 256) continue;
      assert.equal(checkPasswordPolicy(e.toUpperCase()), 'password_too_common', e);
    }
  });
});
