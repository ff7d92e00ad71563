import type { FastifyPluginAsync } from 'fastify';
import type { StewardContext } from '../context.ts';
import { registerFlags } from '../flags/index.ts';
import { createFourEyes, fourEyesRoutes } from './four-eyes.ts';
import { secretRoutes } from './secrets/routes.ts';
import { type CreateSecretInput, createSecretService } from './secrets/service.ts';
import { settingRoutes } from './settings/routes.ts';
import type { ValueType } from './settings/rules.ts';
import { createSettingService, type PutSettingInput } from './settings/service.ts';

/** How often each instance looks for secrets past their rotation date (SKIP LOCKED splits the work). */
const ROTATION_CHECK_MS = 60_000;

/** Builds the vault's services from the app context, four-eyes appliers registered. */
export function createVaultServices(ctx: StewardContext, onError?: (error: unknown, what: string) => void) {
  const changes = createFourEyes({ db: ctx.db, keyring: ctx.keyring, audit: ctx.audit, clock: ctx.clock });
  const deps = {
    db: ctx.db,
    keyring: ctx.keyring,
    audit: ctx.audit,
    authz: ctx.authz,
    tenancy: ctx.tenancy,
    clock: ctx.clock,
    fourEyes: changes.fourEyes,
  };
  const secrets = createSecretService({ ...deps, bus: ctx.bus, onError });
  const settings = createSettingService(deps);

  changes.register('secret.create', async (who, payload, _target, by) => {
    return (await secrets.apply.create(who, payload as CreateSecretInput, by)).id;
  });
  changes.register('secret.value', async (who, payload, target, by) => {
    return (await secrets.apply.value(who, target ?? '', payload as { value: string }, by)).id;
  });
  changes.register('secret.rollback', async (who, payload, target, by) => {
    return (await secrets.apply.rollback(who, target ?? '', payload as { version: number }, by)).id;
  });
  changes.register('secret.delete', async (who, _payload, target, by) => {
    await secrets.apply.remove(who, target ?? '', by);
    return target;
  });
  changes.register('setting.put', async (who, payload, _target, by) => {
    const p = payload as {
      environment: string;
      key: string;
      input: PutSettingInput & { value_type: ValueType };
      expectedVersion: number | null;
    };
    const env = await ctx.tenancy.environmentByName(who.principal.orgId, p.environment);
    return (await settings.apply.put(who, env, p.key, p.input, p.expectedVersion, by)).setting.row.id;
  });
  changes.register('setting.rollback', async (who, payload, _target, by) => {
    const p = payload as { environment: string; key: string; version: number; expectedVersion: number };
    const env = await ctx.tenancy.environmentByName(who.principal.orgId, p.environment);
    return (await settings.apply.rollback(who, env, p.key, p.version, p.expectedVersion, by)).row.id;
  });
  return { secrets, settings, changes };
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
  await app.register(fourEyesRoutes, { service: changes });
  // Feature flags (src/flags): their routes, with production changes held by `changes`.
  await registerFlags(app, { ctx, changes });
};
