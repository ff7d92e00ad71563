import type { AuditContext } from '../audit/service.ts';
import type { DbOrTx } from '../db/client.ts';
import type { Principal } from '../http/principal.ts';
import type { CheckResult, ResourceRef } from './engine.ts';

/**
 * What other domains may ask of authorization. Implemented by `createAuthzService`
 * (src/authz/service.ts); identity, keys and the rest depend on this interface only.
 */
export interface Authz {
  /**
   * Answers from the org's in-memory index: no database query once the index is warm.
   * Loads the org's index on first use, hence async; `checkSync` is for warm paths.
   */
  check(principal: Principal, permission: string, resource?: ResourceRef): Promise<CheckResult>;
  /** The same answer when the org's index is loaded; null when it is not (call `check`). */
  checkSync(principal: Principal, permission: string, resource?: ResourceRef): CheckResult | null;
  /** Role names held by a principal in an org (the index is the authority, not token claims). */
  rolesOf(orgId: string, principalId: string): Promise<readonly string[]>;
  /**
   * Assigns a role (system or custom, by name) inside the caller's transaction and
   * records `role.assigned` in it. The caller runs `afterCommit` once the transaction
   * has committed, so indexes (here and on other instances) pick the change up.
   * `by` null means Steward itself (bootstrap). Refuses an unknown role (404) and —
   * when `by` is given — a role the caller may not hand on (403 `role_escalation`, or
   * `role_outlives_delegator` for rights `by` holds only through expiring grants; README
   * "Delegation"). Takes the org's role lock (`pg_advisory_xact_lock`) for a custom role.
   */
  assignRoleInTx(
    tx: DbOrTx,
    input: { orgId: string; principalId: string; role: string; by: Principal | null; context?: AuditContext },
  ): Promise<{ assignmentId: string; afterCommit: () => Promise<void> }>;
  /**
   * Removes every assignment of a principal in an org (deactivation), or those of `roles` (a role
   * set replaced), same commit protocol. When `by` is given, each removed role is checked as the
   * unassign route checks it: 403 `self_modification` for one's own, 403 `role_escalation` for a
   * role carrying permissions `by` does not hold (the caller's transaction then rolls back).
   */
  unassignAllInTx(
    tx: DbOrTx,
    input: {
      orgId: string;
      principalId: string;
      by: Principal | null;
      context?: AuditContext;
      roles?: readonly string[];
    },
  ): Promise<{ afterCommit: () => Promise<void> }>;
}
