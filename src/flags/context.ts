import type { FlagContext } from './types.ts';

/** Reads one context field as Unleash does: the top-level field, else `properties[field]`. */
export type FieldGetter = (ctx: FlagContext) => string | undefined;

const asString = (v: unknown): string | undefined =>
  v === undefined || v === null ? undefined : typeof v === 'string' ? v : String(v);

// Standard fields get their own getters so each property load has a fixed name and stays
// monomorphic; a single keyed getter shared by every constraint would go megamorphic.
const standard: Record<string, FieldGetter> = {
  userId: (ctx) => asString(ctx.userId ?? ctx.properties?.userId),
  sessionId: (ctx) => asString(ctx.sessionId ?? ctx.properties?.sessionId),
  remoteAddress: (ctx) => asString(ctx.remoteAddress ?? ctx.properties?.remoteAddress),
  environment: (ctx) => asString(ctx.environment ?? ctx.properties?.environment),
  appName: (ctx) => asString(ctx.appName ?? ctx.properties?.appName),
  currentTime: (ctx) => asString(ctx.currentTime ?? ctx.properties?.currentTime),
};

/** Builds the getter for a context field name known at compile time. */
export function fieldGetter(name: string): FieldGetter {
  const known = Object.hasOwn(standard, name) ? standard[name] : undefined;
  if (known !== undefined) return known;
  return (ctx) => asString(ctx[name] ?? ctx.properties?.[name]);
}
