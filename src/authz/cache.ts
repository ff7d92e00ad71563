import { buildOrgIndex, type OrgIndex, type OrgSnapshot } from './engine.ts';

interface Entry {
  index: OrgIndex | null;
  loading: Promise<OrgIndex> | null;
  /** Bumped by every change; a load that saw another generation start over. */
  gen: number;
  /** Set by checks, cleared by the periodic refresh; an org unused for a whole period is dropped. */
  used: boolean;
}

export interface IndexCacheDeps {
  /** Reads an org's committed roles, assignments and active grants. */
  load(orgId: string): Promise<OrgSnapshot>;
  onError(error: unknown, orgId: string): void;
}

// A load that keeps being overtaken by writes is installed anyway after this many tries and
// rebuilt again in the background, so a cold request never waits on a stream of writes.
const MAX_TRIES = 5;

/**
 * The per-org indexes of one instance. Loaded lazily, patched in place after a local commit,
 * rebuilt in the background when another instance says an org changed, refreshed periodically.
 * A load that overlaps a change (its generation moved) is redone, so a snapshot read before a
 * commit never replaces an index that already holds the change.
 */
export class IndexCache {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly deps: IndexCacheDeps) {}

  /** The warm index of an org, or undefined. Synchronous: the check path. */
  get(orgId: string): OrgIndex | undefined {
    const e = this.entries.get(orgId);
    if (e === undefined || e.index === null) return undefined;
    e.used = true;
    return e.index;
  }

  /** Undefined when the org is warm; otherwise a promise that settles once it is. */
  warm(orgId: string): Promise<OrgIndex> | undefined {
    const e = this.entries.get(orgId);
    if (e?.index) {
      e.used = true;
      return undefined;
    }
    return this.load(orgId);
  }

  /** The org's index, loading it first if needed. */
  async load(orgId: string): Promise<OrgIndex> {
    const e = this.entry(orgId);
    e.used = true;
    return e.index ?? this.rebuild(orgId, e);
  }

  /** Applies a committed change to a warm index at once; any load in flight starts over. */
  patch(orgId: string, apply: (index: OrgIndex) => void): void {
    const e = this.entries.get(orgId);
    if (e === undefined) return;
    e.gen++;
    if (e.index) apply(e.index);
  }

  /** Another instance changed the org: rebuild in the background, keep serving meanwhile. */
  invalidate(orgId: string): void {
    const e = this.entries.get(orgId);
    if (e === undefined) return;
    e.gen++;
    if (e.index && !e.loading) this.rebuild(orgId, e).catch((error) => this.deps.onError(error, orgId));
  }

  /** Rebuilds an org's index from the database and waits for it (after role changes). */
  async reload(orgId: string): Promise<void> {
    const e = this.entries.get(orgId);
    if (e === undefined) return;
    e.gen++;
    await this.rebuild(orgId, e);
  }

  /** Drops orgs unused since the last call and rebuilds the others, one after another. */
  async refresh(): Promise<void> {
    for (const [orgId, e] of [...this.entries]) {
      if (!e.used && !e.loading) {
        this.entries.delete(orgId);
        continue;
      }
      e.used = false;
      e.gen++;
      try {
        await this.rebuild(orgId, e);
      } catch (error) {
        this.deps.onError(error, orgId);
      }
    }
  }

  /** Org ids with an index in memory (tests, metrics). */
  orgs(): string[] {
    return [...this.entries.keys()];
  }

  private entry(orgId: string): Entry {
    let e = this.entries.get(orgId);
    if (e === undefined) {
      e = { index: null, loading: null, gen: 0, used: true };
      this.entries.set(orgId, e);
    }
    return e;
  }

  private rebuild(orgId: string, e: Entry): Promise<OrgIndex> {
    if (e.loading) return e.loading;
    const run = async (): Promise<OrgIndex> => {
      try {
        for (let attempt = 1; ; attempt++) {
          const gen = e.gen;
          const index = buildOrgIndex(await this.deps.load(orgId));
          if (gen === e.gen || attempt >= MAX_TRIES) {
            if (this.entries.get(orgId) === e) e.index = index;
            if (gen !== e.gen) queueMicrotask(() => this.invalidate(orgId));
            return index;
          }
        }
      } finally {
        e.loading = null;
      }
    };
    e.loading = run();
    return e.loading;
  }
}
