// fewestInstructions must never say more than RE2 compiles to: a pattern it over-counted would be
// refused although RE2 accepts it. Checked against re2js over generated patterns (every construct
// it reads, nested, repeated) and the cases it exists for.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { RE2JS } from 're2js';
import { fewestInstructions } from './regex-size.ts';

const ATOMS = [
  ...['a', 'ab', '.', 'é', '😀', '{', '}', '{a}', '{,3}', ']', '^', '$', '(?i)'],
  ...[String.raw`\d`, String.raw`\pL`, String.raw`\p{Greek}`, String.raw`\PL`, String.raw`\x41`],
  ...[
    String.raw`\x{1F600}`,
    String.raw`\123`,
    String.raw`\0`,
    String.raw`\b`,
    String.raw`\A`,
    String.raw`\z`,
  ],
  ...[String.raw`\Qa.b\E`, String.raw`\Q\E`, String.raw`\{`, String.raw`\|`, String.raw`\n`],
  ...['[a-c]', '[^a]', '[]a]', '[^]a-z]', '[[:alpha:]]', String.raw`[\d\]]`, '[{3}]', '[(|)]'],
];
const QUANTIFIERS = ['', '', '', '*', '+', '?', '*?', '??', '{2}', '{3,}', '{0}', '{0,2}', '{5}?', '{40}'];
const GROUPS = ['(', '(?:', '(?P<n>', '(?<m>', '(?i:', '(?s-i:'];

/** A deterministic stream of patterns (a linear congruential generator: the same on every run). */
function* patterns(count: number): Generator<string> {
  let seed = 20261123;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const pick = (from: string[]) => from[next(from.length)] as string;
  const build = (depth: number): string => {
    const branches = next(5) === 0 ? 2 + next(2) : 1;
    return Array.from({ length: branches }, () => {
      let branch = '';
      for (let k = 1 + next(4); k > 0; k--) {
        const piece = depth < 3 && next(4) === 0 ? `${pick(GROUPS)}${build(depth + 1)})` : pick(ATOMS);
        branch += piece + pick(QUANTIFIERS);
      }
      return branch;
    }).join('|');
  };
  for (let i = 0; i < count; i++) yield build(0);
}

describe('fewestInstructions', () => {
  test('never more than re2js compiles to, over 20,000 generated patterns', () => {
    let compared = 0;
    for (const pattern of patterns(20_000)) {
      let size: number;
      try {
        size = RE2JS.compile(pattern).programSize();
      } catch {
        continue; // RE2 refuses it: nothing to compare
      }
      compared++;
      const fewest = fewestInstructions(pattern);
      assert.ok(fewest <= size, `${JSON.stringify(pattern)}: ${fewest} > ${size}`);
    }
    assert.ok(compared > 5_000, `${compared} compared`);
  });

  test('sees the large programs in the text', () => {
    const cases: [string, number][] = [
      ['a{1000}'.repeat(71), 71_000],
      ['(a|b){1000}'.repeat(45), 45_000],
      [String.raw`\pL{1000}`.repeat(55), 55_000],
      [`(?i)${'k{1000}'.repeat(70)}`, 70_000],
      ['(?:ab{10}){20}', 220],
      ['a{600}b|a{600}c', 601], // RE2 factors the common prefix out: one copy
      ['a{1000}|b', 1000],
      ['x{0}y', 1],
      [String.raw`\b{500}^{500}`, 1000], // empty-width: one instruction each (RE2 compiles 1,000)
    ];
    for (const [pattern, fewest] of cases) assert.equal(fewestInstructions(pattern), fewest, pattern);
  });

  test('what it cannot read is 0: left to RE2', () => {
    for (const pattern of ['(a', 'a)', '[a', 'a\\', '(?=a)b', '(?P=n)', 'a{1001}'])
      assert.equal(fewestInstructions(pattern), 0, pattern);
  });
});

test('empty-width assertions count: a group of anchors repeated a thousand times is refused uncompiled', () => {
  // Read as 0 before: compiled in full, 480,002 instructions and 1.2 s, then refused.
  const anchors = `(?:${'^$'.repeat(240)}){1000}`;
  assert.ok(fewestInstructions(anchors) >= 480_000, String(fewestInstructions(anchors)));
  assert.ok(fewestInstructions(String.raw`(?:\b\B){600}`) >= 1200);
  for (const small of [
    '^',
    '^^^^',
    '(?:^$){5}',
    String.raw`\b\b`,
    '(?:^|$){5}',
    '^{5}',
    String.raw`\Aab\z`,
  ]) {
    assert.ok(fewestInstructions(small) <= RE2JS.compile(small).programSize(), small);
  }
});
