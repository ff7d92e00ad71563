import { and, desc, eq, inArray, lt, sql } from 'drizzle-orm';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { AuditRecorder } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import type { Authz } from '../authz/contract.ts';
import type { ResourceRef } from '../authz/engine.ts';
import type { PrincipalDirectory } from '../authz/service.ts';
import { open, seal, sealedKeyId } from '../crypto/envelope.ts';
import { CryptoError } from '../crypto/errors.ts';
import type { Keyring } from '../crypto/keyring.ts';
import type { DbHandle, DbOrTx } from '../db/client.ts';
import { isId, newId } from '../db/ids.ts';
import { callerOf } from '../http/auth.ts';
import { contextOf, type RequestContext } from '../http/context.ts';
import { defineErrors, httpErrors, StewardError } from '../http/errors.ts';
import { decodeCursor, encodeCursor, listResponse, pageQuery } from '../http/pagination.ts';
import type { Principal } from '../http/principal.ts';
import { apiKeys } from '../keys/schema.ts';
import { keyIsSuperuser } from '../keys/verifier.ts';
import { environments } from '../tenancy/schema.ts';
import type { Environment, TenancyService } from '../tenancy/service.ts';
import { type ChangeRequestContext, vaultChanges, vaultPolicies } from './schema.ts';
import type { Access } from './secrets/service.ts';

/** A change to hold for approval. `payload` is the request as given (sealed at rest). */
export interface ProposedChange {
  kind: string;
  /** The environment the change is in; null for org-wide changes (flag segments). */
  environmentId: string | null;
  targetId: string | null;
  payload: unknown;
  /** What a reviewer sees; secret values already masked. */
  summary: Record<string, unknown>;
}

/** Four-eyes: whether an org wants approval for an environment, and how to hold a change. */
export interface FourEyes {
  required(orgId: string, environment: string): Promise<boolean>;
  /** For org-wide changes (segments serve every environment): whether four-eyes covers any. */
  requiredForOrg(orgId: string): Promise<boolean>;
  /** Stores the change as pending (audited `change.requested`); returns its id. */
  propose(access: Access, change: ProposedChange): Promise<string>;
  /**
   * For appliers: refuses (403 `requester_not_permitted`) unless the requester still holds
   * `permission` — what the direct route needs — now, at approval. Without `resource`, the
   * type-wide check a route makes.
   */
  authorize(requester: Principal, permission: string, resource?: ResourceRef): Promise<void>;
  /** Pending changes of these kinds in an org, payloads opened (e.g. flag changes naming a segment). */
  pending(orgId: string, kinds: readonly string[], tx?: DbOrTx): Promise<PendingChange[]>;
}

/** A pending change as `FourEyes.pending` returns it. */
export interface PendingChange {
  id: string;
  kind: string;
  payload: unknown;
}

/** What an applier gets: the approval's transaction, the requester, the change as proposed. */
export interface ApplyInput {
  /** The approval's transaction: the change must be written in it, and nothing outside it. */
  tx: DbOrTx;
  /**
   * The requester as they are now (still an active member: checked), with their current rights.
   * The applier must check again the permission the direct route needs: a `permission_denied`
   * it throws answers 403 `requester_not_permitted`.
   */
  requester: Access;
  payload: unknown;
  targetId: string | null;
  /** The change's environment, read in `tx`; null for org-wide changes. */
  environment: Environment | null;
  approvedBy: Principal;
}

/** What an applier did: the id it created or changed, and work to run once the approval committed. */
export interface Applied {
  resultId: string | null;
  /** E.g. cache invalidation: run after the commit, never before (other instances would re-read old rows). */
  afterCommit?: (() => Promise<void>) | undefined;
}

/** Performs an approved change as its requester, inside the approval's transaction. */
export type Applier = (input: ApplyInput) => Promise<Applied>;

export const changeErrors = defineErrors({
  change_not_found: { status: 404, title: 'Change not found' },
  change_decided: { status: 409, title: 'Change already decided' },
  /**
   * The approver is the requester, or acts with a key the requester minted or asked with: the
   * people behind the two (users, keys' owners and minters) meet.
   */
  self_approval: { status: 403, title: 'You cannot approve your own change' },
  /** The approver is an agent, or a key behind which an agent stands: a second person is a person. */
  approver_not_human: { status: 403, title: 'A person must approve this change' },
  requester_not_permitted: { status: 403, title: 'The requester may no longer make this change' },
  /**
   * The held change's sealed payload did not open: tampered, copied from another change, or
   * wrapped under a master key this server does not hold. Not a 500: the request was fine, the
   * stored change is not (as `secret_undecryptable` for a secret's value).
   */
  change_undecryptable: { status: 409, title: 'Held change failed its integrity check' },
});

export type ChangeRow = typeof vaultChanges.$inferSelect;
export type PolicyRow = typeof vaultPolicies.$inferSelect;

const changeAad = (orgId: string, id: string) => `org/${orgId}/change/${id}`;

/** The requester's context as stored with a held change. */
const storedContext = (access: Access): ChangeRequestContext => ({
  ip: access.context.ip,
  user_agent: access.context.userAgent,
  session_id: access.context.sessionId,
  request_id: access.context.requestId,
  tool_id: access.toolId,
});

/**
 * The context an approved change is recorded with: the requester's, as stored when they asked —
 * never the approver's (whose context goes in `change.approved`). Empty only for a change from
 * before migration 0010 whose `change.requested` event was no longer there to backfill it.
 */
function requesterContext(stored: ChangeRequestContext | null): Pick<Access, 'context' | 'toolId'> {
  return {
    context: {
      ip: stored?.ip ?? '',
      userAgent: stored?.user_agent ?? null,
      sessionId: stored?.session_id ?? null,
      requestId: stored?.request_id ?? '',
    },
    toolId: stored?.tool_id ?? null,
  };
}

/** The resource type of a kind of change: `setting.put` → settings; segments are flags'. */
const resourceOf = (kind: string) => {
  const prefix = kind.split('.')[0] ?? kind;
  return prefix === 'segment' ? 'flags' : `${prefix}s`;
};

/** Whether a principal is the change's requester (or a key acting for them): who may withdraw it. */
const isRequester = (principal: Principal, row: ChangeRow) =>
  principal.id === row.requestedBy || principal.ownerId === row.requestedBy;

/** How many keys a chain of keys minting keys is followed through before it counts as nobody's. */
const MAX_KEY_CHAIN = 32;

/** How many rolls (`api_keys.rolled_to`) a requesting key is followed through to its live successor. */
const MAX_ROLL_CHAIN = 32;

/**
 * Four-eyes changes: an org switch (`vault_policies`), pending changes (`vault_changes`, payload
 * sealed since it may hold a secret value), and the decision by another user holding
 * `approvals:approve`. Appliers are registered by the services that own each kind of change.
 */
export function createFourEyes({
  db,
  keyring,
  audit,
  authz,
  principals,
  tenancy,
  clock,
  onError = () => {},
}: {
  db: DbHandle;
  keyring: Keyring;
  audit: AuditRecorder;
  /** The requester's rights, checked again at approval. */
  authz: Pick<Authz, 'check' | 'rolesOf'>;
  /** Whether the requester is still an active member of the org (runs on the approval's `tx`). */
  principals: PrincipalDirectory;
  tenancy: Pick<TenancyService, 'environmentByName'>;
  clock: () => Date;
  onError?: ((error: unknown, what: string) => void) | undefined;
}) {
  const appliers = new Map<string, Applier>();
  /** The codes registered appliers may refuse with; fixed once the approval route has read them. */
  const applierCodes = new Set<string>();
  let applierCodesRead = false;

  /** A held change's request as proposed; a CryptoError when its sealed payload does not open. */
  const opened = (orgId: string, id: string, sealed: string): unknown =>
    JSON.parse(open(keyring, sealed, changeAad(orgId, id)).toString('utf8'));

  /** The payload of a change to apply: one that does not open is 409 `change_undecryptable`. */
  function payloadOf(row: ChangeRow): unknown {
    try {
      return opened(row.orgId, row.id, row.payload);
    } catch (error) {
      if (!(error instanceof CryptoError)) throw error;
      const reason = error.code === 'unknown_key' ? 'unknown_master_key' : 'integrity';
      throw changeErrors.change_undecryptable(
        reason === 'unknown_master_key'
          ? 'The change is sealed under a master key this server does not hold'
          : 'The stored change failed its integrity check (tampered or moved from another change)',
        { reason },
      );
    }
  }

  const notPermitted = (permission: string) =>
    changeErrors.requester_not_permitted(
      `The requester no longer holds ${permission}, which this change needs`,
      { permission },
    );

  /**
   * The requester as they are now, read in the approval's transaction: an active member (else
   * 403), with the rights the org's index gives them, and the context they asked from. A change a
   * key asked for is applied as that key (`requested_by_key_id`): its owner (`requested_by`) must
   * still be a member, and the key must still be usable — not revoked, expired or switched off
   * (suspended for a burst included) — else 403 `requester_not_permitted` with `reason`
   * `key_revoked`, `key_expired` or `key_disabled`, and the change fails. Its current scopes narrow
   * its owner's rights, as for any request of the key. A key change from before migration 0013 that
   * was not backfilled has no key id: checked against its owner alone, as before.
   */
  async function requesterNow(row: ChangeRow, tx: DbOrTx): Promise<Access> {
    const found = await principals.find(row.orgId, row.requestedBy, tx);
    if (found === null || found.orgId !== row.orgId) {
      throw changeErrors.requester_not_permitted(
        'The requester is no longer an active member of this organization',
        { reason: 'not_a_member' },
      );
    }
    let principal: Principal = found;
    if (row.requestedByType === 'key' && row.requestedByKeyId !== null) {
      principal = await requestingKey(row, row.requestedByKeyId, found, tx);
    } else if (row.requestedByType === 'key') {
      principal = { ...found, kind: 'key', id: row.requestedBy, ownerId: row.requestedBy, scopes: null };
    }
    return { principal, ...requesterContext(row.requestContext) };
  }

  /**
   * The key a change was asked with, as a principal, if it is still usable (`requesterNow`). A roll
   * is a rotation, not a revocation: a rolled key (`rolled_to`) is judged by its live successor,
   * followed through at most `MAX_ROLL_CHAIN` rolls — its own expiry is the roll's grace end and
   * does not end the change, but a key of the chain revoked or switched off does, and so does a
   * successor revoked, expired or switched off. The principal stays the key that asked (its id
   * and name: the actor recorded), with the current scopes of the live successor.
   */
  async function requestingKey(
    row: ChangeRow,
    keyId: string,
    owner: Principal,
    tx: DbOrTx,
  ): Promise<Principal> {
    const keyById = async (id: string) =>
      (
        await tx
          .select()
          .from(apiKeys)
          .where(and(eq(apiKeys.orgId, row.orgId), eq(apiKeys.id, id)))
      )[0];
    const unusable = (reason: string, why: string) =>
      changeErrors.requester_not_permitted(`The key that asked for this change ${why}`, {
        reason,
        key_id: keyId,
      });
    const asked = await keyById(keyId);
    let key = asked;
    for (let rolls = 0; key !== undefined && key.rolledTo !== null; rolls++) {
      if (key.revokedAt !== null) throw unusable('key_revoked', 'has been revoked');
      if (!key.active) throw unusable('key_disabled', 'is disabled');
      if (rolls >= MAX_ROLL_CHAIN) {
        throw unusable('key_expired', `has expired, rolled more than ${MAX_ROLL_CHAIN} times`);
      }
      key = await keyById(key.rolledTo);
    }
    const rolled = key !== asked ? ' (its rolled successor)' : '';
    if (asked === undefined || key === undefined || key.revokedAt !== null) {
      throw unusable('key_revoked', `has been revoked${rolled}`);
    }
    if (key.expiresAt !== null && key.expiresAt <= clock()) {
      throw unusable('key_expired', `has expired${rolled}`);
    }
    if (!key.active) throw unusable('key_disabled', `is disabled${rolled}`);
    return {
      orgId: row.orgId,
      kind: 'key',
      id: asked.id,
      name: asked.name,
      roles: owner.roles,
      scopes: key.scopes,
      superuser: keyIsSuperuser(owner.superuser, key.scopes),
      keyId: asked.id,
      ownerId: key.ownerId,
    };
  }

  /**
   * The users and agents behind a principal id: a user or an agent is itself; a key is its owner
   * and whoever minted it (`api_keys.created_by`: the caller that created or rolled it, who was
   * handed its secret), a minting key followed in turn to its own owner and minter. `unresolved`
   * when a key is not found or the chain is longer than `MAX_KEY_CHAIN`: nobody can be named, so
   * the key counts as no person.
   */
  async function partiesBehind(
    orgId: string,
    ids: readonly string[],
  ): Promise<{ parties: Set<string>; unresolved: boolean }> {
    const parties = new Set<string>();
    const seen = new Set<string>();
    const next = [...ids];
    let unresolved = false;
    for (let id = next.pop(); id !== undefined; id = next.pop()) {
      if (seen.has(id)) continue;
      seen.add(id);
      if (!isId('key', id)) {
        parties.add(id);
        continue;
      }
      if (seen.size > MAX_KEY_CHAIN) {
        unresolved = true;
        break;
      }
      const [key] = await db.db
        .select({ ownerId: apiKeys.ownerId, createdBy: apiKeys.createdBy })
        .from(apiKeys)
        .where(and(eq(apiKeys.orgId, orgId), eq(apiKeys.id, id)));
      if (key === undefined) unresolved = true;
      else next.push(key.ownerId, key.createdBy);
    }
    return { parties, unresolved };
  }

  /**
   * Four-eyes needs a second, distinct person. Refused: an approver that is an agent or a key
   * with an agent (or nobody known) behind it — 403 `approver_not_human`; an approver with someone
   * behind it who is behind the request too — its requester, the key it was asked with, that
   * key's minters — 403 `self_approval`. So a key the requester minted for an agent, for another
   * user or for themselves through a key, approves nothing of theirs.
   */
  async function assertSecondPerson(approver: Principal, row: ChangeRow): Promise<void> {
    const behindApprover = await partiesBehind(row.orgId, [approver.id]);
    const agent = [...behindApprover.parties].some((id) => !isId('usr', id));
    if (approver.kind === 'agent' || agent || behindApprover.unresolved) {
      throw changeErrors.approver_not_human(
        approver.kind === 'user'
          ? 'A person must approve this change'
          : 'A person must approve this change: an agent, or a key an agent owns or minted, cannot',
      );
    }
    const behindRequest = await partiesBehind(
      row.orgId,
      row.requestedByKeyId === null ? [row.requestedBy] : [row.requestedBy, row.requestedByKeyId],
    );
    if ([...behindApprover.parties].some((id) => behindRequest.parties.has(id))) {
      throw changeErrors.self_approval(
        approver.kind === 'key'
          ? 'Another person must approve this change: this key is in the hands of someone behind the request'
          : 'Another person must approve this change',
      );
    }
  }

  async function policy(
    orgId: string,
    tx: DbOrTx = db.db,
  ): Promise<{ fourEyes: boolean; environments: string[] }> {
    const [row] = await tx.select().from(vaultPolicies).where(eq(vaultPolicies.orgId, orgId));
    return { fourEyes: row?.fourEyes ?? false, environments: row?.fourEyesEnvironments ?? ['production'] };
  }

  async function setPolicy(
    principal: Principal,
    input: { four_eyes: boolean; environments?: string[] | undefined },
    context: RequestContext,
  ) {
    // A name given twice is stored once (the list is a set; order of first appearance kept).
    const wanted = input.environments === undefined ? undefined : [...new Set(input.environments)];
    return db.db.transaction(async (tx) => {
      // A misspelt name would protect nothing while reading as protected: 404
      // environment_not_found, as every route answers for an unknown environment.
      for (const name of wanted ?? []) await tenancy.environmentByName(principal.orgId, name, tx);
      const before = await policy(principal.orgId, tx);
      const after = { fourEyes: input.four_eyes, environments: wanted ?? before.environments };
      await tx
        .insert(vaultPolicies)
        .values({
          orgId: principal.orgId,
          fourEyes: after.fourEyes,
          fourEyesEnvironments: after.environments,
          updatedBy: principal.id,
          updatedAt: clock(),
        })
        .onConflictDoUpdate({
          target: vaultPolicies.orgId,
          set: {
            fourEyes: after.fourEyes,
            fourEyesEnvironments: after.environments,
            updatedBy: principal.id,
            updatedAt: clock(),
          },
        });
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'org.updated',
        resource: { type: 'vault_policy', id: principal.orgId },
        context,
        changes: {
          before: { four_eyes: before.fourEyes, environments: before.environments },
          after: { four_eyes: after.fourEyes, environments: after.environments },
        },
      });
      return after;
    });
  }

  const fourEyes: FourEyes = {
    async required(orgId, environment) {
      const p = await policy(orgId);
      return p.fourEyes && p.environments.includes(environment);
    },
    async requiredForOrg(orgId) {
      const p = await policy(orgId);
      return p.fourEyes && p.environments.length > 0;
    },
    async propose(access, change) {
      const { principal } = access;
      const id = newId('chg');
      const sealed = seal(keyring, JSON.stringify(change.payload), changeAad(principal.orgId, id));
      await db.db.transaction(async (tx) => {
        await tx.insert(vaultChanges).values({
          id,
          orgId: principal.orgId,
          environmentId: change.environmentId,
          kind: change.kind,
          targetId: change.targetId,
          summary: change.summary,
          payload: sealed,
          keyId: sealedKeyId(sealed),
          requestedBy: principal.ownerId ?? principal.id,
          requestedByType: principal.kind,
          requestedByKeyId: principal.kind === 'key' ? principal.id : null,
          requestContext: storedContext(access),
          createdAt: clock(),
        });
        await audit.record(tx, {
          orgId: principal.orgId,
          actor: actorOf(principal),
          action: 'change.requested',
          resource: { type: 'change', id },
          context: access.context,
          details: { kind: change.kind, target_id: change.targetId, summary: change.summary },
          secretFields: ['value'],
        });
      });
      return id;
    },
    async authorize(requester, permission, resource) {
      if (!(await authz.check(requester, permission, resource)).allowed) throw notPermitted(permission);
    },
    async pending(orgId, kinds, tx = db.db) {
      if (kinds.length === 0) return [];
      const rows = await tx
        .select({ id: vaultChanges.id, kind: vaultChanges.kind, payload: vaultChanges.payload })
        .from(vaultChanges)
        .where(
          and(
            eq(vaultChanges.orgId, orgId),
            eq(vaultChanges.status, 'pending'),
            inArray(vaultChanges.kind, [...kinds]),
          ),
        );
      const out: PendingChange[] = [];
      for (const r of rows) {
        try {
          out.push({ id: r.id, kind: r.kind, payload: opened(orgId, r.id, r.payload) });
        } catch (error) {
          // A payload that does not open (its master key is gone) can never be approved either.
          if (!(error instanceof CryptoError)) throw error;
        }
      }
      return out;
    },
  };

  async function load(orgId: string, id: string): Promise<ChangeRow> {
    const [row] = await db.db
      .select()
      .from(vaultChanges)
      .where(and(eq(vaultChanges.orgId, orgId), eq(vaultChanges.id, id)));
    if (!row) throw changeErrors.change_not_found();
    return row;
  }

  /**
   * Claims a pending change (pending → rejected) and records the decision, in one transaction.
   * `withdrawn`: the requester took their own change back.
   */
  async function decideRejected(
    approver: Principal,
    row: ChangeRow,
    reason: string | null,
    context: RequestContext,
    withdrawn: boolean,
  ) {
    await db.db.transaction(async (tx) => {
      const claimed = await tx
        .update(vaultChanges)
        .set({ status: 'rejected', decidedBy: approver.id, decisionReason: reason, decidedAt: clock() })
        .where(and(eq(vaultChanges.id, row.id), eq(vaultChanges.status, 'pending')))
        .returning({ id: vaultChanges.id });
      if (claimed.length === 0) throw changeErrors.change_decided('This change was decided already');
      await audit.record(tx, {
        orgId: row.orgId,
        actor: actorOf(approver),
        action: 'change.rejected',
        resource: { type: 'change', id: row.id },
        context,
        details: {
          kind: row.kind,
          target_id: row.targetId,
          requested_by: row.requestedBy,
          reason,
          ...(withdrawn ? { withdrawn: true } : {}),
        },
      });
    });
  }

  // Refusals whose change was marked failed: `markFailed` recorded them already.
  const onRecord = new WeakSet<object>();

  /**
   * Records a refused decision (403 `self_approval` or `permission_denied`, 404, 409 decided) as
   * authz records its refusals: the decision's event (`change.approved` / `change.rejected`) with
   * `success: false`, the error code as `details.reason` and the caller's own words as
   * `details.decision_reason`. Its own transaction, once the refused one (if any) rolled back;
   * best effort — a failed record goes to `onError` and never changes the answer. An id that is
   * not a change id names nothing and is not recorded.
   */
  async function recordRefusal(
    caller: Principal,
    action: 'change.approved' | 'change.rejected',
    id: string,
    decisionReason: string | null,
    error: unknown,
    context: RequestContext,
  ): Promise<void> {
    if (!(error instanceof StewardError) || onRecord.has(error) || !isId('chg', id)) return;
    const { permission } = error.extra;
    try {
      await db.db.transaction((tx) =>
        audit.record(tx, {
          orgId: caller.orgId,
          actor: actorOf(caller),
          action,
          resource: { type: 'change', id },
          context,
          details: {
            reason: error.code,
            ...(permission === undefined ? {} : { permission }),
            decision_reason: decisionReason,
          },
          success: false,
          errorMessage: error.detail,
        }),
      );
    } catch (failure) {
      onError(failure, `audit of a refused ${action}`);
    }
  }

  /** Whether the caller may decide others' changes. */
  const mayDecide = async (caller: Principal) => (await authz.check(caller, 'approvals:approve')).allowed;

  /** Whether the caller may write the resource type a kind of change is about (any of its writes). */
  const mayWrite = async (caller: Principal, kind: string) => {
    const type = resourceOf(kind);
    for (const action of ['update', 'create', 'delete'])
      if ((await authz.check(caller, `${type}:${action}`)).allowed) return true;
    return false;
  };

  const needsApprove = (detail: string) =>
    httpErrors.permission_denied(detail, { permission: 'approvals:approve' });

  /**
   * Approves a change (the route only authenticates: `approvals:approve` is checked here, so a
   * refusal is recorded like every other refusal of the decision). See `approveAndApply`.
   */
  async function approve(approver: Principal, id: string, reason: string | null, context: RequestContext) {
    try {
      if (!(await mayDecide(approver))) throw needsApprove('This action needs approvals:approve');
      return await approveAndApply(approver, id, reason, context);
    } catch (error) {
      await recordRefusal(approver, 'change.approved', id, reason, error, context);
      throw error;
    }
  }

  /**
   * Applies a change as its requester, in one transaction: the claim (`pending → applied`, a
   * conditional UPDATE that holds the row lock until commit), the change, and `change.approved`.
   * A concurrent approval waits on that lock, then finds the change decided (409); a crash leaves
   * it pending. When the change no longer applies (a StewardError, e.g. the setting moved: 412, or
   * its payload does not open: 409 `change_undecryptable`), the transaction rolls back and the
   * change is marked `failed` in a second one; any other error (the database went away) leaves it
   * pending, to be approved again.
   */
  async function approveAndApply(
    approver: Principal,
    id: string,
    reason: string | null,
    context: RequestContext,
  ) {
    const row = await load(approver.orgId, id);
    if (row.status !== 'pending') throw changeErrors.change_decided(`This change is ${row.status}`);
    await assertSecondPerson(approver, row);
    const applier = appliers.get(row.kind);
    if (!applier) throw new Error(`no applier for change kind ${row.kind}`);
    const decidedAt = clock();
    let applied: Applied;
    try {
      // Opened before anything is written: a payload that does not open can never apply.
      const payload = payloadOf(row);
      // Loaded now if cold: checks inside the transaction must not read through another connection
      // (PGlite has one, held by the transaction).
      await authz.rolesOf(row.orgId, row.requestedBy);
      applied = await db.db.transaction(async (tx) => {
        const claimed = await tx
          .update(vaultChanges)
          .set({ status: 'applied', decidedBy: approver.id, decisionReason: reason, decidedAt })
          .where(and(eq(vaultChanges.id, row.id), eq(vaultChanges.status, 'pending')))
          .returning({ id: vaultChanges.id });
        if (claimed.length === 0) throw changeErrors.change_decided('This change was decided already');
        const [environment] =
          row.environmentId === null
            ? [null]
            : await tx.select().from(environments).where(eq(environments.id, row.environmentId));
        if (environment === undefined) throw changeErrors.change_not_found('Its environment is gone');
        const requester = await requesterNow(row, tx);
        const out = await applier({
          tx,
          requester,
          payload,
          targetId: row.targetId,
          environment,
          approvedBy: approver,
        });
        await tx.update(vaultChanges).set({ resultId: out.resultId }).where(eq(vaultChanges.id, row.id));
        await audit.record(tx, {
          orgId: row.orgId,
          actor: actorOf(approver),
          action: 'change.approved',
          resource: { type: 'change', id: row.id },
          context,
          details: {
            kind: row.kind,
            target_id: row.targetId,
            requested_by: row.requestedBy,
            ...(row.requestedByKeyId === null ? {} : { requested_by_key_id: row.requestedByKeyId }),
            reason,
            result_id: out.resultId,
          },
        });
        return out;
      });
    } catch (caught) {
      // The approver's own rights were checked before (`approve`): a refusal while applying is the
      // requester's (they lost a permission since they asked).
      const error =
        caught instanceof StewardError && caught.code === 'permission_denied'
          ? notPermitted(String(caught.extra.permission ?? 'a permission'))
          : caught;
      if (error instanceof StewardError && error.code !== 'change_decided') {
        if (await markFailed(approver, row, reason, error.code, context)) onRecord.add(error);
      }
      throw error;
    }
    if (applied.afterCommit) {
      await applied.afterCommit().catch((error: unknown) => onError(error, `after ${row.kind} applied`));
    }
    return {
      ...row,
      status: 'applied',
      resultId: applied.resultId,
      decidedBy: approver.id,
      decisionReason: reason,
      decidedAt,
    };
  }

  /**
   * Approved, but it no longer applies: say so and keep the record (only if still pending).
   * Whether it did (false: decided meanwhile, nothing recorded).
   */
  async function markFailed(
    approver: Principal,
    row: ChangeRow,
    reason: string | null,
    code: string,
    context: RequestContext,
  ): Promise<boolean> {
    return db.db.transaction(async (tx) => {
      const claimed = await tx
        .update(vaultChanges)
        .set({
          status: 'failed',
          decidedBy: approver.id,
          decisionReason: `${reason ?? ''} [apply failed: ${code}]`.trim(),
          decidedAt: clock(),
        })
        .where(and(eq(vaultChanges.id, row.id), eq(vaultChanges.status, 'pending')))
        .returning({ id: vaultChanges.id });
      if (claimed.length === 0) return false;
      await audit.record(tx, {
        orgId: row.orgId,
        actor: actorOf(approver),
        action: 'change.approved',
        resource: { type: 'change', id: row.id },
        context,
        details: {
          kind: row.kind,
          target_id: row.targetId,
          requested_by: row.requestedBy,
          reason,
          outcome: 'failed',
          error_code: code,
        },
      });
      return true;
    });
  }

  /** Rejects a pending change (`rejectChange`); a refusal is recorded before it answers. */
  async function reject(caller: Principal, id: string, reason: string | null, context: RequestContext) {
    try {
      return await rejectChange(caller, id, reason, context);
    } catch (error) {
      await recordRefusal(caller, 'change.rejected', id, reason, error, context);
      throw error;
    }
  }

  /**
   * Needs `approvals:approve`, except for the requester (or a key acting for them) withdrawing
   * their own change. Without the permission, a change that is not the caller's — or does not
   * exist — is the same 403 the route used to answer.
   */
  async function rejectChange(caller: Principal, id: string, reason: string | null, context: RequestContext) {
    let row: ChangeRow;
    if (await mayDecide(caller)) row = await load(caller.orgId, id);
    else {
      const own = await load(caller.orgId, id).catch((error: unknown) => {
        if (error instanceof StewardError && error.code === 'change_not_found') return null;
        throw error;
      });
      if (own === null || !isRequester(caller, own)) {
        throw needsApprove(
          'This action needs approvals:approve (a requester may withdraw only their own change)',
        );
      }
      if (caller.scopes !== null && !(await mayWrite(caller, own.kind))) {
        // A key is narrowed by its scopes: withdrawing is a write, which a read-only key may not make.
        throw httpErrors.permission_denied(
          `Withdrawing needs approvals:approve or a write permission on ${resourceOf(own.kind)} in this key's scopes`,
          { permission: `${resourceOf(own.kind)}:update` },
        );
      }
      row = own;
    }
    if (row.status !== 'pending') throw changeErrors.change_decided(`This change is ${row.status}`);
    await decideRejected(caller, row, reason, context, isRequester(caller, row));
    return { ...row, status: 'rejected', decidedBy: caller.id, decisionReason: reason };
  }

  /**
   * Changes newest first, in (created_at, id) order: many are requested in one millisecond, so the
   * cursor is both (a keyset), never the time alone — that skipped every change sharing the last
   * row's millisecond. A cursor without `id` (issued before session 8) still means "older than".
   */
  async function list(
    orgId: string,
    status: string | undefined,
    page: { limit: number; before?: { at: string; id?: string | undefined } | undefined },
  ) {
    const where = [eq(vaultChanges.orgId, orgId)];
    if (status !== undefined) where.push(eq(vaultChanges.status, status));
    const before = page.before;
    if (before !== undefined) {
      where.push(
        before.id === undefined
          ? lt(vaultChanges.createdAt, new Date(before.at))
          : sql`(${vaultChanges.createdAt}, ${vaultChanges.id}) < (${before.at}::timestamptz, ${before.id})`,
      );
    }
    return db.db
      .select()
      .from(vaultChanges)
      .where(and(...where))
      .orderBy(desc(vaultChanges.createdAt), desc(vaultChanges.id))
      .limit(page.limit);
  }

  /**
   * Whether the caller may read what a change is about: `<type>:read` on its target — the id it
   * changes, else the id it created (an applied creation) — or, for a creation still pending and
   * for segments (org-wide), the type-wide check a list route makes. Answered from authz's index.
   */
  async function mayReadTarget(caller: Principal, row: ChangeRow): Promise<boolean> {
    const type = resourceOf(row.kind);
    const id = row.kind.startsWith('segment.') ? null : (row.targetId ?? row.resultId);
    return (await authz.check(caller, `${type}:read`, id === null ? undefined : { type, id })).allowed;
  }

  /**
   * Changes as the caller may see them: a change whose target the caller may not read (a `deny`
   * grant on one setting, secret or flag, or no `…:read` at all) is shown with its summary withheld
   * (`summary: {}`, `summary_withheld: true`) — the summary holds the new value, or the flag's
   * definition, and names the key. The change itself stays: approvals are their own resource.
   */
  async function views(caller: Principal, rows: readonly ChangeRow[]) {
    const out: ReturnType<typeof changeView>[] = [];
    for (const row of rows) out.push(changeView(row, await mayReadTarget(caller, row)));
    return out;
  }

  return {
    fourEyes,
    policy,
    setPolicy,
    approve,
    reject,
    list,
    views,
    /**
     * Registers the applier of a kind of change, with the error codes it may refuse an approval
     * with beyond four-eyes' own (its domain's: `secret_name_taken`, `version_conflict`, …), which
     * the approval route declares. Before the routes are registered: a later applier's codes
     * would go undocumented, so it is refused.
     */
    register(kind: string, applier: Applier, errors: readonly string[] = []): void {
      if (applierCodesRead) {
        throw new Error(`four-eyes: the applier of ${kind} is registered after the approval route`);
      }
      appliers.set(kind, applier);
      for (const code of errors) applierCodes.add(code);
    },
    /** The codes every registered applier may refuse with (the approval route's to declare). */
    applierErrors(): string[] {
      applierCodesRead = true;
      return [...applierCodes];
    },
  };
}

export type FourEyesService = ReturnType<typeof createFourEyes>;

const changeSchema = z.object({
  id: z.string(),
  kind: z.string(),
  target_id: z.string().nullable(),
  summary: z
    .record(z.string(), z.unknown())
    .describe(
      "What the change does; secret values masked. Empty when withheld: the caller may not read the change's target.",
    ),
  summary_withheld: z
    .boolean()
    .describe(
      'True when the caller may not read what the change is about (a deny grant on it): summary is empty.',
    ),
  status: z.enum(['pending', 'approved', 'applied', 'rejected', 'failed']),
  requested_by: z.string().describe('The requester: a user or agent, or the owner of the key that asked.'),
  requested_by_type: z.enum(['user', 'agent', 'key']),
  requested_by_key_id: z
    .string()
    .nullable()
    .describe('The API key that asked for the change, when a key did.'),
  decided_by: z.string().nullable(),
  decision_reason: z.string().nullable(),
  result_id: z.string().nullable(),
  created_at: z.string(),
  decided_at: z.string().nullable(),
});

/** A change as the API shows it; `readable`: whether the caller may read its target (else the summary is withheld). */
const changeView = (c: ChangeRow, readable: boolean) => ({
  id: c.id,
  kind: c.kind,
  target_id: c.targetId,
  summary: readable ? c.summary : {},
  summary_withheld: !readable,
  status: c.status as 'pending' | 'approved' | 'applied' | 'rejected' | 'failed',
  requested_by: c.requestedBy,
  requested_by_type: c.requestedByType as 'user' | 'agent' | 'key',
  requested_by_key_id: c.requestedByKeyId,
  decided_by: c.decidedBy,
  decision_reason: c.decisionReason,
  result_id: c.resultId,
  created_at: c.createdAt.toISOString(),
  decided_at: c.decidedAt?.toISOString() ?? null,
});

const policySchema = z.object({ four_eyes: z.boolean(), environments: z.array(z.string()) });

/**
 * The last change of a page: its instant exactly as `toISOString` wrote it (a date that does not
 * exist, such as `garbage` or February 31st, reached SQL and was a 500; now 400 invalid_cursor)
 * and its id.
 */
const changeCursor = z.object({
  at: z
    .string()
    .regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/)
    .refine((at) => {
      const date = new Date(at);
      return !Number.isNaN(date.getTime()) && date.toISOString() === at;
    }),
  id: z.string().max(100).optional(),
});

/** `/v1/vault/policy` and `/v1/vault/changes`. */
export const fourEyesRoutes: FastifyPluginAsyncZod<{ service: FourEyesService }> = async (
  app,
  { service },
) => {
  app.get(
    '/v1/vault/policy',
    {
      config: { access: { permission: 'org:read' } },
      schema: { tags: ['vault'], summary: 'Four-eyes policy of the org', response: { 200: policySchema } },
    },
    async (request) => {
      const p = await service.policy(callerOf(request).orgId);
      return { four_eyes: p.fourEyes, environments: p.environments };
    },
  );

  app.put(
    '/v1/vault/policy',
    {
      config: { access: { permission: 'org:update' }, errors: ['environment_not_found'] },
      schema: {
        tags: ['vault'],
        summary: 'Turn four-eyes on or off (default environments: production)',
        body: z.strictObject({
          four_eyes: z.boolean(),
          environments: z.array(z.string().min(1).max(40)).min(1).max(20).optional(),
        }),
        response: { 200: policySchema },
      },
    },
    async (request) => {
      const p = await service.setPolicy(callerOf(request), request.body, contextOf(request));
      return { four_eyes: p.fourEyes, environments: p.environments };
    },
  );

  app.get(
    '/v1/vault/changes',
    {
      config: { access: { permission: 'approvals:read' }, errors: ['invalid_cursor'] },
      schema: {
        tags: ['vault'],
        summary: 'Changes held for approval, newest first',
        querystring: z.strictObject({
          ...pageQuery,
          status: z.enum(['pending', 'approved', 'applied', 'rejected', 'failed']).optional(),
        }),
        response: { 200: listResponse(changeSchema) },
      },
    },
    async (request) => {
      const cursor = decodeCursor(request.query.cursor, changeCursor);
      const caller = callerOf(request);
      const rows = await service.list(caller.orgId, request.query.status, {
        limit: request.query.limit,
        before: cursor,
      });
      const last = rows.at(-1);
      return {
        data: await service.views(caller, rows),
        next_cursor:
          rows.length === request.query.limit && last
            ? encodeCursor({ at: last.createdAt.toISOString(), id: last.id })
            : null,
      };
    },
  );

  const decisionBody = z.strictObject({ reason: z.string().max(500).optional() }).nullish();
  const idParams = z.object({ id: z.string().min(1).max(100) });

  app.post(
    '/v1/vault/changes/:id/approve',
    {
      config: {
        // approvals:approve is checked by the service, so that a refusal is audited like the others.
        access: 'authenticated',
        // Four-eyes' own, then its appliers' refusals (a setting that moved: 412, …), which they
        // declared when they registered: registered before this route (`register` refuses later).
        errors: [
          'permission_denied',
          ...new Set([
            'change_not_found',
            'change_decided',
            'self_approval',
            'approver_not_human',
            'requester_not_permitted',
            'change_undecryptable',
            ...service.applierErrors(),
          ]),
        ],
      },
      schema: {
        tags: ['vault'],
        summary: 'Approve and apply a change (never your own)',
        description:
          'Needs `approvals:approve` and a second, distinct person: 403 `self_approval` when the ' +
          'approver is the requester or acts with a key the requester (or the key the change was asked ' +
          'with) minted, through any chain of keys; 403 `approver_not_human` when the approver is an ' +
          'agent or a key an agent owns or minted. Refusals (403, 404, 409) are audited `change.approved` with `success: false` and the code as `details.reason`. A ' +
          'held change whose sealed payload does not open is 409 `change_undecryptable`, marked `failed`; ' +
          'so is a change that no longer applies, refused with the code its direct route would answer ' +
          '(`secret_name_taken`, `version_conflict`, …).',
        params: idParams,
        body: decisionBody,
        response: { 200: changeSchema },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const row = (await service.approve(
        caller,
        request.params.id,
        request.body?.reason ?? null,
        contextOf(request),
      )) as ChangeRow;
      const [view] = await service.views(caller, [row]);
      return view;
    },
  );

  app.post(
    '/v1/vault/changes/:id/reject',
    {
      // approvals:approve is checked by the service: a requester withdrawing their own needs none.
      config: {
        access: 'authenticated',
        errors: ['permission_denied', 'change_not_found', 'change_decided'],
      },
      schema: {
        tags: ['vault'],
        summary: 'Reject a change (a requester may withdraw their own)',
        description:
          'Needs `approvals:approve`, except for the requester withdrawing their own pending change ' +
          '(audited `change.rejected` with `withdrawn: true`). Refusals are audited `change.rejected` ' +
          'with `success: false` and the code as `details.reason`.',
        params: idParams,
        body: decisionBody,
        response: { 200: changeSchema },
      },
    },
    async (request) => {
      const caller = callerOf(request);
      const row = (await service.reject(
        caller,
        request.params.id,
        request.body?.reason ?? null,
        contextOf(request),
      )) as ChangeRow;
      const [view] = await service.views(caller, [row]);
      return view;
    },
  );
};
