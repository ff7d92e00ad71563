ALTER TABLE "vault_changes" ADD COLUMN "request_context" jsonb;--> statement-breakpoint
-- Hand-written: changes still pending get their requester's context from their own
-- change.requested event (written in the same transaction as the change), so an approval after
-- the upgrade records the requester's context, not the approver's.
UPDATE "vault_changes" c SET "request_context" = jsonb_build_object(
  'ip', e."ip", 'user_agent', e."user_agent", 'session_id', e."session_id",
  'request_id', e."request_id", 'tool_id', NULL)
FROM "audit_events" e
WHERE c."status" = 'pending' AND c."request_context" IS NULL
  AND e."org_id" = c."org_id" AND e."action" = 'change.requested'
  AND e."resource_type" = 'change' AND e."resource_id" = c."id";
