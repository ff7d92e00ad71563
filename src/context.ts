import type { AuditService } from './audit/service.ts';
import type { AuthzService } from './authz/service.ts';
import type { InvalidationBus } from './bus/index.ts';
import type { Config } from './config.ts';
import type { Keyring } from './crypto/keyring.ts';
import type { DbHandle } from './db/client.ts';
import type { AuthRegistry } from './http/auth.ts';
import type { IdentityService } from './identity/service.ts';
import type { KeysDomain } from './keys/index.ts';
import type { TenancyService } from './tenancy/service.ts';

/**
 * What every domain plugin receives: configuration, the database, the services of
 * the foundation, and a way to run work at shutdown (flush batched writes).
 * Domains take the narrow parts they need from it; nothing reaches into globals.
 */
export interface StewardContext {
  readonly config: Config;
  readonly db: DbHandle;
  /** Master keys: envelope encryption and derived signing keys. */
  readonly keyring: Keyring;
  /** Tells other instances to drop cached state (Redis pub/sub, or in-process). */
  readonly bus: InvalidationBus;
  readonly audit: AuditService;
  readonly tenancy: TenancyService;
  readonly auth: AuthRegistry;
  /** Authorization: checks from the in-memory index, roles, grants (implements `Authz`). */
  readonly authz: AuthzService;
  /** Users, logins, sessions, access tokens and signing keys. */
  readonly identity: IdentityService;
  /** API keys: the verifier (cache, limits, batched usage) and the keys service. */
  readonly keys: KeysDomain;
  readonly clock: () => Date;
  /** Registers work that must finish before the database closes (run in order of registration). */
  onShutdown(task: () => Promise<void>): void;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The services behind this app, for the CLI and tests. */
    steward: StewardContext;
  }
}
