// Behaviour the client specification leaves open, pinned down here.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createFlagEngine } from './engine.ts';
import { compileRe2 } from './regex.ts';
import { compareSemver, parseSemver } from './semver.ts';
import { type Feature, featureSchema, type Strategy } from './types.ts';

const one = (strategies: Strategy[], extra: Partial<Feature> = {}) =>
  createFlagEngine({ features: [{ name: 'f', enabled: true, strategies, ...extra }] });

describe('featureSchema', () => {
  it('accepts what Unleash serves, dropping keys it does not model', () => {
    const parsed = featureSchema.parse({
      name: 'f',
      description: null,
      enabled: true,
      project: 'default',
      stale: false,
      type: 'release',
      strategies: [{ name: 'flexibleRollout', parameters: { rollout: 50, groupId: 'f' }, constraints: [] }],
      variants: [],
    });
    assert.equal('project' in parsed, false);
  });

  it('refuses garbage', () => {
    for (const bad of [
      { name: '', enabled: true, strategies: [] },
      { name: 'f', enabled: 'yes', strategies: [] },
      { name: 'f', enabled: true, strategies: {} },
      { name: 'f', enabled: true, strategies: [{ name: 'default', constraints: [{ operator: 'IN' }] }] },
      { name: 'f', enabled: true, strategies: [], variants: [{ name: 'v', weight: -1 }] },
    ]) {
      assert.equal(featureSchema.safeParse(bad).success, false, JSON.stringify(bad));
    }
  });
});

describe('engine', () => {
  it('keeps an unknown operator false even when inverted', () => {
    const e = one([
      { name: 'default', constraints: [{ contextName: 'x', operator: 'NOPE', inverted: true }] },
    ]);
    assert.equal(e.isEnabled('f', { properties: { x: 'a' } }), false);
  });

  it('falls back to "enabled without variant" when all weights are zero', () => {
    const e = one([{ name: 'default' }], { variants: [{ name: 'v', weight: 0 }] });
    assert.deepEqual({ ...e.getVariant('f') }, { name: 'disabled', enabled: false, feature_enabled: true });
  });

  it('returns frozen, shared variant objects', () => {
    const e = one([{ name: 'default' }], { variants: [{ name: 'v', weight: 1 }] });
    const a = e.getVariant('f', { userId: '1' });
    assert.ok(Object.isFrozen(a));
    assert.equal(a, e.getVariant('f', { userId: '2' }));
  });

  it('uses the injected random source for random stickiness', () => {
    const strategies: Strategy[] = [
      { name: 'flexibleRollout', parameters: { rollout: '50', stickiness: 'random', groupId: 'f' } },
    ];
    const low = createFlagEngine(
      { features: [{ name: 'f', enabled: true, strategies }] },
      { random: () => 0 },
    );
    const high = createFlagEngine(
      { features: [{ name: 'f', enabled: true, strategies }] },
      { random: () => 0.99 },
    );
    assert.equal(low.isEnabled('f'), true);
    assert.equal(high.isEnabled('f'), false);
  });

  it('matches applicationHostname case-insensitively', () => {
    const features = [
      {
        name: 'f',
        enabled: true,
        strategies: [{ name: 'applicationHostname', parameters: { hostNames: 'a, WEB-1' } }],
      },
    ];
    assert.equal(createFlagEngine({ features }, { hostname: 'web-1' }).isEnabled('f'), true);
    assert.equal(createFlagEngine({ features }, { hostname: 'web-2' }).isEnabled('f'), false);
  });

  // unleash-client parses only IPv4 ranges here; any other entry matches as an equal string.
  it('matches remoteAddress against IPv4 ranges, and other entries as written', () => {
    const e = one([{ name: 'remoteAddress', parameters: { IPs: '10.0.0.0/8, 2001:db8::/32, junk' } }]);
    assert.equal(e.isEnabled('f', { remoteAddress: '10.2.3.4' }), true);
    assert.equal(e.isEnabled('f', { remoteAddress: '2001:db8::9' }), false);
    assert.equal(e.isEnabled('f', { remoteAddress: '2001:db8::/32' }), true);
    assert.equal(e.isEnabled('f', { remoteAddress: '11.0.0.1' }), false);
    assert.equal(e.isEnabled('f', { remoteAddress: 'junk' }), true);
  });

  it('evaluates every flag at once', () => {
    const e = createFlagEngine({
      features: [
        { name: 'on', enabled: true, strategies: [] },
        { name: 'off', enabled: false, strategies: [] },
      ],
    });
    assert.deepEqual(
      e.evaluateAll().map((r) => [r.name, r.enabled]),
      [
        ['on', true],
        ['off', false],
      ],
    );
  });
});

describe('REGEX with RE2 (re2js, as unleash-client)', () => {
  it('refuses lookaround and backreferences', () => {
    assert.equal(compileRe2('(?<=a)b', false), undefined);
    assert.equal(compileRe2('^(?=a)', false), undefined);
    assert.equal(compileRe2('(?<n>a)\\k<n>', false), undefined);
    assert.equal(compileRe2('(a)\\1', false), undefined);
  });
  it('reads RE2-only syntax', () => {
    assert.equal(compileRe2('^(?P<word>ab)$', false)?.test('ab'), true);
    assert.equal(compileRe2('^\\Qa.b\\E$', false)?.test('axb'), false);
    assert.equal(compileRe2('^\\Qa.b\\E$', false)?.test('a.b'), true);
    assert.equal(compileRe2('^[]a]+$', false)?.test(']a]'), true);
    assert.equal(compileRe2('^[[:digit:][:upper:]]+$', false)?.test('A1'), true);
    assert.equal(compileRe2('^[[:constructor:]]$', false), undefined);
    // Scoped flags stay scoped (a translation to JS RegExp applied them to the whole pattern).
    assert.equal(compileRe2('^a(?i:b)c$', false)?.test('aBc'), true);
    assert.equal(compileRe2('^a(?i:b)c$', false)?.test('aBC'), false);
  });
  it('matches in linear time: (a+)+$ does not stall the event loop', () => {
    const e = one([
      { name: 'default', constraints: [{ contextName: 'email', operator: 'REGEX', value: '(a+)+$' }] },
    ]);
    // ~1 s with a backtracking engine at 26 characters, doubling with each one more.
    for (const input of [`${'a'.repeat(26)}!`, `${'a'.repeat(10_000)}!`]) {
      const started = performance.now();
      assert.equal(e.isEnabled('f', { properties: { email: input } }), false);
      const ms = performance.now() - started;
      assert.ok(ms < 50, `${input.length} characters took ${ms.toFixed(1)} ms`);
    }
  });
});

describe('semver', () => {
  it('ignores build metadata and orders prereleases', () => {
    const v = (s: string) => parseSemver(s) ?? assert.fail(s);
    assert.equal(compareSemver(v('1.2.3+build.7'), v('1.2.3')), 0);
    assert.ok(compareSemver(v('1.0.0-alpha'), v('1.0.0-alpha.1')) < 0);
    assert.ok(compareSemver(v('1.0.0-alpha.beta'), v('1.0.0-beta')) < 0);
    assert.ok(compareSemver(v('1.0.0-rc.1'), v('1.0.0')) < 0);
    assert.equal(parseSemver('01.2.3'), undefined);
  });
});
