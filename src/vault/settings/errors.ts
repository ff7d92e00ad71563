import { defineErrors } from '../../http/errors.ts';

/** Error codes of settings. Values of secret settings never appear in a detail. */
export const settingErrors = defineErrors({
  setting_not_found: { status: 404, title: 'Setting not found' },
  setting_version_not_found: { status: 404, title: 'Setting version not found' },
  precondition_required: { status: 428, title: 'If-Match required' },
  version_conflict: { status: 412, title: 'Version conflict' },
  setting_undecryptable: { status: 409, title: 'Setting value failed its integrity check' },
});
