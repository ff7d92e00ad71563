/** Why a cryptographic operation was refused. Messages never include key material or plaintext. */
export type CryptoErrorCode =
  /** Key, IV or tag of a size this module does not accept (only AES-256-GCM, 96-bit IV, 128-bit tag). */
  | 'unsupported_parameters'
  /** Authentication failed: wrong key, tampered ciphertext or tag, or different associated data. */
  | 'decrypt_failed'
  /** The sealed value names a master key id the keyring does not hold. */
  | 'unknown_key'
  /** The sealed value is not in a format this version understands. */
  | 'malformed'
  /** The master key configuration is missing or invalid. */
  | 'invalid_master_key';

/** The one error type thrown by src/crypto; `code` is stable, `message` is safe to log. */
export class CryptoError extends Error {
  override readonly name = 'CryptoError';
  constructor(
    readonly code: CryptoErrorCode,
    message: string,
  ) {
    super(message);
  }
}
