import { type CheckResult, result } from './decision.ts';
import { PERMISSION_COUNT, type PermMeta } from './meta.ts';

/** A resource grant: one permission on a whole resource type (`resourceId` null) or one resource. */
export interface GrantDef {
  readonly id: string;
  /** A user or agent (`usr_…` / `agt_…`); keys take their rights from their owner. */
  readonly principalId: string;
  /** A concrete catalogue permission; patterns are not accepted in grants. */
  readonly permission: string;
  readonly resourceType: string;
  readonly resourceId: string | null;
  readonly effect: 'allow' | 'deny';
  /** Epoch milliseconds; the grant counts for nothing from this instant on. */
  readonly expiresAt: number | null;
}

interface Entry {
  readonly def: GrantDef;
  readonly expiresAt: number | null;
  readonly result: CheckResult;
}

/** The grants of one specificity level for one principal, permission and resource. */
export interface Rule {
  readonly deny: Entry[];
  readonly allow: Entry[];
}

/** Grants on a resource type: type-wide ones and, per resource id, the id-level ones. */
export interface TypeBucket {
  type: Rule | null;
  readonly ids: Map<string, Rule>;
}

function firstActive(entries: readonly Entry[], nowMs: number): CheckResult | undefined {
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    if (e.expiresAt === null || e.expiresAt > nowMs) return e.result;
  }
  return undefined;
}

/** The verdict of one specificity level: an active deny beats an active allow; none → undefined. */
export function decide(rule: Rule, nowMs: number): CheckResult | undefined {
  return firstActive(rule.deny, nowMs) ?? firstActive(rule.allow, nowMs);
}

const emptyRule = (): Rule => ({ deny: [], allow: [] });

function entryOf(def: GrantDef): Entry {
  return {
    def,
    expiresAt: def.expiresAt,
    result: result(def.effect === 'allow', {
      by: def.resourceId === null ? 'type_grant' : 'resource_grant',
      rule_id: def.id,
    }),
  };
}

/**
 * One principal's grants. Almost every grant is on its permission's own resource type
 * (`secrets:read` on `secrets`), so those sit in an array indexed by permission and are found
 * without hashing; the rare grant on another type goes in a map keyed by `permission|type`.
 */
export class GrantTable {
  private readonly own: (TypeBucket | undefined)[] = new Array(PERMISSION_COUNT).fill(undefined);
  private readonly other = new Map<string, TypeBucket>();

  bucket(meta: PermMeta, type: string): TypeBucket | undefined {
    if (type === meta.info.resource) return this.own[meta.index];
    return this.other.size === 0 ? undefined : this.other.get(`${meta.info.permission}|${type}`);
  }

  insert(meta: PermMeta, def: GrantDef): void {
    let bucket = this.bucket(meta, def.resourceType);
    if (!bucket) {
      bucket = { type: null, ids: new Map() };
      if (def.resourceType === meta.info.resource) this.own[meta.index] = bucket;
      else this.other.set(`${def.permission}|${def.resourceType}`, bucket);
    }
    let rule = (def.resourceId === null ? bucket.type : bucket.ids.get(def.resourceId)) ?? undefined;
    if (!rule) {
      rule = emptyRule();
      if (def.resourceId === null) bucket.type = rule;
      else bucket.ids.set(def.resourceId, rule);
    }
    const list = def.effect === 'deny' ? rule.deny : rule.allow;
    // Kept in id order so the grant named by `rule_id` does not depend on load or patch order.
    let at = list.length;
    while (at > 0 && list[at - 1]!.def.id > def.id) at--;
    list.splice(at, 0, entryOf(def));
  }

  /**
   * Whether an active deny of this permission names any resource or type, its own or another
   * (delegation: a permission refused somewhere is not held everywhere).
   */
  deniesAnywhere(meta: PermMeta, nowMs: number): boolean {
    const denies = (bucket: TypeBucket | undefined) => {
      if (bucket === undefined) return false;
      if (bucket.type && firstActive(bucket.type.deny, nowMs)) return true;
      for (const rule of bucket.ids.values()) if (firstActive(rule.deny, nowMs)) return true;
      return false;
    };
    if (denies(this.own[meta.index])) return true;
    const prefix = `${meta.info.permission}|`;
    for (const [key, bucket] of this.other) if (key.startsWith(prefix) && denies(bucket)) return true;
    return false;
  }

  /**
   * The instants after `nowMs` at which a grant deciding `meta` on `type` (its type-wide grants
   * and, with an id, that id's) expires, ascending: the only instants a decision can change.
   */
  expiries(meta: PermMeta, type: string, id: string | null, nowMs: number): number[] {
    const bucket = this.bucket(meta, type);
    const out = new Set<number>();
    const rules = [bucket?.type, id === null ? undefined : bucket?.ids.get(id)];
    for (const rule of rules) {
      for (const e of [...(rule?.deny ?? []), ...(rule?.allow ?? [])]) {
        if (e.expiresAt !== null && e.expiresAt > nowMs) out.add(e.expiresAt);
      }
    }
    return [...out].sort((a, b) => a - b);
  }

  delete(meta: PermMeta, def: GrantDef): void {
    const bucket = this.bucket(meta, def.resourceType);
    const rule = def.resourceId === null ? bucket?.type : bucket?.ids.get(def.resourceId);
    if (!bucket || !rule) return;
    const list = def.effect === 'deny' ? rule.deny : rule.allow;
    const at = list.findIndex((e) => e.def.id === def.id);
    if (at >= 0) list.splice(at, 1);
    if (rule.deny.length + rule.allow.length > 0) return;
    if (def.resourceId === null) bucket.type = null;
    else bucket.ids.delete(def.resourceId);
    if (bucket.type !== null || bucket.ids.size > 0) return;
    if (def.resourceType === meta.info.resource) this.own[meta.index] = undefined;
    else this.other.delete(`${def.permission}|${def.resourceType}`);
  }
}
