import { defineErrors } from '../http/errors.ts';

/** Error codes of the authorization domain. */
export const authzErrors = defineErrors({
  role_not_found: { status: 404, title: 'Role not found' },
  assignment_not_found: { status: 404, title: 'Role assignment not found' },
  grant_not_found: { status: 404, title: 'Grant not found' },
  principal_not_found: { status: 404, title: 'Principal not found' },
  role_exists: { status: 409, title: 'A role with this name already exists' },
  role_name_reserved: { status: 409, title: 'Role name reserved for a system role' },
  system_role_immutable: { status: 409, title: 'System roles cannot be changed or deleted' },
  assignment_exists: { status: 409, title: 'The principal already holds this role' },
  grant_exists: { status: 409, title: 'An identical active grant already exists' },
  unknown_permission: { status: 400, title: 'Unknown permission' },
  unknown_resource_type: { status: 400, title: 'Unknown resource type' },
  invalid_principal: { status: 400, title: 'Not a principal that can hold roles or grants' },
  expiry_in_past: { status: 400, title: 'Expiry must be in the future' },
  grant_escalation: { status: 403, title: 'Cannot grant or revoke a permission you do not hold' },
  role_escalation: { status: 403, title: 'Cannot handle a role with permissions you do not hold' },
  grant_outlives_delegator: {
    status: 403,
    title: 'Cannot hand on a permission for longer than you hold it',
  },
  role_outlives_delegator: {
    status: 403,
    title: 'Cannot put a permission you hold only for a while into a role',
  },
  self_modification: { status: 403, title: 'Cannot change your own roles or grants' },
});
