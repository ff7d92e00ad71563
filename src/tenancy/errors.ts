import { defineErrors } from '../http/errors.ts';

export const tenancyErrors = defineErrors({
  org_not_found: { status: 404, title: 'Organization not found' },
  org_slug_taken: { status: 409, title: 'Organization slug already in use' },
  environment_not_found: { status: 404, title: 'Environment not found' },
  environment_exists: { status: 409, title: 'Environment already exists' },
});
