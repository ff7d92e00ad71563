// The permission catalogue: every `resource:action` Steward knows. It is data, so routes,
// the role defaults and `GET /v1/authz/permissions` all read one source and a typo in a
// route's permission is a compile error rather than a silent deny.

const CATALOGUE = {
  org: {
    read: 'View the organization, its environments and settings overview',
    update: 'Rename the organization and change its policies',
    admin: 'Administer the organization: environments, sign-up policy, deletion',
  },
  users: {
    read: 'List and view users of the organization',
    create: 'Invite or create users',
    update: 'Edit users, unlock accounts, revoke their sessions',
    delete: 'Deactivate or delete users',
    admin: 'Manage every aspect of users, including 2FA resets',
  },
  roles: {
    read: 'List roles, assignments and grants',
    create: 'Create custom roles',
    update: 'Edit custom roles; assign roles below your own',
    delete: 'Delete custom roles and remove assignments',
    admin: 'Assign any role and manage resource grants',
  },
  agents: {
    read: 'List and view agents',
    create: 'Register agents',
    update: 'Edit, activate or deactivate agents',
    delete: 'Delete agents',
    admin: 'Manage every agent, whoever owns it',
  },
  api_keys: {
    read: 'List and view API keys (never their value)',
    create: 'Create and roll API keys',
    update: 'Edit API keys: name, limits, allowed IPs, metadata',
    delete: 'Revoke API keys',
    verify: 'Verify API keys for other services (POST /v1/keys/verify)',
    admin: 'Manage every API key of the organization, whoever owns it',
  },
  webhook_keys: {
    read: 'List and view inbound webhook keys',
    create: 'Create inbound webhook keys',
    update: 'Edit, activate or deactivate inbound webhook keys',
    delete: 'Delete inbound webhook keys',
  },
  secrets: {
    read: 'List secrets and read their metadata (not their value)',
    create: 'Create secrets',
    update: 'Write new secret versions, configure rotation',
    delete: 'Delete secrets',
    reveal: 'Reveal a secret value (audited)',
    admin: 'Manage every secret, including required permissions',
  },
  settings: {
    read: 'Read settings (secret values stay masked)',
    create: 'Create settings',
    update: 'Change settings and roll them back',
    delete: 'Delete settings',
  },
  flags: {
    read: 'List and evaluate feature flags',
    create: 'Create feature flags',
    update: 'Change feature flags, rollout and targeting',
    delete: 'Delete feature flags',
  },
  webhooks: {
    read: 'List webhook endpoints and their deliveries',
    create: 'Create webhook endpoints',
    update: 'Edit, enable or disable webhook endpoints',
    delete: 'Delete webhook endpoints',
    execute: 'Retry or replay webhook deliveries',
  },
  audit: {
    read: 'Query the audit trail and verify its chain',
    export: 'Export the audit trail as NDJSON or CSV',
  },
  tools: {
    read: 'List and view tools',
    create: 'Register tools',
    update: 'Edit tools, their schema and risk level',
    delete: 'Delete tools',
    execute: 'Request a tool execution',
  },
  executions: {
    read: 'List and view tool executions and their results',
    create: 'Report execution results',
    update: 'Cancel executions',
  },
  approvals: {
    read: 'List approval requests',
    approve: 'Approve or reject approval requests (never your own)',
    admin: 'Give elevated approvals and change approval policy',
  },
  knowledge: {
    read: 'List knowledge contributions',
    create: 'Contribute knowledge items',
    update: 'Edit knowledge items',
    delete: 'Delete knowledge items',
    approve: 'Review, approve or reject knowledge contributions',
  },
  documents: {
    read: 'Read and search documents',
    create: 'Upload documents',
    update: 'Edit documents and their metadata',
    delete: 'Delete documents',
  },
  chats: {
    read: 'Read conversations and their context',
    create: 'Start conversations and post messages',
    update: 'Edit conversation settings',
    delete: 'Delete conversations',
  },
  signals: {
    read: 'List ingested signals',
    create: 'Ingest signals',
    delete: 'Delete signals',
  },
} as const;

type Catalogue = typeof CATALOGUE;

/** A resource type that permissions and grants refer to. */
export type ResourceType = keyof Catalogue;

/** An action that can be taken on a resource type. */
export type Action = { [R in ResourceType]: keyof Catalogue[R] }[ResourceType];

/** A permission from the catalogue, e.g. `secrets:read`. */
export type Permission = { [R in ResourceType]: `${R}:${keyof Catalogue[R] & string}` }[ResourceType];

/** One catalogue entry as served by `GET /v1/authz/permissions`. */
export interface PermissionInfo {
  readonly permission: Permission;
  readonly resource: ResourceType;
  readonly action: Action;
  readonly description: string;
}

/** Every resource type, in catalogue order. */
export const RESOURCE_TYPES = Object.keys(CATALOGUE) as readonly ResourceType[];

/** Every permission with its description, in catalogue order. */
export const PERMISSIONS: readonly PermissionInfo[] = Object.freeze(
  RESOURCE_TYPES.flatMap((resource) =>
    Object.entries(CATALOGUE[resource]).map(([action, description]) =>
      Object.freeze({
        permission: `${resource}:${action}` as Permission,
        resource,
        action: action as Action,
        description: description as string,
      }),
    ),
  ),
);

const BY_NAME: ReadonlyMap<string, PermissionInfo> = new Map(PERMISSIONS.map((p) => [p.permission, p]));
const RESOURCE_SET: ReadonlySet<string> = new Set(RESOURCE_TYPES);

/** Whether `s` names a permission in the catalogue (wildcards are not permissions). */
export function isPermission(s: string): s is Permission {
  return BY_NAME.has(s);
}

/** Whether `s` names a resource type in the catalogue. */
export function isResourceType(s: string): s is ResourceType {
  return RESOURCE_SET.has(s);
}

/** The catalogue entry of a permission, or undefined for an unknown string. */
export function permissionInfo(s: string): PermissionInfo | undefined {
  return BY_NAME.get(s);
}
