CREATE TABLE "audit_mac_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"generation" integer NOT NULL,
	"key_sealed" text NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	CONSTRAINT "audit_mac_keys_generation" UNIQUE("generation")
);
--> statement-breakpoint
-- Hand-written (ADR 0002, amendment 4). The audit MAC key is written once, by the first instance to
-- start, and must never be replaced: whoever could swap it for a key of their own could sign
-- forged events. The one change allowed is `steward vault rewrap` moving its sealed value to
-- another master key: only `key_sealed` changes, and it stays a sealed value naming a different
-- master key. Every other UPDATE, every DELETE and TRUNCATE is refused, as on the audit tables.
CREATE FUNCTION steward_audit_mac_key_rewrap_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND (to_jsonb(NEW) - 'key_sealed') = (to_jsonb(OLD) - 'key_sealed')
     AND NEW.key_sealed LIKE 'v1.%'
     AND split_part(NEW.key_sealed, '.', 2) <> split_part(OLD.key_sealed, '.', 2) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
--> statement-breakpoint
CREATE TRIGGER audit_mac_keys_append_only BEFORE UPDATE OR DELETE ON audit_mac_keys
  FOR EACH ROW EXECUTE FUNCTION steward_audit_mac_key_rewrap_only();
--> statement-breakpoint
CREATE TRIGGER audit_mac_keys_no_truncate BEFORE TRUNCATE ON audit_mac_keys
  FOR EACH STATEMENT EXECUTE FUNCTION steward_audit_mac_key_rewrap_only();
