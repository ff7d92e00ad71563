import { type FieldGetter, fieldGetter } from './context.ts';
import { createBucketer, VARIANT_SEED } from './murmur.ts';
import type { FlagContext, FlagVariant, VariantDefinition } from './types.ts';

/** Variant returned for a flag that is off or missing. */
export const DISABLED_VARIANT: FlagVariant = Object.freeze({
  name: 'disabled',
  enabled: false,
  feature_enabled: false,
});

/** Variant returned for a flag that is on but has no variant to give. */
export const ENABLED_WITHOUT_VARIANT: FlagVariant = Object.freeze({
  name: 'disabled',
  enabled: false,
  feature_enabled: true,
});

/** Picks a variant for a context, or undefined when the definitions cannot (zero weight). */
export type VariantSelector = (ctx: FlagContext) => FlagVariant | undefined;

// Results are built once and shared: evaluation returns them without allocating, so callers
// get frozen objects.
function result(def: VariantDefinition): FlagVariant {
  const base = { name: def.name, enabled: true, feature_enabled: true };
  return Object.freeze(
    def.payload === undefined ? base : { ...base, payload: Object.freeze({ ...def.payload }) },
  );
}

function stickinessSource(stickiness: string): FieldGetter | undefined {
  if (stickiness === 'default') return undefined;
  return fieldGetter(stickiness);
}

// Variant stickiness "default" also falls back to remoteAddress, unlike rollout stickiness.
function defaultSeed(ctx: FlagContext): string | undefined {
  const { userId, sessionId, remoteAddress } = ctx;
  if (typeof userId === 'string' && userId !== '') return userId;
  if (typeof sessionId === 'string' && sessionId !== '') return sessionId;
  if (typeof remoteAddress === 'string' && remoteAddress !== '') return remoteAddress;
  return undefined;
}

interface Override {
  readonly get: FieldGetter;
  readonly values: ReadonlySet<string>;
  readonly variant: FlagVariant;
}

/**
 * Compiles weighted variants hashed on `groupId:<stickiness value>` with Unleash's variant
 * seed; returns undefined when there is nothing to pick from.
 */
export function compileVariants(
  defs: readonly VariantDefinition[] | null | undefined,
  groupId: string,
  stickiness: string,
  random: () => number,
): VariantSelector | undefined {
  if (defs === null || defs === undefined || defs.length === 0) return undefined;
  const total = defs.reduce((sum, d) => sum + d.weight, 0);
  if (total <= 0) return undefined;

  const overrides: Override[] = [];
  const bounds: number[] = [];
  const picks: FlagVariant[] = [];
  let counter = 0;
  for (const def of defs) {
    const variant = result(def);
    for (const o of def.overrides ?? []) {
      overrides.push({ get: fieldGetter(o.contextName), values: new Set(o.values), variant });
    }
    if (def.weight === 0) continue;
    counter += def.weight;
    bounds.push(counter);
    picks.push(variant);
  }

  const bucket = createBucketer(groupId, total, VARIANT_SEED);
  const source = stickinessSource(stickiness);
  return (ctx) => {
    for (let i = 0; i < overrides.length; i++) {
      const o = overrides[i] as Override;
      const v = o.get(ctx);
      if (v !== undefined && o.values.has(v)) return o.variant;
    }
    const seed = source === undefined ? defaultSeed(ctx) : source(ctx);
    // Without a stickiness value Unleash hashes a random string; a uniform draw is the same.
    const target = seed ? bucket(seed) : Math.floor(random() * total) + 1;
    for (let i = 0; i < bounds.length; i++) if ((bounds[i] as number) >= target) return picks[i];
    return undefined;
  };
}
