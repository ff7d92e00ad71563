import { HOTP, Secret, TOTP } from 'otpauth';

/** Parameters every authenticator app supports (RFC 6238 defaults): SHA-1, 6 digits, 30 s. */
export const TOTP_PARAMS = { algorithm: 'SHA1', digits: 6, period: 30 } as const;
// ±1 step tolerates a clock drift of up to 30 s either way, as RFC 6238 section 5.2 suggests.
const WINDOW = 1;
const SECRET_BYTES = 20;

/** A new random TOTP seed (160 bits, RFC 4226's recommended length), in base32. Store it sealed. */
export function generateTotpSecret(): string {
  return new Secret({ size: SECRET_BYTES }).base32;
}

/** The `otpauth://totp/…` URI an authenticator app scans as a QR code. */
export function otpauthUri(input: { secret: string; account: string; issuer: string }): string {
  return new TOTP({
    ...TOTP_PARAMS,
    issuer: input.issuer,
    label: input.account,
    secret: Secret.fromBase32(input.secret),
  }).toString();
}

/** Outcome of a TOTP check; on success store `step` as the user's last used step. */
export type TotpResult = { ok: true; step: number } | { ok: false; reason: 'invalid' | 'replayed' };

/** The 30-second step a time falls in (RFC 6238's T). */
export function totpStep(nowMs: number): number {
  return Math.floor(nowMs / 1000 / TOTP_PARAMS.period);
}

/**
 * Checks a code against the steps around `nowMs`. A code whose step is not after `lastUsedStep`
 * is refused as replayed, so one code (or an older one) cannot be used twice within the window.
 */
export function verifyTotp(
  secretBase32: string,
  code: string,
  options: { nowMs: number; lastUsedStep?: number | null | undefined },
): TotpResult {
  const token = code.replace(/[\s-]/g, '');
  if (!/^\d{6}$/.test(token)) return { ok: false, reason: 'invalid' };
  const secret = Secret.fromBase32(secretBase32);
  const current = totpStep(options.nowMs);
  const last = options.lastUsedStep ?? -1;
  let fresh: number | undefined;
  let replayed = false;
  // Every step in the window is checked, even after a match, so timing does not say which matched.
  for (let step = current - WINDOW; step <= current + WINDOW; step++) {
    const match =
      HOTP.validate({
        token,
        secret,
        counter: step,
        window: 0,
        algorithm: TOTP_PARAMS.algorithm,
        digits: 6,
      }) !== null;
    if (!match) continue;
    if (step > last) fresh ??= step;
    else replayed = true;
  }
  if (fresh !== undefined) return { ok: true, step: fresh };
  return { ok: false, reason: replayed ? 'replayed' : 'invalid' };
}
