import { createHash } from 'node:crypto';
import { and, asc, eq, gt, inArray, sql } from 'drizzle-orm';
import { auditEvents } from '../audit/schema.ts';
import type { AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Authz } from '../authz/contract.ts';
import type { InvalidationBus } from '../bus/index.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { isUniqueViolation } from '../db/errors.ts';
import { newId } from '../db/ids.ts';
import type { Principal } from '../http/principal.ts';
import type { FieldError } from '../http/problem.ts';
import type { Environment, TenancyService } from '../tenancy/service.ts';
import { readableRows, requireOn } from '../vault/common.ts';
import type { FourEyes } from '../vault/four-eyes.ts';
import type { Access, Pending } from '../vault/secrets/service.ts';
import { clientView } from './client-view.ts';
import { createFlagEngine, type FlagEngine } from './engine.ts';
import { flagErrors } from './errors.ts';
import { featureFlags, flagSegments } from './schema.ts';
import type { Constraint, DeltaEvent, Feature, FlagContext, Segment } from './types.ts';
import { flagIssues, segmentIssues } from './validate.ts';

export type FlagRow = typeof featureFlags.$inferSelect;
export type SegmentRow = typeof flagSegments.$inferSelect;

/** Bus topic: `<orgId> <environmentId>` (one environment) or `<orgId> *` (segments: all of them). */
export const FLAGS_TOPIC = 'flags';

/**
 * Default of `recheckMs`: how stale a lost bus message can leave another instance's flags. One
 * query per interval per instance, over the flags of the environments it holds in memory.
 */
export const FLAG_RECHECK_MS = 2_000;

/** Strategies whose rollout hashes with a `groupId`; the service stores one (the flag name). */
const GROUPED = new Set(['flexibleRollout', 'gradualRolloutUserId', 'gradualRolloutSessionId']);

/**
 * An org's flags in one environment, compiled: what evaluation, the client API and the stream
 * read. Immutable; a change replaces it.
 */
export interface FlagSnapshot {
  readonly orgId: string;
  readonly environment: Environment;
  readonly features: readonly Feature[];
  readonly segments: readonly Segment[];
  readonly engine: FlagEngine;
  /** Strong ETag of the client state (same on every instance for the same data). */
  readonly etag: string;
  /** Increases on every reload in this process (stream event ids). */
  readonly revision: number;
}

export interface FlagServiceDeps {
  db: DbHandle;
  audit: AuditRecorder;
  tenancy: Pick<TenancyService, 'environmentByName'>;
  bus: InvalidationBus;
  clock: () => Date;
  fourEyes?: FourEyes | undefined;
  /** Per-flag checks (grants on resource type `flags`, id `flg_…`); from memory when warm. */
  authz: Pick<Authz, 'check' | 'checkSync'>;
  onError?: (error: unknown, what: string) => void;
  /**
   * How often the environments held in memory are compared with the database, in case a bus
   * message was lost (ms; 0: never). PostgreSQL only: on PGlite this process makes every change
   * itself. Default `FLAG_RECHECK_MS`.
   */
  recheckMs?: number;
}

export interface SegmentInput {
  name: string;
  description?: string | null | undefined;
  constraints: Constraint[];
}

type Listener = (events: DeltaEvent[], snapshot: FlagSnapshot) => void;
type State = Pick<FlagSnapshot, 'features' | 'segments'>;

/** How many past states per environment `/api/client/delta` can answer with a difference. */
const DELTA_STATES = 20;

/** A version expected by a write: one, any of a list (an `If-Match` list), null (none), or no check. */
type Expected = number | readonly number[] | null | undefined;
/**
 * The flag a replace or delete was made against: its id (null: a change held before ids were
 * compared — none is) and the version read. A flag of the same name with another id is not it.
 */
type Target = { id: string | null; version: number };
const versionMatches = (current: number | null, expected: number | readonly number[] | null) =>
  typeof expected === 'number' || expected === null
    ? current === expected
    : current !== null && expected.includes(current);

const auditFlag = (f: Feature | undefined, version: number | undefined) =>
  f === undefined ? undefined : { ...f, version };

/**
 * What the data of a snapshot was read at: md5 of its flags' `id:version` (by id) and of its
 * org's segments' (by id). Every change writes a new version or a new id, or removes one, so a
 * changed environment has another stamp. The recheck's query computes the same in SQL.
 */
function stampOf(
  flags: readonly { id: string; version: number }[],
  segments: readonly { id: number; version: number }[],
): string {
  const md5 = (rows: readonly { id: string | number; version: number }[]) =>
    createHash('md5')
      .update(rows.map((r) => `${r.id}:${r.version}`).join(','))
      .digest('hex');
  // Code-unit order, as `collate "C"` orders these ASCII ids in the query.
  const byId = [...flags].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return `${md5(byId)} ${md5(segments)}`;
}

/** Each held environment's stamp now, in the order given (`$1` org ids, `$2` environment ids). */
const RECHECK_SQL = `
  select k.n::int as n,
    (select md5(coalesce(string_agg(f.id || ':' || f.version::text, ',' order by f.id collate "C"), ''))
       from feature_flags f
      where f.org_id = k.org_id and f.environment_id = k.environment_id)
    || ' ' ||
    (select md5(coalesce(string_agg(s.id::text || ':' || s.version::text, ',' order by s.id), ''))
       from flag_segments s
      where s.org_id = k.org_id) as stamp
  from unnest($1::text[], $2::text[]) with ordinality as k(org_id, environment_id, n)`;

/** How many problems a refused write lists. */
const MAX_LISTED_ERRORS = 100;

/**
 * Feature flags per org and environment, stored in Unleash's feature-toggle shape; segments per
 * org. Keeps one compiled engine per (org, environment) in memory, dropped on every change here
 * and on other instances (bus topic `flags`), so a warm evaluation never touches the database.
 * On PostgreSQL a timer also compares what is held with the database every `recheckMs`, so a lost
 * bus message leaves another instance stale for that long at most; `stop` ends it.
 */
export function createFlagService({
  db,
  audit,
  tenancy,
  bus,
  clock,
  fourEyes,
  authz,
  onError,
  recheckMs = FLAG_RECHECK_MS,
}: FlagServiceDeps) {
  const snapshots = new Map<string, Promise<FlagSnapshot>>();
  // The stamp of the rows each snapshot was built from (see stampOf).
  const stamps = new WeakMap<FlagSnapshot, string>();
  const envCache = new Map<string, Environment>();
  const listeners = new Map<string, Set<Listener>>();
  // Recent states per (org, environment) by ETag, for `/api/client/delta`: a client holding one
  // of them gets the difference; anyone else a hydration. ETags are content hashes, so a state
  // an SDK got from another instance is recognised here too.
  const recent = new Map<string, Map<string, State>>();
  let revision = 0;

  const keyOf = (orgId: string, envId: string) => `${orgId} ${envId}`;

  /** Runs `work` in the caller's transaction (a four-eyes approval) or a new one. */
  const inTx = <T>(tx: DbOrTx | undefined, work: (tx: DbOrTx) => Promise<T>): Promise<T> =>
    tx ? work(tx) : db.db.transaction(work);

  async function environment(orgId: string, name: string): Promise<Environment> {
    const k = `${orgId} ${name}`;
    const cached = envCache.get(k);
    if (cached) return cached;
    const env = await tenancy.environmentByName(orgId, name);
    envCache.set(k, env);
    return env;
  }

  async function loadSegments(orgId: string, tx: DbOrTx = db.db): Promise<SegmentRow[]> {
    return tx.select().from(flagSegments).where(eq(flagSegments.orgId, orgId)).orderBy(asc(flagSegments.id));
  }

  const segmentOf = (s: SegmentRow): Segment => ({ id: s.id, name: s.name, constraints: s.constraints });

  async function build(orgId: string, env: Environment): Promise<FlagSnapshot> {
    const [rows, segRows] = await Promise.all([
      db.db
        .select({ id: featureFlags.id, version: featureFlags.version, definition: featureFlags.definition })
        .from(featureFlags)
        .where(and(eq(featureFlags.orgId, orgId), eq(featureFlags.environmentId, env.id)))
        .orderBy(asc(featureFlags.name)),
      loadSegments(orgId),
    ]);
    const features = rows.map((r) => clientView(r.definition));
    const segments = segRows.map(segmentOf);
    const etag = `"${createHash('sha256')
      .update(JSON.stringify([features, segments]))
      .digest('base64url')
      .slice(0, 27)}"`;
    revision += 1;
    const k = keyOf(orgId, env.id);
    const states = recent.get(k) ?? new Map<string, State>();
    states.delete(etag);
    states.set(etag, { features, segments });
    for (const old of states.keys()) {
      if (states.size <= DELTA_STATES) break;
      states.delete(old);
    }
    recent.set(k, states);
    const built: FlagSnapshot = {
      orgId,
      environment: env,
      features,
      segments,
      engine: createFlagEngine({ features, segments }),
      etag,
      revision,
    };
    stamps.set(built, stampOf(rows, segRows));
    return built;
  }

  /** The compiled flags of an environment; no database query when warm. */
  async function snapshot(orgId: string, envName: string): Promise<FlagSnapshot> {
    const env = await environment(orgId, envName);
    return snapshotOf(orgId, env);
  }

  function snapshotOf(orgId: string, env: Environment): Promise<FlagSnapshot> {
    const k = keyOf(orgId, env.id);
    let p = snapshots.get(k);
    if (p === undefined) {
      p = build(orgId, env);
      snapshots.set(k, p);
      // A failed load must not stick.
      p.catch(() => {
        if (snapshots.get(k) === p) snapshots.delete(k);
      });
    }
    return p;
  }

  /** Diff of two states as Unleash delta events (what the stream sends). */
  function diff(before: State, after: FlagSnapshot): DeltaEvent[] {
    const eventId = after.revision;
    const events: DeltaEvent[] = [];
    const old = new Map(before.features.map((f) => [f.name, JSON.stringify(f)]));
    const oldSeg = new Map(before.segments.map((s) => [s.id, JSON.stringify(s)]));
    const newSeg = new Set(after.segments.map((s) => s.id));
    // Segments first: a flag may reference a new segment.
    for (const s of after.segments) {
      if (oldSeg.get(s.id) !== JSON.stringify(s))
        events.push({ type: 'segment-updated', eventId, segment: s });
    }
    for (const f of after.features) {
      if (old.get(f.name) !== JSON.stringify(f))
        events.push({ type: 'feature-updated', eventId, feature: f });
      old.delete(f.name);
    }
    for (const name of old.keys()) events.push({ type: 'feature-removed', eventId, featureName: name });
    for (const id of oldSeg.keys()) {
      if (!newSeg.has(id)) events.push({ type: 'segment-removed', eventId, segmentId: id });
    }
    return events;
  }

  async function refresh(k: string, orgId: string, env: Environment): Promise<void> {
    const previous = snapshots.get(k);
    snapshots.delete(k);
    const subscribers = listeners.get(k);
    if (!subscribers || subscribers.size === 0 || previous === undefined) return;
    const before = await previous.catch(() => undefined);
    const after = await snapshotOf(orgId, env);
    const events = before ? diff(before, after) : [];
    if (events.length === 0) return;
    for (const listener of subscribers) listener(events, after);
  }

  bus.subscribe(FLAGS_TOPIC, (message) => {
    const [orgId, envId] = message.split(' ');
    if (orgId === undefined || envId === undefined) return;
    const work: Promise<void>[] = [];
    for (const k of [...snapshots.keys()]) {
      if (!k.startsWith(`${orgId} `) || (envId !== '*' && k !== keyOf(orgId, envId))) continue;
      const p = snapshots.get(k);
      work.push(
        (async () => {
          const env = (await p)?.environment;
          if (env) await refresh(k, orgId, env);
        })(),
      );
    }
    Promise.all(work).catch((error: unknown) => onError?.(error, 'flag snapshot refresh'));
  });

  /**
   * Compares every settled snapshot's stamp with the database's, in one query, and sends each one
   * that differs down the bus message's path (`refresh`): its streams get the changes, the next
   * evaluation or client request the new state. What no lost message touched is left alone.
   * Returns how many were refreshed.
   */
  async function recheck(): Promise<number> {
    const held = await Promise.all(
      [...snapshots].map(async ([k, p]) => ({ k, p, s: await p.catch(() => undefined) })),
    );
    // A load that failed is no longer held: nothing to compare.
    const settled = held.flatMap(({ k, p, s }) => (s === undefined ? [] : [{ k, p, s }]));
    if (settled.length === 0) return 0;
    const now = await db.query<{ n: number; stamp: string }>(RECHECK_SQL, [
      settled.map(({ s }) => s.orgId),
      settled.map(({ s }) => s.environment.id),
    ]);
    const changed = now.flatMap(({ n, stamp }) => {
      const h = settled[n - 1];
      // Skipped when a bus message replaced or dropped the snapshot meanwhile.
      return h !== undefined && stamps.get(h.s) !== stamp && snapshots.get(h.k) === h.p ? [h] : [];
    });
    await Promise.all(changed.map(({ k, s }) => refresh(k, s.orgId, s.environment)));
    return changed.length;
  }

  let rechecking: Promise<unknown> | undefined;
  const recheckTimer =
    db.kind === 'postgres' && recheckMs > 0
      ? setInterval(() => {
          if (rechecking !== undefined) return;
          rechecking = recheck()
            .catch((error: unknown) => onError?.(error, 'flag snapshot recheck'))
            .finally(() => {
              rechecking = undefined;
            });
        }, recheckMs)
      : undefined;
  recheckTimer?.unref();

  /** Ends the recheck timer and waits for a recheck under way (shutdown). */
  async function stop(): Promise<void> {
    clearInterval(recheckTimer);
    await rechecking;
  }

  async function announce(orgId: string, envId: string): Promise<void> {
    try {
      await bus.publish(FLAGS_TOPIC, `${orgId} ${envId}`);
    } catch (error) {
      // This instance must not serve stale data even if the bus is down.
      snapshots.forEach((_, k) => {
        if (k.startsWith(`${orgId} `)) snapshots.delete(k);
      });
      onError?.(error, 'flags bus publish');
    }
  }

  /**
   * Listens to changes of an environment: `hydrate` gets the current state at once, `listener`
   * every later change. Returns the unsubscribe function.
   */
  async function watch(
    orgId: string,
    envName: string,
    hydrate: (snapshot: FlagSnapshot) => void,
    listener: Listener,
  ): Promise<() => void> {
    const env = await environment(orgId, envName);
    const k = keyOf(orgId, env.id);
    let set = listeners.get(k);
    if (!set) {
      set = new Set();
      listeners.set(k, set);
    }
    // Subscribed before the snapshot is read, so no change committed in between is missed.
    set.add(listener);
    const unsubscribe = () => {
      set.delete(listener);
      if (set.size === 0) listeners.delete(k);
    };
    try {
      hydrate(await snapshotOf(orgId, env));
    } catch (error) {
      unsubscribe();
      throw error;
    }
    return unsubscribe;
  }

  // --- validation -------------------------------------------------------------------------

  /** One 400 `invalid_flag` naming every problem; the detail is the first. */
  /** Refuses a write with its problems: the first 100 (a body can hold thousands of bad entries). */
  function refuse(errors: readonly FieldError[]): void {
    const [first] = errors;
    if (first === undefined) return;
    throw flagErrors.invalid_flag(`${first.path}: ${first.message}`, {
      errors: errors.slice(0, MAX_LISTED_ERRORS),
    });
  }

  function invalid(path: string, message: string): never {
    throw flagErrors.invalid_flag(`${path}: ${message}`, { errors: [{ path, message }] });
  }

  /** Flags of an environment that depend on `name` (one level: they are its children). */
  async function dependantsOf(tx: DbOrTx, orgId: string, env: Environment, name: string): Promise<string[]> {
    const rows = await tx
      .select({ name: featureFlags.name, definition: featureFlags.definition })
      .from(featureFlags)
      .where(and(eq(featureFlags.orgId, orgId), eq(featureFlags.environmentId, env.id)));
    return rows.filter((r) => r.definition.dependencies?.some((d) => d.feature === name)).map((r) => r.name);
  }

  /**
   * Serialises the writes of flags of one (org, environment) until the transaction ends. Two edits
   * that make A and B each other's parent would otherwise lock their rows in opposite orders
   * (own row, then the parent's): PostgreSQL kills one with a deadlock (a 500), and the checks of
   * each could miss the other's uncommitted change. After the lock, every statement of the second
   * edit sees the first's commit (READ COMMITTED), so it gets the 400 of one dependency level.
   * On PGlite (one connection, transactions already one at a time) the lock is taken at once.
   */
  async function serialise(tx: DbOrTx, orgId: string, env: Environment): Promise<void> {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`flags ${orgId} ${env.id}`}, 0))`);
  }

  /**
   * Every segment the strategies name exists in the org. With `lock` (the write's transaction)
   * they are locked `FOR KEY SHARE` until it commits: a segment deletion (`FOR UPDATE`, then a look
   * for users) waits and then sees this flag, and a deletion that committed first is seen here.
   */
  async function checkSegments(tx: DbOrTx, orgId: string, f: Feature, lock: boolean): Promise<void> {
    // Ids that cannot be a segment's (an int4 identity) are not sent to the database.
    const named = f.strategies.flatMap((s) => s.segments ?? []);
    const wanted = [...new Set(named)].filter((id) => id > 0 && id <= 2_147_483_647);
    let found = new Set<number>();
    if (wanted.length > 0) {
      const q = tx
        .select({ id: flagSegments.id })
        .from(flagSegments)
        .where(and(eq(flagSegments.orgId, orgId), inArray(flagSegments.id, wanted)))
        .orderBy(asc(flagSegments.id));
      found = new Set((lock ? await q.for('key share') : await q).map((r) => r.id));
    }
    for (const [i, s] of f.strategies.entries()) {
      for (const id of s.segments ?? []) {
        if (!found.has(id))
          invalid(`body.strategies[${i}].segments`, `no segment ${id} in this organization`);
      }
    }
  }

  /**
   * Unleash's one level of dependency: a parent exists, is not the flag itself and has no parents;
   * a flag with parents has no children (else unleash-client turns those children off). With
   * `lock`, parents are locked, so a change elsewhere (a deletion) cannot remove one meanwhile;
   * flag writes of the environment are serialised (`serialise`) before any of this.
   */
  async function checkDependencies(tx: DbOrTx, orgId: string, env: Environment, f: Feature, lock = false) {
    for (const [i, dep] of (f.dependencies ?? []).entries()) {
      const path = `body.dependencies[${i}].feature`;
      if (dep.feature === f.name) invalid(path, 'a flag cannot depend on itself');
      const parent = await find(orgId, env, dep.feature, tx, lock);
      if (!parent) invalid(path, `no flag ${dep.feature} in ${env.name}`);
      if ((parent.definition.dependencies?.length ?? 0) > 0)
        invalid(path, 'Unleash allows one level of dependency: the parent has parents');
    }
    if ((f.dependencies?.length ?? 0) === 0) return;
    const children = await dependantsOf(tx, orgId, env, f.name);
    if (children.length > 0) {
      invalid(
        'body.dependencies',
        `Unleash allows one level of dependency: ${children.join(', ')} depend on ${f.name}, so it cannot have parents`,
      );
    }
  }

  /** Checks the flag and its references and fills Unleash's defaults (`groupId` = flag name). */
  async function normalise(orgId: string, env: Environment, input: Feature, tx: DbOrTx): Promise<Feature> {
    refuse(flagIssues(input));
    await checkSegments(tx, orgId, input, false);
    const strategies = input.strategies.map((s) => {
      const parameters = { ...(s.parameters ?? {}) };
      if (GROUPED.has(s.name) && (parameters.groupId === undefined || parameters.groupId === '')) {
        parameters.groupId = input.name;
      }
      if (s.name === 'flexibleRollout' && parameters.stickiness === undefined)
        parameters.stickiness = 'default';
      return {
        name: s.name,
        ...(s.title === undefined ? {} : { title: s.title }),
        ...(s.disabled === true ? { disabled: true } : {}),
        parameters,
        constraints: s.constraints ?? [],
        ...(s.segments?.length ? { segments: s.segments } : {}),
        ...(s.variants?.length ? { variants: s.variants } : {}),
      };
    });
    await checkDependencies(tx, orgId, env, input);
    return {
      name: input.name,
      type: input.type ?? 'release',
      description: input.description ?? null,
      enabled: input.enabled,
      strategies,
      variants: input.variants ?? [],
      dependencies: input.dependencies ?? [],
      impressionData: input.impressionData ?? false,
    };
  }

  // --- flags ------------------------------------------------------------------------------

  async function find(orgId: string, env: Environment, name: string, tx: DbOrTx = db.db, lock = false) {
    const q = tx
      .select()
      .from(featureFlags)
      .where(
        and(
          eq(featureFlags.orgId, orgId),
          eq(featureFlags.environmentId, env.id),
          eq(featureFlags.name, name),
        ),
      );
    const [row] = lock ? await q.for('update') : await q;
    return row ?? null;
  }

  /**
   * The route checked `permission` on the type; a grant on this flag's id (resource type `flags`,
   * id `flg_…`, as the grants API takes it) may deny (or allow) it for this one flag. 403.
   */
  const requireOnFlag = (principal: Principal, permission: string, row: FlagRow) =>
    requireOn(authz, principal, permission, { type: 'flags', id: row.id });

  /**
   * A page of flags by name, without those a grant on their id keeps the caller from reading
   * (`page` counts the rows read, so the cursor still moves on when some are left out).
   */
  async function list(
    principal: Principal,
    envName: string,
    page: { limit: number; after?: string | undefined },
  ): Promise<{ rows: FlagRow[]; last: string | undefined }> {
    const env = await environment(principal.orgId, envName);
    const where = [eq(featureFlags.orgId, principal.orgId), eq(featureFlags.environmentId, env.id)];
    if (page.after !== undefined) where.push(gt(featureFlags.name, page.after));
    const read = await db.db
      .select()
      .from(featureFlags)
      .where(and(...where))
      .orderBy(asc(featureFlags.name))
      .limit(page.limit);
    const rows = await readableRows(authz, principal, 'flags:read', 'flags', read, (row) => row.id);
    return { rows, last: read.length === page.limit ? read.at(-1)?.name : undefined };
  }

  async function get(principal: Principal, envName: string, name: string): Promise<FlagRow> {
    const env = await environment(principal.orgId, envName);
    const row = await find(principal.orgId, env, name);
    if (!row) throw flagErrors.flag_not_found(`No flag ${name} in ${env.name}`);
    await requireOnFlag(principal, 'flags:read', row);
    return row;
  }

  /** What a refused precondition asked for, as a sentence: an If-Match naming no version says so. */
  const asked = (expected: number | readonly number[] | null): string =>
    expected === null
      ? 'absent (it must not exist yet)'
      : typeof expected === 'number'
        ? String(expected)
        : expected.length === 0
          ? 'a version If-Match names (it names none: weak or non-numeric entity tags never match)'
          : expected.join(' or ');

  /** `expected`: a version, or those an `If-Match` list names (any matches; none: 412). */
  function expect(row: FlagRow | null, expected: Expected, name: string): void {
    if (expected === undefined) return;
    const current = row?.version ?? null;
    if (!versionMatches(current, expected)) {
      throw flagErrors.version_conflict(
        current === null
          ? `The flag ${name} no longer exists`
          : `The flag is at version ${current}, not ${asked(expected)}`,
        { current_version: current },
      );
    }
  }

  /**
   * The row found by name is the flag the change was made against (409 `flag_target_gone`
   * otherwise: it was deleted, and maybe another flag was created under its name since). Checked
   * before anything else about the row, so a change reviewed against one flag never acts on another.
   */
  function sameFlag(row: FlagRow | null, id: string | null, name: string): void {
    if (id === null || row?.id === id) return;
    throw flagErrors.flag_target_gone(
      row === null
        ? `The flag ${name} this change was made against (${id}) was deleted`
        : `The flag ${name} this change was made against (${id}) was deleted; ${row.id} is another flag of that name`,
      { target_id: id, current_id: row?.id ?? null },
    );
  }

  /**
   * The highest version a flag of this name in this environment ever had, from the `flag.deleted`
   * events of the audit trail (null if none): a flag created under the name of a deleted one
   * continues its count, so an ETag (`"<version>"`) never names two flags. The rows are kept only
   * for `AUDIT_RETENTION_DAYS`: a name deleted longer ago than that starts at 1 again.
   */
  async function lastVersionOf(tx: DbOrTx, orgId: string, env: Environment, name: string): Promise<number> {
    const before = sql`${auditEvents.changes}->'before'`;
    const [row] = await tx
      .select({
        last: sql<string | number | null>`max(case when jsonb_typeof(${before}->'version') = 'number'
          then (${before}->>'version')::numeric end)`,
      })
      .from(auditEvents)
      .where(
        and(
          eq(auditEvents.orgId, orgId),
          eq(auditEvents.action, 'flag.deleted'),
          eq(auditEvents.resourceType, 'flag'),
          sql`${auditEvents.details}->>'environment' = ${env.name}`,
          sql`${auditEvents.details}->>'name' = ${name}`,
        ),
      );
    const last = Number(row?.last ?? 0);
    return Number.isSafeInteger(last) && last > 0 ? last : 0;
  }

  async function held(access: Access, env: Environment): Promise<boolean> {
    return fourEyes !== undefined && (await fourEyes.required(access.principal.orgId, env.name));
  }

  /** Creates a flag (or holds the creation for approval). */
  async function create(access: Access, envName: string, input: Feature): Promise<FlagRow | Pending> {
    const { orgId } = access.principal;
    const env = await environment(orgId, envName);
    const feature = await normalise(orgId, env, input, db.db);
    if (await find(orgId, env, feature.name))
      throw flagErrors.flag_exists(`A flag ${feature.name} exists in ${env.name}`);
    if (fourEyes && (await held(access, env))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'flag.create',
        environmentId: env.id,
        targetId: null,
        payload: { environment: env.name, feature },
        summary: { environment: env.name, name: feature.name, after: feature },
      });
      return { pending: true, changeId };
    }
    return write(access, env, feature, null);
  }

  /** Replaces a flag's definition; `expectedVersion` from If-Match when given. */
  async function replace(
    access: Access,
    envName: string,
    name: string,
    input: Feature,
    expectedVersion: readonly number[] | undefined,
  ): Promise<FlagRow | Pending> {
    const { orgId } = access.principal;
    const env = await environment(orgId, envName);
    const existing = await find(orgId, env, name);
    if (!existing) throw flagErrors.flag_not_found(`No flag ${name} in ${env.name}`);
    await requireOnFlag(access.principal, 'flags:update', existing);
    if (input.name !== name)
      invalid('body.name', 'must equal the flag name in the path (flags are not renamed)');
    expect(existing, expectedVersion, name);
    const feature = await normalise(orgId, env, input, db.db);
    if (fourEyes && (await held(access, env))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'flag.replace',
        environmentId: env.id,
        targetId: existing.id,
        payload: { environment: env.name, feature, expectedVersion: existing.version },
        summary: { environment: env.name, name, before: existing.definition, after: feature },
      });
      return { pending: true, changeId };
    }
    return write(access, env, feature, { id: existing.id, version: existing.version });
  }

  /** Writes a flag in one transaction with its audit event; `expected` null = create. */
  async function write(
    access: Access,
    env: Environment,
    feature: Feature,
    expected: Target | null,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<FlagRow> {
    const { principal } = access;
    let row: FlagRow | undefined;
    try {
      row = await inTx(outerTx, async (tx) => {
        await serialise(tx, principal.orgId, env);
        const before = await find(principal.orgId, env, feature.name, tx, true);
        if (expected === null && before)
          throw flagErrors.flag_exists(`A flag ${feature.name} exists in ${env.name}`);
        if (expected !== null) {
          sameFlag(before, expected.id, feature.name);
          expect(before, expected.version, feature.name);
        }
        // Again under locks: segments and other flags may have changed since the request was
        // checked (or held).
        await checkSegments(tx, principal.orgId, feature, true);
        await checkDependencies(tx, principal.orgId, env, feature, true);
        const now = clock();
        const [written] = before
          ? await tx
              .update(featureFlags)
              .set({
                enabled: feature.enabled,
                definition: feature,
                version: before.version + 1,
                updatedBy: principal.id,
                updatedAt: now,
              })
              .where(eq(featureFlags.id, before.id))
              .returning()
          : await tx
              .insert(featureFlags)
              .values({
                id: newId('flg'),
                orgId: principal.orgId,
                environmentId: env.id,
                name: feature.name,
                enabled: feature.enabled,
                definition: feature,
                // Under the environment's write lock (`serialise`): no other write of the name between.
                version: (await lastVersionOf(tx, principal.orgId, env, feature.name)) + 1,
                createdBy: principal.id,
                updatedBy: principal.id,
                createdAt: now,
                updatedAt: now,
              })
              .returning();
        if (!written) throw new Error('flag write returned nothing');
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: before ? 'flag.updated' : 'flag.created',
          resource: { type: 'flag', id: written.id },
          context: access.context,
          details: {
            environment: env.name,
            name: feature.name,
            ...(approvedBy ? { approved_by: approvedBy.id } : {}),
          },
          changes: {
            ...(before ? { before: auditFlag(before.definition, before.version) } : {}),
            after: auditFlag(feature, written.version),
          },
        });
        return written;
      });
    } catch (error) {
      if (isUniqueViolation(error))
        throw flagErrors.flag_exists(`A flag ${feature.name} exists in ${env.name}`);
      throw error;
    }
    // In an approval's transaction, the approval announces once it committed.
    if (!outerTx) await announce(principal.orgId, env.id);
    return row;
  }

  async function remove(
    access: Access,
    envName: string,
    name: string,
    expectedVersion: readonly number[] | undefined,
  ): Promise<{ deleted: true } | Pending> {
    const { orgId } = access.principal;
    const env = await environment(orgId, envName);
    const existing = await find(orgId, env, name);
    if (!existing) throw flagErrors.flag_not_found(`No flag ${name} in ${env.name}`);
    await requireOnFlag(access.principal, 'flags:delete', existing);
    expect(existing, expectedVersion, name);
    if (fourEyes && (await held(access, env))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'flag.delete',
        environmentId: env.id,
        targetId: existing.id,
        payload: { environment: env.name, name, expectedVersion: existing.version },
        summary: { environment: env.name, name, before: existing.definition },
      });
      return { pending: true, changeId };
    }
    await applyRemove(access, env, name, { id: existing.id, version: existing.version });
    return { deleted: true };
  }

  async function applyRemove(
    access: Access,
    env: Environment,
    name: string,
    expected: Target,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<string> {
    const { principal } = access;
    const id = await inTx(outerTx, async (tx) => {
      // A deleted parent changes dependencies too: serialised with the environment's other writes.
      await serialise(tx, principal.orgId, env);
      const before = await find(principal.orgId, env, name, tx, true);
      sameFlag(before, expected.id, name);
      expect(before, expected.version, name);
      if (!before) throw flagErrors.flag_not_found();
      // Unleash refuses to archive a parent with children; so do we.
      const dependants = await dependantsOf(tx, principal.orgId, env, name);
      if (dependants.length > 0) invalid('name', `flags depend on it: ${dependants.join(', ')}`);
      await tx.delete(featureFlags).where(eq(featureFlags.id, before.id));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'flag.deleted',
        resource: { type: 'flag', id: before.id },
        context: access.context,
        details: { environment: env.name, name, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
        changes: { before: auditFlag(before.definition, before.version) },
      });
      return before.id;
    });
    if (!outerTx) await announce(principal.orgId, env.id);
    return id;
  }

  /** At approval: the requester still holds what the direct route needs (403 otherwise). */
  async function authorized(who: Access, permission: string): Promise<void> {
    if (!fourEyes) throw new Error('a flag change applied without four-eyes');
    await fourEyes.authorize(who.principal, permission);
  }

  /**
   * Four-eyes appliers: perform an approved change as its requester inside the approval's
   * transaction, after the checks a direct write makes — the requester's permission, the write
   * rules, segments, dependencies, names — made again, since the world moved while it waited. A
   * refusal is the direct write's code (400 `invalid_flag`, 409, 412) and nothing is applied. The
   * bus announcement waits for the approval's commit (`afterCommit`).
   */
  const apply = {
    async create(tx: DbOrTx, who: Access, env: Environment, payload: { feature: Feature }, by: Principal) {
      await authorized(who, 'flags:create');
      const feature = await normalise(who.principal.orgId, env, payload.feature, tx);
      const row = await write(who, env, feature, null, by, tx);
      return { resultId: row.id, afterCommit: () => announce(who.principal.orgId, env.id) };
    },
    async replace(
      tx: DbOrTx,
      who: Access,
      env: Environment,
      payload: { feature: Feature; expectedVersion: number },
      targetId: string | null,
      by: Principal,
    ) {
      await authorized(who, 'flags:update');
      const target = await find(who.principal.orgId, env, payload.feature.name, tx);
      sameFlag(target, targetId, payload.feature.name);
      if (target) await requireOnFlag(who.principal, 'flags:update', target);
      const feature = await normalise(who.principal.orgId, env, payload.feature, tx);
      const expected = { id: targetId, version: payload.expectedVersion };
      const row = await write(who, env, feature, expected, by, tx);
      return { resultId: row.id, afterCommit: () => announce(who.principal.orgId, env.id) };
    },
    async remove(
      tx: DbOrTx,
      who: Access,
      env: Environment,
      payload: { name: string; expectedVersion: number },
      targetId: string | null,
      by: Principal,
    ) {
      await authorized(who, 'flags:delete');
      const target = await find(who.principal.orgId, env, payload.name, tx);
      sameFlag(target, targetId, payload.name);
      if (target) await requireOnFlag(who.principal, 'flags:delete', target);
      const expected = { id: targetId, version: payload.expectedVersion };
      const id = await applyRemove(who, env, payload.name, expected, by, tx);
      return { resultId: id, afterCommit: () => announce(who.principal.orgId, env.id) };
    },
    async putSegment(
      tx: DbOrTx,
      who: Access,
      payload: { id: number | null; input: SegmentInput; expectedVersion: number | null },
      by: Principal,
    ) {
      await authorized(who, payload.id === null ? 'flags:create' : 'flags:update');
      refuse(segmentIssues(payload.input));
      const row = await writeSegment(who, payload.id, payload.input, payload.expectedVersion, by, tx);
      return { resultId: String(row.id), afterCommit: () => announce(who.principal.orgId, '*') };
    },
    async removeSegment(
      tx: DbOrTx,
      who: Access,
      payload: { id: number; expectedVersion: number },
      by: Principal,
    ) {
      await authorized(who, 'flags:delete');
      await applyRemoveSegment(who, payload.id, payload.expectedVersion, by, tx);
      return { resultId: String(payload.id), afterCommit: () => announce(who.principal.orgId, '*') };
    },
  };

  // --- segments ---------------------------------------------------------------------------

  async function listSegments(principal: Principal): Promise<SegmentRow[]> {
    return loadSegments(principal.orgId);
  }

  async function getSegment(principal: Principal, id: number, tx: DbOrTx = db.db): Promise<SegmentRow> {
    const [row] = await tx
      .select()
      .from(flagSegments)
      .where(and(eq(flagSegments.orgId, principal.orgId), eq(flagSegments.id, id)));
    if (!row) throw flagErrors.segment_not_found(`No segment ${id}`);
    return row;
  }

  const segmentAudit = (s: SegmentRow) => ({
    name: s.name,
    description: s.description,
    constraints: s.constraints,
    version: s.version,
  });

  /** Segments serve every environment: held when four-eyes covers any environment of the org. */
  async function segmentHeld(access: Access): Promise<boolean> {
    return fourEyes !== undefined && (await fourEyes.requiredForOrg(access.principal.orgId));
  }

  async function segmentNamed(orgId: string, name: string, tx: DbOrTx = db.db) {
    const [row] = await tx
      .select({ id: flagSegments.id })
      .from(flagSegments)
      .where(and(eq(flagSegments.orgId, orgId), eq(flagSegments.name, name)));
    return row ?? null;
  }

  function expectSegment(row: SegmentRow, expected: Expected): void {
    if (expected === undefined || expected === null || versionMatches(row.version, expected)) return;
    throw flagErrors.version_conflict(`The segment is at version ${row.version}, not ${asked(expected)}`, {
      current_version: row.version,
    });
  }

  /** Flags (any environment) whose strategies use a segment. */
  async function segmentUsers(orgId: string, id: number, tx: DbOrTx = db.db): Promise<string[]> {
    const flags = await tx
      .select({ name: featureFlags.name, definition: featureFlags.definition })
      .from(featureFlags)
      .where(eq(featureFlags.orgId, orgId));
    const users = flags.filter((f) => f.definition.strategies.some((s) => s.segments?.includes(id)));
    return [...new Set(users.map((u) => u.name))];
  }

  /**
   * Refuses (409 `segment_in_use`) to delete a segment that flags use, or that a flag change
   * waiting for approval names: approved later, it would have nothing to point at (Unleash, too,
   * keeps a segment that an active change request uses). The approval checks its segments again
   * anyway (a deletion racing the request).
   */
  async function assertSegmentUnused(orgId: string, id: number, tx: DbOrTx = db.db): Promise<void> {
    const users = await segmentUsers(orgId, id, tx);
    if (users.length > 0) throw flagErrors.segment_in_use(`Flags use this segment: ${users.join(', ')}`);
    if (!fourEyes) return;
    const changes = (await fourEyes.pending(orgId, ['flag.create', 'flag.replace'], tx)).filter((c) =>
      (c.payload as { feature?: Feature }).feature?.strategies.some((s) => s.segments?.includes(id)),
    );
    if (changes.length > 0) {
      const ids = changes.map((c) => c.id);
      throw flagErrors.segment_in_use(
        `Flag changes waiting for approval use this segment: ${ids.join(', ')}`,
        {
          pending_changes: ids,
        },
      );
    }
  }

  /** Creates (`id` null) or replaces a segment, or holds the change for approval. */
  async function putSegment(
    access: Access,
    id: number | null,
    input: SegmentInput,
    expectedVersion?: readonly number[],
  ): Promise<SegmentRow | Pending> {
    const { principal } = access;
    refuse(segmentIssues(input));
    const before = id === null ? null : await getSegment(principal, id);
    if (before) expectSegment(before, expectedVersion);
    if (fourEyes && (await segmentHeld(access))) {
      const taken = await segmentNamed(principal.orgId, input.name);
      if (taken && taken.id !== id) throw flagErrors.segment_exists(`A segment ${input.name} exists`);
      const changeId = await fourEyes.propose(access, {
        kind: before ? 'segment.update' : 'segment.create',
        environmentId: null,
        targetId: before ? String(before.id) : null,
        payload: { id, input, expectedVersion: before?.version ?? null },
        summary: {
          segment: input.name,
          ...(before ? { before: segmentAudit(before) } : {}),
          after: { name: input.name, description: input.description ?? null, constraints: input.constraints },
        },
      });
      return { pending: true, changeId };
    }
    return writeSegment(access, id, input, before?.version ?? null);
  }

  async function writeSegment(
    access: Access,
    id: number | null,
    input: SegmentInput,
    expectedVersion: number | null,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<SegmentRow> {
    const { principal } = access;
    let row: SegmentRow | undefined;
    try {
      row = await inTx(outerTx, async (tx) => {
        let before: SegmentRow | null = null;
        if (id !== null) {
          const [locked] = await tx
            .select()
            .from(flagSegments)
            .where(and(eq(flagSegments.orgId, principal.orgId), eq(flagSegments.id, id)))
            .for('update');
          if (!locked) throw flagErrors.segment_not_found(`No segment ${id}`);
          expectSegment(locked, expectedVersion);
          before = locked;
        }
        const now = clock();
        const [written] = before
          ? await tx
              .update(flagSegments)
              .set({
                name: input.name,
                description: input.description ?? null,
                constraints: input.constraints,
                version: before.version + 1,
                updatedBy: principal.id,
                updatedAt: now,
              })
              .where(eq(flagSegments.id, before.id))
              .returning()
          : await tx
              .insert(flagSegments)
              .values({
                orgId: principal.orgId,
                name: input.name,
                description: input.description ?? null,
                constraints: input.constraints,
                createdBy: principal.id,
                updatedBy: principal.id,
                createdAt: now,
                updatedAt: now,
              })
              .returning();
        if (!written) throw new Error('segment write returned nothing');
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: before ? 'flag.updated' : 'flag.created',
          resource: { type: 'flag_segment', id: String(written.id) },
          context: access.context,
          details: { segment: written.name, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
          changes: { ...(before ? { before: segmentAudit(before) } : {}), after: segmentAudit(written) },
        });
        return written;
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw flagErrors.segment_exists(`A segment ${input.name} exists`);
      throw error;
    }
    if (!outerTx) await announce(principal.orgId, '*');
    return row;
  }

  /** Deletes a segment no flag uses, or holds the deletion for approval. */
  async function removeSegment(
    access: Access,
    id: number,
    expectedVersion?: readonly number[],
  ): Promise<{ deleted: true } | Pending> {
    const { principal } = access;
    const before = await getSegment(principal, id);
    expectSegment(before, expectedVersion);
    await assertSegmentUnused(principal.orgId, id);
    if (fourEyes && (await segmentHeld(access))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'segment.delete',
        environmentId: null,
        targetId: String(id),
        payload: { id, expectedVersion: before.version },
        summary: { segment: before.name, before: segmentAudit(before) },
      });
      return { pending: true, changeId };
    }
    await applyRemoveSegment(access, id, before.version);
    return { deleted: true };
  }

  async function applyRemoveSegment(
    access: Access,
    id: number,
    expectedVersion: number,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<void> {
    const { principal } = access;
    await inTx(outerTx, async (tx) => {
      const [before] = await tx
        .select()
        .from(flagSegments)
        .where(and(eq(flagSegments.orgId, principal.orgId), eq(flagSegments.id, id)))
        .for('update');
      if (!before) throw flagErrors.segment_not_found(`No segment ${id}`);
      expectSegment(before, expectedVersion);
      await assertSegmentUnused(principal.orgId, id, tx);
      await tx.delete(flagSegments).where(eq(flagSegments.id, id));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'flag.deleted',
        resource: { type: 'flag_segment', id: String(id) },
        context: access.context,
        details: { segment: before.name, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
        changes: { before: segmentAudit(before) },
      });
    });
    if (!outerTx) await announce(principal.orgId, '*');
  }

  /**
   * Unleash's delta API: the current state's ETag, and `events` null when `known` (the ETags the
   * client names, or `*`) includes it (304, which carries that ETag too); the events from a recent
   * state the client holds; else one `hydration`.
   */
  async function delta(
    orgId: string,
    envName: string,
    known: readonly string[] | '*' | undefined,
  ): Promise<{ etag: string; events: DeltaEvent[] | null }> {
    const s = await snapshot(orgId, envName);
    if (known === '*' || known?.includes(s.etag)) return { etag: s.etag, events: null };
    const states = recent.get(keyOf(orgId, s.environment.id));
    let before: State | undefined;
    for (const tag of known ?? []) {
      before = states?.get(tag);
      if (before !== undefined) break;
    }
    const events: DeltaEvent[] = before
      ? diff(before, s)
      : [{ type: 'hydration', eventId: s.revision, features: [...s.features], segments: [...s.segments] }];
    return { etag: s.etag, events };
  }

  /**
   * Every flag's outcome for a context, or only the flags `only` names: those the environment does
   * not have are left out of `data` and listed in `missing`. From memory when warm.
   */
  async function evaluate(orgId: string, envName: string, context: FlagContext, only?: readonly string[]) {
    const s = await snapshot(orgId, envName);
    if (only === undefined) return { data: s.engine.evaluateAll(context), missing: [] as string[] };
    const data = [];
    const missing: string[] = [];
    for (const name of new Set(only)) {
      if (!s.engine.has(name)) {
        missing.push(name);
        continue;
      }
      const variant = s.engine.getVariant(name, context);
      data.push({ name, enabled: variant.feature_enabled, variant });
    }
    return { data, missing };
  }

  return {
    snapshot,
    watch,
    list,
    get,
    create,
    replace,
    remove,
    apply,
    listSegments,
    getSegment,
    createSegment: (access: Access, input: SegmentInput) => putSegment(access, null, input),
    updateSegment: (access: Access, id: number, input: SegmentInput, expectedVersion?: readonly number[]) =>
      putSegment(access, id, input, expectedVersion),
    removeSegment,
    evaluate,
    delta,
    recheck,
    stop,
    /** Number of cached snapshots (tests). */
    cached: () => snapshots.size,
  };
}

export type FlagService = ReturnType<typeof createFlagService>;
