import { randomUUID } from 'node:crypto';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { type RateLimiterAbstract, RateLimiterRes } from 'rate-limiter-flexible';
import type { Authz } from '../authz/contract.ts';
import { AUTHZ_TOPIC } from '../authz/service.ts';
import type { InvalidationBus } from '../bus/index.ts';
import { millisecondsOf } from '../clock.ts';
import type { DbHandle } from '../db/client.ts';
import type { Principal } from '../http/principal.ts';
import { USER_TOPIC } from '../identity/core.ts';
import { API_KEY_PRODUCT, hashKey, isWellFormed } from './format.ts';
import type { KeyRateLimiters } from './limits.ts';
import * as q from './queries.ts';
import { effectiveRateLimit, type RateLimit, type Tier } from './tiers.ts';

/** Why a verification failed, in the order the checks run; `valid` when it did not. */
export type VerifyCode =
  | 'valid'
  | 'malformed'
  | 'not_found'
  | 'revoked'
  | 'expired'
  | 'disabled'
  | 'ip_not_allowed'
  | 'rate_limited'
  | 'quota_exceeded'
  | 'permission_denied';

/** Bus topic on which instances announce changed keys (`<instance> key <id>`) or settings (`… org <id>`). */
export const KEYS_TOPIC = 'keys';

const DAY_MS = 86_400_000;
/** Cached keys are re-read in the background after this long (owner name, roles, superuser flag). */
const REFRESH_MS = 60_000;
const NEGATIVE_TTL_MS = 10_000;
const NEGATIVE_MAX = 10_000;
/**
 * How far before the last poll's start the next one reads (database clock). It only has to cover
 * a commit's own duration (the stamp is a write's last statement); the margin also absorbs a
 * small backward step of the database host's clock.
 */
const POLL_LOOKBACK_MS = 5_000;

/** The owner of a key as verification needs it. Null: unknown or inactive (the key then answers `disabled`). */
export interface KeyOwner {
  name: string;
  roles: readonly string[];
  superuser: boolean;
}

/**
 * Whether a key acts as a superuser: only when its owner is one and its scopes are `*`. A key is
 * never more than its owner, and a scoped key is less: the superuser flag is not a permission a
 * scope can name, so only an unscoped key carries it (SPEC §3, scopes ∩ the owner's rights).
 */
export function keyIsSuperuser(ownerSuperuser: boolean, scopes: readonly string[]): boolean {
  return ownerSuperuser && scopes.includes('*');
}

/**
 * Quota usage in the current period. One object is shared by a rolled key in its grace period
 * and its successor (`id`, the key whose row holds the count), so the two draw on one quota.
 */
export interface Usage {
  readonly id: string;
  periodMs: number;
  periodStartMs: number;
  periodEndIso: string;
  /** Requests in the current period: the database's total at the last read or flush, plus ours since. */
  count: number;
  /** Ids of the cached keys counting on this object. */
  readonly holders: Set<string>;
}

/** A key as the hot path holds it: everything precomputed, mutated in place by usage. */
export interface CachedKey {
  readonly id: string;
  readonly hash: string;
  readonly orgId: string;
  readonly ownerId: string;
  readonly principal: Principal;
  readonly updatedAtMs: number;
  readonly revoked: boolean;
  readonly expiresAtMs: number;
  active: boolean;
  readonly allow: BlockList | null;
  readonly ratelimit: RateLimit | null;
  readonly limiter: RateLimiterAbstract | null;
  readonly quota: number | null;
  /** Its own, or its successor's while in a roll's grace period (rate limit and quota are shared). */
  usage: Usage;
  /** In a roll's grace period: requests count on the successor's row (`usage.id`), not its own. */
  readonly countsOnSuccessor: boolean;
  settings: q.KeySettings;
  burstWindowStartMs: number;
  burstCount: number;
  burstReportedWindow: number;
  loadedAtMs: number;
  /** `{"key_id":…,"org_id":…,"owner":…,"scopes":[…]` fragment of the verify answer. */
  readonly json: string;
}

/** The answer of one verification. `key` is set once the key is known to belong to the asking org. */
export interface Verification {
  code: VerifyCode;
  key: CachedKey | null;
  /** Rate-limit state after this request (null when the key has no limit). */
  limit: number;
  remaining: number;
  resetMs: number;
  quotaRemaining: number;
  /** The clock as the checks read it (unix ms); 0 when no check needed it (malformed, not found). */
  nowMs: number;
}

export interface VerifyOptions {
  /** Client address, checked against the key's allowlist. */
  ip: string;
  /** Only keys of this org are found (`POST /v1/keys/verify`); others answer `not_found`. */
  orgId?: string | undefined;
  /** Also check this permission (scopes ∩ owner's rights). */
  permission?: string | undefined;
  /**
   * The connection (socket) the key came in on, when it is the caller's own credential: its
   * hash is remembered for that connection, so a keep-alive client re-sending the same key is not
   * checksummed and hashed again. Not for keys in a request body (each one is another key).
   */
  connection?: object | undefined;
}

export interface VerifierDeps {
  db: DbHandle;
  bus: InvalidationBus;
  authz: Pick<Authz, 'check' | 'checkSync'>;
  limiters: KeyRateLimiters;
  tiers: ReadonlyMap<string, Tier>;
  clock: () => Date;
  findOwner(orgId: string, ownerId: string): Promise<KeyOwner | null>;
  /** Called once per key per burst window when a key exceeds its org's burst threshold. */
  onBurst(key: CachedKey, count: number): void;
  flushMs: number;
  pollMs: number;
  onError(error: unknown, what: string): void;
}

const NO_LIMIT = -1;

/**
 * The hot path: format and checksum, SHA-256, a Map lookup, a few comparisons, the rate limiter
 * when the key has one. No database write per request: usage is added up here and flushed by
 * `flush()` every `flushMs`. The cache is filled on first use (or by `prime` at creation) and
 * dropped per key by bus messages (every instance) and by a poll of `updated_at` (lost messages).
 */
export function createVerifier(deps: VerifierDeps) {
  const { db, bus, authz, limiters, tiers, clock } = deps;
  const now = millisecondsOf(clock);
  const instanceId = randomUUID();
  const byHash = new Map<string, CachedKey>();
  /**
   * Per connection: the last key it authenticated with and that key's hash. Holds a raw key for as
   * long as the connection is open, as the token cache holds tokens; a WeakMap, so it goes with
   * the socket.
   */
  const hashByConnection = new WeakMap<object, { key: string; hash: string }>();
  const hashById = new Map<string, string>();
  const negative = new Map<string, number>();
  const loading = new Map<string, Promise<CachedKey | null>>();
  /**
   * Burst settings per org, as last read. Dropped by a bus message or by the poll (a lost
   * message); read again, off the hot path, when a key of the org is loaded or refreshed and the
   * copy is older than REFRESH_MS, as the key records themselves are.
   */
  const settingsByOrg = new Map<string, { settings: q.KeySettings; updatedAtMs: number; readAtMs: number }>();
  /** Usage objects by the id of the key whose row holds the count (shared through a roll's grace). */
  const usageById = new Map<string, Usage>();
  /** Cached key ids by owner, so a change to a user reaches their keys at once. */
  const keysByOwner = new Map<string, Set<string>>();
  /**
   * Moves on every eviction: a load that began before one does not cache what it read, since it
   * may have read the owner or the key as they were before the change.
   */
  let generation = 0;
  /** Per key id: usage not yet written. */
  let pending = new Map<string, { delta: number; periodStartMs: number; lastUsedMs: number }>();
  /** The batch being written (taken out of `pending`), so a key read meanwhile still counts it. */
  let inFlight: typeof pending | null = null;
  const stats = { verifications: 0, flushes: 0, loads: 0 };
  // A plain object with every code: one monomorphic increment per verification.
  const byCode: Record<VerifyCode, number> = {
    valid: 0,
    malformed: 0,
    not_found: 0,
    revoked: 0,
    expired: 0,
    disabled: 0,
    ip_not_allowed: 0,
    rate_limited: 0,
    quota_exceeded: 0,
    permission_denied: 0,
  };
  let stopped = false;

  function evict(id: string): void {
    generation++;
    const hash = hashById.get(id);
    if (hash === undefined) return;
    hashById.delete(id);
    const key = byHash.get(hash);
    byHash.delete(hash);
    if (key === undefined) return;
    unindex(key);
    // Keys in a roll's grace count on this one's usage: they re-read who their successor is now
    // (it may have been rolled in turn).
    if (key.usage.id === key.id) for (const other of key.usage.holders) evict(other);
  }

  /** Takes a key that leaves the cache out of the owner and usage indexes. */
  function unindex(key: CachedKey): void {
    const owned = keysByOwner.get(key.ownerId);
    owned?.delete(key.id);
    if (owned?.size === 0) keysByOwner.delete(key.ownerId);
    const usage = key.usage;
    usage.holders.delete(key.id);
    if (usage.holders.size === 0 && usageById.get(usage.id) === usage) usageById.delete(usage.id);
  }

  /** Puts a key that enters the cache in the owner and usage indexes; shares its usage object. */
  function index(key: CachedKey): void {
    let owned = keysByOwner.get(key.ownerId);
    if (owned === undefined) {
      owned = new Set();
      keysByOwner.set(key.ownerId, owned);
    }
    owned.add(key.id);
    const fresh = key.usage;
    const shared = usageById.get(fresh.id);
    if (shared === undefined) usageById.set(fresh.id, fresh);
    else {
      // The same count, read again: the database's total now plus what is pending here.
      shared.periodMs = fresh.periodMs;
      shared.periodStartMs = fresh.periodStartMs;
      shared.periodEndIso = fresh.periodEndIso;
      shared.count = fresh.count;
      key.usage = shared;
    }
    key.usage.holders.add(key.id);
  }

  bus.subscribe(KEYS_TOPIC, (message) => {
    const [from, kind, id] = message.split(' ');
    if (stopped || from === instanceId || id === undefined) return;
    if (kind === 'key') evict(id);
    else if (kind === 'org') dropSettings(id);
  });

  // A user changed (deactivated, roles, superuser flag; identity publishes the id after the
  // commit, on every instance): their keys are read again at next use, an inactive owner's as
  // `disabled`. Loads under way do not cache what they read.
  bus.subscribe(USER_TOPIC, (userId) => {
    if (stopped) return;
    generation++;
    const owned = keysByOwner.get(userId);
    if (owned !== undefined) for (const id of [...owned]) evict(id);
  });

  // Roles or grants changed in an org (`<instance> <org>`). Checks read authz's index, where a
  // key's owner's roles live, so decisions follow at once; the copy of the roles in each cached
  // principal (shown by whoami) is re-read in the background at the key's next use.
  bus.subscribe(AUTHZ_TOPIC, (message) => {
    if (stopped) return;
    const orgId = message.slice(message.indexOf(' ') + 1);
    for (const key of byHash.values()) if (key.orgId === orgId) key.loadedAtMs = 0;
  });

  /** An org's settings changed: they and its cached keys are read again at next use. */
  function dropSettings(orgId: string): void {
    // A settings read under way does not cache what it read (it may predate the change).
    generation++;
    settingsByOrg.delete(orgId);
    for (const key of byHash.values()) if (key.orgId === orgId) evict(key.id);
  }

  /**
   * Drops the key here (at once) and tells every other instance to; run after the change commits.
   * The message goes out in the background: the write answers without waiting on the bus (a Redis
   * that stopped answering held revokes and rolls for as long as it lasted — a roll's new key
   * never reached its caller). A lost or late message costs at most the poll's period.
   */
  function invalidate(kind: 'key' | 'org', id: string): void {
    if (kind === 'key') evict(id);
    else dropSettings(id);
    bus.publish(KEYS_TOPIC, `${instanceId} ${kind} ${id}`).catch((error: unknown) => {
      // Committed already: the poll picks the change up within pollMs.
      deps.onError(error, 'keys invalidation publish');
    });
  }

  function buildAllowList(cidrs: readonly string[]): BlockList | null {
    if (cidrs.length === 0) return null;
    const list = new BlockList();
    for (const entry of cidrs) {
      const [address = '', bits] = entry.split('/');
      const type = isIPv4(address) ? 'ipv4' : 'ipv6';
      if (bits === undefined) list.addAddress(address, type);
      else list.addSubnet(address, Number(bits), type);
    }
    return list;
  }

  function currentPeriod(startMs: number, periodMs: number, nowMs: number): number {
    if (nowMs < startMs + periodMs) return startMs;
    return startMs + Math.floor((nowMs - startMs) / periodMs) * periodMs;
  }

  /**
   * The org's burst settings. A copy older than REFRESH_MS is read again (a key's load or
   * background refresh asks, never a verification), and when it changed every cached key of the
   * org takes the new one in place: a settings change whose bus message this instance missed
   * applies within about two refresh periods even without the poll (embedded mode has none).
   */
  async function settingsFor(orgId: string): Promise<q.KeySettings> {
    const cached = settingsByOrg.get(orgId);
    if (cached !== undefined && Date.now() - cached.readAtMs < REFRESH_MS) return cached.settings;
    const since = generation;
    const read = await q.settingsVersionOf(db.db, orgId);
    if (stopped || since !== generation) return read.settings;
    const current = settingsByOrg.get(orgId);
    const settings =
      current !== undefined && isDeepStrictEqual(current.settings, read.settings)
        ? current.settings
        : read.settings;
    if (current !== undefined && settings !== current.settings) {
      for (const key of byHash.values()) if (key.orgId === orgId) key.settings = settings;
    }
    settingsByOrg.set(orgId, { settings, updatedAtMs: read.updatedAtMs, readAtMs: Date.now() });
    return settings;
  }

  const rateLimitOf = (row: q.ApiKeyRow): RateLimit | null => effectiveRateLimit(row, tiers);

  /**
   * After a roll: what the old key used of its rate-limit window is charged to the successor
   * (from then on both consume under the successor's id), so a roll does not refill the window.
   */
  async function carryRateLimit(old: q.ApiKeyRow, toId: string): Promise<void> {
    const ratelimit = rateLimitOf(old);
    if (ratelimit === null) return;
    const limiter = limiters.forLimit(ratelimit.limit, ratelimit.windowSeconds);
    const used = await limiter.get(old.id);
    if (used !== null && used.consumedPoints > 0) {
      await limiter.penalty(toId, Math.min(used.consumedPoints, ratelimit.limit));
    }
  }

  /**
   * The row whose count a key draws on: its own, or while it is in a roll's grace period, its
   * latest successor's (a rolled key cannot be rolled again, but its successor can).
   */
  async function usageRow(row: q.ApiKeyRow, nowMs: number): Promise<q.ApiKeyRow> {
    if (row.revokedAt !== null || (row.expiresAt !== null && row.expiresAt.getTime() <= nowMs)) return row;
    let head = row;
    for (let hops = 0; hops < 16 && head.rolledTo !== null; hops++) {
      const next = await q.keyById(db.db, row.orgId, head.rolledTo);
      if (next === null) break;
      head = next;
    }
    return head;
  }

  async function build(row: q.ApiKeyRow): Promise<CachedKey> {
    const [owner, settings, head] = await Promise.all([
      deps.findOwner(row.orgId, row.ownerId),
      settingsFor(row.orgId),
      usageRow(row, clock().getTime()),
    ]);
    const nowMs = clock().getTime();
    const tier = tiers.get(row.tier);
    const ratelimit = rateLimitOf(row);
    const periodMs = head.periodDays * DAY_MS;
    const dbStart = head.periodStart.getTime();
    const periodStartMs = currentPeriod(dbStart, periodMs, nowMs);
    const principal: Principal = Object.freeze({
      orgId: row.orgId,
      kind: 'key',
      id: row.id,
      name: row.name,
      roles: Object.freeze([...(owner?.roles ?? [])]),
      scopes: Object.freeze([...row.scopes]),
      superuser: keyIsSuperuser(owner?.superuser ?? false, row.scopes),
      keyId: row.id,
      ownerId: row.ownerId,
    });
    const local = pending.get(head.id);
    const writing = inFlight?.get(head.id);
    return {
      id: row.id,
      hash: row.hash,
      orgId: row.orgId,
      ownerId: row.ownerId,
      principal,
      updatedAtMs: row.updatedAt.getTime(),
      revoked: row.revokedAt !== null,
      expiresAtMs: row.expiresAt?.getTime() ?? Number.POSITIVE_INFINITY,
      active: row.active && owner !== null,
      allow: buildAllowList(row.allowedIps),
      ratelimit,
      limiter: ratelimit ? limiters.forLimit(ratelimit.limit, ratelimit.windowSeconds) : null,
      // An unknown tier (removed from the configuration) grants no quota limit but keeps the key usable.
      quota: tier?.quota ?? null,
      usage: {
        id: head.id,
        periodMs,
        periodStartMs,
        periodEndIso: new Date(periodStartMs + periodMs).toISOString(),
        // The row's total, plus what this instance counted and has not written yet (pending, and a
        // batch being written while the row was read: its total may or may not include it, and
        // counting it twice until the flush returns the totals errs on the side of the quota).
        count:
          (periodStartMs === dbStart ? head.requestCount : 0) +
          (local !== undefined && local.periodStartMs === periodStartMs ? local.delta : 0) +
          (writing !== undefined && writing.periodStartMs === periodStartMs ? writing.delta : 0),
        holders: new Set(),
      },
      countsOnSuccessor: head.id !== row.id,
      settings,
      burstWindowStartMs: 0,
      burstCount: 0,
      burstReportedWindow: -1,
      loadedAtMs: Date.now(),
      json: `"key_id":${JSON.stringify(row.id)},"org_id":${JSON.stringify(row.orgId)},"owner":${JSON.stringify(row.ownerId)},"scopes":${JSON.stringify(row.scopes)}`,
    };
  }

  /** Reads a key by hash into the cache (one read at a time per hash). */
  function load(hash: string): Promise<CachedKey | null> {
    let promise = loading.get(hash);
    if (promise === undefined) {
      stats.loads++;
      const since = generation;
      promise = (async () => {
        const row = await q.keyByHash(db.db, hash);
        if (row === null) {
          if (negative.size >= NEGATIVE_MAX) negative.clear();
          negative.set(hash, Date.now() + NEGATIVE_TTL_MS);
          return null;
        }
        const key = await build(row);
        const previous = byHash.get(hash);
        if (previous) {
          // Keep burst state across a refresh.
          key.burstWindowStartMs = previous.burstWindowStartMs;
          key.burstCount = previous.burstCount;
          key.burstReportedWindow = previous.burstReportedWindow;
        }
        if (!stopped && since === generation) {
          if (previous) unindex(previous);
          index(key);
          byHash.set(hash, key);
          hashById.set(key.id, hash);
        }
        return key;
      })().finally(() => loading.delete(hash));
      loading.set(hash, promise);
    }
    return promise;
  }

  function record(code: VerifyCode): void {
    stats.verifications++;
    byCode[code]++;
  }

  function fail(code: VerifyCode, key: CachedKey | null, nowMs = 0): Verification {
    record(code);
    return { code, key, limit: NO_LIMIT, remaining: NO_LIMIT, resetMs: 0, quotaRemaining: NO_LIMIT, nowMs };
  }

  function ipAllowed(list: BlockList, ip: string): boolean {
    if (isIPv4(ip)) return list.check(ip, 'ipv4');
    if (!isIPv6(ip)) return false;
    // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d: check it as IPv4 as well.
    if (ip.startsWith('::ffff:') && isIPv4(ip.slice(7))) {
      return list.check(ip.slice(7), 'ipv4') || list.check(ip, 'ipv6');
    }
    return list.check(ip, 'ipv6');
  }

  /**
   * Checks, in the SPEC's order: format/checksum, hash lookup, revoked, expired, active, IP
   * allowlist, rate limit, tier quota; then the permission when one is asked for. Returns
   * synchronously when nothing needs waiting for (warm cache, no rate limit, warm authz index).
   */
  function verify(key: string, options: VerifyOptions): Verification | Promise<Verification> {
    const hash = hashOf(key, options.connection);
    if (hash === null) return fail('malformed', null);
    const cached = byHash.get(hash);
    if (cached !== undefined) {
      if (Date.now() - cached.loadedAtMs > REFRESH_MS && !loading.has(hash)) {
        load(hash).catch((error: unknown) => deps.onError(error, 'api key refresh'));
      }
      return afterLookup(cached, options);
    }
    const until = negative.get(hash);
    if (until !== undefined) {
      if (until > Date.now()) return fail('not_found', null);
      negative.delete(hash);
    }
    return load(hash).then((found) =>
      found === null ? fail('not_found', null) : afterLookup(found, options),
    );
  }

  /** The key's hash, or null for a malformed key; remembered per connection when one is given. */
  function hashOf(key: string, connection: object | undefined): string | null {
    if (connection === undefined) return isWellFormed(API_KEY_PRODUCT, key) ? hashKey(key) : null;
    const memo = hashByConnection.get(connection);
    if (memo !== undefined && memo.key === key) return memo.hash;
    if (!isWellFormed(API_KEY_PRODUCT, key)) return null;
    const hash = hashKey(key);
    hashByConnection.set(connection, { key, hash });
    return hash;
  }

  /**
   * A refusal of a known key (of the asking org): it counts towards the key's burst as a valid
   * request does (SPEC: more than the threshold of requests from one key), and the answer shows
   * the current billing period (one that ended reads as a fresh one; nothing is written).
   */
  function refuse(code: VerifyCode, key: CachedKey, nowMs: number): Verification {
    const usage = key.usage;
    if (nowMs >= usage.periodStartMs + usage.periodMs) startPeriod(usage, nowMs);
    burst(key, nowMs);
    return fail(code, key, nowMs);
  }

  /** The billing period ended: the counter starts again (written at the next counted request's flush). */
  function startPeriod(usage: Usage, nowMs: number): void {
    usage.periodStartMs = currentPeriod(usage.periodStartMs, usage.periodMs, nowMs);
    usage.periodEndIso = new Date(usage.periodStartMs + usage.periodMs).toISOString();
    usage.count = 0;
  }

  function afterLookup(key: CachedKey, options: VerifyOptions): Verification | Promise<Verification> {
    if (options.orgId !== undefined && key.orgId !== options.orgId) return fail('not_found', null);
    if (key.revoked) return refuse('revoked', key, now());
    const nowMs = now();
    if (nowMs >= key.expiresAtMs) return refuse('expired', key, nowMs);
    if (!key.active) return refuse('disabled', key, nowMs);
    if (key.allow !== null && !ipAllowed(key.allow, options.ip)) return refuse('ip_not_allowed', key, nowMs);
    if (key.limiter === null) return afterRateLimit(key, options, nowMs, NO_LIMIT, NO_LIMIT, 0);
    const limit = key.ratelimit?.limit ?? 0;
    return key.limiter.consume(key.usage.id).then(
      (res) => afterRateLimit(key, options, now(), limit, res.remainingPoints, res.msBeforeNext),
      (error: unknown) => {
        if (!(error instanceof RateLimiterRes)) throw error;
        const out = refuse('rate_limited', key, now());
        out.limit = limit;
        out.remaining = 0;
        out.resetMs = error.msBeforeNext;
        return out;
      },
    );
  }

  function afterRateLimit(
    key: CachedKey,
    options: VerifyOptions,
    nowMs: number,
    limit: number,
    remaining: number,
    resetMs: number,
  ): Verification | Promise<Verification> {
    const usage = key.usage;
    // The billing period ended: the counter starts again (written at the next flush).
    if (nowMs >= usage.periodStartMs + usage.periodMs) startPeriod(usage, nowMs);
    const out: Verification = {
      code: 'valid',
      key,
      limit,
      remaining,
      resetMs,
      quotaRemaining: NO_LIMIT,
      nowMs,
    };
    if (key.quota !== null) {
      if (usage.count >= key.quota) {
        out.code = 'quota_exceeded';
        out.quotaRemaining = 0;
        burst(key, nowMs);
        record('quota_exceeded');
        return out;
      }
      out.quotaRemaining = key.quota - usage.count - 1;
    }
    usage.count++;
    countUsage(key, usage, nowMs);
    if (burst(key, nowMs)) {
      out.code = 'disabled';
      record('disabled');
      return out;
    }
    if (options.permission === undefined) {
      record('valid');
      return out;
    }
    const decision = authz.checkSync(key.principal, options.permission);
    if (decision !== null) return withDecision(out, decision.allowed);
    return authz.check(key.principal, options.permission).then((d) => withDecision(out, d.allowed));
  }

  function withDecision(out: Verification, allowed: boolean): Verification {
    if (!allowed) out.code = 'permission_denied';
    record(out.code);
    return out;
  }

  function countUsage(key: CachedKey, usage: Usage, nowMs: number): void {
    if (!key.countsOnSuccessor) {
      addPending(key.id, 1, usage.periodStartMs, nowMs);
      return;
    }
    // In a roll's grace period: the request counts on the successor's row; the old key's row only
    // learns when it was last used.
    addPending(usage.id, 1, usage.periodStartMs, 0);
    addPending(key.id, 0, usage.periodStartMs, nowMs);
  }

  /** `lastUsedMs` 0: the row's last use does not move (usage of a key in grace, moved by a roll). */
  function addPending(id: string, delta: number, periodStartMs: number, lastUsedMs: number): void {
    const entry = pending.get(id);
    if (entry === undefined) {
      pending.set(id, { delta, periodStartMs, lastUsedMs });
    } else if (entry.periodStartMs !== periodStartMs) {
      entry.delta = delta;
      entry.periodStartMs = periodStartMs;
      entry.lastUsedMs = lastUsedMs;
    } else {
      entry.delta += delta;
      if (lastUsedMs > entry.lastUsedMs) entry.lastUsedMs = lastUsedMs;
    }
  }

  /**
   * After a roll commits: what this instance counted on the old key and has not written (pending,
   * or in a batch being written to the old row) moves to the successor, whose row copied the old
   * one's total at the flush before the roll. The old key's last use stays with it.
   */
  function transfer(fromId: string, toId: string): void {
    const local = pending.get(fromId);
    if (local !== undefined && local.delta > 0) {
      addPending(toId, local.delta, local.periodStartMs, 0);
      local.delta = 0;
    }
    // Being written to the old row, whose total no longer counts: the successor counts it too
    // (if the write fails and is retried, it still goes to the old row only).
    const writing = inFlight?.get(fromId);
    if (writing !== undefined && writing.delta > 0) addPending(toId, writing.delta, writing.periodStartMs, 0);
  }

  /**
   * Counts a request in the key's burst window — every request that named a key of the asking
   * org, refused or not. True when the key was just suspended for it.
   */
  function burst(key: CachedKey, nowMs: number): boolean {
    const windowMs = key.settings.burstWindowSeconds * 1000;
    if (nowMs - key.burstWindowStartMs >= windowMs) {
      key.burstWindowStartMs = nowMs;
      key.burstCount = 0;
    }
    key.burstCount++;
    if (key.burstCount <= key.settings.burstThreshold || key.burstReportedWindow === key.burstWindowStartMs) {
      return false;
    }
    key.burstReportedWindow = key.burstWindowStartMs;
    deps.onBurst(key, key.burstCount);
    if (!key.settings.suspendOnBurst) return false;
    key.active = false;
    return true;
  }

  let flushing: Promise<void> | null = null;

  /**
   * Writes pending usage in one statement and takes the totals back. Waits for a flush already
   * under way (the timer's) first, so everything counted before the call is written when it
   * resolves — tests and shutdown rely on that.
   */
  async function flush(): Promise<void> {
    while (flushing !== null) await flushing.catch(() => {});
    if (pending.size === 0) return;
    const run = writePending();
    flushing = run;
    try {
      await run;
    } finally {
      flushing = null;
    }
  }

  async function writePending(): Promise<void> {
    const batch = pending;
    pending = new Map();
    inFlight = batch;
    const deltas: q.UsageDelta[] = [];
    for (const [id, entry] of batch) {
      deltas.push({
        id,
        delta: entry.delta,
        periodStart: new Date(entry.periodStartMs),
        lastUsedAt: entry.lastUsedMs === 0 ? null : new Date(entry.lastUsedMs),
      });
    }
    try {
      const rows = await q.addUsage(db, deltas);
      inFlight = null;
      stats.flushes++;
      for (const row of rows) {
        const usage = usageById.get(row.id);
        if (usage === undefined) continue;
        const startMs = new Date(row.period_start).getTime();
        if (startMs !== usage.periodStartMs) continue;
        const local = pending.get(row.id);
        usage.count =
          Number(row.request_count) +
          (local !== undefined && local.periodStartMs === startMs ? local.delta : 0);
      }
    } catch (error) {
      inFlight = null;
      // Put the counts back for the next attempt rather than lose them.
      for (const [id, entry] of batch) {
        const now = pending.get(id);
        if (now === undefined) pending.set(id, entry);
        else if (now.periodStartMs === entry.periodStartMs) {
          now.delta += entry.delta;
          now.lastUsedMs = Math.max(now.lastUsedMs, entry.lastUsedMs);
        }
      }
      throw error;
    }
  }

  /**
   * Where the last poll started, on the database's clock (the stamps' clock, `q.stampKeysChanged`);
   * null before the first. A change the last poll did not see committed after that poll's reads
   * began, so its stamp — the last statement before its commit — is later than that start, less
   * the commit's own time: looking back POLL_LOOKBACK_MS from it cannot miss one. It was the
   * instance's JS clock against stamps taken from the writer's JS clock before its row lock: a
   * write that waited > 5 s on the lock, or a writer's clock > 5 s behind, was never seen.
   */
  let lastPollDbMs: number | null = null;
  /** Versions (`key <id>`, `org <id>`) the poll has handed to this instance's subscribers. */
  const polledVersions = new Map<string, { version: number; seenMs: number }>();
  async function poll(): Promise<void> {
    const startedMs = await q.databaseNowMs(db);
    const since = new Date((lastPollDbMs ?? startedMs) - POLL_LOOKBACK_MS);
    const [changed, settings] = await Promise.all([
      q.keysChangedSince(db.db, since),
      q.settingsChangedSince(db.db, since),
    ]);
    // Only once both reads are done: a failed poll is covered by the next one.
    lastPollDbMs = startedMs;
    for (const row of changed) {
      const hash = hashById.get(row.id);
      const key = hash === undefined ? undefined : byHash.get(hash);
      const version = row.updatedAt.getTime();
      // Any other version than the cached one (stamps are the database's clock, creations the
      // service's: compare versions, not times).
      if (key !== undefined && version !== key.updatedAtMs) evict(row.id);
      // This instance's other holders of the key (its open flag streams, the Unleash client API's
      // access cache) hear of each version once, as the bus would have told them: a revoke whose
      // message was lost ended nothing here but new requests, and a stream opened with the key
      // went on receiving flag changes for up to an hour (a tester's finding).
      const seenAs = `key ${row.id}`;
      if (polledVersions.get(seenAs)?.version === version) continue;
      polledVersions.set(seenAs, { version, seenMs: startedMs });
      bus.deliverLocally(KEYS_TOPIC, `${instanceId} ${seenAs}`);
    }
    // A version leaves the poll's window after POLL_LOOKBACK_MS: no need to remember it longer.
    for (const [id, seen] of polledVersions)
      if (seen.seenMs < startedMs - 2 * POLL_LOOKBACK_MS) polledVersions.delete(id);
    // Settings whose bus message was lost: as for keys, the copy read before the change goes.
    for (const row of settings) {
      const cached = settingsByOrg.get(row.orgId);
      const version = row.updatedAt.getTime();
      if (cached !== undefined && version !== cached.updatedAtMs) dropSettings(row.orgId);
      const seenAs = `org ${row.orgId}`;
      if (polledVersions.get(seenAs)?.version === version) continue;
      polledVersions.set(seenAs, { version, seenMs: startedMs });
      bus.deliverLocally(KEYS_TOPIC, `${instanceId} ${seenAs}`);
    }
  }

  const flushTimer = setInterval(() => {
    if (flushing !== null || pending.size === 0) return;
    flush().catch((error: unknown) => deps.onError(error, 'api key usage flush'));
  }, deps.flushMs);
  flushTimer.unref();
  let polling = false;
  // Embedded mode (PGlite) is one process per data folder, and every change to a key goes through
  // this process's service, which invalidates directly: there is nobody else's change to poll for,
  // and each poll is a query through the in-process database (its share of a busy server's CPU).
  const pollTimer =
    db.kind === 'pglite'
      ? undefined
      : setInterval(() => {
          if (polling) return;
          polling = true;
          poll()
            .catch((error: unknown) => deps.onError(error, 'api key invalidation poll'))
            .finally(() => {
              polling = false;
            });
        }, deps.pollMs);
  pollTimer?.unref();

  /** Stops the timers and writes what is pending (shutdown). */
  async function stop(): Promise<void> {
    stopped = true;
    clearInterval(flushTimer);
    clearInterval(pollTimer);
    await flush();
  }

  return {
    verify,
    /** Loads a key into the cache (pre-warm after create or roll). */
    prime: (hash: string) => load(hash).then(() => undefined),
    invalidate,
    transfer,
    carryRateLimit,
    flush,
    poll,
    stop,
    /** Verifications since start by code, every code present (the /metrics counter). */
    counts: (): Readonly<Record<VerifyCode, number>> => byCode,
    stats: () => ({
      verifications: stats.verifications,
      /** Verifications since start, by code (codes not seen yet are absent). */
      byCode: Object.fromEntries(Object.entries(byCode).filter(([, n]) => n > 0)) as Partial<
        Record<VerifyCode, number>
      >,
      flushes: stats.flushes,
      loads: stats.loads,
      cached: byHash.size,
      pending: pending.size,
    }),
    settingsFor,
  };
}

export type KeyVerifier = ReturnType<typeof createVerifier>;
