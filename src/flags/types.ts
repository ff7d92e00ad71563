import { z } from 'zod';

// Shapes follow Unleash's /api/client/features response. Unknown operators and strategy
// names are accepted on purpose: the client specification requires them to evaluate to
// false rather than break the whole payload. Unknown keys (project, stale…) are dropped.
// These schemas read what is stored and served; the flag API checks writes further (validate.ts).

const nameSchema = z.string().min(1).max(255);

// Unleash serialises parameters as strings, but hand-written and older payloads carry
// numbers and booleans (`"rollout": 50`); they are kept as sent and read with String()/Number().
// The flag API accepts strings only, as Unleash's admin API does.
const parameterValueSchema = z.union([z.string(), z.number(), z.boolean()]);

/** One condition on a context field. */
export const constraintSchema = z.object({
  contextName: z.string().min(1).max(255),
  operator: z.string().min(1).max(64),
  values: z.array(z.string()).max(100_000).optional(),
  value: z.string().optional(),
  inverted: z.boolean().optional(),
  caseInsensitive: z.boolean().optional(),
});
export type Constraint = z.infer<typeof constraintSchema>;

/** Payload carried by a variant; `value` is always a string, as in Unleash. */
export const payloadSchema = z.object({
  type: z.enum(['string', 'json', 'csv', 'number']),
  value: z.string(),
});
export type Payload = z.infer<typeof payloadSchema>;

/** Forces a variant for listed context values. */
export const overrideSchema = z.object({
  contextName: z.string().min(1).max(255),
  values: z.array(z.string()).max(100_000),
});

/** A weighted variant, on the flag or on a strategy. */
export const variantDefinitionSchema = z.object({
  name: nameSchema,
  weight: z.number().int().min(0).max(100_000),
  weightType: z.enum(['variable', 'fix']).optional(),
  stickiness: z.string().min(1).max(255).optional(),
  payload: payloadSchema.optional(),
  overrides: z.array(overrideSchema).optional(),
});
export type VariantDefinition = z.infer<typeof variantDefinitionSchema>;

/** One activation strategy of a flag. */
export const strategySchema = z.object({
  name: z.string().min(1).max(255),
  title: z.string().max(255).optional(),
  // Unleash keeps a strategy it was told to pause, with its settings, and leaves it out of what
  // clients get (src/flags/client-view.ts). Dropping the key instead would turn it back on.
  disabled: z.boolean().optional(),
  parameters: z.record(z.string(), parameterValueSchema).optional(),
  constraints: z.array(constraintSchema).optional(),
  segments: z.array(z.number().int()).optional(),
  variants: z.array(variantDefinitionSchema).optional(),
});
export type Strategy = z.infer<typeof strategySchema>;

/** A parent flag this flag requires (Unleash "dependent features"). */
export const dependencySchema = z.object({
  feature: nameSchema,
  enabled: z.boolean().optional(),
  variants: z.array(z.string()).optional(),
});
export type Dependency = z.infer<typeof dependencySchema>;

/** Unleash's feature types (its `createFeatureSchema`); a flag without one is a `release` flag. */
export const FLAG_TYPES = ['release', 'experiment', 'operational', 'kill-switch', 'permission'] as const;

/** A flag in Unleash's feature-toggle JSON shape (as stored and edited; clients get clientView). */
export const featureSchema = z.object({
  name: nameSchema,
  // Informational, as in Unleash (SDKs do not read it); the flag API takes one of FLAG_TYPES.
  type: z.string().max(100).optional(),
  description: z.string().max(10_000).nullish(),
  enabled: z.boolean(),
  strategies: z.array(strategySchema).max(1_000),
  variants: z.array(variantDefinitionSchema).max(1_000).nullish(),
  dependencies: z.array(dependencySchema).max(100).optional(),
  impressionData: z.boolean().optional(),
});
export type Feature = z.infer<typeof featureSchema>;

/** A reusable list of constraints referenced by id from strategies. */
export const segmentSchema = z.object({
  id: z.number().int(),
  name: z.string().optional(),
  constraints: z.array(constraintSchema),
});
export type Segment = z.infer<typeof segmentSchema>;

/** The full client state: what `/api/client/features` returns. */
export const clientFeaturesSchema = z.object({
  version: z.number().int().optional(),
  features: z.array(featureSchema),
  segments: z.array(segmentSchema).optional(),
});
export type ClientFeatures = z.infer<typeof clientFeaturesSchema>;

/** One event of Unleash's delta API. */
export const deltaEventSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('hydration'),
    eventId: z.number().int(),
    features: z.array(featureSchema),
    segments: z.array(segmentSchema).optional(),
  }),
  z.object({ type: z.literal('feature-updated'), eventId: z.number().int(), feature: featureSchema }),
  z.object({ type: z.literal('feature-removed'), eventId: z.number().int(), featureName: nameSchema }),
  z.object({ type: z.literal('segment-updated'), eventId: z.number().int(), segment: segmentSchema }),
  z.object({ type: z.literal('segment-removed'), eventId: z.number().int(), segmentId: z.number().int() }),
]);
export type DeltaEvent = z.infer<typeof deltaEventSchema>;

/** Evaluation context, as Unleash SDKs define it; unknown fields fall back to `properties`. */
export interface FlagContext {
  userId?: string;
  sessionId?: string;
  remoteAddress?: string;
  environment?: string;
  appName?: string;
  currentTime?: string | Date;
  properties?: Record<string, string | number | boolean | null | undefined>;
  [field: string]: unknown;
}

/** Result of getVariant, in the client specification's shape. */
export interface FlagVariant {
  readonly name: string;
  readonly enabled: boolean;
  readonly feature_enabled: boolean;
  readonly payload?: Payload;
}
