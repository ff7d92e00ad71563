ALTER TABLE "vault_changes" ADD COLUMN "requested_by_key_id" text;--> statement-breakpoint
-- Hand-written: a change a key asked for, still pending, learns which key asked from its own
-- change.requested event (its actor, written in the same transaction as the change), so its
-- approval can check that key and record it. Decided changes keep what they have.
UPDATE "vault_changes" c SET "requested_by_key_id" = e."actor_id"
FROM "audit_events" e
WHERE c."status" = 'pending' AND c."requested_by_type" = 'key' AND c."requested_by_key_id" IS NULL
  AND e."org_id" = c."org_id" AND e."action" = 'change.requested'
  AND e."resource_type" = 'change' AND e."resource_id" = c."id"
  AND e."actor_type" = 'key' AND e."actor_id" LIKE 'key\_%';
--> statement-breakpoint
-- Hand-written: setting history was refused only UPDATE (0003); DELETE and TRUNCATE succeeded.
-- Now a row is deleted only with its org: when the org it belongs to no longer exists, i.e. the
-- cascade of `DELETE FROM organizations` (organizations → settings → setting_history). Deleting a
-- setting row or an environment by hand while the org exists is refused, as is TRUNCATE (of the
-- table, or reaching it by TRUNCATE … CASCADE). The audit tables have no foreign key to the org
-- and refuse DELETE outside their purge; the history has no purge. The organizations table is
-- looked up in the trigger's own schema: an unqualified name would find a temporary table first.
CREATE OR REPLACE FUNCTION steward_setting_history_refuse_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  org_exists boolean;
BEGIN
  IF TG_OP = 'DELETE' THEN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.organizations WHERE id = $1)', TG_TABLE_SCHEMA)
      INTO org_exists USING OLD.org_id;
    IF NOT org_exists THEN
      RETURN OLD;
    END IF;
  END IF;
  RAISE EXCEPTION '% is immutable: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
--> statement-breakpoint
CREATE TRIGGER setting_history_no_delete BEFORE DELETE ON setting_history
  FOR EACH ROW EXECUTE FUNCTION steward_setting_history_refuse_delete();
--> statement-breakpoint
CREATE TRIGGER setting_history_no_truncate BEFORE TRUNCATE ON setting_history
  FOR EACH STATEMENT EXECUTE FUNCTION steward_setting_history_refuse_delete();
