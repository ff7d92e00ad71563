import { hostname as osHostname } from 'node:os';
import { NEVER, type Predicate } from './constraints.ts';
import { compileStrategy, type EvalEnvironment, type StrategyPlan } from './strategies.ts';
import type { ClientFeatures, DeltaEvent, Feature, FlagContext, FlagVariant, Segment } from './types.ts';
import {
  compileVariants,
  DISABLED_VARIANT,
  ENABLED_WITHOUT_VARIANT,
  type VariantSelector,
} from './variants.ts';

/** Options for createFlagEngine. */
export interface FlagEngineOptions {
  /** Source of randomness for random stickiness; defaults to Math.random. */
  random?: () => number;
  /** Host name seen by applicationHostname; defaults to $HOSTNAME or os.hostname(). */
  hostname?: string;
}

/** One flag's outcome, as evaluateAll returns it. */
export interface FlagEvaluation {
  readonly name: string;
  readonly enabled: boolean;
  readonly variant: FlagVariant;
}

/** Evaluates a fixed set of flags; build a new engine when the flags change. */
export interface FlagEngine {
  isEnabled(name: string, context?: FlagContext): boolean;
  getVariant(name: string, context?: FlagContext): FlagVariant;
  evaluateAll(context?: FlagContext): FlagEvaluation[];
  has(name: string): boolean;
  readonly names: readonly string[];
}

interface FlagPlan {
  readonly enabled: boolean;
  readonly hasDependencies: boolean;
  dependencies: Predicate;
  readonly strategies: readonly StrategyPlan[];
  readonly variants: VariantSelector | undefined;
}

const EMPTY_CONTEXT: FlagContext = Object.freeze({});
// Stands for "enabled with no strategy to credit" (a flag with an empty strategy list).
const NO_STRATEGY: StrategyPlan = Object.freeze({ test: () => true, variants: undefined });

function match(plan: FlagPlan, ctx: FlagContext): StrategyPlan | undefined {
  if (!plan.enabled) return undefined;
  if (plan.hasDependencies && !plan.dependencies(ctx)) return undefined;
  const list = plan.strategies;
  if (list.length === 0) return NO_STRATEGY;
  for (let i = 0; i < list.length; i++) {
    const s = list[i] as StrategyPlan;
    if (s.test(ctx)) return s;
  }
  return undefined;
}

function variantOf(plan: FlagPlan, ctx: FlagContext): FlagVariant {
  const s = match(plan, ctx);
  if (s === undefined) return DISABLED_VARIANT;
  // Strategy variants win; if they cannot pick (zero total weight), the flag's variants apply.
  return s.variants?.(ctx) ?? plan.variants?.(ctx) ?? ENABLED_WITHOUT_VARIANT;
}

function compileFlag(f: Feature, segments: ReadonlyMap<number, Segment>, env: EvalEnvironment): FlagPlan {
  const stickiness = f.variants?.[0]?.stickiness ?? 'default';
  return {
    enabled: f.enabled,
    hasDependencies: (f.dependencies?.length ?? 0) > 0,
    dependencies: NEVER,
    strategies: f.strategies.map((s) => compileStrategy(s, segments, env)),
    variants: compileVariants(f.variants, f.name, stickiness, env.random),
  };
}

// Unleash supports one level of dependency: a parent that itself has parents, or is
// missing, leaves the child off (this is also what breaks cycles).
function compileDependencies(f: Feature, plans: ReadonlyMap<string, FlagPlan>): Predicate {
  const checks: Predicate[] = [];
  for (const dep of f.dependencies ?? []) {
    const parent = plans.get(dep.feature);
    if (parent === undefined || parent.hasDependencies) return NEVER;
    if (dep.enabled === false) {
      checks.push((ctx) => match(parent, ctx) === undefined);
    } else if (dep.variants !== undefined && dep.variants.length > 0) {
      const wanted = new Set(dep.variants);
      checks.push((ctx) => {
        const v = variantOf(parent, ctx);
        return v.feature_enabled && wanted.has(v.name);
      });
    } else {
      checks.push((ctx) => match(parent, ctx) !== undefined);
    }
  }
  return (ctx) => {
    for (let i = 0; i < checks.length; i++) if (!(checks[i] as Predicate)(ctx)) return false;
    return true;
  };
}

/** Compiles flags and segments once into an engine whose evaluations allocate nothing. */
export function createFlagEngine(state: ClientFeatures, options: FlagEngineOptions = {}): FlagEngine {
  const env: EvalEnvironment = {
    random: options.random ?? Math.random,
    hostname: options.hostname || process.env.HOSTNAME || osHostname() || 'undefined',
  };
  const segments = new Map((state.segments ?? []).map((s) => [s.id, s]));
  const plans = new Map<string, FlagPlan>();
  for (const f of state.features) plans.set(f.name, compileFlag(f, segments, env));
  for (const f of state.features) {
    const plan = plans.get(f.name);
    if (plan?.hasDependencies) plan.dependencies = compileDependencies(f, plans);
  }
  const names = Object.freeze([...plans.keys()]);

  const isEnabled = (name: string, ctx: FlagContext = EMPTY_CONTEXT): boolean => {
    const plan = plans.get(name);
    return plan !== undefined && match(plan, ctx) !== undefined;
  };
  const getVariant = (name: string, ctx: FlagContext = EMPTY_CONTEXT): FlagVariant => {
    const plan = plans.get(name);
    return plan === undefined ? DISABLED_VARIANT : variantOf(plan, ctx);
  };
  return {
    isEnabled,
    getVariant,
    evaluateAll: (ctx = EMPTY_CONTEXT) =>
      names.map((name) => {
        const variant = getVariant(name, ctx);
        return { name, enabled: variant.feature_enabled, variant };
      }),
    has: (name) => plans.has(name),
    names,
  };
}

/** Applies Unleash delta-API events to a client state, returning a new state. */
export function applyDeltaEvents(state: ClientFeatures, events: readonly DeltaEvent[]): ClientFeatures {
  const features = new Map(state.features.map((f) => [f.name, f]));
  const segments = new Map((state.segments ?? []).map((s) => [s.id, s]));
  for (const e of events) {
    switch (e.type) {
      case 'hydration':
        features.clear();
        segments.clear();
        for (const f of e.features) features.set(f.name, f);
        for (const s of e.segments ?? []) segments.set(s.id, s);
        break;
      case 'feature-updated':
        features.set(e.feature.name, e.feature);
        break;
      case 'feature-removed':
        features.delete(e.featureName);
        break;
      case 'segment-updated':
        segments.set(e.segment.id, e.segment);
        break;
      case 'segment-removed':
        segments.delete(e.segmentId);
        break;
    }
  }
  return { version: state.version, features: [...features.values()], segments: [...segments.values()] };
}
