import type { FastifyPluginAsync } from 'fastify';
import { defaultPrincipalDirectory } from '../authz/service.ts';
import type { StewardContext } from '../context.ts';
import { isId } from '../db/ids.ts';
import { registerFlags } from '../flags/index.ts';
import type { Environment } from '../tenancy/service.ts';
import { type Applied, type ApplyInput, createFourEyes, fourEyesRoutes } from './four-eyes.ts';
import { secretRoutes } from './secrets/routes.ts';
import {
  type CreateSecretInput,
  createSecretService,
  type UpdateSecretInput,
  type Within,
} from './secrets/service.ts';
import { settingRoutes } from './settings/routes.ts';
import type { ValueType } from './settings/rules.ts';
import { createSettingService, type PutSettingInput } from './settings/service.ts';

/** How often each instance looks for secrets past their rotation date (SKIP LOCKED splits the work). */
const ROTATION_CHECK_MS = 60_000;

/** Builds the vault's services from the app context, four-eyes appliers registered. */
export function createVaultServices(ctx: StewardContext, onError?: (error: unknown, what: string) => void) {
  const changes = createFourEyes({
    db: ctx.db,
    keyring: ctx.keyring,
    audit: ctx.audit,
    authz: ctx.authz,
    // As authz's directory (src/identity/index.ts): identity answers for users; agent ids are
    // taken as members until an agents domain exists.
    principals: {
      find: (orgId, id, tx) =>
        isId('usr', id)
          ? ctx.identity.findPrincipal(orgId, id, tx)
          : defaultPrincipalDirectory.find(orgId, id, tx),
    },
    tenancy: ctx.tenancy,
    clock: ctx.clock,
    onError,
  });
  const deps = {
    db: ctx.db,
    keyring: ctx.keyring,
    audit: ctx.audit,
    authz: ctx.authz,
    tenancy: ctx.tenancy,
    clock: ctx.clock,
    fourEyes: changes.fourEyes,
  };
  const service = createSecretService({ ...deps, identity: ctx.identity, bus: ctx.bus, onError });
  const settings = createSettingService(deps);

  const envOf = (env: Environment | null): Environment => {
    if (env === null) throw new Error('a setting change without its environment');
    return env;
  };
  /**
   * A secret change applied in the approval's transaction; the caches are dropped once it has
   * committed.
   */
  const applySecret =
    (apply: (input: ApplyInput, within: Within) => Promise<string | null>) =>
    async (input: ApplyInput): Promise<Applied> => {
      const within: Within = { tx: input.tx, changed: [] };
      const resultId = await apply(input, within);
      return { resultId, afterCommit: () => service.committed(within) };
    };
  changes.register(
    'secret.create',
    applySecret(
      async ({ requester, payload, approvedBy }, within) =>
        (await service.apply.create(requester, payload as CreateSecretInput, approvedBy, within)).id,
    ),
    ['environment_not_found', 'invalid_required_permission', 'owner_not_found', 'secret_name_taken'],
  );
  changes.register(
    'secret.value',
    applySecret(
      async ({ requester, payload, targetId, approvedBy }, within) =>
        (
          await service.apply.value(
            requester,
            targetId ?? '',
            payload as { value: string },
            approvedBy,
            within,
          )
        ).id,
    ),
    ['secret_not_found'],
  );
  changes.register(
    'secret.rollback',
    applySecret(
      async ({ requester, payload, targetId, approvedBy }, within) =>
        (
          await service.apply.rollback(
            requester,
            targetId ?? '',
            payload as { version: number },
            approvedBy,
            within,
          )
        ).id,
    ),
    ['secret_not_found', 'secret_version_not_found', 'secret_undecryptable'],
  );
  changes.register(
    'secret.delete',
    applySecret(async ({ requester, targetId, approvedBy }, within) => {
      await service.apply.remove(requester, targetId ?? '', approvedBy, within);
      return targetId;
    }),
    ['secret_not_found'],
  );
  // Every applier checks the requester's permissions again, as the direct route would: they
  // must still hold them (src/vault/README.md, four-eyes).
  changes.register(
    'secret.update',
    applySecret(
      async ({ requester, payload, targetId, approvedBy }, within) =>
        (
          await service.apply.update(
            requester,
            targetId ?? '',
            payload as UpdateSecretInput,
            approvedBy,
            within,
          )
        ).id,
    ),
    ['secret_not_found', 'invalid_required_permission', 'owner_not_found'],
  );
  // A setting change's refusals: the setting moved since it was held (412), was deleted (404), or
  // a stored value it reads does not open (409).
  changes.register(
    'setting.put',
    async ({ tx, requester, payload, environment, approvedBy }) => {
      const p = payload as {
        key: string;
        input: PutSettingInput & { value_type: ValueType };
        expectedVersion: number | null;
      };
      const out = await settings.apply.put(
        requester,
        envOf(environment),
        p.key,
        p.input,
        p.expectedVersion,
        approvedBy,
        tx,
      );
      return { resultId: out.setting.row.id };
    },
    ['version_conflict', 'setting_undecryptable'],
  );
  changes.register(
    'setting.rollback',
    async ({ tx, requester, payload, environment, approvedBy }) => {
      const p = payload as { key: string; version: number; expectedVersion: number };
      const out = await settings.apply.rollback(
        requester,
        envOf(environment),
        p.key,
        p.version,
        p.expectedVersion,
        approvedBy,
        tx,
      );
      return { resultId: out.row.id };
    },
    ['setting_not_found', 'version_conflict', 'setting_version_not_found', 'setting_undecryptable'],
  );
  changes.register(
    'setting.delete',
    async ({ tx, requester, payload, environment, approvedBy }) => {
      const p = payload as { key: string; expectedVersion: number };
      const id = await settings.apply.remove(
        requester,
        envOf(environment),
        p.key,
        p.expectedVersion,
        approvedBy,
        tx,
      );
      return { resultId: id };
    },
    ['setting_not_found', 'version_conflict', 'setting_undecryptable'],
  );
  return { secrets: service, settings, changes };
}

/** The vault: secrets, settings, four-eyes changes (flags plug in below), and the rotation scheduler. */
export const vaultPlugin: FastifyPluginAsync<{ ctx: StewardContext }> = async (app, { ctx }) => {
  const { secrets, settings, changes } = createVaultServices(ctx, (error, what) =>
    app.log.error({ err: error }, what),
  );
  const rotation = secrets.startRotationScheduler(ROTATION_CHECK_MS, (error) =>
    app.log.error({ err: error }, 'secret rotation check failed'),
  );
  ctx.onShutdown(() => rotation.stop());

  await app.register(secretRoutes, { secrets, clock: ctx.clock });
  await app.register(settingRoutes, { settings });
  // Feature flags (src/flags): their routes, with production changes held by `changes`. Before
  // the approval route, which declares the codes of every applier (flags register theirs here).
  await registerFlags(app, { ctx, changes });
  await app.register(fourEyesRoutes, { service: changes });
};
