import {
  and,
  asc,
  desc,
  eq,
  gt,
  inArray,
  isNotNull,
  isNull,
  lt,
  lte,
  not,
  or,
  type SQL,
  sql,
} from 'drizzle-orm';
import type { AuditActor, AuditEventInput, AuditRecorder } from '../../audit/service.ts';
import { actorOf } from '../../audit/service.ts';
import { isPermission, permissionInfo } from '../../authz/catalogue.ts';
import type { Authz } from '../../authz/contract.ts';
import type { InvalidationBus } from '../../bus/index.ts';
import { open, seal, sealedKeyId } from '../../crypto/envelope.ts';
import { CryptoError } from '../../crypto/errors.ts';
import type { Keyring } from '../../crypto/keyring.ts';
import { batchesInFlight, createBatcher } from '../../db/batcher.ts';
import { type DbHandle, type DbOrTx, rawInsertMany } from '../../db/client.ts';
import { isUniqueViolation } from '../../db/errors.ts';
import { isId, newId } from '../../db/ids.ts';
import { prepared, runPrepared } from '../../db/prepared.ts';
import type { RequestContext } from '../../http/context.ts';
import { httpErrors, StewardError } from '../../http/errors.ts';
import type { Principal } from '../../http/principal.ts';
import type { IdentityService } from '../../identity/service.ts';
import { environments } from '../../tenancy/schema.ts';
import type { Environment, TenancyService } from '../../tenancy/service.ts';
import { type FilteredPage, readableRows, requireOn } from '../common.ts';
import type { FourEyes } from '../four-eyes.ts';
import { secretErrors } from './errors.ts';
import { secretAccessLogs, secrets, secretVersions } from './schema.ts';

/** The kinds of secret SPEC section 4 names. */
export const SECRET_TYPES = [
  'api_key',
  'password',
  'certificate',
  'ssh_key',
  'token',
  'connection_string',
  'generic',
] as const;
export type SecretType = (typeof SECRET_TYPES)[number];

/** What a secret access is, in `secret_access_logs`. */
export type AccessType = 'read' | 'write' | 'delete' | 'reveal';

export type SecretRow = typeof secrets.$inferSelect;
/** A secret with its environment's name, as reads return it. */
export type Secret = SecretRow & { environment: string };
export type SecretVersionRow = typeof secretVersions.$inferSelect;
export type SecretVersionInfo = Omit<SecretVersionRow, 'value'>;

/** Who asks, from where, and which tool when an agent asked: travels with every call. */
export interface Access {
  principal: Principal;
  context: RequestContext;
  toolId: string | null;
}

export interface CreateSecretInput {
  name: string;
  environment: string;
  value: string;
  secret_type?: SecretType | undefined;
  display_name?: string | undefined;
  description?: string | undefined;
  tags?: string[] | undefined;
  metadata?: Record<string, unknown> | undefined;
  owner_id?: string | undefined;
  required_permission?: string | undefined;
  rotation_enabled?: boolean | undefined;
  rotation_days?: number | undefined;
  expires_at?: string | undefined;
}

export interface UpdateSecretInput {
  display_name?: string | null | undefined;
  description?: string | null | undefined;
  secret_type?: SecretType | undefined;
  tags?: string[] | undefined;
  metadata?: Record<string, unknown> | undefined;
  owner_id?: string | null | undefined;
  required_permission?: string | null | undefined;
  active?: boolean | undefined;
  rotation_enabled?: boolean | undefined;
  rotation_days?: number | null | undefined;
  expires_at?: string | null | undefined;
}

export interface SecretFilters {
  environment?: string | undefined;
  secret_type?: SecretType | undefined;
  tag?: string | undefined;
  due_for_rotation?: boolean | undefined;
}

/** A change that four-eyes held for approval instead of applying. */
export interface Pending {
  pending: true;
  changeId: string;
}

export interface SecretServiceDeps {
  db: DbHandle;
  keyring: Keyring;
  audit: AuditRecorder;
  authz: Pick<Authz, 'check' | 'checkSync'>;
  tenancy: Pick<TenancyService, 'environmentByName'>;
  /** Who is a user of an org, for `owner_id` (the lookup API keys use for their owners). */
  identity: Pick<IdentityService, 'findPrincipal'>;
  clock: () => Date;
  fourEyes?: FourEyes | undefined;
  /** Tells other instances to drop cached secret rows; without it the cache is this process's only. */
  bus?: Pick<InvalidationBus, 'publish' | 'subscribe'> | undefined;
  onError?: ((error: unknown, what: string) => void) | undefined;
  /** How long a cached row serves reveals if a bus message was lost (default 2 s; 0 disables). */
  cacheTtlMs?: number | undefined;
}

/** Bus topic on which instances announce that a secret changed (message: its id). */
export const SECRETS_TOPIC = 'vault.secrets';

const DAY_MS = 86_400_000;
// last_accessed_at is a hint, not a log (the access log is): refresh it at most once a minute
// so a hot secret does not turn every reveal into a row update.
const LAST_ACCESS_GRANULARITY_MS = 60_000;

/** The associated data binding a sealed value to its row: moved elsewhere, it will not open. */
export const secretAad = (orgId: string, secretId: string, version: number) =>
  `org/${orgId}/secret/${secretId}/v/${version}`;

interface RevealRow {
  id: string;
  org_id: string;
  environment_id: string;
  environment: string;
  name: string;
  current_version: number;
  required_permission: string | null;
  active: boolean;
  expires_at: Date | string | null;
  last_accessed_at: Date | string | null;
  sealed: string | null;
  /** What a reveal decides on, as text (`REVEAL_STATE`): compared again when a cached row is used. */
  state: string;
}

/**
 * Everything of a secret row (alias `s`) a reveal's answer depends on: the version it opens, and
 * what decides whether it may (deleted rows are not read at all). The expiry as an epoch number:
 * exact to the microsecond, whatever the session's time zone, where a JS Date keeps milliseconds.
 */
const REVEAL_STATE =
  'row(s.current_version, s.active, s.required_permission, extract(epoch from s.expires_at))::text';

/** Marks the secrets of a reveal batch as read: $1 now, $2 their ids as a JSON array. */
const TOUCH_SECRETS = prepared(
  'secrets_touch',
  'update secrets set last_accessed_at = $1 where id in (select jsonb_array_elements_text($2))',
);

const REVEAL = prepared(
  'secrets_reveal_row',
  `select s.id, s.org_id, s.environment_id, e.name as environment, s.name, s.current_version,
  s.required_permission, s.active, s.expires_at, s.last_accessed_at, v.value as sealed,
  ${REVEAL_STATE} as state
from secrets s
join environments e on e.id = s.environment_id
left join secret_versions v on v.secret_id = s.id and v.version = coalesce($3::int, s.current_version)
where s.org_id = $1 and s.id = $2 and s.deleted_at is null`,
);

/**
 * Of the cached rows a reveal batch decided on ($1: a JSON array of `{i, id, state}`), those that
 * changed since they were read — deleted, or another state — by their `i`: one statement a batch.
 * A subquery per element, so each is one primary-key lookup: written as `not exists`, the planner
 * hashed the whole table (6 ms a batch on 10,000 secrets, against 0.4 ms for 50 lookups; measured
 * in session 9 with a one-off script, not kept).
 */
const CHANGED_SINCE_READ = prepared(
  'secrets_changed_since_read',
  `select (c->>'i')::int as i from jsonb_array_elements($1::jsonb) c
where (select ${REVEAL_STATE} from secrets s where s.id = c->>'id' and s.deleted_at is null)
  is distinct from c->>'state'`,
);

const dateOf = (d: Date | string | null) => (d === null ? null : d instanceof Date ? d : new Date(d));

/** What a granted reveal answers: the secret, the version opened and its value. */
interface Revealed {
  secret: RevealSecret;
  version: number;
  value: string;
}

/** The fields of a secret the reveal path reads (the rest are not needed to answer). */
type RevealSecret = Pick<
  Secret,
  | 'id'
  | 'orgId'
  | 'environmentId'
  | 'environment'
  | 'name'
  | 'currentVersion'
  | 'requiredPermission'
  | 'active'
  | 'expiresAt'
  | 'lastAccessedAt'
>;

function revealRowToSecret(r: RevealRow): RevealSecret {
  return {
    id: r.id,
    orgId: r.org_id,
    environmentId: r.environment_id,
    environment: r.environment,
    name: r.name,
    currentVersion: r.current_version,
    requiredPermission: r.required_permission,
    active: r.active,
    expiresAt: dateOf(r.expires_at),
    lastAccessedAt: dateOf(r.last_accessed_at),
  };
}

// Errors already written to the access log by the code that threw them.
const alreadyLogged = new WeakSet<object>();

/** The audit view of a secret: metadata only. Keys avoid words the redactor masks (`secret…`). */
function auditView(s: SecretRow | Secret) {
  return {
    name: s.name,
    display_name: s.displayName,
    description: s.description,
    type: s.secretType,
    tags: s.tags,
    metadata: s.metadata,
    owner_id: s.ownerId,
    required_permission: s.requiredPermission,
    active: s.active,
    version: s.currentVersion,
    rotation_enabled: s.rotationEnabled,
    rotation_days: s.rotationDays,
    expires_at: s.expiresAt?.toISOString() ?? null,
  };
}

/** Tags as a set: exact duplicates dropped, first appearance order kept (case matters: `a` ≠ `A`). */
const uniqueTags = (tags: readonly string[]) => [...new Set(tags)];

/** JSON with object keys sorted at every depth: equal for equal jsonb values, whatever the key order. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * Whether a metadata change leaves the row as it is: every field given equals the stored one
 * (tags as stored, deduplicated and in order; metadata whatever its key order; `expires_at` to
 * the millisecond a JS Date holds; rotation as it would result). `{}` changes nothing.
 */
function changesNothing(before: SecretRow, input: UpdateSecretInput): boolean {
  const same = <T>(given: T | undefined, stored: T) => given === undefined || given === stored;
  const rotationEnabled = input.rotation_enabled ?? before.rotationEnabled;
  const rotationDays = input.rotation_days === undefined ? before.rotationDays : input.rotation_days;
  return (
    same(input.display_name, before.displayName) &&
    same(input.description, before.description) &&
    same(input.secret_type, before.secretType as SecretType) &&
    same(input.owner_id, before.ownerId) &&
    same(input.required_permission, before.requiredPermission) &&
    same(input.active, before.active) &&
    rotationEnabled === before.rotationEnabled &&
    rotationDays === before.rotationDays &&
    (input.tags === undefined || canonicalJson(uniqueTags(input.tags)) === canonicalJson(before.tags)) &&
    (input.metadata === undefined || canonicalJson(input.metadata) === canonicalJson(before.metadata)) &&
    (input.expires_at === undefined ||
      (input.expires_at === null
        ? before.expiresAt === null
        : before.expiresAt !== null && new Date(input.expires_at).getTime() === before.expiresAt.getTime()))
  );
}

/** Rotation enabled with no period would never come due: refused rather than stored. */
function checkRotation(enabled: boolean, days: number | null): void {
  if (enabled && days === null) {
    throw httpErrors.validation_failed('body.rotation_days: required while rotation is enabled', {
      errors: [{ path: 'body.rotation_days', message: 'Required while rotation_enabled is true' }],
    });
  }
}

const nextRotation = (enabled: boolean, days: number | null, from: Date) =>
  enabled && days !== null ? new Date(from.getTime() + days * DAY_MS) : null;

/**
 * Whether a secret is due for rotation: active, not expired, rotation enabled, past
 * `next_rotation_at`. The one definition its view, the `due_for_rotation` filter and the scheduler
 * share (the view once left out `active`: a deactivated secret read as due, yet the filter and the
 * scheduler skipped it). A deactivated or expired secret is not in use (reveal refuses it): nobody
 * is told to rotate it. Expired means as reveal decides it: `expires_at <= now`.
 */
export const isDueForRotation = (
  s: Pick<SecretRow, 'active' | 'rotationEnabled' | 'nextRotationAt' | 'expiresAt'>,
  now: Date,
): boolean =>
  s.active &&
  (s.expiresAt === null || s.expiresAt > now) &&
  s.rotationEnabled &&
  s.nextRotationAt !== null &&
  s.nextRotationAt <= now;

/**
 * `isDueForRotation` in SQL. Never NULL (an unset `next_rotation_at` makes it false, an unset
 * `expires_at` takes the `is null` branch), so its negation selects exactly the secrets not due.
 */
const dueForRotation = (now: Date): SQL =>
  and(
    eq(secrets.active, true),
    or(isNull(secrets.expiresAt), gt(secrets.expiresAt, now)),
    eq(secrets.rotationEnabled, true),
    isNotNull(secrets.nextRotationAt),
    lte(secrets.nextRotationAt, now),
  ) as SQL;

/** A refused change's record: the event it would have recorded, and what was asked (no value). */
interface WriteRefusal {
  action: 'secret.updated' | 'secret.rolled_back' | 'secret.deleted';
  details?: Record<string, unknown>;
}

/**
 * Which refusals are audited: the caller was refused (403, 404, 409, …), not a request that is
 * malformed (400: validation, an unknown permission name) nor a failure of Steward (5xx).
 */
const isAuditedRefusal = (error: StewardError) => error.status > 400 && error.status < 500;

/**
 * An approval's transaction (four-eyes), for a change applied inside it: every statement of the
 * change runs on `tx`, and the ids whose caches must be dropped wait in `changed` for the commit
 * (dropped before it, another instance could re-read and cache the old row).
 */
export interface Within {
  tx: DbOrTx;
  changed: string[];
}

/**
 * Secrets: envelope-encrypted, versioned values with metadata, reveal, rotation and an access log.
 * Every change writes its audit event and access-log row in its own transaction.
 */
export function createSecretService({
  db,
  keyring,
  audit,
  authz,
  tenancy,
  identity,
  clock,
  fourEyes,
  bus,
  onError = () => {},
  cacheTtlMs = 2000,
}: SecretServiceDeps) {
  // The reveal path's row (metadata + sealed current value), by org and id. Dropped on every change
  // here and, through the bus, on other instances; the TTL bounds staleness if a message is lost.
  // The bus delivers after the writer has answered, so on PostgreSQL a reveal decided on a cached
  // row is checked against the row at commit (`writeReveals`). PGlite is one process: a change
  // drops the row here before its writer answers, so nothing is left to check.
  const revealCache = new Map<string, { row: RevealRow; until: number }>();
  let epoch = 0;
  const forget = (id: string) => {
    epoch++;
    for (const key of revealCache.keys()) if (key.endsWith(`/${id}`)) revealCache.delete(key);
  };
  bus?.subscribe(SECRETS_TOPIC, forget);
  async function changed(id: string): Promise<void> {
    forget(id);
    try {
      await bus?.publish(SECRETS_TOPIC, id);
    } catch (error) {
      onError(error, 'secret invalidation publish'); // other instances catch up within the TTL
    }
  }

  /** Runs `work` in the approval's transaction when there is one, else in a transaction of its own. */
  const inTx = <T>(within: Within | undefined, work: (tx: DbOrTx) => Promise<T>): Promise<T> =>
    within ? work(within.tx) : db.db.transaction(work);
  /** Drops a changed secret from the caches now, or, inside an approval, once it has committed. */
  async function changedNowOrAfter(within: Within | undefined, id: string): Promise<void> {
    if (within) within.changed.push(id);
    else await changed(id);
  }

  const checkCachedRows = db.kind === 'postgres';

  /**
   * The row a reveal decides on, and whether it came from the cache (`fromCache`: it may be older
   * than a change another instance has answered). `useCache` false reads the database.
   */
  async function revealRow(
    orgId: string,
    id: string,
    version: number | undefined,
    useCache: boolean,
  ): Promise<{ row: RevealRow | undefined; fromCache: boolean }> {
    const key = `${orgId}/${id}`;
    const cacheable = version === undefined && cacheTtlMs > 0;
    if (cacheable && useCache) {
      const hit = revealCache.get(key);
      if (hit && hit.until > performance.now()) return { row: hit.row, fromCache: true };
    }
    const seen = epoch;
    const [row] = await runPrepared<RevealRow>(db.db, REVEAL, [orgId, id, version ?? null]);
    // Not cached when a change landed meanwhile: the row read may predate it.
    if (row && cacheable && seen === epoch) {
      if (revealCache.size >= 10_000) revealCache.clear();
      revealCache.set(key, { row, until: performance.now() + cacheTtlMs });
    }
    return { row, fromCache: false };
  }

  interface LogEntry {
    secretId: string | null;
    type: AccessType;
    success: boolean;
    version?: number | null;
    errorCode?: string;
  }

  /** An access-log row in the transaction of the change it records. */
  async function writeLog(tx: DbOrTx, access: Access, entry: LogEntry): Promise<void> {
    await tx.insert(secretAccessLogs).values(logRow(access, entry));
  }

  /**
   * An access-log row of its own (a read, a refusal): resolves once committed, so the caller
   * answers only after its record exists. Rows logged together share one statement: a read used
   * to pay a commit of its own on PGlite's one thread (src/db/batcher.ts).
   */
  const standaloneLogs = createBatcher<AccessLogRow, void>({
    maxInFlight: batchesInFlight(db),
    run: async (rows) => {
      await insertLogRows(db.db, rows);
      return [];
    },
  });
  const logAccess = (access: Access, entry: LogEntry, within?: Within): Promise<void> =>
    within ? writeLog(within.tx, access, entry) : standaloneLogs.submit(logRow(access, entry));

  /**
   * Runs an access; a refusal or failure is logged (best effort) before it propagates. A refused
   * change (`refusal`: the event it would have recorded) is audited too, with its access-log row.
   */
  async function logged<T>(
    access: Access,
    type: AccessType,
    secretId: string,
    run: () => Promise<T>,
    within?: Within,
    refusal?: WriteRefusal,
  ): Promise<T> {
    try {
      return await run();
    } catch (error) {
      if (error instanceof StewardError && !alreadyLogged.has(error)) {
        const log = { secretId: secretId.slice(0, 200), type, success: false, errorCode: error.code };
        const record =
          refusal && !within && isAuditedRefusal(error) && isId('sec', secretId)
            ? refusedWrite(access, secretId, refusal, error, logRow(access, log))
            : logAccess(access, log, within);
        await record.catch(() => {});
      }
      throw error;
    }
  }

  /**
   * Records a refused change of a secret (PATCH, a new value, a rollback, a delete) as reveal
   * records its refusals: the event the change would have recorded with `success: false`, the
   * error code as `details.reason`, the missing permission, the secret's name and environment
   * when it is one of the caller's org, what was asked (never a value) — and its access-log row,
   * in one transaction of the record batcher, committed before the refusal answers. Best effort:
   * a failed record never changes the answer.
   */
  async function refusedWrite(
    access: Access,
    id: string,
    refusal: WriteRefusal,
    error: StewardError,
    log: AccessLogRow,
  ): Promise<void> {
    const [found] = await db.db
      .select({ name: secrets.name, environment: environments.name })
      .from(secrets)
      .innerJoin(environments, eq(environments.id, secrets.environmentId))
      .where(and(eq(secrets.orgId, access.principal.orgId), eq(secrets.id, id), isNull(secrets.deletedAt)));
    const { permission } = error.extra;
    await recordReveal({
      event: {
        orgId: access.principal.orgId,
        actor: actor(access),
        action: refusal.action,
        resource: { type: 'secret', id },
        context: access.context,
        details: {
          ...(found ? { name: found.name, environment: found.environment } : {}),
          ...refusal.details,
          reason: error.code,
          ...(typeof permission === 'string' ? { permission } : {}),
          tool_id: access.toolId,
        },
        success: false,
        errorMessage: error.detail,
      },
      log,
      touch: null,
      cached: null,
    });
  }

  type AccessLogRow = typeof secretAccessLogs.$inferInsert;
  interface RevealRecord {
    event: AuditEventInput;
    log: AccessLogRow;
    touch: string | null;
    /** The cached row the answer was decided on, checked at commit (`checkCachedRows`); else null. */
    cached: { id: string; state: string } | null;
  }

  /**
   * Records a reveal (audit event + access-log row), or a refused change (`refusedWrite`);
   * `submit` resolves once they are committed:
   * the caller answers only then, so no value leaves without its record. Reveals arriving
   * together share one transaction (src/db/batcher.ts). Resolves false, recording nothing, when
   * the cached row it was decided on has changed since: the caller must decide again.
   */
  const reveals = createBatcher<RevealRecord, boolean>({
    maxInFlight: batchesInFlight(db),
    run: writeReveals,
  });
  const recordReveal = (entry: RevealRecord) => reveals.submit(entry);

  async function writeReveals(batch: RevealRecord[]): Promise<boolean[]> {
    // Three to six statements a batch, each prepared once: the batch runs on PGlite's one thread.
    return db.db.transaction(async (tx) => {
      const stale = await changedSinceRead(tx, batch);
      const kept = stale.size === 0 ? batch : batch.filter((_, i) => !stale.has(i));
      if (kept.length > 0) await writeRevealRecords(tx, kept);
      return batch.map((_, i) => !stale.has(i));
    });
  }

  /**
   * The positions in `batch` of answers decided on a cached row that has changed since it was
   * read (by a change another instance answered before its bus message arrived here). Read in the
   * recording transaction, so what a change committed before this reveal was asked for is seen;
   * one statement for the batch, none when no answer came from the cache.
   */
  async function changedSinceRead(tx: DbOrTx, batch: RevealRecord[]): Promise<Set<number>> {
    const cached = batch.flatMap((b, i) => (b.cached === null ? [] : [{ i, ...b.cached }]));
    if (cached.length === 0) return new Set();
    const rows = await runPrepared<{ i: number }>(tx, CHANGED_SINCE_READ, [JSON.stringify(cached)]);
    return new Set(rows.map((r) => r.i));
  }

  async function writeRevealRecords(tx: DbOrTx, batch: RevealRecord[]): Promise<void> {
    await insertLogRows(
      tx,
      batch.map((b) => b.log),
    );
    const touch = [...new Set(batch.flatMap((b) => (b.touch === null ? [] : [b.touch])))];
    if (touch.length > 0) {
      await runPrepared(tx, TOUCH_SECRETS, [clock(), JSON.stringify(touch)]);
    }
    // Last, so that the chain head is held for the shortest time. The audit service's default
    // fits a batch too: linked as written on PGlite (one connection, nobody waits on the head);
    // on PostgreSQL, holding the head made a batch twice as slow (14 vs 7 ms for 50 events), so
    // the sequencer links them after the commit.
    await audit.record(
      tx,
      batch.map((b) => b.event),
    );
  }

  const ACCESS_LOG_COLUMNS = [
    'id',
    'org_id',
    'secret_id',
    'version',
    'access_type',
    'principal_type',
    'principal_id',
    'success',
    'error_code',
    'ip',
    'user_agent',
    'tool_id',
    'request_id',
    'created_at',
  ] as const;
  const accessLogValues = (log: AccessLogRow): unknown[] => [
    log.id,
    log.orgId,
    log.secretId,
    log.version,
    log.accessType,
    log.principalType,
    log.principalId,
    log.success,
    log.errorCode,
    log.ip,
    log.userAgent,
    log.toolId,
    log.requestId,
    log.createdAt,
  ];

  /** Access-log rows in one statement (COPY on PGlite), inside `tx` or on their own. */
  const insertLogRows = (tx: DbOrTx, rows: readonly AccessLogRow[]): Promise<void> =>
    rawInsertMany(tx, db.kind, 'secret_access_logs', ACCESS_LOG_COLUMNS, rows.map(accessLogValues));

  const logRow = (
    access: Access,
    entry: {
      secretId: string | null;
      type: AccessType;
      success: boolean;
      version?: number | null;
      errorCode?: string;
    },
  ): AccessLogRow => ({
    id: newId('sal'),
    orgId: access.principal.orgId,
    secretId: entry.secretId,
    version: entry.version ?? null,
    accessType: entry.type,
    principalType: access.principal.kind,
    principalId: access.principal.id,
    success: entry.success,
    errorCode: entry.errorCode ?? null,
    ip: access.context.ip,
    userAgent: access.context.userAgent?.slice(0, 1000) ?? null,
    toolId: access.toolId,
    requestId: access.context.requestId,
    createdAt: clock(),
  });

  async function loadLive(orgId: string, id: string, tx: DbOrTx = db.db, forUpdate = false): Promise<Secret> {
    if (!isId('sec', id)) throw secretErrors.secret_not_found();
    const query = tx
      .select({ secret: secrets, environment: environments.name })
      .from(secrets)
      .innerJoin(environments, eq(environments.id, secrets.environmentId))
      .where(and(eq(secrets.orgId, orgId), eq(secrets.id, id), isNull(secrets.deletedAt)));
    const [row] = forUpdate ? await query.for('update', { of: secrets }) : await query;
    if (!row) throw secretErrors.secret_not_found();
    return { ...row.secret, environment: row.environment };
  }

  const actor = (access: Access): AuditActor => actorOf(access.principal);

  // ---- create ---------------------------------------------------------------------------

  /**
   * Refuses an owner that is not a principal of the caller's org, by the rule API keys follow for
   * theirs (src/keys/service.ts, `resolveOwner`), so both domains accept the same owners: the
   * caller, a user with an active membership of the org, or a well-formed `agt_` id (no agents
   * domain yet). Anything else that is not a `usr_`/`agt_` id is a 400; a user id that is not of
   * this org, 404 `owner_not_found` as for keys.
   */
  async function checkOwner(principal: Principal, ownerId: string, tx?: DbOrTx): Promise<void> {
    if (ownerId === (principal.ownerId ?? principal.id)) return;
    if (!isId('usr', ownerId) && !isId('agt', ownerId)) {
      throw httpErrors.validation_failed('body.owner_id: not a user (usr_…) or agent (agt_…) id', {
        errors: [{ path: 'body.owner_id', message: 'Not a user (usr_…) or agent (agt_…) id' }],
      });
    }
    if (isId('usr', ownerId) && (await identity.findPrincipal(principal.orgId, ownerId, tx)) === null) {
      throw secretErrors.owner_not_found(`No active user or agent ${ownerId} in this organization`);
    }
  }

  /** Whether a live secret of this org and environment has the name. */
  async function nameTaken(orgId: string, environmentId: string, name: string): Promise<boolean> {
    const [row] = await db.db
      .select({ id: secrets.id })
      .from(secrets)
      .where(
        and(
          eq(secrets.orgId, orgId),
          eq(secrets.environmentId, environmentId),
          eq(secrets.name, name),
          isNull(secrets.deletedAt),
        ),
      );
    return row !== undefined;
  }

  async function create(access: Access, input: CreateSecretInput): Promise<Secret | Pending> {
    const { principal } = access;
    const env = await tenancy.environmentByName(principal.orgId, input.environment);
    await checkCreate(access, input);
    // Refused now rather than held for an approval that could only fail. The insert's unique
    // index still decides between creations that race (or were held together).
    if (await nameTaken(principal.orgId, env.id, input.name)) throw nameTakenError(input.name, env.name);
    if (fourEyes && (await fourEyes.required(principal.orgId, env.name))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'secret.create',
        environmentId: env.id,
        targetId: null,
        payload: input,
        summary: { name: input.name, environment: env.name, type: input.secret_type ?? 'generic' },
      });
      return { pending: true, changeId };
    }
    return writeCreate(access, input, env);
  }

  /**
   * Records a refused creation (`POST /v1/secrets`, called from the route's `onError`, so the
   * route's own `secrets:create` refusal is seen too): `secret.created` with `success: false`, the
   * error code as `details.reason`, the missing permission, and the name and environment asked for
   * when they are strings (a refusal by the route's permission comes before body validation).
   * No access-log row: there is no secret. Best effort, as every refusal's record.
   */
  async function refusedCreate(access: Access, body: unknown, error: unknown): Promise<void> {
    if (!(error instanceof StewardError) || !isAuditedRefusal(error)) return;
    const given = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
    const asked = (field: string) =>
      typeof given[field] === 'string' ? { [field]: (given[field] as string).slice(0, 200) } : {};
    const { permission } = error.extra;
    try {
      const event: AuditEventInput = {
        orgId: access.principal.orgId,
        actor: actor(access),
        action: 'secret.created',
        resource: { type: 'secret', id: null },
        context: access.context,
        details: {
          ...asked('name'),
          ...asked('environment'),
          reason: error.code,
          ...(typeof permission === 'string' ? { permission } : {}),
          tool_id: access.toolId,
        },
        success: false,
        errorMessage: error.detail,
      };
      await db.db.transaction((tx) => audit.record(tx, event));
    } catch (failure) {
      onError(failure, 'audit of a refused secret.created');
    }
  }

  const nameTakenError = (name: string, environment: string) =>
    secretErrors.secret_name_taken(`A secret named ${name} exists in ${environment}`);

  /**
   * The requester's checks for a creation — the route's `secrets:create`, `secrets:admin` for an
   * owner or a required permission, the owner a member — made again when an approval applies it.
   */
  async function checkCreate(access: Access, input: CreateSecretInput, tx?: DbOrTx): Promise<void> {
    const { principal } = access;
    await requireOn(authz, principal, 'secrets:create');
    checkRotation(input.rotation_enabled ?? false, input.rotation_days ?? null);
    if (input.required_permission !== undefined || input.owner_id !== undefined) {
      await requireOn(authz, principal, 'secrets:admin', { type: 'secrets', id: '*' });
    }
    if (input.required_permission !== undefined && !isPermission(input.required_permission)) {
      throw secretErrors.invalid_required_permission(`${input.required_permission} is not a permission`);
    }
    if (input.owner_id !== undefined) await checkOwner(principal, input.owner_id, tx);
  }

  /** An approved creation: the requester's rights and the owner may have changed, so both are checked again. */
  async function applyCreate(
    access: Access,
    input: CreateSecretInput,
    approvedBy: Principal,
    within: Within,
  ): Promise<Secret> {
    const env = await tenancy.environmentByName(access.principal.orgId, input.environment, within.tx);
    await checkCreate(access, input, within.tx);
    return writeCreate(access, input, env, approvedBy, within);
  }

  /**
   * At approval, the requester's check of a per-secret route again (they may have lost the
   * permission since they asked), on the approval's transaction.
   */
  async function recheck(access: Access, id: string, permission: string, within: Within): Promise<void> {
    await loadLive(access.principal.orgId, id, within.tx);
    await requireOn(authz, access.principal, permission, { type: 'secrets', id });
  }

  async function writeCreate(
    access: Access,
    input: CreateSecretInput,
    env: Environment,
    approvedBy?: Principal,
    within?: Within,
  ): Promise<Secret> {
    const { principal } = access;
    const now = clock();
    const id = newId('sec');
    const rotationDays = input.rotation_days ?? null;
    const rotationEnabled = input.rotation_enabled ?? rotationDays !== null;
    const sealed = seal(keyring, input.value, secretAad(principal.orgId, id, 1));
    try {
      return await inTx(within, async (tx) => {
        const [row] = await tx
          .insert(secrets)
          .values({
            id,
            orgId: principal.orgId,
            environmentId: env.id,
            name: input.name,
            displayName: input.display_name ?? null,
            description: input.description ?? null,
            secretType: input.secret_type ?? 'generic',
            tags: uniqueTags(input.tags ?? []),
            metadata: input.metadata ?? {},
            ownerId: input.owner_id ?? principal.ownerId ?? principal.id,
            requiredPermission: input.required_permission ?? null,
            currentVersion: 1,
            rotationEnabled,
            rotationDays,
            lastRotatedAt: now,
            nextRotationAt: nextRotation(rotationEnabled, rotationDays, now),
            expiresAt: input.expires_at ? new Date(input.expires_at) : null,
            createdBy: principal.id,
            updatedBy: principal.id,
            createdAt: now,
            updatedAt: now,
          })
          .returning();
        if (!row) throw new Error('secret insert returned nothing');
        await tx.insert(secretVersions).values({
          secretId: id,
          version: 1,
          orgId: principal.orgId,
          value: sealed,
          keyId: sealedKeyId(sealed),
          active: true,
          reason: 'created',
          createdBy: principal.id,
          createdAt: now,
        });
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actor(access),
          action: 'secret.created',
          resource: { type: 'secret', id },
          context: access.context,
          details: { environment: env.name, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
          changes: { after: auditView(row) },
        });
        await writeLog(tx, access, { secretId: id, type: 'write', success: true, version: 1 });
        return { ...row, environment: env.name };
      });
    } catch (error) {
      if (isUniqueViolation(error)) throw nameTakenError(input.name, env.name);
      throw error;
    }
  }

  // ---- reads ------------------------------------------------------------------------------

  /**
   * A page of the secrets the caller may read: `secrets:read` on each id (a deny grant on one
   * secret leaves it out). The cursor follows the last row examined, so a page may be short.
   */
  async function list(
    principal: Principal,
    filters: SecretFilters,
    page: { limit: number; after?: string | undefined },
  ): Promise<FilteredPage<Secret>> {
    const where: SQL[] = [eq(secrets.orgId, principal.orgId), isNull(secrets.deletedAt)];
    if (filters.environment !== undefined) {
      const env = await tenancy.environmentByName(principal.orgId, filters.environment);
      where.push(eq(secrets.environmentId, env.id));
    }
    if (filters.secret_type !== undefined) where.push(eq(secrets.secretType, filters.secret_type));
    if (filters.tag !== undefined)
      where.push(sql`${secrets.tags} @> ${JSON.stringify([filters.tag])}::jsonb`);
    if (filters.due_for_rotation !== undefined) {
      const due = dueForRotation(clock());
      where.push(filters.due_for_rotation ? due : not(due));
    }
    if (page.after !== undefined) where.push(gt(secrets.id, page.after));
    const rows = await db.db
      .select({ secret: secrets, environment: environments.name })
      .from(secrets)
      .innerJoin(environments, eq(environments.id, secrets.environmentId))
      .where(and(...where))
      .orderBy(asc(secrets.id))
      .limit(page.limit);
    const last = rows.at(-1);
    const readable = await readableRows(
      authz,
      principal,
      'secrets:read',
      'secrets',
      rows,
      (r) => r.secret.id,
    );
    return {
      rows: readable.map((r) => ({ ...r.secret, environment: r.environment })),
      next: rows.length === page.limit && last ? last.secret.id : null,
    };
  }

  async function get(access: Access, id: string): Promise<Secret> {
    return logged(access, 'read', id, async () => {
      const secret = await loadLive(access.principal.orgId, id);
      await requireOn(authz, access.principal, 'secrets:read', { type: 'secrets', id });
      await logAccess(access, { secretId: id, type: 'read', success: true });
      return secret;
    });
  }

  async function versions(
    access: Access,
    id: string,
    page: { limit: number; before?: number | undefined },
  ): Promise<SecretVersionInfo[]> {
    return logged(access, 'read', id, async () => {
      await loadLive(access.principal.orgId, id);
      await requireOn(authz, access.principal, 'secrets:read', { type: 'secrets', id });
      const where = [eq(secretVersions.secretId, id)];
      if (page.before !== undefined) where.push(lt(secretVersions.version, page.before));
      const rows = await db.db
        .select({
          secretId: secretVersions.secretId,
          version: secretVersions.version,
          orgId: secretVersions.orgId,
          keyId: secretVersions.keyId,
          active: secretVersions.active,
          reason: secretVersions.reason,
          restoredFrom: secretVersions.restoredFrom,
          createdBy: secretVersions.createdBy,
          createdAt: secretVersions.createdAt,
        })
        .from(secretVersions)
        .where(and(...where))
        .orderBy(desc(secretVersions.version))
        .limit(page.limit);
      await logAccess(access, { secretId: id, type: 'read', success: true });
      return rows;
    });
  }

  // ---- reveal -----------------------------------------------------------------------------

  /**
   * A secret's `required_permission`: whether the caller holds it, decided as `POST
   * /v1/authz/check` decides it on the permission's own type (`users:update` on `users`: its type
   * grants, then roles; a deny there wins over a role), or by a grant of it on this secret (its id,
   * or every secret). A deny grant in either place refuses, whatever allows it in the other
   * (superusers pass, as they pass every deny). For a `secrets:…` permission the two are one check
   * on this secret, as for `secrets:reveal`. Until session 11 only the check on this secret was
   * made: the permission's own grants were ignored (a type-wide deny of it did not refuse, a grant
   * of it on its type did not allow).
   */
  async function requireHeld(principal: Principal, permission: string, id: string): Promise<void> {
    const onSecret = await authz.check(principal, permission, { type: 'secrets', id });
    const ownType = permissionInfo(permission)?.resource;
    let allowed = onSecret.allowed;
    if (ownType !== undefined && ownType !== 'secrets' && onSecret.decision.by !== 'superuser') {
      const own = await authz.check(principal, permission);
      const byGrant = (by: string) => by === 'resource_grant' || by === 'type_grant';
      const deniedByGrant = (r: typeof own) => !r.allowed && byGrant(r.decision.by);
      allowed =
        !deniedByGrant(own) &&
        !deniedByGrant(onSecret) &&
        (own.allowed || (onSecret.allowed && byGrant(onSecret.decision.by)));
    }
    if (!allowed) {
      throw httpErrors.permission_denied(`Revealing this secret needs ${permission}`, { permission });
    }
  }

  /**
   * The value of the current (or a given) version. Needs `secrets:reveal` on this secret (a role,
   * a type grant or a grant on this id), plus the secret's `required_permission` when it has one.
   * The audit event and the access-log row are written in one transaction before the value is
   * returned: no reveal without its record. On PostgreSQL that transaction also checks that a
   * cached row decided on is still the row: a change another instance has answered is never
   * revealed around (src/vault/README.md, "Read your writes across instances").
   */
  async function reveal(access: Access, id: string, version?: number): Promise<Revealed> {
    const answer = await revealOnce(access, id, version, true);
    if (answer !== null) return answer;
    // Decided on a cached row another instance has changed (and answered for) since: dropped, as
    // its bus message would drop it, and decided again on the row as it is now.
    forget(id);
    const fresh = await revealOnce(access, id, version, false);
    if (fresh === null) throw new Error('a reveal decided on a row read now was found stale');
    return fresh;
  }

  /**
   * One decision on a reveal, recorded before it answers; null when it was decided on a cached
   * row that has changed since (`writeReveals`): nothing recorded, nothing answered.
   */
  async function revealOnce(
    access: Access,
    id: string,
    version: number | undefined,
    useCache: boolean,
  ): Promise<Revealed | null> {
    const { principal } = access;
    // Outside the try: a refusal records the version it was about, and is checked as a grant is.
    let row: RevealRow | undefined;
    let cached: RevealRecord['cached'] = null;
    try {
      if (!isId('sec', id)) throw secretErrors.secret_not_found();
      // The hot path: one plain statement (Drizzle's mapping doubles its cost on PGlite).
      const read = await revealRow(principal.orgId, id, version, useCache);
      row = read.row;
      if (!row) throw secretErrors.secret_not_found();
      if (read.fromCache && checkCachedRows) cached = { id, state: row.state };
      const secret = revealRowToSecret(row);
      await requireOn(authz, principal, 'secrets:reveal', { type: 'secrets', id });
      if (secret.requiredPermission !== null) await requireHeld(principal, secret.requiredPermission, id);
      if (!secret.active) throw secretErrors.secret_inactive('This secret is deactivated');
      const now = clock();
      if (secret.expiresAt !== null && secret.expiresAt <= now) {
        throw secretErrors.secret_expired(`This secret expired at ${secret.expiresAt.toISOString()}`);
      }
      const v = version ?? secret.currentVersion;
      if (row.sealed === null) throw secretErrors.secret_version_not_found(`No version ${v}`);
      let value: string;
      try {
        value = open(keyring, row.sealed, secretAad(principal.orgId, id, v)).toString('utf8');
      } catch (error) {
        if (!(error instanceof CryptoError)) throw error;
        throw await undecryptable(access, secret, v, error, 'reveal');
      }
      const touch =
        secret.lastAccessedAt === null ||
        now.getTime() - secret.lastAccessedAt.getTime() >= LAST_ACCESS_GRANULARITY_MS;
      const recorded = await recordReveal({
        event: {
          orgId: principal.orgId,
          actor: actor(access),
          action: 'secret.revealed',
          resource: { type: 'secret', id },
          context: access.context,
          details: { name: secret.name, environment: secret.environment, version: v, tool_id: access.toolId },
          sensitive: true,
        },
        log: logRow(access, { secretId: id, type: 'reveal', success: true, version: v }),
        touch: touch ? id : null,
        cached,
      });
      if (!recorded) return null;
      if (touch) row.last_accessed_at = now;
      return { secret, version: v, value };
    } catch (error) {
      const refusal = { version: version ?? row?.current_version ?? null, row, cached };
      if (!(await refusedReveal(access, id, refusal, error))) return null;
      throw error;
    }
  }

  /**
   * Records a refused reveal (403, 404, 409 inactive or expired, an unknown version) as the
   * undecryptable case is: a `secret.revealed` event with `success: false` and the reason (the
   * error code), and its access-log row with the version asked for — both in one transaction of
   * the reveal batcher, committed before the refusal answers (best effort: a failed record does
   * not change the answer). A malformed id gets only its access-log row. Errors already recorded
   * (undecryptable) and anything that is not a Steward error are left alone. False when the
   * refusal was decided on a cached row that has changed since: not recorded, to be decided again.
   */
  async function refusedReveal(
    access: Access,
    id: string,
    refusal: { version: number | null; row: RevealRow | undefined; cached: RevealRecord['cached'] },
    error: unknown,
  ): Promise<boolean> {
    if (!(error instanceof StewardError) || alreadyLogged.has(error)) return true;
    const { version, row } = refusal;
    const log = logRow(access, {
      secretId: id.slice(0, 200),
      type: 'reveal',
      success: false,
      version,
      errorCode: error.code,
    });
    const record = isId('sec', id)
      ? recordReveal({
          event: {
            orgId: access.principal.orgId,
            actor: actor(access),
            action: 'secret.revealed',
            resource: { type: 'secret', id },
            context: access.context,
            details: {
              ...(row ? { name: row.name, environment: row.environment } : {}),
              version,
              reason: error.code,
              tool_id: access.toolId,
            },
            success: false,
            errorMessage: error.detail,
            sensitive: true,
          },
          log,
          touch: null,
          cached: refusal.cached,
        })
      : standaloneLogs.submit(log).then(() => true);
    return record.catch(() => true);
  }

  /**
   * Records a value that would not open (audit + access log), and the error to answer with: as a
   * refused reveal (`secret.revealed`, access type `reveal`) or, for a rollback to that version, as
   * a refused rollback (`secret.rolled_back` with `restored_from`, access type `write`; until
   * session 11 it read as a refused reveal). Inside an approval the record goes in its transaction
   * (which the error then rolls back; the change is marked failed with this code): a transaction of
   * its own would wait on PGlite for the approval's forever.
   */
  async function undecryptable(
    access: Access,
    secret: Pick<Secret, 'id' | 'name' | 'environment'>,
    version: number,
    cause: CryptoError,
    kind: 'reveal' | 'rollback',
    within?: Within,
  ) {
    const reason = cause.code === 'unknown_key' ? 'unknown_master_key' : 'integrity';
    const errorMessage = `stored value did not open (${cause.code})`;
    await inTx(within, async (tx) => {
      await audit.record(
        tx,
        kind === 'reveal'
          ? {
              orgId: access.principal.orgId,
              actor: actor(access),
              action: 'secret.revealed',
              resource: { type: 'secret', id: secret.id },
              context: access.context,
              details: { name: secret.name, version, reason },
              success: false,
              errorMessage,
              sensitive: true,
            }
          : {
              orgId: access.principal.orgId,
              actor: actor(access),
              action: 'secret.rolled_back',
              resource: { type: 'secret', id: secret.id },
              context: access.context,
              // As every refused write: the error code as the reason (src/vault/README.md).
              details: {
                name: secret.name,
                environment: secret.environment,
                restored_from: version,
                reason: 'secret_undecryptable',
                undecryptable: reason,
              },
              success: false,
              errorMessage,
            },
      );
      await writeLog(tx, access, {
        secretId: secret.id,
        type: kind === 'reveal' ? 'reveal' : 'write',
        success: false,
        version,
        errorCode: 'secret_undecryptable',
      });
    });
    const error = secretErrors.secret_undecryptable(
      reason === 'unknown_master_key'
        ? 'The value is wrapped under a master key this server does not hold'
        : 'The stored value failed its integrity check (tampered or moved from another row)',
      { reason },
    );
    alreadyLogged.add(error);
    return error;
  }

  // ---- changes ------------------------------------------------------------------------------

  /**
   * Refuses now, rather than holding for an approval that could only fail, a rollback to a version
   * that does not exist (versions are never removed) or whose value does not open (409, recorded).
   */
  async function checkRestorable(access: Access, secret: Secret, version: number): Promise<void> {
    const target = await versionOf(db.db, secret.id, version);
    try {
      open(keyring, target.value, secretAad(secret.orgId, secret.id, version)).fill(0);
    } catch (error) {
      if (!(error instanceof CryptoError)) throw error;
      throw await undecryptable(access, secret, version, error, 'rollback');
    }
  }

  /** A stored version of a secret, or 404 `secret_version_not_found`. */
  async function versionOf(tx: DbOrTx, id: string, version: number): Promise<SecretVersionRow> {
    const [row] = await tx
      .select()
      .from(secretVersions)
      .where(and(eq(secretVersions.secretId, id), eq(secretVersions.version, version)));
    if (!row) throw secretErrors.secret_version_not_found(`No version ${version}`);
    return row;
  }

  async function gate(
    access: Access,
    secret: Secret,
    kind: string,
    payload: unknown,
    summary: Record<string, unknown>,
  ): Promise<Pending | null> {
    if (!fourEyes || !(await fourEyes.required(access.principal.orgId, secret.environment))) return null;
    const changeId = await fourEyes.propose(access, {
      kind,
      environmentId: secret.environmentId,
      targetId: secret.id,
      payload,
      summary: { name: secret.name, environment: secret.environment, ...summary },
    });
    return { pending: true, changeId };
  }

  /** Writes a new version (a rotation): the value, why, and the next rotation date. */
  async function putValue(
    access: Access,
    id: string,
    input: { value: string; rotation_reason?: string | undefined },
  ): Promise<Secret | Pending> {
    return logged(
      access,
      'write',
      id,
      async () => {
        const secret = await loadLive(access.principal.orgId, id);
        await requireOn(authz, access.principal, 'secrets:update', { type: 'secrets', id });
        const pending = await gate(access, secret, 'secret.value', input, {
          rotation_reason: input.rotation_reason ?? null,
        });
        return pending ?? applyValue(access, id, input);
      },
      undefined,
      // A new value is recorded as secret.updated; the field's name, never its value.
      { action: 'secret.updated', details: { fields: ['value'] } },
    );
  }

  async function applyValue(
    access: Access,
    id: string,
    input: { value: string; rotation_reason?: string | undefined },
    approvedBy?: Principal,
    within?: Within,
  ): Promise<Secret> {
    const out = await inTx(within, async (tx) => {
      const secret = await loadLive(access.principal.orgId, id, tx, true);
      const now = clock();
      const version = secret.currentVersion + 1;
      const sealed = seal(keyring, input.value, secretAad(secret.orgId, id, version));
      await tx.update(secretVersions).set({ active: false }).where(eq(secretVersions.secretId, id));
      await tx.insert(secretVersions).values({
        secretId: id,
        version,
        orgId: secret.orgId,
        value: sealed,
        keyId: sealedKeyId(sealed),
        active: true,
        reason: input.rotation_reason ?? null,
        createdBy: access.principal.id,
        createdAt: now,
      });
      const [row] = await tx
        .update(secrets)
        .set({
          currentVersion: version,
          lastRotatedAt: now,
          nextRotationAt: nextRotation(secret.rotationEnabled, secret.rotationDays, now),
          updatedBy: access.principal.id,
          updatedAt: now,
        })
        .where(eq(secrets.id, id))
        .returning();
      if (!row) throw secretErrors.secret_not_found();
      await audit.record(tx, {
        orgId: secret.orgId,
        actor: actor(access),
        action: 'secret.updated',
        resource: { type: 'secret', id },
        context: access.context,
        details: {
          name: secret.name,
          environment: secret.environment,
          rotation_reason: input.rotation_reason ?? null,
          ...(approvedBy ? { approved_by: approvedBy.id } : {}),
        },
        changes: { before: { version: secret.currentVersion }, after: { version } },
      });
      await writeLog(tx, access, { secretId: id, type: 'write', success: true, version });
      return { ...row, environment: secret.environment };
    });
    await changedNowOrAfter(within, id);
    return out;
  }

  /** Restores an older version's value as a new version (audited as secret.rolled_back). */
  async function rollback(
    access: Access,
    id: string,
    input: { version: number; reason?: string | undefined },
  ): Promise<Secret | Pending> {
    const refusal: WriteRefusal = { action: 'secret.rolled_back', details: { restored_from: input.version } };
    return logged(
      access,
      'write',
      id,
      async () => {
        const secret = await loadLive(access.principal.orgId, id);
        await requireOn(authz, access.principal, 'secrets:update', { type: 'secrets', id });
        await checkRestorable(access, secret, input.version);
        const pending = await gate(access, secret, 'secret.rollback', input, { to_version: input.version });
        return pending ?? applyRollback(access, id, input);
      },
      undefined,
      refusal,
    );
  }

  async function applyRollback(
    access: Access,
    id: string,
    input: { version: number; reason?: string | undefined },
    approvedBy?: Principal,
    within?: Within,
  ): Promise<Secret> {
    const result = await inTx(within, async (tx) => {
      const secret = await loadLive(access.principal.orgId, id, tx, true);
      const target = await versionOf(tx, id, input.version);
      let plaintext: Buffer;
      try {
        plaintext = open(keyring, target.value, secretAad(secret.orgId, id, input.version));
      } catch (error) {
        if (!(error instanceof CryptoError)) throw error;
        return { undecryptable: error, secret };
      }
      const now = clock();
      const version = secret.currentVersion + 1;
      const sealed = seal(keyring, plaintext, secretAad(secret.orgId, id, version));
      plaintext.fill(0);
      await tx.update(secretVersions).set({ active: false }).where(eq(secretVersions.secretId, id));
      await tx.insert(secretVersions).values({
        secretId: id,
        version,
        orgId: secret.orgId,
        value: sealed,
        keyId: sealedKeyId(sealed),
        active: true,
        reason: input.reason ?? `rollback to version ${input.version}`,
        restoredFrom: input.version,
        createdBy: access.principal.id,
        createdAt: now,
      });
      const [row] = await tx
        .update(secrets)
        .set({ currentVersion: version, updatedBy: access.principal.id, updatedAt: now })
        .where(eq(secrets.id, id))
        .returning();
      if (!row) throw secretErrors.secret_not_found();
      await audit.record(tx, {
        orgId: secret.orgId,
        actor: actor(access),
        action: 'secret.rolled_back',
        resource: { type: 'secret', id },
        context: access.context,
        details: {
          name: secret.name,
          environment: secret.environment,
          restored_from: input.version,
          reason: input.reason ?? null,
          ...(approvedBy ? { approved_by: approvedBy.id } : {}),
        },
        changes: { before: { version: secret.currentVersion }, after: { version } },
      });
      await writeLog(tx, access, { secretId: id, type: 'write', success: true, version });
      return { secret: { ...row, environment: secret.environment } };
    });
    if ('undecryptable' in result && result.undecryptable) {
      throw await undecryptable(
        access,
        result.secret,
        input.version,
        result.undecryptable,
        'rollback',
        within,
      );
    }
    await changedNowOrAfter(within, id);
    return result.secret;
  }

  /**
   * Changes metadata (not the value). Owner and required permission need `secrets:admin`. Held
   * for a second approver where four-eyes covers the environment, after the same checks.
   */
  async function update(access: Access, id: string, input: UpdateSecretInput): Promise<Secret | Pending> {
    // The fields asked for, not their contents (a description may say more than its name).
    const refusal: WriteRefusal = {
      action: 'secret.updated',
      details: { fields: Object.keys(input).sort() },
    };
    return logged(
      access,
      'write',
      id,
      async () => {
        const secret = await checkUpdate(access, id, input);
        // A PATCH that changes nothing (`{}` included) answers the secret as it is, after the same
        // checks: nothing written or recorded, nothing held for approval (as keys do).
        if (changesNothing(secret, input)) return secret;
        // Metadata, never the value: shown to reviewers as is.
        const pending = await gate(access, secret, 'secret.update', input, { changes: input });
        return pending ?? writeUpdate(access, secret, input);
      },
      undefined,
      refusal,
    );
  }

  /** The requester's checks for a metadata change, made again when an approval applies it. */
  async function checkUpdate(access: Access, id: string, input: UpdateSecretInput, tx?: DbOrTx) {
    const secret = await loadLive(access.principal.orgId, id, tx);
    await requireOn(authz, access.principal, 'secrets:update', { type: 'secrets', id });
    if (input.required_permission !== undefined || input.owner_id !== undefined) {
      await requireOn(authz, access.principal, 'secrets:admin', { type: 'secrets', id });
    }
    if (typeof input.required_permission === 'string' && !isPermission(input.required_permission)) {
      throw secretErrors.invalid_required_permission(`${input.required_permission} is not a permission`);
    }
    checkRotation(
      input.rotation_enabled ?? secret.rotationEnabled,
      input.rotation_days === undefined ? secret.rotationDays : input.rotation_days,
    );
    // null clears the owner; an id must be a principal of the org (at approval too: they may have left).
    if (typeof input.owner_id === 'string') await checkOwner(access.principal, input.owner_id, tx);
    return secret;
  }

  /** An approved metadata change: the requester's checks again, then the write. */
  async function applyUpdate(
    access: Access,
    id: string,
    input: UpdateSecretInput,
    approvedBy: Principal,
    within?: Within,
  ): Promise<Secret> {
    return logged(
      access,
      'write',
      id,
      async () =>
        writeUpdate(access, await checkUpdate(access, id, input, within?.tx), input, within, approvedBy),
      within,
    );
  }

  async function writeUpdate(
    access: Access,
    secret: Secret,
    input: UpdateSecretInput,
    within?: Within,
    approvedBy?: Principal,
  ): Promise<Secret> {
    const { id } = secret;
    let wrote = true;
    const out = await inTx(within, async (tx) => {
      const before = await loadLive(access.principal.orgId, id, tx, true);
      // Nothing differs from the row as locked: nothing written, nothing recorded.
      if (changesNothing(before, input)) {
        wrote = false;
        return before;
      }
      const now = clock();
      const rotationEnabled = input.rotation_enabled ?? before.rotationEnabled;
      const rotationDays = input.rotation_days === undefined ? before.rotationDays : input.rotation_days;
      const [row] = await tx
        .update(secrets)
        .set({
          ...(input.display_name !== undefined ? { displayName: input.display_name } : {}),
          ...(input.description !== undefined ? { description: input.description } : {}),
          ...(input.secret_type !== undefined ? { secretType: input.secret_type } : {}),
          ...(input.tags !== undefined ? { tags: uniqueTags(input.tags) } : {}),
          ...(input.metadata !== undefined ? { metadata: input.metadata } : {}),
          ...(input.owner_id !== undefined ? { ownerId: input.owner_id } : {}),
          ...(input.required_permission !== undefined
            ? { requiredPermission: input.required_permission }
            : {}),
          ...(input.active !== undefined ? { active: input.active } : {}),
          ...(input.expires_at !== undefined
            ? { expiresAt: input.expires_at === null ? null : new Date(input.expires_at) }
            : {}),
          rotationEnabled,
          rotationDays,
          nextRotationAt: nextRotation(
            rotationEnabled,
            rotationDays,
            before.lastRotatedAt ?? before.createdAt,
          ),
          updatedBy: access.principal.id,
          updatedAt: now,
        })
        .where(eq(secrets.id, id))
        .returning();
      if (!row) throw secretErrors.secret_not_found();
      await audit.record(tx, {
        orgId: secret.orgId,
        actor: actor(access),
        action: 'secret.updated',
        resource: { type: 'secret', id },
        context: access.context,
        // As every other secret event: name and environment, and the approver of a held change.
        details: {
          name: secret.name,
          environment: secret.environment,
          ...(approvedBy ? { approved_by: approvedBy.id } : {}),
        },
        changes: { before: auditView(before), after: auditView(row) },
      });
      await writeLog(tx, access, { secretId: id, type: 'write', success: true });
      return { ...row, environment: secret.environment };
    });
    if (wrote) await changedNowOrAfter(within, id);
    return out;
  }

  /** Soft delete: the secret disappears from the API; versions and logs stay for the record. */
  async function remove(access: Access, id: string): Promise<Pending | null> {
    return logged(
      access,
      'delete',
      id,
      async () => {
        const secret = await loadLive(access.principal.orgId, id);
        await requireOn(authz, access.principal, 'secrets:delete', { type: 'secrets', id });
        const pending = await gate(access, secret, 'secret.delete', {}, {});
        if (pending) return pending;
        await applyRemove(access, id);
        return null;
      },
      undefined,
      { action: 'secret.deleted' },
    );
  }

  async function applyRemove(
    access: Access,
    id: string,
    approvedBy?: Principal,
    within?: Within,
  ): Promise<void> {
    await inTx(within, async (tx) => {
      const secret = await loadLive(access.principal.orgId, id, tx, true);
      const now = clock();
      await tx
        .update(secrets)
        .set({ deletedAt: now, active: false, updatedBy: access.principal.id, updatedAt: now })
        .where(eq(secrets.id, id));
      await audit.record(tx, {
        orgId: secret.orgId,
        actor: actor(access),
        action: 'secret.deleted',
        resource: { type: 'secret', id },
        context: access.context,
        details: { environment: secret.environment, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
        changes: { before: auditView(secret) },
      });
      await writeLog(tx, access, { secretId: id, type: 'delete', success: true });
    });
    await changedNowOrAfter(within, id);
  }

  // ---- rotation -----------------------------------------------------------------------------

  /**
   * Announces every secret past `next_rotation_at` once per period (`secret.rotation_due`,
   * audited). Rows are claimed with SKIP LOCKED, so instances running this together split the
   * work instead of announcing twice. Returns how many were announced.
   */
  async function announceDueRotations(batch = 100): Promise<number> {
    let total = 0;
    for (;;) {
      const now = clock();
      const n = await db.db.transaction(async (tx) => {
        const due = await tx
          .select({
            id: secrets.id,
            orgId: secrets.orgId,
            name: secrets.name,
            environmentId: secrets.environmentId,
            nextRotationAt: secrets.nextRotationAt,
            rotationDays: secrets.rotationDays,
          })
          .from(secrets)
          .where(
            and(
              isNull(secrets.deletedAt),
              dueForRotation(now),
              or(
                isNull(secrets.rotationNotifiedFor),
                lt(secrets.rotationNotifiedFor, secrets.nextRotationAt),
              ),
            ),
          )
          .orderBy(asc(secrets.nextRotationAt))
          .limit(batch)
          .for('update', { skipLocked: true });
        if (due.length === 0) return 0;
        // Copied in SQL: a JS Date keeps milliseconds, and a `next_rotation_at` with microseconds
        // (set in SQL by an operator) stayed later than what was written, announced every minute.
        await tx
          .update(secrets)
          .set({ rotationNotifiedFor: sql`${secrets.nextRotationAt}` })
          .where(
            inArray(
              secrets.id,
              due.map((s) => s.id),
            ),
          );
        await audit.record(
          tx,
          due.map((s) => ({
            orgId: s.orgId,
            actor: { type: 'system' as const, name: 'rotation' },
            action: 'secret.rotation_due' as const,
            resource: { type: 'secret', id: s.id },
            details: {
              name: s.name,
              environment_id: s.environmentId,
              next_rotation_at: s.nextRotationAt?.toISOString() ?? null,
              rotation_days: s.rotationDays,
            },
          })),
        );
        return due.length;
      });
      total += n;
      if (n < batch) return total;
    }
  }

  /** Runs `announceDueRotations` every `intervalMs` (unref'd); `stop` waits for a run in flight. */
  function startRotationScheduler(intervalMs: number, onError: (error: unknown) => void) {
    let running: Promise<unknown> | null = null;
    const tick = () => {
      if (running) return;
      running = announceDueRotations()
        .catch(onError)
        .finally(() => {
          running = null;
        });
    };
    const timer = setInterval(tick, intervalMs);
    timer.unref();
    return {
      tick,
      async stop() {
        clearInterval(timer);
        await running;
      },
    };
  }

  return {
    create,
    refusedCreate,
    list,
    get,
    versions,
    reveal,
    putValue,
    rollback,
    update,
    remove,
    announceDueRotations,
    startRotationScheduler,
    /**
     * Whether the caller may read this secret's metadata (`secrets:read` on it): write answers
     * carry the secret's view only then (src/vault/README.md, "Write answers").
     */
    mayRead: async (principal: Principal, id: string) =>
      (await authz.check(principal, 'secrets:read', { type: 'secrets', id })).allowed,
    /** Used by four-eyes once a change is approved. */
    apply: {
      create: applyCreate,
      value: async (
        access: Access,
        id: string,
        input: { value: string; rotation_reason?: string | undefined },
        approvedBy: Principal,
        within: Within,
      ) => {
        await recheck(access, id, 'secrets:update', within);
        return applyValue(access, id, input, approvedBy, within);
      },
      rollback: async (
        access: Access,
        id: string,
        input: { version: number; reason?: string | undefined },
        approvedBy: Principal,
        within: Within,
      ) => {
        await recheck(access, id, 'secrets:update', within);
        return applyRollback(access, id, input, approvedBy, within);
      },
      remove: async (access: Access, id: string, approvedBy: Principal, within: Within) => {
        await recheck(access, id, 'secrets:delete', within);
        return applyRemove(access, id, approvedBy, within);
      },
      /** Checks the requester's permissions again itself (`checkUpdate`). */
      update: applyUpdate,
    },
    /** After an approval's commit: the cache invalidations its applies deferred. */
    committed: async (within: Within) => {
      for (const id of within.changed) await changed(id);
    },
  };
}

/** The secrets service. */
export type SecretService = ReturnType<typeof createSecretService>;
