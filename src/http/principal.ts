/** The kinds of caller Steward knows. A key acts for its owner (a user or an agent). */
export type PrincipalKind = 'user' | 'agent' | 'key';

/**
 * Who is calling: built once per request by an authenticator and passed, whole,
 * to every service call. Never split into loose `actorId, orgId…` arguments.
 */
export interface Principal {
  /** The org the request acts in. */
  readonly orgId: string;
  readonly kind: PrincipalKind;
  /** Prefixed id of the caller: `usr_…`, `agt_…` or `key_…`. */
  readonly id: string;
  /** Display name as it is now; audit events keep a copy. */
  readonly name: string;
  /** Role names held in `orgId` (for a key: its owner's roles). */
  readonly roles: readonly string[];
  /** For a key: the permissions it is limited to (`resource:action`); null means no scope limit. */
  readonly scopes: readonly string[] | null;
  /** Global administrator flag (users only). */
  readonly superuser: boolean;
  /** Session behind an access token, if any. */
  readonly sessionId?: string;
  /** API key behind the request, if any. */
  readonly keyId?: string;
  /** For a key: the user or agent it acts for (`usr_…` / `agt_…`). */
  readonly ownerId?: string;
}
