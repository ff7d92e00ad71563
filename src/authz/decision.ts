/** Which rule decided a check, most specific first. */
export type DecisionBy = 'resource_grant' | 'type_grant' | 'role' | 'superuser' | 'default_deny';

/** Why a check fell to `default_deny`, for logs and explanations; never shown as a 403 body. */
export type DenyReason =
  | 'no_rule'
  | 'cross_org'
  | 'unknown_permission'
  | 'unknown_resource_type'
  | 'out_of_scope'
  | 'no_owner';

/** The explanation of a check. `rule_id` names the deciding grant, `role` the deciding role. */
export interface Decision {
  readonly by: DecisionBy;
  readonly rule_id?: string;
  readonly role?: string;
  readonly reason?: DenyReason;
}

/** The answer to one check. Results are shared and frozen: never mutate one. */
export interface CheckResult {
  readonly allowed: boolean;
  readonly decision: Decision;
}

// Results are built once and returned by reference, so a check allocates nothing.
export function result(allowed: boolean, decision: Decision): CheckResult {
  return Object.freeze({ allowed, decision: Object.freeze(decision) });
}

function deny(reason: DenyReason): CheckResult {
  return result(false, { by: 'default_deny', reason });
}

export const DENY = {
  noRule: deny('no_rule'),
  crossOrg: deny('cross_org'),
  unknownPermission: deny('unknown_permission'),
  unknownResourceType: deny('unknown_resource_type'),
  outOfScope: deny('out_of_scope'),
  noOwner: deny('no_owner'),
} as const;

export const SUPERUSER: CheckResult = result(true, { by: 'superuser' });
