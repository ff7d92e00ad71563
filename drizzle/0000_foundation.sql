CREATE TABLE "audit_chain_heads" (
	"org_id" text PRIMARY KEY NOT NULL,
	"last_seq" bigint NOT NULL,
	"last_hash" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "audit_checkpoints" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"last_purged_seq" bigint NOT NULL,
	"last_purged_hash" text NOT NULL,
	"purged_count" integer NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"signature" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "audit_events" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"seq" bigint,
	"actor_type" text NOT NULL,
	"actor_id" text,
	"actor_name" text,
	"action" text NOT NULL,
	"resource_type" text,
	"resource_id" text,
	"ip" text,
	"user_agent" text,
	"session_id" text,
	"request_id" text,
	"details" jsonb,
	"changes" jsonb,
	"success" boolean NOT NULL,
	"error_message" text,
	"sensitive" boolean DEFAULT false NOT NULL,
	"retention_days" integer NOT NULL,
	"created_at" timestamp with time zone NOT NULL,
	"prev_hash" text,
	"hash" text
);
--> statement-breakpoint
CREATE TABLE "environments" (
	"id" text PRIMARY KEY NOT NULL,
	"org_id" text NOT NULL,
	"name" text NOT NULL,
	"description" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "organizations" (
	"id" text PRIMARY KEY NOT NULL,
	"slug" text NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "organizations_slug_unique" UNIQUE("slug")
);
--> statement-breakpoint
ALTER TABLE "environments" ADD CONSTRAINT "environments_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "audit_checkpoints_org_seq" ON "audit_checkpoints" USING btree ("org_id","last_purged_seq");--> statement-breakpoint
CREATE UNIQUE INDEX "audit_events_org_seq" ON "audit_events" USING btree ("org_id","seq");--> statement-breakpoint
CREATE INDEX "audit_events_pending" ON "audit_events" USING btree ("org_id","id") WHERE "audit_events"."hash" is null;--> statement-breakpoint
CREATE INDEX "audit_events_org_id" ON "audit_events" USING btree ("org_id","id");--> statement-breakpoint
CREATE INDEX "audit_events_org_action" ON "audit_events" USING btree ("org_id","action","id");--> statement-breakpoint
CREATE INDEX "audit_events_org_actor" ON "audit_events" USING btree ("org_id","actor_id","id");--> statement-breakpoint
CREATE INDEX "audit_events_org_resource" ON "audit_events" USING btree ("org_id","resource_type","resource_id","id");--> statement-breakpoint
CREATE INDEX "audit_events_org_time" ON "audit_events" USING btree ("org_id","created_at");--> statement-breakpoint
CREATE UNIQUE INDEX "environments_org_name" ON "environments" USING btree ("org_id","name");