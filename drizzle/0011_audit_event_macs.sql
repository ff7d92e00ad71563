CREATE TABLE "audit_legacy_boundaries" (
	"org_id" text PRIMARY KEY NOT NULL,
	"legacy_through_seq" bigint NOT NULL,
	"recorded_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "audit_events" ADD COLUMN "mac" text;--> statement-breakpoint
-- Hand-written (ADR 0002, amendment 3). Events from now on carry a MAC; those that exist now do
-- not. Each org's legacy boundary is its last linked sequence plus the events committed but not
-- yet linked (the sequencer links them next, ahead of anything written later), so exactly the
-- events written before this migration may lack a MAC. An event that takes one of those places
-- pushes a legacy event past the boundary, where its missing MAC is reported.
INSERT INTO "audit_legacy_boundaries" ("org_id", "legacy_through_seq")
SELECT e."org_id",
       greatest(coalesce(max(h."last_seq"), 0), coalesce(max(e."seq"), 0))
         + count(*) FILTER (WHERE e."hash" IS NULL)
FROM "audit_events" e LEFT JOIN "audit_chain_heads" h ON h."org_id" = e."org_id"
GROUP BY e."org_id";
--> statement-breakpoint
-- The delete gate asked only for a transaction-local setting, which any session may set. Now a
-- DELETE of an event also needs a checkpoint of its org covering its sequence, written first in
-- the same transaction: the purge writes one, signed; anyone else has to forge one, and verify
-- starts from the latest checkpoint after checking its signature. An event not yet linked (no
-- sequence) is never deleted. The checkpoint table is looked up in the trigger's own schema:
-- an unqualified name would find a temporary table of the same name first.
CREATE OR REPLACE FUNCTION steward_audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  covered boolean;
BEGIN
  IF TG_TABLE_NAME = 'audit_events' THEN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND NEW.seq IS NOT NULL AND NEW.prev_hash IS NOT NULL
       AND (to_jsonb(NEW) - 'seq' - 'prev_hash' - 'hash') = (to_jsonb(OLD) - 'seq' - 'prev_hash' - 'hash') THEN
      RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('steward.audit_purge', true) = 'on' AND OLD.seq IS NOT NULL THEN
      EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM %I.audit_checkpoints WHERE org_id = $1 AND last_purged_seq >= $2)',
        TG_TABLE_SCHEMA)
        INTO covered USING OLD.org_id, OLD.seq;
      IF covered THEN
        RETURN OLD;
      END IF;
    END IF;
  END IF;
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
--> statement-breakpoint
-- The boundaries are written once, above: nobody may add, move or remove one afterwards.
CREATE TRIGGER audit_legacy_boundaries_frozen BEFORE INSERT OR UPDATE OR DELETE ON audit_legacy_boundaries
  FOR EACH ROW EXECUTE FUNCTION steward_audit_refuse_change();
--> statement-breakpoint
CREATE TRIGGER audit_legacy_boundaries_no_truncate BEFORE TRUNCATE ON audit_legacy_boundaries
  FOR EACH STATEMENT EXECUTE FUNCTION steward_audit_refuse_change();
