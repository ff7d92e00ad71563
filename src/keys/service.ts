import { randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { and, eq, sql } from 'drizzle-orm';
import { Webhook } from 'standardwebhooks';
import type { AuditContext, AuditEventInput, AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Authz } from '../authz/contract.ts';
import { isMatchableScope } from '../authz/engine.ts';
import { expandPattern } from '../authz/roles.ts';
import { open, seal } from '../crypto/envelope.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
// The vault's helper, as flags uses it: a unique violation however the driver wraps it.
import { isUniqueViolation } from '../db/errors.ts';
import { isId, newId } from '../db/ids.ts';
import {
  MAX_JSON_DEPTH,
  mayHoldHugeNumber,
  mayHoldUnstorable,
  nestedTooDeep,
  nonFiniteIn,
  unstorableIn,
} from '../http/body.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { boundsOf, FLAGS_ENVIRONMENT_METADATA, flagsEnvironmentOf, looserBound } from './bounds.ts';
import { keyErrors } from './errors.ts';
import {
  API_KEY_PRODUCT,
  displayPrefix,
  generateKey,
  hashKey,
  isWellFormed,
  WEBHOOK_KEY_PRODUCT,
} from './format.ts';
import * as q from './queries.ts';
import { apiKeySettings, apiKeys, signals, webhookKeys } from './schema.ts';
import type { Tier } from './tiers.ts';
import type { CachedKey, KeyVerifier } from './verifier.ts';

/** Standard Webhooks tolerance between `webhook-timestamp` and our clock. */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

export interface CreateKeyInput {
  name: string;
  owner?: string | undefined;
  scopes: string[];
  tier?: string | undefined;
  environment?: 'live' | 'test' | undefined;
  ratelimit?: { limit: number; window_seconds: number } | null | undefined;
  allowed_ips?: string[] | undefined;
  expires_at?: Date | null | undefined;
  period_days?: number | undefined;
  metadata?: Record<string, unknown> | undefined;
}

export type UpdateKeyInput = Partial<
  Pick<CreateKeyInput, 'name' | 'scopes' | 'tier' | 'ratelimit' | 'allowed_ips' | 'expires_at' | 'metadata'>
> & { active?: boolean | undefined; period_days?: number | undefined };

export interface KeysServiceDeps {
  db: DbHandle;
  audit: AuditRecorder;
  authz: Pick<Authz, 'check'>;
  keyring: Keyring;
  verifier: KeyVerifier;
  tiers: ReadonlyMap<string, Tier>;
  defaultEnvironment: 'live' | 'test';
  clock: () => Date;
  /** The user with this id in this org (active), or null. */
  findUser(orgId: string, id: string): Promise<Principal | null>;
  onError(error: unknown, what: string): void;
}

const SYSTEM = { type: 'system', name: 'steward' } as const;

/** What a key may not change about itself (everything but its name and metadata). */
const SELF_LOCKED = [
  'scopes',
  'tier',
  'ratelimit',
  'allowed_ips',
  'expires_at',
  'period_days',
  'active',
] as const satisfies readonly (keyof UpdateKeyInput)[];

const DEFAULT_PERIOD_DAYS = 30;

/**
 * What a key asked to create a key leaves out of its bounds, it passes on: the new key gets the
 * caller's allowlist, expiry, own rate limit, billing period and flags environment
 * (`metadata.flags_environment`; a test key's is `development`) unless the request sets them (and
 * what it sets must then be no looser; see mustStayWithin).
 */
function inheritBounds(input: CreateKeyInput, callerKey: q.ApiKeyRow): CreateKeyInput {
  const bound = flagsEnvironmentOf(callerKey);
  const metadata = input.metadata ?? {};
  const ownLimit =
    callerKey.ratelimitLimit !== null && callerKey.ratelimitWindowSeconds !== null
      ? { limit: callerKey.ratelimitLimit, window_seconds: callerKey.ratelimitWindowSeconds }
      : null;
  return {
    ...input,
    allowed_ips: input.allowed_ips ?? [...callerKey.allowedIps],
    expires_at: input.expires_at === undefined ? callerKey.expiresAt : input.expires_at,
    ratelimit: input.ratelimit === undefined ? ownLimit : input.ratelimit,
    period_days: input.period_days ?? callerKey.periodDays,
    metadata:
      bound === null || Object.hasOwn(metadata, FLAGS_ENVIRONMENT_METADATA)
        ? input.metadata
        : { ...metadata, [FLAGS_ENVIRONMENT_METADATA]: bound },
  };
}

/** `disabled_reason` of a burst suspension (requests or creations): only an admin lifts it. */
const SUSPENSION_REASONS: ReadonlySet<string> = new Set(['burst_detected']);
const isSuspension = (reason: string | null) => reason !== null && SUSPENSION_REASONS.has(reason);

const DAY_MS = 86_400_000;

/**
 * Thrown inside a write's transaction when the key's row, once locked, is no longer the row its
 * checks read: a roll, revoke, PATCH or burst suspension committed in between (on any instance).
 * The transaction rolls back and the operation runs again from its read, so it answers what it
 * would have answered after that change (`retried`).
 */
class KeyChangedMeanwhile extends Error {}

/** Runs of one write before it gives up on a key that keeps changing under it (409). */
const MAX_ATTEMPTS = 5;

/** What a write's checks read of a key: every column but usage (any flush moves it) and `updated_at`. */
function checkedStateOf(row: q.ApiKeyRow) {
  const { requestCount: _count, periodStart: _start, lastUsedAt: _used, updatedAt: _updated, ...state } = row;
  return state;
}

/**
 * The key's row, locked for the rest of the transaction, if it is still the one the checks read;
 * else `KeyChangedMeanwhile`. Checks run before the transaction (they read authz and the caller's
 * key, outside it); this makes the write conditional on what they saw.
 */
async function lockAsChecked(tx: DbOrTx, checked: q.ApiKeyRow): Promise<q.ApiKeyRow> {
  const locked = await q.keyById(tx, checked.orgId, checked.id, true);
  if (locked === null || !isDeepStrictEqual(checkedStateOf(locked), checkedStateOf(checked))) {
    throw new KeyChangedMeanwhile();
  }
  return locked;
}

/** Runs a check-then-write operation again while its key changed between its read and its write. */
async function retried<T>(operation: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (!(error instanceof KeyChangedMeanwhile)) throw error;
      if (attempt >= MAX_ATTEMPTS) {
        throw keyErrors.api_key_conflict('The key kept changing while this request was applied; retry');
      }
    }
  }
}

/**
 * The row as of now: a billing period that has ended reads as the current one, with no requests
 * counted yet (as the verifier counts it). Nothing is written: the next counted request moves the
 * stored period.
 */
export function currentPeriodOf(row: q.ApiKeyRow, nowMs: number): q.ApiKeyRow {
  const periodMs = row.periodDays * DAY_MS;
  const startMs = row.periodStart.getTime();
  if (nowMs < startMs + periodMs) return row;
  const periodStart = new Date(startMs + Math.floor((nowMs - startMs) / periodMs) * periodMs);
  return { ...row, periodStart, requestCount: 0 };
}

/** The columns a PATCH would change: only the fields it sends with a value other than the stored one. */
function changesOf(
  before: q.ApiKeyRow,
  input: UpdateKeyInput,
  allowedIps: string[] | undefined,
): Partial<typeof apiKeys.$inferInsert> {
  const changes: Partial<typeof apiKeys.$inferInsert> = {};
  if (input.name !== undefined && input.name !== before.name) changes.name = input.name;
  if (input.scopes !== undefined && !isDeepStrictEqual(input.scopes, before.scopes))
    changes.scopes = input.scopes;
  if (input.tier !== undefined && input.tier !== before.tier) changes.tier = input.tier;
  if (input.ratelimit !== undefined) {
    const limit = input.ratelimit?.limit ?? null;
    const window = input.ratelimit?.window_seconds ?? null;
    if (limit !== before.ratelimitLimit || window !== before.ratelimitWindowSeconds) {
      changes.ratelimitLimit = limit;
      changes.ratelimitWindowSeconds = window;
    }
  }
  if (allowedIps !== undefined && !isDeepStrictEqual(allowedIps, before.allowedIps)) {
    changes.allowedIps = allowedIps;
  }
  if (
    input.expires_at !== undefined &&
    (input.expires_at?.getTime() ?? null) !== (before.expiresAt?.getTime() ?? null)
  ) {
    changes.expiresAt = input.expires_at;
  }
  if (input.metadata !== undefined && !isDeepStrictEqual(input.metadata, before.metadata)) {
    changes.metadata = input.metadata;
  }
  if (input.period_days !== undefined && input.period_days !== before.periodDays) {
    changes.periodDays = input.period_days;
  }
  // Switching off a key already off keeps its reason (a burst suspension stays one).
  if (input.active !== undefined && input.active !== before.active) {
    changes.active = input.active;
    changes.disabledReason = input.active ? null : 'disabled by an administrator';
  }
  return changes;
}

/** A CIDR or a single address, IPv4 or IPv6; normalised (`10.0.0.0/8`, `2001:db8::/32`). */
export function parseCidr(entry: string): string | null {
  const [address = '', bits, extra] = entry.trim().split('/');
  if (extra !== undefined) return null;
  const family = isIP(address);
  if (family === 0) return null;
  if (bits === undefined) return address;
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > (family === 4 ? 32 : 128)) return null;
  return `${address}/${Number(bits)}`;
}

/** Keys, their settings, inbound webhook keys, ingestion and signals. Owns the transactions. */
export function createKeysService(deps: KeysServiceDeps) {
  const { db, audit, authz, keyring, verifier, tiers, clock } = deps;

  async function isAdmin(caller: Principal): Promise<boolean> {
    return (await authz.check(caller, 'api_keys:admin')).allowed;
  }

  /** Who a caller is for ownership: a key stands for its owner. */
  const selfOf = (caller: Principal) => (caller.kind === 'key' ? (caller.ownerId ?? caller.id) : caller.id);

  async function mustGet(caller: Principal, id: string): Promise<q.ApiKeyRow> {
    const row = isId('key', id) ? await q.keyById(db.db, caller.orgId, id) : null;
    if (row === null) throw keyErrors.api_key_not_found(`No API key ${id} in this organization`);
    return row;
  }

  /** Changing someone else's key needs api_keys:admin; without it the key is reported missing... */
  async function mustManage(caller: Principal, row: q.ApiKeyRow): Promise<void> {
    if (row.ownerId === selfOf(caller)) return;
    if (!(await isAdmin(caller))) {
      // ...no: the caller can read it (api_keys:read), so say why it may not change it.
      throw httpErrors.permission_denied('Changing another principal’s key needs api_keys:admin', {
        permission: 'api_keys:admin',
      });
    }
  }

  /**
   * A key gives no key a scope it does not hold itself: whatever it creates, rolls or changes is
   * no stronger than it (SPEC §3). Whether the caller's scopes reach a permission is authz's own
   * scope rule: a check that answers `out_of_scope`. Users and agents are not scoped.
   */
  async function mustHoldScopes(caller: Principal, scopes: readonly string[]): Promise<void> {
    if (caller.kind !== 'key') return;
    for (const scope of scopes) {
      // A scope stored before input was checked (`*:*`) matches nothing, so it gives nothing.
      if (!isMatchableScope(scope)) continue;
      for (const permission of expandPattern(scope)) {
        if ((await authz.check(caller, permission)).decision.reason === 'out_of_scope') {
          throw keyErrors.scope_not_held(`This key does not hold ${scope}`, { scope });
        }
      }
    }
  }

  /**
   * A key may rename itself or change its metadata, nothing else of its own: its scopes, limits,
   * allowlist, tier, period, expiry and active flag are its holder's bounds, set by others.
   */
  function mustNotLoosenItself(caller: Principal, id: string, input: UpdateKeyInput): void {
    if (caller.kind !== 'key' || caller.keyId !== id) return;
    const field = SELF_LOCKED.find((name) => input[name] !== undefined);
    if (field !== undefined) {
      throw keyErrors.key_self_change(`A key cannot change its own ${field}`, { field });
    }
  }

  /** The calling key's stored row, when the caller is a key. */
  async function callerKeyRow(caller: Principal): Promise<q.ApiKeyRow | null> {
    if (caller.kind !== 'key') return null;
    return q.keyById(db.db, caller.orgId, caller.keyId ?? caller.id);
  }

  /** A key produces no key looser than itself (bounds.ts); users and agents are not bounded. */
  function mustStayWithin(callerKey: q.ApiKeyRow | null, result: Parameters<typeof boundsOf>[0]): void {
    if (callerKey === null) return;
    const field = looserBound(boundsOf(result, tiers), boundsOf(callerKey, tiers));
    if (field !== null) {
      throw keyErrors.key_bounds_exceeded(`This key's own ${field} is tighter than the result's`, { field });
    }
  }

  function mustBeFuture(expiresAt: Date | null | undefined, now: Date): void {
    if (expiresAt != null && expiresAt.getTime() <= now.getTime()) {
      throw httpErrors.validation_failed('expires_at: must be in the future');
    }
  }

  /**
   * Only scopes the check can match are stored: `*:*` reads as "everything" but authz's scope rule
   * matches it with nothing, so a key minted with it would be silently denied everywhere.
   */
  function validateScopes(scopes: readonly string[]): void {
    const at = scopes.findIndex((s) => !isMatchableScope(s));
    if (at < 0) return;
    const scope = scopes[at] ?? '';
    const path = `body.scopes.${at}`;
    const compact = scope.replace(/\s+/g, '');
    const message =
      compact === '*' || compact === '*:*'
        ? `${JSON.stringify(scope)} matches no permission: use "*" for every permission`
        : `${JSON.stringify(scope)} matches no permission: a scope is a permission ("secrets:read"), ` +
          '"<resource>:*", "*:<action>" or "*" (GET /v1/authz/permissions lists them)';
    throw keyErrors.invalid_scope(`${path}: ${message}`, { scope, errors: [{ path, message }] });
  }

  function validateTier(tier: string): void {
    if (!tiers.has(tier)) {
      throw keyErrors.unknown_tier(`Tiers: ${[...tiers.keys()].join(', ')}`, { tier });
    }
  }

  function normaliseIps(entries: readonly string[]): string[] {
    return entries.map((entry) => {
      const cidr = parseCidr(entry);
      if (cidr === null) throw keyErrors.invalid_cidr(`Not an IP address or CIDR: ${entry}`, { entry });
      return cidr;
    });
  }

  async function resolveOwner(caller: Principal, owner: string | undefined): Promise<string> {
    const self = selfOf(caller);
    if (owner === undefined || owner === self) return self;
    if (!(await isAdmin(caller))) {
      throw httpErrors.permission_denied('Creating a key for another principal needs api_keys:admin', {
        permission: 'api_keys:admin',
      });
    }
    // A malformed id is a bad request, as for a secret's owner_id; a well-formed one not of this
    // org is not found.
    if (!isId('usr', owner) && !isId('agt', owner)) {
      throw httpErrors.validation_failed('body.owner: not a user (usr_…) or agent (agt_…) id', {
        errors: [{ path: 'body.owner', message: 'Not a user (usr_…) or agent (agt_…) id' }],
      });
    }
    if (isId('usr', owner) && (await deps.findUser(caller.orgId, owner)) !== null) return owner;
    // No agents domain yet: a well-formed agent id is accepted; it holds the rights authz gives it.
    if (isId('agt', owner)) return owner;
    throw keyErrors.owner_not_found(`No active user or agent ${owner} in this organization`);
  }

  // ---- creation bursts (many keys from one source) ----

  const creations = new Map<string, { windowStartMs: number; count: number; reported: boolean }>();

  /**
   * Counts a creation per source. Null while the source is within the threshold; above it, the
   * count and whether this is the first creation over it in the window (reported once; every key
   * created above it is suspended when the org says so).
   */
  function creationBurst(
    source: string,
    settings: q.KeySettings,
    nowMs: number,
  ): { count: number; first: boolean } | null {
    let entry = creations.get(source);
    if (entry === undefined || nowMs - entry.windowStartMs >= settings.burstWindowSeconds * 1000) {
      if (creations.size > 10_000) creations.clear();
      entry = { windowStartMs: nowMs, count: 0, reported: false };
      creations.set(source, entry);
    }
    entry.count++;
    if (entry.count <= settings.burstThreshold) return null;
    const first = !entry.reported;
    entry.reported = true;
    return { count: entry.count, first };
  }

  // ---- keys ----

  async function create(caller: Principal, given: CreateKeyInput, context: AuditContext) {
    validateScopes(given.scopes);
    const callerKey = await callerKeyRow(caller);
    const input = callerKey === null ? given : inheritBounds(given, callerKey);
    const tier = input.tier ?? 'free';
    validateTier(tier);
    const allowedIps = normaliseIps(input.allowed_ips ?? []);
    const ownerId = await resolveOwner(caller, input.owner);
    await mustHoldScopes(caller, input.scopes);
    const now = clock();
    mustBeFuture(input.expires_at, now);
    const env = input.environment ?? deps.defaultEnvironment;
    mustStayWithin(callerKey, {
      allowedIps,
      expiresAt: input.expires_at ?? null,
      ratelimitLimit: input.ratelimit?.limit ?? null,
      ratelimitWindowSeconds: input.ratelimit?.window_seconds ?? null,
      tier,
      periodDays: input.period_days ?? DEFAULT_PERIOD_DAYS,
      environment: env,
      metadata: input.metadata ?? {},
    });
    const secret = generateKey(API_KEY_PRODUCT, env);
    const settings = await verifier.settingsFor(caller.orgId);
    const bursts: { source: string; count: number; first: boolean }[] = [];
    for (const source of [`ip:${context.ip ?? 'unknown'}`, `principal:${selfOf(caller)}`]) {
      const over = creationBurst(`${caller.orgId}|${source}`, settings, now.getTime());
      if (over !== null) bursts.push({ source, ...over });
    }
    const suspend = bursts.length > 0 && settings.suspendOnBurst;
    const id = newId('key');
    const row = await db.db.transaction(async (tx) => {
      const [inserted] = await tx
        .insert(apiKeys)
        .values({
          id,
          orgId: caller.orgId,
          ownerId,
          name: input.name,
          prefix: displayPrefix(API_KEY_PRODUCT, secret),
          hash: hashKey(secret),
          environment: env,
          scopes: input.scopes,
          tier,
          ratelimitLimit: input.ratelimit?.limit ?? null,
          ratelimitWindowSeconds: input.ratelimit?.window_seconds ?? null,
          periodStart: now,
          periodDays: input.period_days ?? DEFAULT_PERIOD_DAYS,
          allowedIps,
          expiresAt: input.expires_at ?? null,
          active: !suspend,
          disabledReason: suspend ? 'burst_detected' : null,
          createdBy: caller.id,
          metadata: input.metadata ?? {},
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!inserted) throw new Error('api key insert returned nothing');
      const events: AuditEventInput[] = [
        {
          orgId: caller.orgId,
          actor: actorOf(caller),
          action: 'key.created',
          resource: { type: 'api_key', id },
          context,
          changes: { after: auditView(inserted) },
        },
      ];
      for (const burst of bursts) {
        if (!burst.first) continue;
        events.push({
          orgId: caller.orgId,
          actor: actorOf(caller),
          action: 'security.burst_detected',
          resource: { type: 'api_key', id },
          context,
          details: {
            kind: 'key_creation',
            source: burst.source,
            count: burst.count,
            threshold: settings.burstThreshold,
            window_seconds: settings.burstWindowSeconds,
            suspended: suspend,
          },
        });
      }
      if (suspend) {
        events.push({
          orgId: caller.orgId,
          actor: SYSTEM,
          action: 'key.suspended',
          resource: { type: 'api_key', id },
          context,
          details: { reason: 'burst_detected' },
        });
      }
      await audit.record(tx, events);
      return inserted;
    });
    // Pre-warm: the first verification of the new key reads no database.
    await verifier.prime(row.hash).catch((error: unknown) => deps.onError(error, 'api key prime'));
    return { row, key: secret };
  }

  async function list(
    caller: Principal,
    options: { limit: number; before?: string | undefined; owner?: string },
  ) {
    const rows = await q.listKeys(db.db, caller.orgId, {
      limit: options.limit,
      before: options.before,
      ownerId: options.owner,
    });
    const nowMs = clock().getTime();
    return rows.map((row) => currentPeriodOf(row, nowMs));
  }

  async function get(caller: Principal, id: string) {
    return currentPeriodOf(await mustGet(caller, id), clock().getTime());
  }

  /**
   * Every rule below is checked on the row as read; the write locks the row and goes ahead only if
   * it is unchanged (`lockAsChecked`), else the whole update runs again on the new row. A PATCH
   * racing a roll, a revoke or a burst suspension thus answers as it would after it (409
   * `api_key_already_rolled`, 409 `api_key_revoked`, 403 `api_key_suspended`, or a no-op), and
   * never writes over it.
   */
  async function update(caller: Principal, id: string, input: UpdateKeyInput, context: AuditContext) {
    if (input.scopes !== undefined) validateScopes(input.scopes);
    if (input.tier !== undefined) validateTier(input.tier);
    const allowedIps = input.allowed_ips === undefined ? undefined : normaliseIps(input.allowed_ips);
    return retried(() => updateOnce(caller, id, input, allowedIps, context));
  }

  async function updateOnce(
    caller: Principal,
    id: string,
    input: UpdateKeyInput,
    allowedIps: string[] | undefined,
    context: AuditContext,
  ) {
    const now = clock();
    mustBeFuture(input.expires_at, now);
    const before = await mustGet(caller, id);
    await mustManage(caller, before);
    mustNotLoosenItself(caller, id, input);
    await mustHoldScopes(caller, [...before.scopes, ...(input.scopes ?? [])]);
    if (before.revokedAt !== null) throw keyErrors.api_key_revoked('A revoked key cannot change');
    const changes = changesOf(before, input, allowedIps);
    // A key changes only keys no looser than itself, as it is and as it would be: a key pinned to
    // a network must not rename, re-scope or re-enable the org's unpinned key (revoking it is
    // refused too). Its own key is the self-change rule's (name and metadata only).
    if (caller.kind === 'key' && (caller.keyId ?? caller.id) !== id) {
      const callerKey = await callerKeyRow(caller);
      mustStayWithin(callerKey, before);
      mustStayWithin(callerKey, { ...before, ...changes });
    } else if (caller.kind === 'key' && changes.metadata !== undefined) {
      // Its own metadata is its to change, but not the flags environment it is bound to: dropping
      // or renaming `metadata.flags_environment` would unbind it (the rest is self-locked above).
      mustStayWithin(before, { ...before, ...changes });
    }
    // Nothing differs: the current view, and nothing written (no event, no cache drop).
    if (Object.keys(changes).length === 0) return currentPeriodOf(before, now.getTime());
    // A rolled key ends with its grace: a later expiry (or none), or re-enabling it, would revive a
    // key that shares its successor's quota and can never be rolled.
    if (before.rolledTo !== null && (changes.expiresAt !== undefined || changes.active === true)) {
      throw keyErrors.api_key_already_rolled(
        `Rolled to ${before.rolledTo}: its ${changes.expiresAt !== undefined ? 'expires_at' : 'active'} no longer changes`,
        { rolled_to: before.rolledTo, field: changes.expiresAt !== undefined ? 'expires_at' : 'active' },
      );
    }
    // A burst suspension stays until an admin lifts it; the owner's own switch-off does not.
    if (changes.active === true && isSuspension(before.disabledReason) && !(await isAdmin(caller))) {
      throw keyErrors.api_key_suspended('Re-enabling a key suspended for a burst needs api_keys:admin', {
        permission: 'api_keys:admin',
        disabled_reason: before.disabledReason,
      });
    }
    const patch: Partial<typeof apiKeys.$inferInsert> = { ...changes, updatedAt: now };
    const after = await db.db.transaction(async (tx) => {
      await lockAsChecked(tx, before);
      const [row] = await tx
        .update(apiKeys)
        .set(patch)
        .where(and(eq(apiKeys.orgId, caller.orgId), eq(apiKeys.id, id)))
        .returning();
      if (!row) throw keyErrors.api_key_not_found();
      await audit.record(tx, {
        orgId: caller.orgId,
        actor: actorOf(caller),
        action: 'key.updated',
        resource: { type: 'api_key', id },
        context,
        changes: { before: auditView(before), after: auditView(row) },
      });
      // Last: the poll's change marker, on the database's clock (see q.stampKeysChanged).
      return { ...row, updatedAt: await q.stampKeysChanged(tx, [id]) };
    });
    verifier.invalidate('key', id);
    return currentPeriodOf(after, now.getTime());
  }

  /** The checks read the row; the write is conditional on it being unchanged (see update). */
  function revoke(caller: Principal, id: string, reason: string | undefined, context: AuditContext) {
    return retried(() => revokeOnce(caller, id, reason, context));
  }

  async function revokeOnce(
    caller: Principal,
    id: string,
    reason: string | undefined,
    context: AuditContext,
  ) {
    const before = await mustGet(caller, id);
    await mustManage(caller, before);
    if (before.revokedAt !== null) throw keyErrors.api_key_revoked();
    // A key revokes only keys no stronger and no looser than itself: a narrow, pinned key holding
    // api_keys:delete must not take the org's admin key down. Revoking itself is always allowed
    // (a leaked key's holder should be able to kill it with nothing else at hand).
    if (caller.kind === 'key' && (caller.keyId ?? caller.id) !== id) {
      await mustHoldScopes(caller, before.scopes);
      mustStayWithin(await callerKeyRow(caller), before);
    }
    const now = clock();
    const after = await db.db.transaction(async (tx) => {
      // A key widened or loosened since the checks may be out of this caller's reach now.
      await lockAsChecked(tx, before);
      const [row] = await tx
        .update(apiKeys)
        .set({ revokedAt: now, revokedReason: reason ?? null, active: false, updatedAt: now })
        .where(and(eq(apiKeys.id, id), sql`${apiKeys.revokedAt} is null`))
        .returning();
      if (!row) throw keyErrors.api_key_revoked();
      await audit.record(tx, {
        orgId: caller.orgId,
        actor: actorOf(caller),
        action: 'key.revoked',
        resource: { type: 'api_key', id },
        context,
        details: { reason: reason ?? null },
      });
      return { ...row, updatedAt: await q.stampKeysChanged(tx, [id]) };
    });
    verifier.invalidate('key', id);
    return currentPeriodOf(after, now.getTime());
  }

  /**
   * Issues a new key with the same settings, expiry included (and the same usage in the period,
   * so a roll does not reset a quota: the count is copied after a flush, what is counted after it
   * moves over, and while the old key is in its grace period both count on the new key's row).
   * The old key keeps working until `now + grace` (or its own earlier expiry). A key already
   * rolled, expired or revoked is refused: its successor is the one to roll. The new key copies
   * the row the checks read, written only if the row is unchanged (see update): a roll racing a
   * revoke answers `api_key_revoked`, one racing a PATCH or a suspension copies the key as changed.
   */
  async function roll(caller: Principal, id: string, graceSeconds: number, context: AuditContext) {
    // The old row's count then holds everything this instance counted before the roll.
    await verifier.flush().catch((error: unknown) => deps.onError(error, 'api key usage flush'));
    return retried(() => rollOnce(caller, id, graceSeconds, context));
  }

  async function rollOnce(caller: Principal, id: string, graceSeconds: number, context: AuditContext) {
    const old = await mustGet(caller, id);
    await mustManage(caller, old);
    if (old.revokedAt !== null) throw keyErrors.api_key_revoked('A revoked key cannot be rolled');
    if (old.rolledTo !== null) {
      throw keyErrors.api_key_already_rolled(`Rolled to ${old.rolledTo}; roll that key`, {
        rolled_to: old.rolledTo,
      });
    }
    const now = clock();
    if (old.expiresAt !== null && old.expiresAt <= now) {
      throw keyErrors.api_key_expired('An expired key cannot be rolled');
    }
    // The new key has the old one's scopes and bounds, and its secret goes to the caller: a key
    // rolls only keys no stronger and no looser than itself.
    await mustHoldScopes(caller, old.scopes);
    mustStayWithin(await callerKeyRow(caller), old);
    const graceEnd = new Date(now.getTime() + graceSeconds * 1000);
    const oldExpiry = old.expiresAt !== null && old.expiresAt < graceEnd ? old.expiresAt : graceEnd;
    const secret = generateKey(API_KEY_PRODUCT, old.environment);
    const newKeyId = newId('key');
    const created = await db.db.transaction(async (tx) => {
      // Locked as checked; its usage is the freshest (other instances' flushes since the read).
      const locked = await lockAsChecked(tx, old);
      const [row] = await tx
        .insert(apiKeys)
        .values({
          ...locked,
          id: newKeyId,
          prefix: displayPrefix(API_KEY_PRODUCT, secret),
          hash: hashKey(secret),
          lastUsedAt: null,
          rolledTo: null,
          createdBy: caller.id,
          createdAt: now,
          updatedAt: now,
        })
        .returning();
      if (!row) throw new Error('api key insert returned nothing');
      const [rolled] = await tx
        .update(apiKeys)
        .set({ expiresAt: oldExpiry, rolledTo: newKeyId, updatedAt: now })
        .where(and(eq(apiKeys.id, id), sql`${apiKeys.rolledTo} is null`, sql`${apiKeys.revokedAt} is null`))
        .returning({ id: apiKeys.id });
      // Cannot happen under the lock; kept as the statement's own guard against a second roll.
      if (!rolled) throw new KeyChangedMeanwhile();
      await audit.record(tx, {
        orgId: caller.orgId,
        actor: actorOf(caller),
        action: 'key.rolled',
        resource: { type: 'api_key', id },
        context,
        details: {
          new_key_id: newKeyId,
          new_prefix: row.prefix,
          grace_seconds: graceSeconds,
          old_key_expires_at: oldExpiry.toISOString(),
        },
      });
      return { ...row, updatedAt: await q.stampKeysChanged(tx, [id, newKeyId]) };
    });
    verifier.transfer(id, newKeyId);
    verifier.invalidate('key', id);
    await verifier
      .carryRateLimit(old, newKeyId)
      .catch((error: unknown) => deps.onError(error, 'api key rate limit carry'));
    await verifier.prime(created.hash).catch((error: unknown) => deps.onError(error, 'api key prime'));
    return { row: currentPeriodOf(created, now.getTime()), key: secret, oldExpiresAt: oldExpiry };
  }

  /**
   * A key crossed its org's burst threshold (once per key per window): audit, maybe suspend.
   * Refused requests count too, so the key may be revoked or off already: `suspended` says
   * whether this report switched it off.
   */
  async function reportBurst(key: CachedKey, count: number): Promise<void> {
    const settings = key.settings;
    const now = clock();
    let suspended = false;
    await db.db.transaction(async (tx) => {
      if (settings.suspendOnBurst) {
        const [row] = await tx
          .update(apiKeys)
          .set({ active: false, disabledReason: 'burst_detected', updatedAt: now })
          .where(and(eq(apiKeys.id, key.id), eq(apiKeys.active, true), sql`${apiKeys.revokedAt} is null`))
          .returning({ id: apiKeys.id });
        suspended = row !== undefined;
      }
      const events: AuditEventInput[] = [
        {
          orgId: key.orgId,
          actor: { type: 'key', id: key.id, name: key.principal.name },
          action: 'security.burst_detected',
          resource: { type: 'api_key', id: key.id },
          details: {
            kind: 'key_requests',
            count,
            threshold: settings.burstThreshold,
            window_seconds: settings.burstWindowSeconds,
            suspended,
          },
        },
      ];
      if (suspended) {
        events.push({
          orgId: key.orgId,
          actor: SYSTEM,
          action: 'key.suspended',
          resource: { type: 'api_key', id: key.id },
          details: { reason: 'burst_detected' },
        });
      }
      await audit.record(tx, events);
      if (suspended) await q.stampKeysChanged(tx, [key.id]);
    });
    if (suspended) verifier.invalidate('key', key.id);
  }

  // ---- settings ----

  async function getSettings(caller: Principal): Promise<q.KeySettings> {
    return q.settingsOf(db.db, caller.orgId);
  }

  async function putSettings(caller: Principal, input: q.KeySettings, context: AuditContext) {
    const now = clock();
    await db.db.transaction(async (tx) => {
      // The event's `before` is the row this write replaces, read locked: two PUTs at once record
      // a chain (defaults → first → second), not the same `before` twice. A missing row (the
      // defaults) is inserted first, so there is a row to lock (a concurrent insert waits here).
      await tx
        .insert(apiKeySettings)
        .values({ orgId: caller.orgId, ...q.DEFAULT_KEY_SETTINGS, createdAt: now, updatedAt: now })
        .onConflictDoNothing();
      const before = (await q.settingsVersionOf(tx, caller.orgId, true)).settings;
      await tx
        .update(apiKeySettings)
        .set({ ...input, updatedBy: caller.id, updatedAt: now })
        .where(eq(apiKeySettings.orgId, caller.orgId));
      await audit.record(tx, {
        orgId: caller.orgId,
        actor: actorOf(caller),
        action: 'key.updated',
        resource: { type: 'api_key_settings', id: caller.orgId },
        context,
        changes: { before: settingsAudit(before), after: settingsAudit(input) },
      });
      await q.stampSettingsChanged(tx, caller.orgId);
    });
    verifier.invalidate('org', caller.orgId);
    return input;
  }

  // ---- inbound webhook keys ----

  const secretAad = (id: string) => `webhook-key/${id}/secret`;

  async function mustGetWebhookKey(caller: Principal, id: string): Promise<q.WebhookKeyRow> {
    const row = isId('whk', id) ? await q.webhookKeyById(db.db, caller.orgId, id) : null;
    if (row === null) throw keyErrors.webhook_key_not_found(`No webhook key ${id} in this organization`);
    return row;
  }

  async function nameFree(orgId: string, name: string, except?: string): Promise<void> {
    const [clash] = await db.db
      .select({ id: webhookKeys.id })
      .from(webhookKeys)
      .where(and(eq(webhookKeys.orgId, orgId), eq(webhookKeys.name, name)));
    if (clash && clash.id !== except)
      throw keyErrors.webhook_key_name_taken(`A webhook key is named ${name}`);
  }

  /**
   * Two requests naming the same key at once both pass `nameFree`; the unique index
   * (`webhook_keys_org_name`) lets one through, and the other is the same 409 (the only other
   * unique column is the hash of 32 random bytes).
   */
  const nameTakenOnClash = (name: string) => (error: unknown) => {
    throw isUniqueViolation(error)
      ? keyErrors.webhook_key_name_taken(`A webhook key is named ${name}`)
      : error;
  };

  async function createWebhookKey(caller: Principal, input: { name: string }, context: AuditContext) {
    await nameFree(caller.orgId, input.name);
    const id = newId('whk');
    const key = generateKey(WEBHOOK_KEY_PRODUCT, deps.defaultEnvironment);
    const secret = `whsec_${randomBytes(32).toString('base64')}`;
    const now = clock();
    const self = selfOf(caller);
    const row = await db.db
      .transaction(async (tx) => {
        const [inserted] = await tx
          .insert(webhookKeys)
          .values({
            id,
            orgId: caller.orgId,
            name: input.name,
            prefix: displayPrefix(WEBHOOK_KEY_PRODUCT, key),
            keyHash: hashKey(key),
            secretSealed: seal(keyring, secret, secretAad(id)),
            createdBy: isId('usr', self) ? self : null,
            createdAt: now,
            updatedAt: now,
          })
          .returning();
        if (!inserted) throw new Error('webhook key insert returned nothing');
        await audit.record(tx, {
          orgId: caller.orgId,
          actor: actorOf(caller),
          action: 'webhook_key.created',
          resource: { type: 'webhook_key', id },
          context,
          changes: { after: { name: inserted.name, prefix: inserted.prefix, active: true } },
        });
        return inserted;
      })
      .catch(nameTakenOnClash(input.name));
    return { row, key, secret };
  }

  async function updateWebhookKey(
    caller: Principal,
    id: string,
    input: { name?: string | undefined; active?: boolean | undefined },
    context: AuditContext,
  ) {
    const before = await mustGetWebhookKey(caller, id);
    const rename = input.name !== undefined && input.name !== before.name;
    const toggle = input.active !== undefined && input.active !== before.active;
    // Nothing differs: the key as it is, and nothing written.
    if (!rename && !toggle) return before;
    if (rename && input.name !== undefined) await nameFree(caller.orgId, input.name, id);
    const now = clock();
    return db.db
      .transaction(async (tx) => {
        // What differs is decided again on the locked row: a concurrent PATCH or DELETE committed
        // since the read is seen (the same change twice writes and records it once; a deleted key
        // is 404), and the event's `before` is the row this write replaced.
        const current = await q.webhookKeyById(tx, caller.orgId, id, true);
        if (current === null) throw keyErrors.webhook_key_not_found();
        const renameNow = input.name !== undefined && input.name !== current.name;
        const toggleNow = input.active !== undefined && input.active !== current.active;
        if (!renameNow && !toggleNow) return current;
        const [row] = await tx
          .update(webhookKeys)
          .set({
            ...(renameNow ? { name: input.name } : {}),
            ...(toggleNow ? { active: input.active } : {}),
            updatedAt: now,
          })
          .where(and(eq(webhookKeys.orgId, caller.orgId), eq(webhookKeys.id, id)))
          .returning();
        if (!row) throw keyErrors.webhook_key_not_found();
        await audit.record(tx, {
          orgId: caller.orgId,
          actor: actorOf(caller),
          action: 'webhook_key.updated',
          resource: { type: 'webhook_key', id },
          context,
          changes: {
            before: { name: current.name, active: current.active },
            after: { name: row.name, active: row.active },
          },
        });
        return row;
      })
      .catch(nameTakenOnClash(input.name ?? before.name));
  }

  async function deleteWebhookKey(caller: Principal, id: string, context: AuditContext): Promise<void> {
    await db.db.transaction(async (tx) => {
      // The row as deleted, not a row read before: two DELETEs at once delete it once, and the
      // other is 404 with no second `webhook_key.deleted` (a rename just before is what it names).
      const [before] = await tx
        .delete(webhookKeys)
        .where(and(eq(webhookKeys.orgId, caller.orgId), eq(webhookKeys.id, id)))
        .returning();
      if (!before) throw keyErrors.webhook_key_not_found(`No webhook key ${id} in this organization`);
      await audit.record(tx, {
        orgId: caller.orgId,
        actor: actorOf(caller),
        action: 'webhook_key.deleted',
        resource: { type: 'webhook_key', id },
        context,
        changes: { before: { name: before.name, active: before.active } },
      });
    });
  }

  /**
   * `POST /v1/ingest`: the webhook key, then the Standard Webhooks signature over the raw body
   * (tolerance 5 minutes), then the message id (a replay is refused by a unique index). Nothing is
   * stored unless every check passes.
   */
  async function ingest(input: {
    apiKey: string | undefined;
    keyName?: string | undefined;
    headers: Record<string, string | string[] | undefined>;
    body: Buffer;
  }) {
    const apiKey = input.apiKey;
    if (apiKey === undefined || !isWellFormed(WEBHOOK_KEY_PRODUCT, apiKey)) {
      throw keyErrors.webhook_key_invalid('Send the webhook key in X-API-Key');
    }
    const row = await q.webhookKeyByHash(db.db, hashKey(apiKey));
    if (row === null || (input.keyName !== undefined && input.keyName !== row.name)) {
      throw keyErrors.webhook_key_invalid();
    }
    if (!row.active) throw keyErrors.webhook_key_inactive();
    const secret = open(keyring, row.secretSealed, secretAad(row.id)).toString('utf8');
    const payload = input.body.toString('utf8');
    const message = verifyStandardWebhook(secret, input.headers, payload, clock().getTime());
    // The route reads raw bytes (the signature covers them), so the shared JSON parser's depth
    // limit is applied here: a payload thousands deep overflowed the stack storing it (500).
    if (nestedTooDeep(payload)) {
      throw httpErrors.json_too_deep(`A signal may nest at most ${MAX_JSON_DEPTH} levels`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload);
    } catch {
      throw httpErrors.invalid_json('A signal carries a JSON body');
    }
    // Standard Webhooks payloads are JSON objects (`{type, timestamp, data}`); `null`, a number,
    // a string, a boolean or an array is not an event.
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw keyErrors.invalid_signal_payload('The body must be a JSON object');
    }
    // PostgreSQL's jsonb and text hold neither NUL (`\u0000`) nor a lone surrogate (`\ud800`), both
    // valid JSON escapes: refused here rather than failing the insert (500).
    const bad = mayHoldUnstorable(payload) ? unstorableIn(parsed) : undefined;
    if (bad !== undefined) throw httpErrors.unsupported_character(bad);
    // A number no double holds (1e400) would be stored as null, as on every JSON body route.
    const huge = mayHoldHugeNumber(payload) ? nonFiniteIn(parsed) : undefined;
    if (huge !== undefined) throw httpErrors.number_out_of_range(huge);
    const type = (parsed as { type?: unknown }).type;
    const eventType = typeof type === 'string' ? prefixOf(type, 200) : null;
    const now = clock();
    return db.db.transaction(async (tx) => {
      const [signal] = await tx
        .insert(signals)
        .values({
          id: newId('sig'),
          orgId: row.orgId,
          sourceKeyId: row.id,
          sourceKeyName: row.name,
          messageId: message.id,
          eventType,
          payload: parsed as Record<string, unknown>,
          receivedAt: now,
        })
        .onConflictDoNothing()
        .returning();
      if (!signal) throw keyErrors.webhook_replayed(`Message ${message.id} was already received`);
      await tx.update(webhookKeys).set({ lastUsedAt: now }).where(eq(webhookKeys.id, row.id));
      return signal;
    });
  }

  return {
    create,
    list,
    get,
    update,
    revoke,
    roll,
    reportBurst,
    getSettings,
    putSettings,
    createWebhookKey,
    listWebhookKeys: (caller: Principal, options: { limit: number; before?: string | undefined }) =>
      q.listWebhookKeys(db.db, caller.orgId, options),
    getWebhookKey: mustGetWebhookKey,
    updateWebhookKey,
    deleteWebhookKey,
    ingest,
    listSignals: (
      caller: Principal,
      options: { limit: number; before?: string | undefined; sourceKeyId?: string | undefined },
    ) => q.listSignals(db.db, caller.orgId, options),
  };
}

export type KeysService = ReturnType<typeof createKeysService>;

/** The burst settings as the API names them (`PUT /v1/keys/settings`), for audit events. */
function settingsAudit(s: q.KeySettings) {
  return {
    burst_threshold: s.burstThreshold,
    burst_window_seconds: s.burstWindowSeconds,
    suspend_on_burst: s.suspendOnBurst,
  };
}

/** What audit events keep of a key: never the hash, never the key. */
function auditView(row: q.ApiKeyRow) {
  return {
    name: row.name,
    owner: row.ownerId,
    prefix: row.prefix,
    environment: row.environment,
    scopes: row.scopes,
    tier: row.tier,
    ratelimit:
      row.ratelimitLimit === null
        ? null
        : { limit: row.ratelimitLimit, window_seconds: row.ratelimitWindowSeconds },
    allowed_ips: row.allowedIps,
    expires_at: row.expiresAt?.toISOString() ?? null,
    period_days: row.periodDays,
    active: row.active,
    disabled_reason: row.disabledReason,
    metadata: row.metadata,
  };
}

/** At most `max` UTF-16 units of `text`, never cutting a surrogate pair in half. */
function prefixOf(text: string, max: number): string {
  if (text.length <= max) return text;
  const last = text.charCodeAt(max - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max);
}

const header = (headers: Record<string, string | string[] | undefined>, name: string): string | undefined => {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
};

/**
 * Standard Webhooks verification with precise reasons and an injectable clock. The HMAC is the
 * `standardwebhooks` package's (`sign`); the header parsing, tolerance and the constant-time
 * comparison over each `v1,` entry of the space-separated list are here. Header names are
 * matched case-insensitively. Returns the message id and timestamp; throws a keys error.
 */
export function verifyStandardWebhook(
  secret: string,
  rawHeaders: Record<string, string | string[] | undefined>,
  payload: string,
  nowMs: number,
  toleranceSeconds = WEBHOOK_TOLERANCE_SECONDS,
): { id: string; timestamp: number } {
  const headers: Record<string, string | string[] | undefined> = {};
  for (const [name, value] of Object.entries(rawHeaders)) headers[name.toLowerCase()] = value;
  const id = header(headers, 'webhook-id');
  const timestampText = header(headers, 'webhook-timestamp');
  const signature = header(headers, 'webhook-signature');
  if (!id || !timestampText || !signature) {
    throw keyErrors.webhook_headers_missing(
      'webhook-id, webhook-timestamp and webhook-signature are required',
    );
  }
  if (id.length > 256) throw keyErrors.webhook_headers_missing('webhook-id is too long');
  if (!/^\d{1,15}$/.test(timestampText)) {
    throw keyErrors.webhook_timestamp_invalid('webhook-timestamp must be seconds since the epoch');
  }
  const timestamp = Number(timestampText);
  const now = Math.floor(nowMs / 1000);
  if (Math.abs(now - timestamp) > toleranceSeconds) {
    throw keyErrors.webhook_timestamp_out_of_tolerance(
      `webhook-timestamp is more than ${toleranceSeconds} s from now`,
    );
  }
  const expected = Buffer.from(
    new Webhook(secret).sign(id, new Date(timestamp * 1000), payload).slice(3),
    'utf8',
  );
  for (const entry of signature.split(' ')) {
    const comma = entry.indexOf(',');
    if (comma < 0 || entry.slice(0, comma) !== 'v1') continue;
    const given = Buffer.from(entry.slice(comma + 1), 'utf8');
    if (given.length === expected.length && timingSafeEqual(given, expected)) return { id, timestamp };
  }
  throw keyErrors.webhook_signature_invalid('No v1 signature matches');
}
