import { createHash, randomBytes } from 'node:crypto';
import type { Keyring } from '../crypto/keyring.ts';
import { hmacSha256, verifyHmacSha256 } from '../crypto/mac.ts';
import { isId } from '../db/ids.ts';

/** HKDF purpose of the key that MACs refresh tokens. */
export const REFRESH_KEY_PURPOSE = 'steward/identity/refresh-token/v1';

export const sha256Hex = (value: string) => createHash('sha256').update(value).digest('hex');

/**
 * Refresh tokens `<session id>.<generation>.<mac>`: the MAC proves Steward issued that
 * generation of that session, so a rotated token is recognised as reuse (and revokes the session)
 * while a forged one is merely invalid. Nothing but the hash of the current token is stored.
 */
export function createRefreshTokens(keyring: Keyring) {
  // Every master key still in the ring can verify, so a master-key rotation does not end sessions.
  const keys = new Map(keyring.ids.map((id) => [id, keyring.deriveKey(REFRESH_KEY_PURPOSE, 32, id)]));
  const current = keyring.deriveKey(REFRESH_KEY_PURPOSE);

  return {
    issue(sessionId: string, generation: number): { token: string; hash: string } {
      const body = `${sessionId}.${generation}`;
      const token = `${body}.${hmacSha256(current, body).toString('base64url')}`;
      return { token, hash: sha256Hex(token) };
    },
    /** The session and generation a genuine token names, or null for anything else. */
    parse(token: string): { sessionId: string; generation: number; hash: string } | null {
      const parts = token.split('.');
      if (parts.length !== 3) return null;
      const [sessionId = '', gen = '', mac = ''] = parts;
      if (!isId('ses', sessionId) || !/^\d{1,9}$/.test(gen) || !/^[A-Za-z0-9_-]{43}$/.test(mac)) return null;
      const tag = Buffer.from(mac, 'base64url');
      const body = `${sessionId}.${gen}`;
      for (const key of keys.values()) {
        if (verifyHmacSha256(key, body, tag)) {
          return { sessionId, generation: Number(gen), hash: sha256Hex(token) };
        }
      }
      return null;
    },
  };
}

/** A single-use mfa_token and the hash stored for it. */
export function newMfaToken(): { token: string; hash: string } {
  const token = `mfa_${randomBytes(32).toString('base64url')}`;
  return { token, hash: sha256Hex(token) };
}
