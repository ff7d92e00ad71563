import { and, asc, desc, eq, gt, isNull, lte } from 'drizzle-orm';
import type { AuditRecorder } from '../../audit/service.ts';
import { actorOf } from '../../audit/service.ts';
import type { Authz } from '../../authz/contract.ts';
import { open, seal, sealedKeyId } from '../../crypto/envelope.ts';
import { CryptoError } from '../../crypto/errors.ts';
import type { Keyring } from '../../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../../db/client.ts';
import { isUniqueViolation } from '../../db/errors.ts';
import { newId } from '../../db/ids.ts';
import { httpErrors } from '../../http/errors.ts';
import { ifMatchVersions } from '../../http/etag.ts';
import type { Principal } from '../../http/principal.ts';
import type { Environment, TenancyService } from '../../tenancy/service.ts';
import { type FilteredPage, readableRows, requireOn } from '../common.ts';
import type { FourEyes } from '../four-eyes.ts';
import type { Access, Pending } from '../secrets/service.ts';
import { settingErrors } from './errors.ts';
import { checkRules, checkValue, type ValueType } from './rules.ts';
import { type SettingRules, settingHistory, settings } from './schema.ts';

export type SettingRow = typeof settings.$inferSelect;
export type HistoryRow = typeof settingHistory.$inferSelect;

/** Why a stored value did not open: its master key is not held, or it failed its integrity check. */
export type UndecryptableReason = 'unknown_master_key' | 'integrity';

/**
 * A setting as reads return it: the value decoded, or null and `masked` — a secret setting, a
 * write's answer to a caller who may not read the setting, or (in a list) a value that does not
 * open, with `undecryptable` saying why.
 */
export interface Setting {
  row: SettingRow;
  environment: string;
  value: unknown;
  masked: boolean;
  undecryptable?: UndecryptableReason;
}

/**
 * One history entry: old and new value (masked for secret settings, and when either does not
 * open, with `undecryptable` saying why), who, from where.
 */
export interface HistoryEntry {
  row: HistoryRow;
  oldValue: unknown;
  newValue: unknown;
  masked: boolean;
  undecryptable?: UndecryptableReason;
}

export interface PutSettingInput {
  value: unknown;
  value_type?: ValueType | undefined;
  category?: string | null | undefined;
  rules?: SettingRules | undefined;
  is_secret?: boolean | undefined;
  encrypted?: boolean | undefined;
  description?: string | null | undefined;
}

export interface SettingServiceDeps {
  db: DbHandle;
  keyring: Keyring;
  audit: AuditRecorder;
  authz: Pick<Authz, 'check' | 'checkSync'>;
  tenancy: Pick<TenancyService, 'environmentByName'>;
  clock: () => Date;
  fourEyes?: FourEyes | undefined;
}

/** The associated data binding a sealed setting value to its row and version. */
export const settingAad = (orgId: string, settingId: string, version: number) =>
  `org/${orgId}/setting/${settingId}/v/${version}`;

/** What `If-Match` asks for, as `ifMatchVersions` (src/http/etag.ts) reads it. */
export type IfMatch = ReturnType<typeof ifMatchVersions>;

/**
 * What a write expects of the row it locks. `ifMatch`: the caller's `*` or versions, or none (a
 * PUT creating the key), evaluated against the locked row — so a write with `*` (or a rollback
 * without If-Match) applies on whatever version is latest when its turn comes, and never fails
 * because another write came first; a creation finding the key live by then is 428, as if it had
 * found it there when it read. `seen` is the live version a PUT was validated against before the
 * lock (another one is validated again). `version`: exactly that version — a four-eyes change
 * (the state its approver saw; null: no row).
 */
type Expected =
  | { ifMatch: '*' | readonly number[] | undefined; seen?: number | undefined }
  | { version: number | null };

export const etagOf = (version: number) => `"${version}"`;

/** The audit view of a setting state; `value` is masked by the caller's `secretFields`. */
const auditView = (s: {
  value: unknown;
  valueType: string;
  rules: SettingRules;
  category: string | null;
  description: string | null;
  isSecret: boolean;
  encrypted: boolean;
  version: number;
}) => ({
  value: s.value,
  value_type: s.valueType,
  rules: s.rules,
  category: s.category,
  description: s.description,
  masked: s.isSecret,
  encrypted: s.encrypted,
  version: s.version,
});

/**
 * Whether a write stores its value sealed: `encrypted` defaults to `is_secret` (SPEC section 4); on
 * an update an omitted one is kept, except that a setting becoming secret is sealed from then on
 * unless told otherwise.
 */
const encryptedOf = (
  input: Pick<PutSettingInput, 'encrypted'>,
  before: { encrypted: boolean; isSecret: boolean } | null,
  isSecret: boolean,
): boolean => input.encrypted ?? (before ? before.encrypted || (isSecret && !before.isSecret) : isSecret);

/**
 * Whether a value must be masked in what is kept at rest besides the sealed value — a held
 * change's summary, audit events: when the setting is secret or stored encrypted, on either side.
 * An encrypted value written in clear anywhere else would defeat the encryption.
 */
const hidden = (...states: ({ isSecret: boolean; encrypted: boolean } | null | undefined)[]) =>
  states.some((s) => s?.isSecret || s?.encrypted);

/** Who made a history entry, from where: the same fields on every entry. */
const changedByOf = (access: Access) => ({
  changedBy: access.principal.id,
  changedByType: access.principal.kind,
  ip: access.context.ip,
  userAgent: access.context.userAgent?.slice(0, 1000) ?? null,
  requestId: access.context.requestId,
});

/**
 * Typed settings with optimistic concurrency (version = ETag), validation rules, immutable history
 * and rollback. Secret settings are masked in every response, history entry and audit event.
 */
export function createSettingService({
  db,
  keyring,
  audit,
  authz,
  tenancy,
  clock,
  fourEyes,
}: SettingServiceDeps) {
  type Stored = { value: unknown; valueSealed: string | null; encrypted: boolean };

  /** The stored value, or why it does not open. */
  function tryDecode(
    orgId: string,
    settingId: string,
    version: number,
    stored: Stored,
  ): { value: unknown } | { undecryptable: UndecryptableReason } {
    if (!stored.encrypted || stored.valueSealed === null) return { value: stored.value };
    try {
      const clear = open(keyring, stored.valueSealed, settingAad(orgId, settingId, version));
      return { value: JSON.parse(clear.toString('utf8')) };
    } catch (error) {
      if (!(error instanceof CryptoError)) throw error;
      return { undecryptable: error.code === 'unknown_key' ? 'unknown_master_key' : 'integrity' };
    }
  }

  /** The stored value; 409 setting_undecryptable when it does not open. */
  function decode(orgId: string, settingId: string, version: number, stored: Stored): unknown {
    const opened = tryDecode(orgId, settingId, version, stored);
    if ('value' in opened) return opened.value;
    throw settingErrors.setting_undecryptable(
      opened.undecryptable === 'unknown_master_key'
        ? 'The value is wrapped under a master key this server does not hold'
        : 'The stored value failed its integrity check (tampered or moved from another row)',
      { reason: opened.undecryptable },
    );
  }

  function view(row: SettingRow, environment: string): Setting {
    if (row.isSecret) return { row, environment, value: null, masked: true };
    return { row, environment, value: decode(row.orgId, row.id, row.version, row), masked: false };
  }

  /**
   * A list's row: a value that does not open is masked and flagged on its own row, so one moved
   * or tampered value (or one under a master key this server lacks) does not fail the whole list.
   */
  function listView(row: SettingRow, environment: string): Setting {
    if (row.isSecret) return { row, environment, value: null, masked: true };
    const opened = tryDecode(row.orgId, row.id, row.version, row);
    return 'value' in opened
      ? { row, environment, value: opened.value, masked: false }
      : { row, environment, value: null, masked: true, undecryptable: opened.undecryptable };
  }

  /**
   * What a write answers its caller: the value held back (`masked`) unless they may read the
   * setting. Writing needs `settings:update`, reading `settings:read`: a deny grant on reading one
   * setting must not be read around through the PUT or the rollback (which restores an old value).
   */
  async function forCaller(principal: Principal, setting: Setting): Promise<Setting> {
    if (setting.masked) return setting;
    const read = await authz.check(principal, 'settings:read', { type: 'settings', id: setting.row.id });
    return read.allowed ? setting : { ...setting, value: null, masked: true };
  }

  /** Runs `work` in the caller's transaction (a four-eyes approval) or a new one. */
  const inTx = <T>(tx: DbOrTx | undefined, work: (tx: DbOrTx) => Promise<T>): Promise<T> =>
    tx ? work(tx) : db.db.transaction(work);

  /** The row of a key, deleted or not (a deleted row keeps its history and its version count). */
  async function find(orgId: string, env: Environment, key: string, tx: DbOrTx = db.db, forUpdate = false) {
    const query = tx
      .select()
      .from(settings)
      .where(and(eq(settings.orgId, orgId), eq(settings.environmentId, env.id), eq(settings.key, key)));
    const [row] = forUpdate ? await query.for('update') : await query;
    return row ?? null;
  }

  /**
   * Throws unless the locked row (none, deleted or live) is what the write expects: 412, or 428
   * for a creation without If-Match that finds the key live.
   */
  function meets(expected: Expected, locked: SettingRow | null): void {
    const current = locked?.deletedAt === null ? locked.version : null;
    if ('ifMatch' in expected) {
      expectVersion(expected.ifMatch, current);
      return;
    }
    if ((locked?.version ?? null) === expected.version) return;
    throw settingErrors.version_conflict(
      current !== null
        ? `The setting is at version ${current}`
        : 'The setting was created or deleted meanwhile',
      { current_version: current },
    );
  }

  /** The live setting, locked for this transaction, if it is what the write expects. */
  async function lockAt(tx: DbOrTx, orgId: string, env: Environment, key: string, expected: Expected) {
    const row = await find(orgId, env, key, tx, true);
    if (!row || row.deletedAt !== null) {
      throw settingErrors.setting_not_found(`No setting ${key} in ${env.name}`);
    }
    meets(expected, row);
    return row;
  }

  async function load(orgId: string, envName: string, key: string, includeDeleted = false) {
    const env = await tenancy.environmentByName(orgId, envName);
    const row = await find(orgId, env, key);
    if (!row || (row.deletedAt !== null && !includeDeleted)) {
      throw settingErrors.setting_not_found(`No setting ${key} in ${env.name}`);
    }
    return { env, row };
  }

  /**
   * A page of the settings the caller may read: `settings:read` on each id (a deny grant on one
   * setting leaves it out). The cursor follows the last key examined, so a page may be short.
   */
  async function list(
    principal: Principal,
    envName: string,
    page: { limit: number; after?: string | undefined; category?: string | undefined },
  ): Promise<FilteredPage<Setting>> {
    const env = await tenancy.environmentByName(principal.orgId, envName);
    const where = [
      eq(settings.orgId, principal.orgId),
      eq(settings.environmentId, env.id),
      isNull(settings.deletedAt),
    ];
    if (page.after !== undefined) where.push(gt(settings.key, page.after));
    if (page.category !== undefined) where.push(eq(settings.category, page.category));
    const rows = await db.db
      .select()
      .from(settings)
      .where(and(...where))
      .orderBy(asc(settings.key))
      .limit(page.limit);
    const last = rows.at(-1);
    const readable = await readableRows(authz, principal, 'settings:read', 'settings', rows, (r) => r.id);
    return {
      rows: readable.map((row) => listView(row, env.name)),
      next: rows.length === page.limit && last ? last.key : null,
    };
  }

  /** One setting; the route checks `settings:read` type-wide, this the setting's own id. */
  async function get(principal: Principal, envName: string, key: string): Promise<Setting> {
    const { env, row } = await load(principal.orgId, envName, key);
    await requireOn(authz, principal, 'settings:read', { type: 'settings', id: row.id });
    return view(row, env.name);
  }

  /**
   * Checks If-Match against the setting's live version (null: none). Returns what it asked for:
   * on a live setting always `*` or versions (missing is 428), on none always undefined.
   */
  // `write`: what the 428 says needs If-Match (a DELETE answered "Updating needs…" until session 11).
  function expectVersion(
    ifMatch: IfMatch,
    current: number,
    write?: 'Updating' | 'Deleting',
  ): '*' | readonly number[];
  function expectVersion(
    ifMatch: IfMatch,
    current: number | null,
    write?: 'Updating' | 'Deleting',
  ): '*' | readonly number[] | undefined;
  function expectVersion(
    ifMatch: IfMatch,
    current: number | null,
    write: 'Updating' | 'Deleting' = 'Updating',
  ): '*' | readonly number[] | undefined {
    if (ifMatch === null) {
      throw httpErrors.validation_failed('If-Match must be "*" or a list of ETags ("3")', {
        errors: [{ path: 'headers.if-match', message: 'not "*" or a list of entity-tags' }],
      });
    }
    if (current === null) {
      // RFC 9110: If-Match on a resource that does not exist fails.
      if (ifMatch !== undefined) {
        throw settingErrors.version_conflict('The setting does not exist; send no If-Match to create it', {
          current_version: null,
        });
      }
      return undefined;
    }
    if (ifMatch === undefined) {
      throw settingErrors.precondition_required(
        `${write} needs If-Match with the version you read (current version ${current})`,
        { current_version: current },
      );
    }
    if (ifMatch !== '*' && !ifMatch.includes(current)) {
      throw settingErrors.version_conflict(
        `The setting is at version ${current} (ETag ${etagOf(current)}); If-Match names no strong match`,
        { current_version: current },
      );
    }
    return ifMatch;
  }

  /** A write's value type: the one sent, else the live setting's; a creation must send one. */
  function valueTypeOf(input: PutSettingInput, live: SettingRow | null): ValueType {
    const valueType = input.value_type ?? (live?.valueType as ValueType | undefined);
    if (valueType === undefined) {
      throw httpErrors.validation_failed('body.value_type: required when creating a setting', {
        errors: [{ path: 'body.value_type', message: 'Required when creating a setting' }],
      });
    }
    return valueType;
  }

  /**
   * Checks a write's rules and value against what it makes of `live` (omitted type and rules are
   * kept); 400 validation_failed. Errors say nothing of a secret or encrypted value (rules.ts).
   */
  function checkWrite(input: PutSettingInput, live: SettingRow | null): ValueType {
    const valueType = valueTypeOf(input, live);
    const rules = input.rules ?? live?.rules ?? {};
    checkRules(valueType, rules);
    const isSecret = input.is_secret ?? live?.isSecret ?? false;
    const masked = hidden({ isSecret, encrypted: encryptedOf(input, live, isSecret) }, live);
    checkValue(valueType, rules, input.value, masked);
    return valueType;
  }

  /** Creates or updates a setting; updates need `If-Match`. */
  async function put(
    access: Access,
    envName: string,
    key: string,
    input: PutSettingInput,
    ifMatchHeader: string | undefined,
  ): Promise<{ setting: Setting; created: boolean } | Pending> {
    const { principal } = access;
    const env = await tenancy.environmentByName(principal.orgId, envName);
    const row = await find(principal.orgId, env, key);
    // A deleted setting is created again: create's permission and no If-Match (create if absent).
    const existing = row?.deletedAt === null ? row : null;
    const ifMatch = ifMatchVersions(ifMatchHeader);
    if (existing) await requireOn(authz, principal, 'settings:update', { type: 'settings', id: existing.id });
    else await requireOn(authz, principal, 'settings:create', { type: 'settings', id: '*' });
    const asked = expectVersion(ifMatch, existing?.version ?? null);
    const valueType = checkWrite(input, existing);
    if (fourEyes && (await fourEyes.required(principal.orgId, env.name))) {
      const isSecret = input.is_secret ?? existing?.isSecret ?? false;
      const encrypted = encryptedOf(input, existing, isSecret);
      const changeId = await fourEyes.propose(access, {
        kind: 'setting.put',
        environmentId: env.id,
        targetId: existing?.id ?? null,
        payload: {
          environment: env.name,
          key,
          input: { ...input, value_type: valueType },
          expectedVersion: row?.version ?? null,
        },
        summary: {
          environment: env.name,
          key,
          value_type: valueType,
          // The sealed payload is what approval applies; the summary is kept in clear.
          value: hidden({ isSecret, encrypted }) ? '[REDACTED]' : input.value,
          expected_version: existing?.version ?? null,
        },
      });
      return { pending: true, changeId };
    }
    // If-Match (or its absence, a creation) is evaluated again on the locked row: a creation
    // that another request beat to the key is 428 like one that found it created.
    const expected: Expected = { ifMatch: asked, seen: existing?.version };
    const out = await applyPut(access, env, key, input, expected);
    return { ...out, setting: await forCaller(principal, out.setting) };
  }

  async function applyPut(
    access: Access,
    env: Environment,
    key: string,
    input: PutSettingInput,
    expected: Expected,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<{ setting: Setting; created: boolean }> {
    const { principal } = access;
    try {
      return await inTx(outerTx, async (tx) => {
        const row0 = await find(principal.orgId, env, key, tx, true);
        // `before`: the live setting this write changes; null for a creation (also of a deleted key).
        const before = row0?.deletedAt === null ? row0 : null;
        meets(expected, row0);
        // `*` (or a list naming several versions) let another write come first: what this one
        // keeps of the setting (type, rules, secrecy) may have changed, so it is checked again.
        const valueType =
          'ifMatch' in expected && expected.seen !== before?.version
            ? checkWrite(input, before)
            : valueTypeOf(input, before);
        const now = clock();
        const id = row0?.id ?? newId('stg');
        const version = (row0?.version ?? 0) + 1;
        const isSecret = input.is_secret ?? before?.isSecret ?? false;
        const encrypted = encryptedOf(input, before, isSecret);
        const sealed = encrypted
          ? seal(keyring, JSON.stringify(input.value), settingAad(principal.orgId, id, version))
          : null;
        const state = {
          valueType,
          value: encrypted ? null : (input.value as object),
          valueSealed: sealed,
          keyId: sealed === null ? null : sealedKeyId(sealed),
          rules: input.rules ?? before?.rules ?? {},
          category: input.category === undefined ? (before?.category ?? null) : input.category,
          description: input.description === undefined ? (before?.description ?? null) : input.description,
          isSecret,
          encrypted,
        };
        const [row] = before
          ? await tx
              .update(settings)
              .set({ ...state, version, updatedBy: principal.id, updatedAt: now })
              .where(eq(settings.id, id))
              .returning()
          : row0
            ? await tx
                .update(settings)
                .set({
                  ...state,
                  version,
                  deletedAt: null,
                  createdBy: principal.id,
                  updatedBy: principal.id,
                  createdAt: now,
                  updatedAt: now,
                })
                .where(eq(settings.id, id))
                .returning()
            : await tx
                .insert(settings)
                .values({
                  id,
                  orgId: principal.orgId,
                  environmentId: env.id,
                  key,
                  ...state,
                  version,
                  createdBy: principal.id,
                  updatedBy: principal.id,
                  createdAt: now,
                  updatedAt: now,
                })
                .returning();
        if (!row) throw new Error('setting write returned nothing');
        await tx.insert(settingHistory).values({
          settingId: id,
          version,
          orgId: principal.orgId,
          action: before ? 'updated' : 'created',
          ...state,
          ...changedByOf(access),
          createdAt: now,
        });
        const beforeValue = before ? decodeForAudit(before) : undefined;
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'setting.changed',
          resource: { type: 'setting', id },
          context: access.context,
          details: { environment: env.name, key, ...(approvedBy ? { approved_by: approvedBy.id } : {}) },
          changes: {
            ...(before ? { before: auditView({ ...before, value: beforeValue }) } : {}),
            after: auditView({ ...state, value: input.value, version }),
          },
          secretFields: hidden({ isSecret, encrypted }, before) ? ['value'] : [],
        });
        return { setting: view(row, env.name), created: before === null };
      });
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      // Another request inserted the key after this one looked for it (PostgreSQL: both saw no
      // row). Only a creation inserts, and only when the key had no row at all.
      if ('ifMatch' in expected) throw await createdMeanwhile(principal.orgId, env, key);
      throw settingErrors.version_conflict('The setting was created meanwhile', { current_version: null });
    }
  }

  /**
   * A creation without If-Match that lost the race for the key: it exists now, so this is an
   * update without If-Match (428) — what the request would have answered a moment later, and
   * what it answers when it finds the winner's row on its read or under its lock.
   */
  async function createdMeanwhile(orgId: string, env: Environment, key: string) {
    const row = await find(orgId, env, key);
    const current = row?.deletedAt === null ? row.version : null;
    return settingErrors.precondition_required(
      'The setting was created meanwhile; updating needs If-Match with the version you read',
      { current_version: current },
    );
  }

  // A secret or encrypted setting's old value is masked anyway: never decrypt what will not be shown.
  function decodeForAudit(row: SettingRow): unknown {
    if (hidden(row)) return null;
    return decode(row.orgId, row.id, row.version, row);
  }

  async function history(
    principal: Principal,
    envName: string,
    key: string,
    page: { limit: number; before?: number | undefined },
  ): Promise<HistoryEntry[]> {
    // History outlives a delete: a deleted key's history stays readable.
    const { row: setting } = await load(principal.orgId, envName, key, true);
    await requireOn(authz, principal, 'settings:read', { type: 'settings', id: setting.id });
    const where = [eq(settingHistory.settingId, setting.id)];
    if (page.before !== undefined) where.push(lte(settingHistory.version, page.before - 1));
    // One row more than the page: the entry before the last gives its old value.
    const rows = await db.db
      .select()
      .from(settingHistory)
      .where(and(...where))
      .orderBy(desc(settingHistory.version))
      .limit(page.limit + 1);
    const out: HistoryEntry[] = [];
    for (let i = 0; i < Math.min(rows.length, page.limit); i++) {
      const row = rows[i] as HistoryRow;
      const previous = rows[i + 1];
      const secret = setting.isSecret || row.isSecret || (previous?.isSecret ?? false);
      out.push(
        secret ? { row, masked: true, newValue: null, oldValue: null } : historyEntry(setting, row, previous),
      );
    }
    return out;
  }

  /**
   * A history entry of a setting that is not secret. A value that does not open (tampered, moved,
   * or under a master key this server lacks) masks its entry, flagged with why — the new value's
   * reason first — as a list does: one such row must not make the whole history a 409.
   */
  function historyEntry(
    setting: SettingRow,
    row: HistoryRow,
    previous: HistoryRow | undefined,
  ): HistoryEntry {
    const unreadable = (undecryptable: UndecryptableReason): HistoryEntry => ({
      row,
      masked: true,
      newValue: null,
      oldValue: null,
      undecryptable,
    });
    const next = tryDecode(setting.orgId, setting.id, row.version, row);
    if ('undecryptable' in next) return unreadable(next.undecryptable);
    const old = previous ? tryDecode(setting.orgId, setting.id, previous.version, previous) : { value: null };
    if ('undecryptable' in old) return unreadable(old.undecryptable);
    return { row, masked: false, newValue: next.value, oldValue: old.value };
  }

  /** The history entry a rollback restores; 404 when there is none or it is a deletion (no value). */
  async function restorable(tx: DbOrTx, settingId: string, version: number): Promise<HistoryRow> {
    const [target] = await tx
      .select()
      .from(settingHistory)
      .where(and(eq(settingHistory.settingId, settingId), eq(settingHistory.version, version)));
    if (!target) throw settingErrors.setting_version_not_found(`No version ${version}`);
    if (target.action === 'deleted') {
      throw settingErrors.setting_version_not_found(`Version ${version} is a deletion: there is no value`);
    }
    return target;
  }

  /** Restores a version's value, type and rules as a new version (audited as setting.rolled_back). */
  async function rollback(
    access: Access,
    envName: string,
    key: string,
    input: { version: number },
    ifMatchHeader: string | undefined,
  ): Promise<Setting | Pending> {
    const { principal } = access;
    const { env, row } = await load(principal.orgId, envName, key);
    await requireOn(authz, principal, 'settings:update', { type: 'settings', id: row.id });
    const ifMatch = ifMatchVersions(ifMatchHeader);
    // Without If-Match a rollback restores onto whatever version is latest when it holds the lock.
    const asked = ifMatch === undefined ? '*' : expectVersion(ifMatch, row.version);
    // Refused now rather than held: history is never removed, so this one would never apply.
    await restorable(db.db, row.id, input.version);
    if (fourEyes && (await fourEyes.required(principal.orgId, env.name))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'setting.rollback',
        environmentId: env.id,
        targetId: row.id,
        payload: { environment: env.name, key, version: input.version, expectedVersion: row.version },
        summary: { environment: env.name, key, to_version: input.version, expected_version: row.version },
      });
      return { pending: true, changeId };
    }
    const expected: Expected = { ifMatch: asked };
    return forCaller(principal, await applyRollback(access, env, key, input.version, expected));
  }

  async function applyRollback(
    access: Access,
    env: Environment,
    key: string,
    toVersion: number,
    expected: Expected,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<Setting> {
    const { principal } = access;
    return inTx(outerTx, async (tx) => {
      const before = await lockAt(tx, principal.orgId, env, key, expected);
      const target = await restorable(tx, before.id, toVersion);
      const value = decode(principal.orgId, before.id, toVersion, target);
      const now = clock();
      const version = before.version + 1;
      // Masking only ever widens: restoring a version from before the value was marked secret
      // must not unmask it.
      const isSecret = before.isSecret || target.isSecret;
      const encrypted = before.encrypted || target.encrypted;
      const sealed = encrypted
        ? seal(keyring, JSON.stringify(value), settingAad(principal.orgId, before.id, version))
        : null;
      const state = {
        valueType: target.valueType,
        value: encrypted ? null : (value as object),
        valueSealed: sealed,
        keyId: sealed === null ? null : sealedKeyId(sealed),
        rules: target.rules,
        category: before.category,
        description: before.description,
        isSecret,
        encrypted,
      };
      const [row] = await tx
        .update(settings)
        .set({ ...state, version, updatedBy: principal.id, updatedAt: now })
        .where(eq(settings.id, before.id))
        .returning();
      if (!row) throw settingErrors.setting_not_found();
      await tx.insert(settingHistory).values({
        settingId: before.id,
        version,
        orgId: principal.orgId,
        action: 'rolled_back',
        ...state,
        restoredFrom: toVersion,
        ...changedByOf(access),
        createdAt: now,
      });
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'setting.rolled_back',
        resource: { type: 'setting', id: before.id },
        context: access.context,
        details: {
          environment: env.name,
          key,
          restored_from: toVersion,
          ...(approvedBy ? { approved_by: approvedBy.id } : {}),
        },
        changes: {
          before: auditView({ ...before, value: decodeForAudit(before) }),
          after: auditView({ ...state, value, version }),
        },
        secretFields: hidden({ isSecret, encrypted }, before) ? ['value'] : [],
      });
      return view(row, env.name);
    });
  }

  /** Deletes a setting (needs If-Match); its history stays, with a `deleted` entry. */
  async function remove(
    access: Access,
    envName: string,
    key: string,
    ifMatchHeader: string | undefined,
  ): Promise<{ deleted: true } | Pending> {
    const { principal } = access;
    const { env, row } = await load(principal.orgId, envName, key);
    await requireOn(authz, principal, 'settings:delete', { type: 'settings', id: row.id });
    const ifMatch = expectVersion(ifMatchVersions(ifMatchHeader), row.version, 'Deleting');
    if (fourEyes && (await fourEyes.required(principal.orgId, env.name))) {
      const changeId = await fourEyes.propose(access, {
        kind: 'setting.delete',
        environmentId: env.id,
        targetId: row.id,
        payload: { environment: env.name, key, expectedVersion: row.version },
        summary: { environment: env.name, key, deleted: true, expected_version: row.version },
      });
      return { pending: true, changeId };
    }
    await applyRemove(access, env, key, { ifMatch });
    return { deleted: true };
  }

  async function applyRemove(
    access: Access,
    env: Environment,
    key: string,
    expected: Expected,
    approvedBy?: Principal,
    outerTx?: DbOrTx,
  ): Promise<string> {
    const { principal } = access;
    return inTx(outerTx, async (tx) => {
      const before = await lockAt(tx, principal.orgId, env, key, expected);
      const now = clock();
      const version = before.version + 1;
      const state = {
        valueType: before.valueType,
        value: null,
        valueSealed: null,
        keyId: null,
        rules: before.rules,
        category: before.category,
        description: before.description,
        isSecret: before.isSecret,
        encrypted: before.encrypted,
      };
      await tx
        .update(settings)
        .set({ ...state, version, deletedAt: now, updatedBy: principal.id, updatedAt: now })
        .where(eq(settings.id, before.id));
      await tx.insert(settingHistory).values({
        settingId: before.id,
        version,
        orgId: principal.orgId,
        action: 'deleted',
        ...state,
        ...changedByOf(access),
        createdAt: now,
      });
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'setting.deleted',
        resource: { type: 'setting', id: before.id },
        context: access.context,
        details: {
          environment: env.name,
          key,
          deleted: true,
          ...(approvedBy ? { approved_by: approvedBy.id } : {}),
        },
        changes: { before: auditView({ ...before, value: decodeForAudit(before) }) },
        secretFields: hidden(before) ? ['value'] : [],
      });
      return before.id;
    });
  }

  return {
    list,
    get,
    put,
    history,
    rollback,
    remove,
    /**
     * Used by four-eyes once a change is approved, inside the approval's transaction. Each checks
     * the requester's permission again, as the direct route does (they may have lost it since).
     */
    apply: {
      async put(
        access: Access,
        env: Environment,
        key: string,
        input: PutSettingInput & { value_type: ValueType },
        expectedVersion: number | null,
        approvedBy: Principal,
        tx: DbOrTx,
      ) {
        const row = await find(access.principal.orgId, env, key, tx);
        // As `put`: a live setting is updated, anything else (none, deleted) created.
        if (row && row.deletedAt === null) {
          await requireOn(authz, access.principal, 'settings:update', { type: 'settings', id: row.id });
        } else await requireOn(authz, access.principal, 'settings:create', { type: 'settings', id: '*' });
        return applyPut(access, env, key, input, { version: expectedVersion }, approvedBy, tx);
      },
      async rollback(
        access: Access,
        env: Environment,
        key: string,
        toVersion: number,
        expectedVersion: number,
        approvedBy: Principal,
        tx: DbOrTx,
      ) {
        const expected = { version: expectedVersion };
        const row = await lockAt(tx, access.principal.orgId, env, key, expected);
        await requireOn(authz, access.principal, 'settings:update', { type: 'settings', id: row.id });
        return applyRollback(access, env, key, toVersion, expected, approvedBy, tx);
      },
      async remove(
        access: Access,
        env: Environment,
        key: string,
        expectedVersion: number,
        approvedBy: Principal,
        tx: DbOrTx,
      ) {
        const expected = { version: expectedVersion };
        const row = await lockAt(tx, access.principal.orgId, env, key, expected);
        // The route checks the type-wide permission, the service the setting's.
        await requireOn(authz, access.principal, 'settings:delete');
        await requireOn(authz, access.principal, 'settings:delete', { type: 'settings', id: row.id });
        return applyRemove(access, env, key, expected, approvedBy, tx);
      },
    },
  };
}

/** The settings service. */
export type SettingService = ReturnType<typeof createSettingService>;
