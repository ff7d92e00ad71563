import { defineErrors } from '../http/errors.ts';

/** Errors of the keys domain. Verification failures carry `reason` (the verify reason code). */
export const keyErrors = defineErrors({
  key_malformed: { status: 401, title: 'Malformed API key' },
  key_not_found: { status: 401, title: 'Unknown API key' },
  key_revoked: { status: 401, title: 'API key revoked' },
  key_expired: { status: 401, title: 'API key expired' },
  key_disabled: { status: 401, title: 'API key disabled' },
  key_ip_not_allowed: { status: 403, title: 'Client address not allowed for this API key' },
  // Same title as the HTTP layer's code: one meaning per code.
  rate_limited: { status: 429, title: 'Too many requests' },
  quota_exceeded: { status: 429, title: 'Quota exceeded for this billing period' },
  api_key_not_found: { status: 404, title: 'API key not found' },
  api_key_revoked: { status: 409, title: 'API key already revoked' },
  api_key_already_rolled: { status: 409, title: 'API key already rolled; roll its successor' },
  api_key_expired: { status: 409, title: 'API key expired' },
  scope_not_held: { status: 403, title: 'A key can give only scopes it holds itself' },
  key_self_change: { status: 403, title: 'A key cannot change its own settings' },
  owner_not_found: { status: 404, title: 'Owner not found' },
  invalid_scope: { status: 400, title: 'Unknown permission in scopes' },
  unknown_tier: { status: 400, title: 'Unknown tier' },
  invalid_cidr: { status: 400, title: 'Invalid IP address or CIDR' },
  webhook_key_not_found: { status: 404, title: 'Webhook key not found' },
  webhook_key_name_taken: { status: 409, title: 'Webhook key name already in use' },
  webhook_key_invalid: { status: 401, title: 'Invalid webhook key' },
  webhook_key_inactive: { status: 401, title: 'Webhook key inactive' },
  webhook_headers_missing: { status: 401, title: 'Missing Standard Webhooks headers' },
  webhook_timestamp_invalid: { status: 401, title: 'Invalid webhook-timestamp' },
  webhook_timestamp_out_of_tolerance: { status: 401, title: 'webhook-timestamp outside the tolerance' },
  webhook_signature_invalid: { status: 401, title: 'No valid webhook signature' },
  webhook_replayed: { status: 409, title: 'Message already received (webhook-id replayed)' },
  invalid_signal_payload: { status: 400, title: 'A signal payload must be a JSON object' },
});
