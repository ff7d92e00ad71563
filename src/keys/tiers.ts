import { z } from 'zod';

/** A per-key rate limit: `limit` requests per `window_seconds`. */
export interface RateLimit {
  limit: number;
  windowSeconds: number;
}

/** What a tier grants: a quota per billing period (null: unlimited) and a default rate limit. */
export interface Tier {
  quota: number | null;
  ratelimit: RateLimit | null;
}

/** A key's rate limit: its own when it has one, else its tier's; null: none. */
export function effectiveRateLimit(
  key: { ratelimitLimit: number | null; ratelimitWindowSeconds: number | null; tier: string },
  tiers: ReadonlyMap<string, Tier>,
): RateLimit | null {
  return key.ratelimitLimit !== null && key.ratelimitWindowSeconds !== null
    ? { limit: key.ratelimitLimit, windowSeconds: key.ratelimitWindowSeconds }
    : (tiers.get(key.tier)?.ratelimit ?? null);
}

const tierSchema = z.strictObject({
  quota: z.number().int().min(1).nullable(),
  ratelimit: z
    .strictObject({ limit: z.number().int().min(1), window_seconds: z.number().int().min(1).max(86400) })
    .nullable(),
});

/** `API_KEY_TIERS`: a JSON object of tier name → `{quota, ratelimit: {limit, window_seconds} | null}`. */
export const tiersSchema = z.record(z.string().regex(/^[a-z][a-z0-9_-]{0,39}$/), tierSchema);

export type TiersInput = z.infer<typeof tiersSchema>;

export const DEFAULT_TIERS: TiersInput = {
  free: { quota: 10_000, ratelimit: { limit: 60, window_seconds: 60 } },
  pro: { quota: 1_000_000, ratelimit: { limit: 1_000, window_seconds: 60 } },
  enterprise: { quota: null, ratelimit: null },
};

/** Parses the JSON of API_KEY_TIERS (for the config schema); undefined → the defaults. */
export const tiersVariable = z
  .string()
  .transform((text, ctx) => {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      ctx.addIssue({ code: 'custom', message: 'not valid JSON' });
      return z.NEVER;
    }
  })
  .pipe(tiersSchema.refine((t) => Object.keys(t).length > 0, 'at least one tier'));

/** The tiers as the verifier uses them. */
export function resolveTiers(input: TiersInput | undefined): ReadonlyMap<string, Tier> {
  const out = new Map<string, Tier>();
  for (const [name, t] of Object.entries(input ?? DEFAULT_TIERS)) {
    out.set(name, {
      quota: t.quota,
      ratelimit: t.ratelimit ? { limit: t.ratelimit.limit, windowSeconds: t.ratelimit.window_seconds } : null,
    });
  }
  return out;
}
