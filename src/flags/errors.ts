import { defineErrors } from '../http/errors.ts';

/** Error codes of feature flags and segments. */
export const flagErrors = defineErrors({
  flag_not_found: { status: 404, title: 'Feature flag not found' },
  flag_exists: { status: 409, title: 'Feature flag already exists' },
  segment_not_found: { status: 404, title: 'Segment not found' },
  segment_exists: { status: 409, title: 'Segment already exists' },
  segment_in_use: { status: 409, title: 'Segment is used by flags' },
  invalid_flag: { status: 400, title: 'Invalid feature flag' },
  version_conflict: { status: 412, title: 'Version conflict' },
  flag_target_gone: { status: 409, title: 'The flag this change was made against is gone' },
  key_environment_mismatch: { status: 403, title: 'The API key is bound to another flags environment' },
});

/**
 * What applying a held flag or segment change may answer (`service.ts` `apply`): the approval
 * route, which runs the appliers, has them to declare in its OpenAPI operation.
 */
export const FLAG_CHANGE_ERRORS = [
  'invalid_flag',
  'flag_exists',
  'flag_target_gone',
  'version_conflict',
  'segment_exists',
  'segment_not_found',
  'segment_in_use',
] as const satisfies readonly (keyof typeof flagErrors)[];
