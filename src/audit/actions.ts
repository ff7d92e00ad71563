/**
 * The catalogue of audited actions, `domain.verb`. A new kind of event is added here
 * first, so the list stays the one place to learn what Steward records.
 */
export const AUDIT_ACTIONS = [
  // tenancy
  'org.created',
  'org.updated',
  'environment.created',
  // identity
  'user.created',
  'user.updated',
  'user.deactivated',
  'user.unlocked',
  'user.login',
  'user.login_failed',
  'user.locked',
  'user.logout',
  'user.password_changed',
  'user.totp_enrolled',
  'user.totp_enabled',
  'user.totp_disabled',
  'user.recovery_code_used',
  'session.revoked',
  'session.refresh_reused',
  'bootstrap.completed',
  'invitation.created',
  'invitation.revoked',
  'invitation.accepted',
  'user.signed_up',
  'signup.policy_changed',
  // keys
  'key.created',
  'key.updated',
  'key.rolled',
  'key.revoked',
  'key.suspended',
  'webhook_key.created',
  'webhook_key.updated',
  'webhook_key.deleted',
  'security.burst_detected',
  // authorization
  'role.created',
  'role.updated',
  'role.deleted',
  'role.assigned',
  'role.unassigned',
  'grant.created',
  'grant.revoked',
  // vault
  'secret.created',
  'secret.updated',
  'secret.revealed',
  'secret.rolled_back',
  'secret.deleted',
  'secret.rewrapped',
  'secret.rotation_due',
  'setting.changed',
  'setting.deleted',
  'setting.rolled_back',
  'flag.created',
  'flag.updated',
  'flag.deleted',
  'change.requested',
  'change.approved',
  'change.rejected',
  // agents and approvals
  'agent.created',
  'agent.updated',
  'execution.requested',
  'approval.decided',
  'knowledge.contributed',
  'injection.detected',
  // audit itself
  'audit.exported',
  'audit.purged',
] as const;

export type AuditAction = (typeof AUDIT_ACTIONS)[number];
