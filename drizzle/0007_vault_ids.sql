CREATE TABLE "flag_clients" (
	"org_id" text NOT NULL,
	"environment_id" text NOT NULL,
	"app_name" text NOT NULL,
	"instance_id" text NOT NULL,
	"sdk_version" text,
	"strategies" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"interval_ms" integer,
	"started_at" timestamp with time zone,
	"first_seen_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_seen_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "flag_clients_org_id_environment_id_app_name_instance_id_pk" PRIMARY KEY("org_id","environment_id","app_name","instance_id")
);
--> statement-breakpoint
CREATE TABLE "flag_metrics" (
	"org_id" text NOT NULL,
	"environment_id" text NOT NULL,
	"flag_name" text NOT NULL,
	"hour" timestamp with time zone NOT NULL,
	"yes" bigint DEFAULT 0 NOT NULL,
	"no" bigint DEFAULT 0 NOT NULL,
	"variants" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "flag_metrics_org_id_environment_id_flag_name_hour_pk" PRIMARY KEY("org_id","environment_id","flag_name","hour")
);
--> statement-breakpoint
ALTER TABLE "vault_changes" ALTER COLUMN "environment_id" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "settings" ADD COLUMN "deleted_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "flag_clients" ADD CONSTRAINT "flag_clients_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "flag_clients" ADD CONSTRAINT "flag_clients_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "flag_metrics" ADD CONSTRAINT "flag_metrics_org_id_organizations_id_fk" FOREIGN KEY ("org_id") REFERENCES "public"."organizations"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "flag_metrics" ADD CONSTRAINT "flag_metrics_environment_id_environments_id_fk" FOREIGN KEY ("environment_id") REFERENCES "public"."environments"("id") ON DELETE cascade ON UPDATE no action;