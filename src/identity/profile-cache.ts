// What `GET /v1/me` shows of a user, kept in memory: SPAs ask for it on every page, and reading
// the row cost ~190–300 µs a request against ~20 µs for a token-only answer. Correct because every
// change to what it shows drops the entry on every instance (core.userChanged → USER_TOPIC);
// bounded (least recently used out) and short-lived, so a lost bus message is forgotten soon.
import type { User } from './queries.ts';

/** A user as /v1/me shows them: the row without its secrets and counters. */
export type Profile = Readonly<
  Pick<
    User,
    | 'id'
    | 'email'
    | 'username'
    | 'fullName'
    | 'active'
    | 'superuser'
    | 'verified'
    | 'totpEnabled'
    | 'lockedUntil'
    | 'lastLoginAt'
    | 'passwordChangedAt'
    | 'createdBy'
    | 'createdAt'
    | 'updatedAt'
  >
>;

export const profileOf = (u: User): Profile => ({
  id: u.id,
  email: u.email,
  username: u.username,
  fullName: u.fullName,
  active: u.active,
  superuser: u.superuser,
  verified: u.verified,
  totpEnabled: u.totpEnabled,
  lockedUntil: u.lockedUntil,
  lastLoginAt: u.lastLoginAt,
  passwordChangedAt: u.passwordChangedAt,
  createdBy: u.createdBy,
  createdAt: u.createdAt,
  updatedAt: u.updatedAt,
});

/** Profiles by user id: least recently used out past `max`, each kept `ttlMs` at most. */
export class ProfileCache {
  private readonly entries = new Map<string, { profile: Profile; until: number }>();
  /** Bumped by every drop: a read that started before one must not store what it read. */
  private generation = 0;

  constructor(private readonly options: { max: number; ttlMs: number; now: () => number }) {}

  get(id: string): Profile | undefined {
    const entry = this.entries.get(id);
    if (entry === undefined) return undefined;
    if (entry.until <= this.options.now()) {
      this.entries.delete(id);
      return undefined;
    }
    // Most recently used last: Map keeps insertion order.
    this.entries.delete(id);
    this.entries.set(id, entry);
    return entry.profile;
  }

  /** A token to pass to `set`: taken before reading the row. */
  mark(): number {
    return this.generation;
  }

  /**
   * Stores a profile read after `mark` returned `mark`, unless a drop came in meanwhile: the row
   * may predate the change that drop announced (it would stay until the TTL).
   */
  set(id: string, profile: Profile, mark: number): void {
    if (mark !== this.generation) return;
    this.entries.delete(id);
    this.entries.set(id, { profile, until: this.options.now() + this.options.ttlMs });
    if (this.entries.size > this.options.max) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
  }

  drop(id: string): void {
    this.generation++;
    this.entries.delete(id);
  }

  get size(): number {
    return this.entries.size;
  }
}
