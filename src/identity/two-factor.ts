// TOTP two-factor authentication of the signed-in user: enrol, confirm (recovery codes), disable.
import { and, eq } from 'drizzle-orm';
import type { AuditContext } from '../audit/service.ts';
import { actorOf } from '../audit/service.ts';
import { open, seal } from '../crypto/envelope.ts';
import { httpErrors } from '../http/errors.ts';
import type { Principal } from '../http/principal.ts';
import { type IdentityCore, type Origin, totpAad } from './core.ts';
import { identityErrors } from './errors.ts';
import { createLockout, FAILURES_RESET, type ProofStep } from './lockout.ts';
import { verifyPassword } from './password.ts';
import { generateRecoveryCodes, matchRecoveryCode } from './recovery-codes.ts';
import { users } from './schema.ts';
import { generateTotpSecret, otpauthUri, verifyTotp } from './totp.ts';

const TOTP_ISSUER = 'Steward';

/** The columns of an account with 2FA off: turned off by its user, or reset by an admin (users.ts). */
export const TOTP_CLEARED = {
  totpEnabled: false,
  totpSecret: null,
  totpLastStep: null,
  recoveryCodeHashes: [] as string[],
} as const;
// Recorded as `details.during` of an enrolment's wrong password.
const TOTP_ENROLL: ProofStep = 'totp_enroll';

export function createTwoFactor(core: IdentityCore) {
  const { db, keyring, audit, clock } = core;
  const lockout = createLockout(core);

  /**
   * A new secret to scan, for a caller who proves the current password: a proof like a login's
   * (throttled per IP, counted toward the account's lock, audited `during: totp_enroll`). Without
   * it, whoever held an access token turned 2FA on, kept the recovery codes and locked the owner
   * out of their next login.
   */
  async function enrollTotp(principal: Principal, input: { password: string }, origin: Origin) {
    const user = await core.currentUser(principal);
    if (user.totpEnabled) throw identityErrors.totp_already_enabled();
    await lockout.withIpPoint(origin.ip, (ip) =>
      lockout.withAccountProof(
        { user, orgId: principal.orgId, origin, ip, during: TOTP_ENROLL },
        async (attempt) => {
          const check = await verifyPassword(user.passwordHash, input.password);
          if (!check.ok)
            throw await lockout.fail(attempt, 'wrong_password', identityErrors.password_incorrect());
        },
      ),
    );
    const secret = generateTotpSecret();
    await db.db.transaction(async (tx) => {
      // The right password resets the failure count, as a login does; only over the hash it was
      // checked against and while 2FA is still off (a change or a confirmation in between wins).
      const done = await tx
        .update(users)
        .set({
          totpSecret: seal(keyring, secret, totpAad(user.id)),
          totpLastStep: null,
          updatedAt: clock(),
          ...FAILURES_RESET,
        })
        .where(
          and(eq(users.id, user.id), eq(users.totpEnabled, false), eq(users.passwordHash, user.passwordHash)),
        )
        .returning({ id: users.id });
      if (done.length === 0) {
        throw httpErrors.conflict('The account changed meanwhile (password or 2FA); try again');
      }
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_enrolled',
        resource: { type: 'user', id: user.id },
        context: origin,
      });
    });
    await core.userChanged(user.id); // updated_at, and any failure count cleared
    return { secret, otpauth_uri: otpauthUri({ secret, account: user.email, issuer: TOTP_ISSUER }) };
  }

  async function confirmTotp(principal: Principal, code: string, origin: AuditContext) {
    const user = await core.currentUser(principal);
    if (user.totpEnabled) throw identityErrors.totp_already_enabled();
    if (!user.totpSecret) throw identityErrors.totp_not_enrolled('Call POST /v1/auth/totp/enroll first');
    const secret = open(keyring, user.totpSecret, totpAad(user.id)).toString('utf8');
    const result = verifyTotp(secret, code, { nowMs: clock().getTime(), lastUsedStep: user.totpLastStep });
    if (!result.ok) throw identityErrors.totp_code_invalid(undefined, { reason: result.reason });
    const recovery = generateRecoveryCodes();
    await db.db.transaction(async (tx) => {
      const done = await tx
        .update(users)
        .set({
          totpEnabled: true,
          totpLastStep: result.step,
          recoveryCodeHashes: recovery.hashes,
          updatedAt: clock(),
        })
        .where(and(eq(users.id, user.id), eq(users.totpEnabled, false)))
        .returning({ id: users.id });
      if (done.length === 0) throw identityErrors.totp_already_enabled();
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_enabled',
        resource: { type: 'user', id: user.id },
        context: origin,
        details: { recovery_codes: recovery.codes.length },
      });
    });
    await core.userChanged(user.id);
    return { recovery_codes: recovery.codes };
  }

  async function disableTotp(
    principal: Principal,
    input: { password: string; code: string },
    origin: Origin,
  ): Promise<void> {
    const user = await core.currentUser(principal);
    if (!user.totpEnabled || !user.totpSecret) throw identityErrors.totp_not_enabled();
    const { totpSecret } = user;
    // Password and code are proofs like a login's: throttled, counted and locked alike.
    await lockout.withIpPoint(origin.ip, (ip) =>
      lockout.withAccountProof(
        { user, orgId: principal.orgId, origin, ip, during: 'totp_disable' },
        async (attempt) => {
          const check = await verifyPassword(user.passwordHash, input.password);
          if (!check.ok)
            throw await lockout.fail(attempt, 'wrong_password', identityErrors.password_incorrect());
          const secret = open(keyring, totpSecret, totpAad(user.id)).toString('utf8');
          const result = verifyTotp(secret, input.code, {
            nowMs: clock().getTime(),
            lastUsedStep: user.totpLastStep,
          });
          const recoveryIndex = result.ok ? -1 : matchRecoveryCode(input.code, user.recoveryCodeHashes);
          if (!result.ok && recoveryIndex < 0) {
            throw await lockout.fail(
              attempt,
              result.reason === 'replayed' ? 'totp_replayed' : 'wrong_totp',
              identityErrors.totp_code_invalid(undefined, { reason: result.reason }),
            );
          }
        },
      ),
    );
    await db.db.transaction(async (tx) => {
      // Both proofs held: the failure count starts again, as after a login.
      await tx
        .update(users)
        .set({ ...TOTP_CLEARED, updatedAt: clock(), ...FAILURES_RESET })
        .where(eq(users.id, user.id));
      await audit.record(tx, {
        orgId: principal.orgId,
        actor: actorOf(principal),
        action: 'user.totp_disabled',
        resource: { type: 'user', id: user.id },
        context: origin,
        details: { by: 'self' },
      });
    });
    await core.userChanged(user.id);
  }

  return { enrollTotp, confirmTotp, disableTotp };
}
