import { defineErrors } from '../../http/errors.ts';

/** Error codes of secrets. Never carry a value: details name the secret and the version only. */
export const secretErrors = defineErrors({
  secret_not_found: { status: 404, title: 'Secret not found' },
  secret_version_not_found: { status: 404, title: 'Secret version not found' },
  secret_name_taken: { status: 409, title: 'A secret with this name exists in this environment' },
  secret_inactive: { status: 409, title: 'Secret is inactive' },
  secret_expired: { status: 409, title: 'Secret has expired' },
  /**
   * The stored value did not open: tampered, copied from another row, or wrapped under a master
   * key this server does not hold. Not a 500: the request was fine, the stored state is not.
   */
  secret_undecryptable: { status: 409, title: 'Secret value failed its integrity check' },
  invalid_required_permission: { status: 400, title: 'Unknown required permission' },
  // The code, status and title API keys answer for an owner not of the org (src/keys/errors.ts).
  owner_not_found: { status: 404, title: 'Owner not found' },
});
