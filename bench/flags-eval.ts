// Local flag evaluation: Steward's compiled engine against unleash-client's isEnabled on the
// same ~50 flags and the same contexts, in one process. unleash-client runs from bootstrap
// data; its one fetch goes to a closed port on 127.0.0.1 and fails, metrics are off.
// Run: node --import tsx bench/flags-eval.ts
import { once } from 'node:events';
import { type ClientFeaturesResponse, type Context, InMemStorageProvider, Unleash } from 'unleash-client';
import { createFlagEngine } from '../src/flags/engine.ts';
import type { ClientFeatures, Constraint, Feature, Strategy } from '../src/flags/types.ts';

const env = (values: string[]): Constraint => ({ contextName: 'environment', operator: 'IN', values });
const rollout = (
  name: string,
  pct: number,
  stickiness = 'default',
  constraints: Constraint[] = [],
): Strategy => ({
  name: 'flexibleRollout',
  parameters: { rollout: String(pct), stickiness, groupId: name },
  constraints,
});
const flag = (name: string, strategies: Strategy[], extra: Partial<Feature> = {}): Feature => ({
  name,
  description: null,
  enabled: true,
  strategies,
  variants: [],
  ...extra,
});
const weighted = (names: string[], stickiness = 'default') =>
  names.map((n, i) => ({
    name: n,
    weight: Math.floor(1000 / names.length) + (i === 0 ? 1000 % names.length : 0),
    weightType: 'variable' as const,
    stickiness,
    payload: { type: 'string' as const, value: `${n}-payload` },
  }));
const userList = (n: number, step: number) =>
  Array.from({ length: n }, (_, i) => `user-${i * step}`).join(',');

function buildFlags(): ClientFeatures {
  const features: Feature[] = [];
  for (let i = 0; i < 8; i++) {
    features.push(
      flag(`ops.kill-switch-${i}`, [{ name: 'default', constraints: [env(['production', 'staging'])] }]),
    );
  }
  for (const [i, pct] of [1, 5, 10, 20, 25, 33, 50, 66, 75, 90, 99, 100].entries()) {
    features.push(flag(`release.rollout-${i}`, [rollout(`release.rollout-${i}`, pct)]));
  }
  features.push(flag('release.by-user', [rollout('release.by-user', 40, 'userId')]));
  features.push(flag('release.by-session', [rollout('release.by-session', 30, 'sessionId')]));
  features.push(flag('release.by-tenant', [rollout('release.by-tenant', 50, 'tenantId')]));
  features.push(
    flag('release.prod-only', [rollout('release.prod-only', 50, 'default', [env(['production'])])]),
  );
  for (let i = 0; i < 6; i++) {
    features.push(
      flag(`beta.allow-list-${i}`, [
        { name: 'userWithId', parameters: { userIds: userList(20 + i * 30, 7 + i) } },
      ]),
    );
  }
  features.push(
    flag('growth.eu-countries', [
      {
        name: 'default',
        constraints: [
          {
            contextName: 'country',
            operator: 'IN',
            values: [
              'NO',
              'SE',
              'DK',
              'FI',
              'DE',
              'FR',
              'NL',
              'BE',
              'ES',
              'IT',
              'PT',
              'PL',
              'AT',
              'IE',
              'CZ',
            ],
          },
        ],
      },
    ]),
    flag('growth.staff-email', [
      {
        name: 'default',
        constraints: [
          {
            contextName: 'email',
            operator: 'STR_ENDS_WITH',
            values: ['@steward.dev'],
            caseInsensitive: true,
          },
        ],
      },
    ]),
    flag('billing.big-spenders', [
      { name: 'default', constraints: [{ contextName: 'seats', operator: 'NUM_GTE', value: '50' }] },
    ]),
    flag('mobile.new-nav', [
      {
        name: 'default',
        constraints: [{ contextName: 'appVersion', operator: 'SEMVER_GTE', value: '2.3.0' }],
      },
    ]),
    flag('mobile.legacy-warning', [
      {
        name: 'default',
        constraints: [{ contextName: 'appVersion', operator: 'SEMVER_LT', value: '2.0.0' }],
      },
    ]),
    flag('launch.after-date', [
      {
        name: 'default',
        constraints: [
          { contextName: 'currentTime', operator: 'DATE_AFTER', value: '2024-01-01T00:00:00.000Z' },
        ],
      },
    ]),
    flag('plan.not-free', [
      {
        name: 'default',
        constraints: [{ contextName: 'plan', operator: 'NOT_IN', values: ['free'] }],
      },
    ]),
    flag('plan.enterprise-rollout', [
      rollout('plan.enterprise-rollout', 60, 'default', [
        { contextName: 'plan', operator: 'IN', values: ['enterprise', 'business'] },
        env(['production']),
      ]),
    ]),
    flag('office.network', [{ name: 'remoteAddress', parameters: { IPs: '10.0.0.0/8, 192.168.1.10' } }]),
    flag('office.cidr-constraint', [
      {
        name: 'default',
        constraints: [{ contextName: 'remoteAddress', operator: 'IN_CIDR', values: ['10.1.0.0/16'] }],
      },
    ]),
  );
  for (let i = 0; i < 5; i++) {
    features.push(
      flag(`experiment.checkout-${i}`, [rollout(`experiment.checkout-${i}`, 100 - i * 10)], {
        variants: weighted(['control', 'treatment-a', 'treatment-b'].slice(0, 2 + (i % 2))),
      }),
    );
  }
  features.push(
    flag('experiment.pricing', [
      {
        ...rollout('experiment.pricing', 80),
        variants: weighted(['monthly', 'annual', 'lifetime'], 'userId'),
      },
    ]),
    flag('experiment.onboarding', [
      { ...rollout('experiment.onboarding', 100, 'tenantId'), variants: weighted(['short', 'long']) },
    ]),
    flag('ops.disabled-a', [{ name: 'default' }], { enabled: false }),
    flag('ops.disabled-b', [rollout('ops.disabled-b', 50)], { enabled: false }),
    flag('multi.fallthrough', [
      { name: 'userWithId', parameters: { userIds: userList(10, 101) } },
      rollout('multi.fallthrough', 15, 'default', [env(['staging'])]),
      rollout('multi.fallthrough', 5),
    ]),
    flag('segment.internal', [{ name: 'default', segments: [1] }]),
  );
  const segments = [
    { id: 1, constraints: [{ contextName: 'email', operator: 'STR_CONTAINS', values: ['@steward'] }] },
  ];
  return { version: 2, features, segments };
}

// Typed as unleash-client's Context (currentTime a Date), which Steward's FlagContext accepts.
function buildContexts(n: number): Context[] {
  const envs = ['production', 'staging', 'development'];
  const countries = ['NO', 'US', 'DE', 'BR', 'JP', 'FR', 'IN'];
  const plans = ['free', 'team', 'business', 'enterprise'];
  return Array.from({ length: n }, (_, i) => ({
    userId: `user-${i}`,
    sessionId: `sess-${(i * 7919) % 100_003}`,
    remoteAddress: i % 5 === 0 ? `10.1.${i % 256}.${(i * 3) % 256}` : `203.0.113.${i % 256}`,
    environment: envs[i % envs.length] as string,
    appName: 'web',
    currentTime: new Date('2025-06-01T12:00:00.000Z'),
    properties: {
      tenantId: `tenant-${i % 97}`,
      country: countries[i % countries.length] as string,
      email: i % 11 === 0 ? `dev${i}@Steward.dev` : `person${i}@example.com`,
      seats: String((i * 13) % 120),
      plan: plans[i % plans.length] as string,
      appVersion: `${1 + (i % 3)}.${i % 5}.${i % 7}`,
    },
  }));
}

type Evaluate = (name: string, ctx: Context) => boolean;

/** Runs full passes (every flag × every context) for about `ms`; returns evaluations/s. */
function measure(
  evaluate: Evaluate,
  names: readonly string[],
  contexts: readonly Context[],
  ms: number,
): number {
  let evals = 0;
  let sink = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(ms) * 1_000_000n;
  let now = start;
  while (now < deadline) {
    for (const ctx of contexts) {
      for (const name of names) if (evaluate(name, ctx)) sink++;
    }
    evals += contexts.length * names.length;
    now = process.hrtime.bigint();
  }
  if (sink < 0) console.log(sink);
  return evals / (Number(now - start) / 1e9);
}

async function main(): Promise<void> {
  const state = buildFlags();
  const contexts = buildContexts(2_000);
  const names = state.features.map((f) => f.name);
  const engine = createFlagEngine(state);

  const unleash = new Unleash({
    appName: 'web',
    environment: 'production',
    url: 'http://127.0.0.1:9/api/',
    refreshInterval: 0,
    disableMetrics: true,
    skipInstanceCountWarning: true,
    storageProvider: new InMemStorageProvider(),
    // A deep copy, so the two engines share no objects.
    bootstrap: JSON.parse(JSON.stringify({ data: state.features, segments: state.segments })) as {
      data: ClientFeaturesResponse['features'];
      segments: NonNullable<ClientFeaturesResponse['segments']>;
    },
  });
  unleash.on('error', () => {}); // the refused fetch to 127.0.0.1:9
  unleash.on('warn', () => {});
  await once(unleash, 'ready');

  let disagreements = 0;
  for (const ctx of contexts) {
    for (const name of names) {
      const ours = engine.getVariant(name, ctx);
      const theirs = unleash.getVariant(name, ctx);
      if (engine.isEnabled(name, ctx) !== unleash.isEnabled(name, ctx)) disagreements++;
      else if (ours.name !== theirs.name || ours.feature_enabled !== theirs.feature_enabled) disagreements++;
    }
  }

  const ourEval: Evaluate = (name, ctx) => engine.isEnabled(name, ctx);
  const theirEval: Evaluate = (name, ctx) => unleash.isEnabled(name, ctx);
  measure(ourEval, names, contexts, 500);
  measure(theirEval, names, contexts, 500);
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let round = 0; round < 3; round++) {
    ours.push(measure(ourEval, names, contexts, 1_000));
    theirs.push(measure(theirEval, names, contexts, 1_000));
  }
  const best = (xs: number[]) => Math.max(...xs);
  const fmt = (x: number) => `${(x / 1e6).toFixed(2)} M evals/s (${(1e9 / x).toFixed(0)} ns/eval)`;

  console.log(
    `flags: ${names.length}, contexts: ${contexts.length}, checked pairs: ${names.length * contexts.length}`,
  );
  console.log(`disagreements with unleash-client (isEnabled + variant): ${disagreements}`);
  console.log(
    `steward engine  isEnabled: ${fmt(best(ours))}  rounds: ${ours.map((x) => (x / 1e6).toFixed(2)).join(', ')}`,
  );
  console.log(
    `unleash-client  isEnabled: ${fmt(best(theirs))}  rounds: ${theirs.map((x) => (x / 1e6).toFixed(2)).join(', ')}`,
  );
  console.log(`ratio steward / unleash-client: ${(best(ours) / best(theirs)).toFixed(2)}x`);
  unleash.destroy();
  if (disagreements > 0) process.exitCode = 1;
}

await main();
