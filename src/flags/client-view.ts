import type { Feature } from './types.ts';

/**
 * A flag as clients see it, the way Unleash serves it: disabled strategies left out, and a flag
 * whose strategies are all disabled served off (an empty list would mean "on for everyone").
 * The stored definition keeps them, so the admin API shows and can re-enable them.
 */
export function clientView(f: Feature): Feature {
  if (!f.strategies.some((s) => s.disabled === true)) return f;
  const strategies = f.strategies.filter((s) => s.disabled !== true);
  return { ...f, enabled: f.enabled && strategies.length > 0, strategies };
}
