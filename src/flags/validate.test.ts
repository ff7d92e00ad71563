import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { and, eq } from 'drizzle-orm';
import { type VaultTestApp, vaultTestApp } from '../vault/test-support.ts';
import { compileConstraint, NEVER } from './constraints.ts';
import { featureFlags } from './schema.ts';
import type { Feature } from './types.ts';
import { constraintsIssues } from './validate.ts';

type Body = Record<string, unknown>;
const flag = (name: string, extra: Body = {}): Body => ({
  name,
  enabled: true,
  strategies: [{ name: 'default' }],
  ...extra,
});
const withStrategy = (name: string, strategy: Body): Body => flag(name, { strategies: [strategy] });
const withConstraint = (name: string, constraint: Body): Body =>
  withStrategy(name, { name: 'default', constraints: [{ contextName: 'appVersion', ...constraint }] });
const withVariants = (name: string, variants: Body[]): Body => flag(name, { variants });
const variant = (name: string, weight: number, weightType?: 'fix' | 'variable'): Body => ({
  name,
  weight,
  ...(weightType ? { weightType } : {}),
});

const S0 = 'body.strategies[0]';
const C0 = `${S0}.constraints[0]`;

// Each answered 201 before; each is something unleash-client throws on or that cannot mean anything.
const REFUSED: [string, Body, string][] = [
  [
    'userIds not a string',
    withStrategy('p1', { name: 'userWithId', parameters: { userIds: 5 } }),
    `${S0}.parameters.userIds`,
  ],
  [
    'userIds empty',
    withStrategy('p2', { name: 'userWithId', parameters: { userIds: ' , ' } }),
    `${S0}.parameters.userIds`,
  ],
  [
    'userWithId without userIds',
    withStrategy('p3', { name: 'userWithId', parameters: {} }),
    `${S0}.parameters.userIds`,
  ],
  [
    'rollout above 100',
    withStrategy('p4', { name: 'flexibleRollout', parameters: { rollout: '150' } }),
    `${S0}.parameters.rollout`,
  ],
  [
    'rollout not a whole number',
    withStrategy('p5', { name: 'flexibleRollout', parameters: { rollout: '2.5' } }),
    `${S0}.parameters.rollout`,
  ],
  [
    'rollout a number',
    withStrategy('p6', { name: 'flexibleRollout', parameters: { rollout: 50 } }),
    `${S0}.parameters.rollout`,
  ],
  [
    'rollout missing',
    withStrategy('p7', { name: 'flexibleRollout', parameters: { stickiness: 'userId' } }),
    `${S0}.parameters.rollout`,
  ],
  [
    'empty stickiness',
    withStrategy('p8', { name: 'flexibleRollout', parameters: { rollout: '5', stickiness: '' } }),
    `${S0}.parameters.stickiness`,
  ],
  [
    'groupId a boolean',
    withStrategy('p9', { name: 'flexibleRollout', parameters: { rollout: '5', groupId: true } }),
    `${S0}.parameters.groupId`,
  ],
  [
    'percentage out of range',
    withStrategy('p10', { name: 'gradualRolloutUserId', parameters: { percentage: '-1' } }),
    `${S0}.parameters.percentage`,
  ],
  [
    'IPs with a bad entry',
    withStrategy('p11', { name: 'remoteAddress', parameters: { IPs: '10.0.0.0/8, 10.0.0.0/33' } }),
    `${S0}.parameters.IPs`,
  ],
  [
    'IPs not an address',
    withStrategy('p12', { name: 'remoteAddress', parameters: { IPs: 'office' } }),
    `${S0}.parameters.IPs`,
  ],
  [
    'IPs with an IPv6 range (never matches a real address)',
    withStrategy('p16', { name: 'remoteAddress', parameters: { IPs: '10.0.0.0/8, 2001:db8::/32' } }),
    `${S0}.parameters.IPs`,
  ],
  [
    'hostNames a boolean',
    withStrategy('p13', { name: 'applicationHostname', parameters: { hostNames: true } }),
    `${S0}.parameters.hostNames`,
  ],
  [
    'parameter default does not take',
    withStrategy('p14', { name: 'default', parameters: { rollout: '5' } }),
    `${S0}.parameters.rollout`,
  ],
  ['unknown strategy', withStrategy('p15', { name: 'myCustomStrategy', parameters: {} }), `${S0}.name`],
  ['IN without values', withConstraint('c1', { operator: 'IN', value: 'x' }), `${C0}.values`],
  ['NOT_IN with no values', withConstraint('c2', { operator: 'NOT_IN', values: [] }), `${C0}.values`],
  ['STR_CONTAINS without values', withConstraint('c3', { operator: 'STR_CONTAINS' }), `${C0}.values`],
  ['unknown operator', withConstraint('c4', { operator: 'BOGUS', values: ['x'] }), `${C0}.operator`],
  ['NUM_GT without value', withConstraint('c5', { operator: 'NUM_GT', values: ['1'] }), `${C0}.value`],
  ['NUM_EQ not a number', withConstraint('c6', { operator: 'NUM_EQ', value: 'ten' }), `${C0}.value`],
  ['NUM_LT empty', withConstraint('c7', { operator: 'NUM_LT', value: ' ' }), `${C0}.value`],
  ['SEMVER_GT with a v', withConstraint('c8', { operator: 'SEMVER_GT', value: 'v1.2.3' }), `${C0}.value`],
  ['SEMVER_EQ not semver', withConstraint('c9', { operator: 'SEMVER_EQ', value: '1.2' }), `${C0}.value`],
  ['SEMVER_LT without value', withConstraint('c10', { operator: 'SEMVER_LT' }), `${C0}.value`],
  [
    'DATE_AFTER not a date',
    withConstraint('c11', { operator: 'DATE_AFTER', value: 'yesterday' }),
    `${C0}.value`,
  ],
  [
    'DATE_BEFORE without a zone',
    withConstraint('c12', { operator: 'DATE_BEFORE', value: '2025-01-31T09:00:00' }),
    `${C0}.value`,
  ],
  [
    'DATE_AFTER 30 February',
    withConstraint('c13', { operator: 'DATE_AFTER', value: '2024-02-30T00:00:00Z' }),
    `${C0}.value`,
  ],
  ['REGEX lookahead', withConstraint('c14', { operator: 'REGEX', value: '^(?=admin)' }), `${C0}.value`],
  ['REGEX backreference', withConstraint('c15', { operator: 'REGEX', value: '(a)\\1' }), `${C0}.value`],
  ['REGEX lookbehind', withConstraint('c16', { operator: 'REGEX', value: '(?<!x)y' }), `${C0}.value`],
  ['REGEX without value', withConstraint('c17', { operator: 'REGEX', values: ['a'] }), `${C0}.value`],
  ['REGEX too long', withConstraint('c18', { operator: 'REGEX', value: 'a'.repeat(501) }), `${C0}.value`],
  [
    'REGEX too large once compiled',
    withConstraint('c19', { operator: 'REGEX', value: '(a|b){600}' }),
    `${C0}.value`,
  ],
  [
    'IN_CIDR bad range',
    withConstraint('c20', { operator: 'IN_CIDR', values: ['10.0.0.0/8', 'lan'] }),
    `${C0}.values[1]`,
  ],
  [
    'IN_CIDR prefix of three digits (node:net read /008, unleash-client does not)',
    withConstraint('c21', { operator: 'IN_CIDR', values: ['10.0.0.0/008'] }),
    `${C0}.values[0]`,
  ],
  ['weight above 1000', withVariants('v1', [variant('a', 1001)]), 'body.variants[0].weight'],
  [
    'fixed weights above 1000',
    withVariants('v2', [variant('a', 600, 'fix'), variant('b', 500, 'fix'), variant('c', 0)]),
    'body.variants',
  ],
  [
    'fixed weights short, nothing variable',
    withVariants('v3', [variant('a', 300, 'fix'), variant('b', 300, 'fix')]),
    'body.variants',
  ],
  [
    'variable weights not the rest of 1000',
    withVariants('v4', [variant('a', 300, 'fix'), variant('b', 100)]),
    'body.variants',
  ],
  ['weights summing to 0', withVariants('v5', [variant('a', 0), variant('b', 0)]), 'body.variants'],
  [
    'duplicate variant names',
    withVariants('v6', [variant('a', 500), variant('a', 500)]),
    'body.variants[1].name',
  ],
  [
    'json payload not JSON',
    withVariants('v7', [{ ...variant('a', 1000), payload: { type: 'json', value: '{' } }]),
    'body.variants[0].payload.value',
  ],
  [
    'number payload not a number',
    withVariants('v8', [{ ...variant('a', 1000), payload: { type: 'number', value: 'x' } }]),
    'body.variants[0].payload.value',
  ],
  [
    'strategy variants above 1000',
    withStrategy('v9', { name: 'default', variants: [variant('a', 700, 'fix'), variant('b', 700, 'fix')] }),
    `${S0}.variants`,
  ],
];

describe('flag validation on write', () => {
  let v: VaultTestApp;
  before(async () => {
    v = await vaultTestApp('pglite');
  });
  after(() => v.close());

  const post = (body: Body, env = 'development') =>
    v.req('POST', `/v1/flags/${env}`, { token: v.tokens.manager, body });
  const put = (body: Body, env = 'development') =>
    v.req('PUT', `/v1/flags/${env}/${body.name}`, { token: v.tokens.manager, body });
  const errorsOf = (res: { statusCode: number; body: string; json(): unknown }) => {
    assert.equal(res.statusCode, 400, res.body);
    const problem = res.json() as { code: string; errors: { path: string; message: string }[] };
    assert.equal(problem.code, 'invalid_flag', res.body);
    return problem.errors;
  };

  test('every refusal: 400 invalid_flag naming the field, on create and on replace', async () => {
    for (const [what, body, path] of REFUSED) {
      const errors = errorsOf(await post(body));
      assert.deepEqual(
        errors.map((e) => e.path),
        [path],
        `${what}: ${JSON.stringify(errors)}`,
      );
      assert.ok(errors[0]?.message, what);
      const created = await post(flag(String(body.name)));
      assert.equal(created.statusCode, 201, created.body);
      const replaced = await put(body);
      assert.deepEqual(
        errorsOf(replaced).map((e) => e.path),
        [path],
        `${what} (replace)`,
      );
    }
  });

  test('every problem of a body is listed; the messages say what is wrong', async () => {
    const errors = errorsOf(
      await post(
        flag('many', {
          strategies: [
            {
              name: 'userWithId',
              parameters: { userIds: 5 },
              constraints: [{ contextName: 'x', operator: 'REGEX', value: '(?=a)' }],
            },
            { name: 'flexibleRollout', parameters: { rollout: '101' } },
          ],
          variants: [variant('a', 2000)],
        }),
      ),
    );
    assert.deepEqual(
      errors.map((e) => e.path),
      [
        `${S0}.parameters.userIds`,
        `${S0}.constraints[0].value`,
        'body.strategies[1].parameters.rollout',
        'body.variants[0].weight',
      ],
    );
    assert.match(errors[0]?.message ?? '', /string/);
    assert.match(errors[1]?.message ?? '', /RE2/);
  });

  test('the edge of each rule is accepted', async () => {
    const accepted: Body[] = [
      withStrategy('ok-rollout-0', { name: 'flexibleRollout', parameters: { rollout: '0' } }),
      withStrategy('ok-rollout-100', {
        name: 'flexibleRollout',
        parameters: { rollout: '100', stickiness: 'tenant', groupId: '' },
      }),
      withStrategy('ok-ips', { name: 'remoteAddress', parameters: { IPs: '10.0.0.0/8, 192.168.1.10, ::1' } }),
      withConstraint('ok-num', { operator: 'NUM_GTE', value: '-1.5e3' }),
      withConstraint('ok-date', { operator: 'DATE_BEFORE', value: '2024-02-29T23:59:59.999+02:00' }),
      withConstraint('ok-semver', { operator: 'SEMVER_GTE', value: '1.0.0-rc.1+build.5' }),
      withConstraint('ok-regex', { operator: 'REGEX', value: '^\\Qv1.\\E[[:digit:]]+(?i:-BETA)?$' }),
      withConstraint('ok-in', { operator: 'IN', values: ['', 'x'] }),
      withVariants('ok-fixed', [variant('a', 200, 'fix'), variant('b', 800)]),
      withVariants('ok-all-fixed', [variant('a', 250, 'fix'), variant('b', 750, 'fix')]),
      withVariants('ok-relative', [variant('a', 1), variant('b', 3), variant('c', 0)]),
    ];
    for (const body of accepted) {
      const res = await post(body);
      assert.equal(res.statusCode, 201, `${body.name}: ${res.body}`);
    }
  });

  test('segments: the same constraint rules on create and replace', async () => {
    const bad = { name: 'seg-bad', constraints: [{ contextName: 'plan', operator: 'IN' }] };
    const created = await v.req('POST', '/v1/segments', { token: v.tokens.manager, body: bad });
    assert.deepEqual(
      errorsOf(created).map((e) => e.path),
      ['body.constraints[0].values'],
    );
    const good = await v.req('POST', '/v1/segments', {
      token: v.tokens.manager,
      body: { name: 'seg-good', constraints: [{ contextName: 'plan', operator: 'IN', values: ['pro'] }] },
    });
    assert.equal(good.statusCode, 201, good.body);
    const replaced = await v.req('PUT', `/v1/segments/${good.json().id}`, {
      token: v.tokens.manager,
      body: { name: 'seg-good', constraints: [{ contextName: 'plan', operator: 'SEMVER_EQ', value: 'x' }] },
    });
    assert.deepEqual(
      errorsOf(replaced).map((e) => e.path),
      ['body.constraints[0].value'],
    );
  });

  test('one level of dependency: a parent cannot gain parents while flags depend on it', async () => {
    for (const name of ['dep-root', 'seg-flag']) assert.equal((await post(flag(name))).statusCode, 201);
    const child = await post(flag('dep-child', { dependencies: [{ feature: 'seg-flag' }] }));
    assert.equal(child.statusCode, 201, child.body);
    // The grandchild is refused (it was already)…
    const grandchild = errorsOf(
      await post(flag('dep-grandchild', { dependencies: [{ feature: 'dep-child' }] })),
    );
    assert.equal(grandchild[0]?.path, 'body.dependencies[0].feature');
    // …and so is giving the parent a parent (it answered 200 and turned dep-child off in unleash-client).
    const errors = errorsOf(await put(flag('seg-flag', { dependencies: [{ feature: 'dep-root' }] })));
    assert.equal(errors[0]?.path, 'body.dependencies');
    assert.match(errors[0]?.message ?? '', /dep-child/);
    // Other edits of the parent are fine; so is the parent gaining parents once it has no children.
    assert.equal((await put(flag('seg-flag', { enabled: false }))).statusCode, 200);
    assert.equal(
      (await v.req('DELETE', '/v1/flags/development/dep-child', { token: v.tokens.manager })).statusCode,
      204,
    );
    assert.equal((await put(flag('seg-flag', { dependencies: [{ feature: 'dep-root' }] }))).statusCode, 200);
  });

  test('one level of dependency is checked again when a held change is approved', async () => {
    const approve = (id: string) =>
      v.req('POST', `/v1/vault/changes/${id}/approve`, { token: v.tokens.manager2, body: {} });
    for (const name of ['held-root', 'held-parent']) {
      const res = await post(flag(name), 'production');
      assert.equal(res.statusCode, 201, res.body);
    }
    const policy = await v.req('PUT', '/v1/vault/policy', {
      token: v.tokens.admin,
      body: { four_eyes: true },
    });
    assert.equal(policy.statusCode, 200, policy.body);
    try {
      // Held while held-parent has no children: valid then.
      const gainsParent = await put(
        flag('held-parent', { dependencies: [{ feature: 'held-root' }] }),
        'production',
      );
      assert.equal(gainsParent.statusCode, 202, gainsParent.body);
      const child = await post(
        flag('held-child', { dependencies: [{ feature: 'held-parent' }] }),
        'production',
      );
      assert.equal(child.statusCode, 202, child.body);
      assert.equal((await approve(child.json().change_id)).json().status, 'applied');
      const late = await approve(gainsParent.json().change_id);
      assert.equal(errorsOf(late)[0]?.path, 'body.dependencies');
      const parent = await v.req('GET', '/v1/flags/production/held-parent', { token: v.tokens.viewer });
      assert.deepEqual(parent.json().dependencies, []);
    } finally {
      await v.req('PUT', '/v1/vault/policy', { token: v.tokens.admin, body: { four_eyes: false } });
    }
  });

  describe('IP entries are checked as evaluation reads them (unleash-client)', () => {
    const evaluate = async (name: string, remoteAddress: string) => {
      const res = await v.req('POST', '/v1/flags/development/evaluate', {
        token: v.tokens.viewer,
        body: { context: { remoteAddress }, flags: [name] },
      });
      assert.equal(res.statusCode, 200, res.body);
      return res.json().data[0].enabled as boolean;
    };
    const ips = (name: string, list: string) =>
      withStrategy(name, { name: 'remoteAddress', parameters: { IPs: list } });
    const inCidr = (name: string, values: string[]) =>
      withStrategy(name, {
        name: 'default',
        constraints: [{ contextName: 'remoteAddress', operator: 'IN_CIDR', values }],
      });

    test('remoteAddress: an IPv6 range is refused, naming it and IN_CIDR', async () => {
      const errors = errorsOf(await post(ips('ip6-range', '10.0.0.0/8, 2001:db8::/32, ::1/128')));
      assert.deepEqual(
        errors.map((e) => e.path),
        [`${S0}.parameters.IPs`],
      );
      const message = errors[0]?.message ?? '';
      assert.match(message, /IPv6 ranges never match here: "2001:db8::\/32", "::1\/128"/);
      assert.match(message, /IN_CIDR/);
      assert.doesNotMatch(message, /10\.0\.0\.0/);
    });

    test('remoteAddress: unreadable entries and IPv6 ranges are both reported', async () => {
      const [error] = errorsOf(await post(ips('ip-mixed', 'office, 2001:db8::/32')));
      assert.match(
        error?.message ?? '',
        /not IP addresses or CIDR ranges: "office"; IPv6 ranges never match/,
      );
    });

    test('remoteAddress: IPv6 addresses, zones and /08 are accepted and match as the SDK matches', async () => {
      const body = ips('ip-forms', '::1, fe80::1%eth0, ::ffff:10.0.0.5, 10.0.0.0/08');
      const res = await post(body);
      assert.equal(res.statusCode, 201, res.body);
      assert.equal(await evaluate('ip-forms', '10.200.0.1'), true, '/08 reads as /8');
      assert.equal(await evaluate('ip-forms', '::1'), true);
      assert.equal(await evaluate('ip-forms', 'fe80::1%eth0'), true);
      assert.equal(await evaluate('ip-forms', '::ffff:10.0.0.5'), true);
      assert.equal(await evaluate('ip-forms', '11.0.0.1'), false);
    });

    test('IN_CIDR: an IPv6 range with a zone is accepted (node:net refused it) and matches', async () => {
      const res = await post(inCidr('cidr-zone', ['fe80::/10%eth0', '2001:db8::/32']));
      assert.equal(res.statusCode, 201, res.body);
      assert.equal(await evaluate('cidr-zone', 'fe80::1'), true);
      assert.equal(await evaluate('cidr-zone', '2001:db8::9'), true);
      assert.equal(await evaluate('cidr-zone', '10.0.0.1'), false);
    });

    test('IN_CIDR: a range evaluation cannot read is refused on flags and segments alike', async () => {
      const errors = errorsOf(
        await post(inCidr('cidr-bad', ['10.0.0.0/8', '010.0.0.0/8', '2001:db8::/129'])),
      );
      assert.deepEqual(
        errors.map((e) => e.path),
        [`${S0}.constraints[0].values[1]`, `${S0}.constraints[0].values[2]`],
      );
      const segment = await v.req('POST', '/v1/segments', {
        token: v.tokens.manager,
        body: {
          name: 'seg-cidr',
          constraints: [{ contextName: 'remoteAddress', operator: 'IN_CIDR', values: ['10.0.0.0/008'] }],
        },
      });
      assert.deepEqual(
        errorsOf(segment).map((e) => e.path),
        ['body.constraints[0].values[0]'],
      );
    });
  });

  test('flags stored before these rules still load and evaluate; writing them again is checked', async () => {
    assert.equal((await post(flag('legacy'), 'staging')).statusCode, 201);
    const legacy: Feature = {
      name: 'legacy',
      enabled: true,
      strategies: [
        { name: 'myCustomStrategy', parameters: {}, constraints: [] },
        {
          name: 'flexibleRollout',
          parameters: { rollout: 100, groupId: 'legacy' },
          constraints: [
            { contextName: 'plan', operator: 'BOGUS', values: ['pro'], inverted: true },
            { contextName: 'email', operator: 'REGEX', value: '(?=x)', inverted: true },
            { contextName: 'tier', operator: 'NUM_GT', value: 'high', inverted: true },
          ],
        },
      ],
      variants: [variant('a', 300, 'fix') as never],
    };
    const db = v.t.app.steward.db.db;
    await db
      .update(featureFlags)
      .set({ definition: legacy })
      .where(and(eq(featureFlags.orgId, v.t.orgId), eq(featureFlags.name, 'legacy')));
    const got = await v.req('GET', '/v1/flags/staging/legacy', { token: v.tokens.viewer });
    assert.equal(got.statusCode, 200, got.body);
    const evaluated = await v.req('POST', '/v1/flags/staging/evaluate', {
      token: v.tokens.viewer,
      body: { context: { userId: 'u1' }, flags: ['legacy'] },
    });
    assert.equal(evaluated.statusCode, 200, evaluated.body);
    // Unknown strategies and operators are false, even inverted, as the client specification says.
    assert.equal(evaluated.json().data[0].enabled, false);
    const { name: _, ...rest } = legacy;
    assert.equal(errorsOf(await put({ name: 'legacy', ...rest }, 'staging')).length, 6);
  });
});

describe('IN_CIDR: accepted on write exactly when evaluation reads the range', () => {
  // Each entry was read one way by node:net (the old check) and another by unleash-client, or is
  // an edge of the SDK's parser.
  const ENTRIES = [
    '10.0.0.0/8',
    '10.0.0.0/08',
    '10.0.0.0/008',
    '010.0.0.0/8',
    '10.0.0.0/33',
    '10.0.0.5/0',
    '10.0.0.5%eth0',
    ' 10.0.0.0/8 ',
    '::/0',
    '::/00',
    '0::0/000',
    '::ffff:10.0.0.0/104',
    '::ffff:010.0.0.5',
    '2001:db8::/32',
    '2001:DB8::/32',
    '2001:db8::9/129',
    'fe80::1%eth1',
    'fe80::/10%eth0',
    'fe80::1%eth0/64',
    'fe80::1%',
    'fe80::1%a\nb',
    '1:2:3:4:5:6:7::',
    '1::2:3:4:5:6:7:8',
    '12345::1',
    'junk',
  ];

  test('validation and the compiled constraint agree on every entry', () => {
    const disagreements = ENTRIES.filter((value) => {
      const constraint = { contextName: 'remoteAddress', operator: 'IN_CIDR', values: [value] };
      const accepted = constraintsIssues([constraint], 'c').length === 0;
      const understood = compileConstraint(constraint) !== NEVER;
      return accepted !== understood;
    });
    assert.deepEqual(disagreements, []);
  });
});
