CREATE TABLE "vault_changes" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"environment_id" text NOT NULL,
	"kind" text NOT NULL,
	"target_id" text,
	"summary" jsonb NOT NULL,
	"payload" text NOT NULL,
	"key_id" text NOT NULL,
	"status" text DEFAULT 'pending' NOT NULL,
	"requested_by" text NOT NULL,
	"requested_by_type" text NOT NULL,
	"decided_by" text,
	"decision_reason" text,
	"result_id" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"decided_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "vault_policies" (
	"org_id" text PRIMARY KEY NOT NULL,
	"four_eyes" boolean DEFAULT false NOT NULL,
	"four_eyes_environments" jsonb DEFAULT '["production"]'::jsonb NOT NULL,
	"updated_by" text,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "secret_access_logs" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"secret_id" text,
	"version" integer,
	"access_type" text NOT NULL,
	"principal_type" text NOT NULL,
	"principal_id" text NOT NULL,
	"success" boolean NOT NULL,
	"error_code" text,
	"ip" text,
	"user_agent" text,
	"tool_id" text,
	"request_id" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "secret_versions" (
	"secret_id" text NOT NULL,
	"version" integer NOT NULL,
	"org_id" text NOT NULL,
	"value" text NOT NULL,
	"key_id" text NOT NULL,
	"active" boolean DEFAULT true NOT NULL,
	"reason" text,
	"restored_from" integer,
	"created_by" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "secret_versions_secret_id_version_pk" PRIMARY KEY("secret_id","version")
);
--> statement-breakpoint
CREATE TABLE "secrets" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"environment_id" text NOT NULL,
	"name" text NOT NULL,
	"display_name" text,
	"description" text,
	"secret_type" text DEFAULT 'generic' NOT NULL,
	"tags" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"metadata" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"owner_id" text,
	"required_permission" text,
	"active" boolean DEFAULT true NOT NULL,
	"current_version" integer DEFAULT 1 NOT NULL,
	"rotation_enabled" boolean DEFAULT false NOT NULL,
	"rotation_days" integer,
	"last_rotated_at" timestamp with time zone,
	"next_rotation_at" timestamp with time zone,
	"rotation_notified_for" timestamp with time zone,
	"expires_at" timestamp with time zone,
	"last_accessed_at" timestamp with time zone,
	"created_by" text,
	"updated_by" text,
	"deleted_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "setting_history" (
	"setting_id" text NOT NULL,
	"version" integer NOT NULL,
	"org_id" text NOT NULL,
	"action" text NOT NULL,
	"value_type" text NOT NULL,
	"value" jsonb,
	"value_sealed" text,
	"key_id" text,
	"rules" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"category" text,
	"description" text,
	"is_secret" boolean NOT NULL,
	"encrypted" boolean NOT NULL,
	"restored_from" integer,
	"changed_by" text,
	"changed_by_type" text,
	"ip" text,
	"user_agent" text,
	"request_id" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "setting_history_setting_id_version_pk" PRIMARY KEY("setting_id","version")
);
--> statement-breakpoint
CREATE TABLE "settings" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"environment_id" text NOT NULL,
	"key" text NOT NULL,
	"category" text,
	"value_type" text NOT NULL,
	"value" jsonb,
	"value_sealed" text,
	"key_id" text,
	"rules" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"description" text,
	"is_secret" boolean DEFAULT false NOT NULL,
	"encrypted" boolean DEFAULT false NOT NULL,
	"version" integer DEFAULT 1 NOT NULL,
	"created_by" text,
	"updated_by" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "vault_changes" ADD CONSTRAINT "vault_changes_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "vault_changes" ADD CONSTRAINT "vault_changes_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "vault_policies" ADD CONSTRAINT "vault_policies_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "secret_versions" ADD CONSTRAINT "secret_versions_secret_id_secrets_id_fk" FOREIGN KEY ("secret_id") REFERENCES "public"."secrets"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "secrets" ADD CONSTRAINT "secrets_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "secrets" ADD CONSTRAINT "secrets_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "setting_history" ADD CONSTRAINT "setting_history_setting_id_settings_id_fk" FOREIGN KEY ("setting_id") REFERENCES "public"."settings"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "settings" ADD CONSTRAINT "settings_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "settings" ADD CONSTRAINT "settings_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "vault_changes_org_status" ON "vault_changes" USING btree ("org_id","status","created_at");--> statement-breakpoint
CREATE INDEX "vault_changes_key_id" ON "vault_changes" USING btree ("key_id");--> statement-breakpoint
CREATE INDEX "secret_access_logs_secret" ON "secret_access_logs" USING btree ("org_id","secret_id","created_at");--> statement-breakpoint
CREATE INDEX "secret_versions_key_id" ON "secret_versions" USING btree ("key_id");--> statement-breakpoint
CREATE UNIQUE INDEX "secrets_org_env_name_live" ON "secrets" USING btree ("org_id","environment_id","name") WHERE "secrets"."deleted_at" is null;--> statement-breakpoint
CREATE INDEX "secrets_next_rotation" ON "secrets" USING btree ("next_rotation_at");--> statement-breakpoint
CREATE INDEX "setting_history_key_id" ON "setting_history" USING btree ("key_id");--> statement-breakpoint
CREATE UNIQUE INDEX "settings_org_env_key" ON "settings" USING btree ("org_id","environment_id","key");--> statement-breakpoint
-- Setting history and secret access logs are immutable. The one UPDATE allowed is a master-key
-- re-wrap of a history row: only value_sealed and key_id change. Deletes follow the setting's
-- or org's deletion (cascade).
CREATE OR REPLACE FUNCTION steward_vault_refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_TABLE_NAME = 'setting_history'
     AND (to_jsonb(NEW) - 'value_sealed' - 'key_id') = (to_jsonb(OLD) - 'value_sealed' - 'key_id') THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION '% is immutable: UPDATE refused', TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END
$$;
--> statement-breakpoint
CREATE TRIGGER setting_history_immutable BEFORE UPDATE ON setting_history
  FOR EACH ROW EXECUTE FUNCTION steward_vault_refuse_update();
--> statement-breakpoint
CREATE TRIGGER secret_access_logs_immutable BEFORE UPDATE ON secret_access_logs
  FOR EACH ROW EXECUTE FUNCTION steward_vault_refuse_update();
