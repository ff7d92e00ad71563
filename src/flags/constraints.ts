import { fieldGetter } from './context.ts';
import { type Ip6, ip4InCidr, ip6InCidr, parseIp4, parseIp4Packed, parseIp6 } from './ip.ts';
import { compileRe2 } from './regex.ts';
import { compareSemver, parseSemver, type SemVer } from './semver.ts';
import type { Constraint, FlagContext } from './types.ts';

/** A compiled test on the context. */
export type Predicate = (ctx: FlagContext) => boolean;

// Shared constants let `allOf` drop or short-circuit parts at compile time by identity.
export const ALWAYS: Predicate = () => true;
export const NEVER: Predicate = () => false;

/** Conjunction of predicates, folded at compile time where the outcome is already known. */
export function allOf(parts: readonly Predicate[]): Predicate {
  if (parts.includes(NEVER)) return NEVER;
  const live = parts.filter((p) => p !== ALWAYS);
  const [a, b] = live;
  if (a === undefined) return ALWAYS;
  if (b === undefined) return a;
  if (live.length === 2) return (ctx) => a(ctx) && b(ctx);
  return (ctx) => {
    for (let i = 0; i < live.length; i++) if (!(live[i] as Predicate)(ctx)) return false;
    return true;
  };
}

// unleash-client drops empty entries and trims the rest before comparing.
function cleanValues(c: Constraint): string[] {
  const values = c.values ?? (c.value === undefined ? [] : [c.value]);
  return values.filter((v) => v !== '').map((v) => v.trim());
}

function membership(c: Constraint, negate: boolean): Predicate {
  const get = fieldGetter(c.contextName);
  const values = cleanValues(c);
  if (values.length === 0) return negate ? ALWAYS : NEVER;
  if (values.length === 1) {
    const only = values[0];
    return negate ? (ctx) => get(ctx) !== only : (ctx) => get(ctx) === only;
  }
  const set = new Set(values);
  return negate
    ? (ctx) => {
        const v = get(ctx);
        return v === undefined || !set.has(v);
      }
    : (ctx) => {
        const v = get(ctx);
        return v !== undefined && set.has(v);
      };
}

type StringTest = (subject: string, needle: string) => boolean;
// Maps, not object literals: an operator named `constructor` must not find Object's.
const stringTests = new Map<string, StringTest>([
  ['STR_STARTS_WITH', (s, n) => s.startsWith(n)],
  ['STR_ENDS_WITH', (s, n) => s.endsWith(n)],
  ['STR_CONTAINS', (s, n) => s.includes(n)],
]);

function stringOp(c: Constraint, test: StringTest): Predicate {
  const get = fieldGetter(c.contextName);
  const fold = c.caseInsensitive === true;
  const values = cleanValues(c).map((v) => (fold ? v.toLocaleLowerCase() : v));
  if (values.length === 0) return NEVER;
  return (ctx) => {
    const raw = get(ctx);
    if (raw === undefined) return false;
    const v = fold ? raw.toLocaleLowerCase() : raw;
    for (let i = 0; i < values.length; i++) if (test(v, values[i] as string)) return true;
    return false;
  };
}

type Compare = (a: number, b: number) => boolean;
const numberTests = new Map<string, Compare>([
  ['NUM_EQ', (a, b) => a === b],
  ['NUM_GT', (a, b) => a > b],
  ['NUM_GTE', (a, b) => a >= b],
  ['NUM_LT', (a, b) => a < b],
  ['NUM_LTE', (a, b) => a <= b],
]);

function numberOp(c: Constraint, cmp: Compare): Predicate {
  const get = fieldGetter(c.contextName);
  const target = Number(c.value);
  if (Number.isNaN(target)) return NEVER;
  // Number() as unleash-client applies it: an absent field is NaN and never compares true.
  return (ctx) => cmp(Number(get(ctx)), target);
}

function contextTime(ctx: FlagContext): number {
  const t = ctx.currentTime;
  if (!t) return Date.now();
  if (typeof t === 'string') return Date.parse(t);
  return t instanceof Date ? t.getTime() : new Date(t as number).getTime();
}

// Like every Unleash SDK, date operators compare `currentTime` (default: now), whatever
// `contextName` says.
function dateOp(c: Constraint, after: boolean): Predicate {
  const target = Date.parse(c.value ?? '');
  if (Number.isNaN(target)) return NEVER;
  return after ? (ctx) => contextTime(ctx) > target : (ctx) => contextTime(ctx) < target;
}

const semverTests = new Map<string, (order: number) => boolean>([
  ['SEMVER_EQ', (o) => o === 0],
  ['SEMVER_GT', (o) => o > 0],
  ['SEMVER_GTE', (o) => o >= 0],
  ['SEMVER_LT', (o) => o < 0],
  ['SEMVER_LTE', (o) => o <= 0],
]);

function semverOp(c: Constraint, test: (order: number) => boolean): Predicate {
  const get = fieldGetter(c.contextName);
  const target = parseSemver(c.value ?? '');
  if (target === undefined) return NEVER;
  // Callers tend to send the same app version again and again: remember the last parse.
  let lastInput: string | undefined;
  let lastParsed: SemVer | undefined;
  return (ctx) => {
    const v = get(ctx);
    // unleash-client refuses a leading `v` on the context side only.
    if (!v || v.startsWith('v')) return false;
    if (v !== lastInput) {
      lastInput = v;
      lastParsed = parseSemver(v);
    }
    return lastParsed !== undefined && test(compareSemver(lastParsed, target));
  };
}

function regexOp(c: Constraint): Predicate {
  if (c.value === undefined) return NEVER;
  const re = compileRe2(c.value, c.caseInsensitive === true);
  if (re === undefined) return NEVER;
  const get = fieldGetter(c.contextName);
  return (ctx) => {
    const v = get(ctx);
    return v !== undefined && re.test(v);
  };
}

const defined = <T>(v: T | undefined): v is T => v !== undefined;

/** Whether any test passes; a plain loop, so the hot path allocates no closure. */
export function anyOf<T>(tests: readonly ((v: T) => boolean)[], v: T): boolean {
  for (let i = 0; i < tests.length; i++) if ((tests[i] as (v: T) => boolean)(v)) return true;
  return false;
}

// unleash-client reads the context value as IPv4 if it can, else as IPv6, and then compares
// it with the ranges of that family only (see ./ip.ts). The two families never overlap.
function cidrOp(c: Constraint): Predicate {
  const values = cleanValues(c);
  const v4 = values.map(parseIp4).filter(defined).map(ip4InCidr);
  const v6 = values.map(parseIp6).filter(defined).map(ip6InCidr);
  if (v4.length === 0 && v6.length === 0) return NEVER;
  const get = fieldGetter(c.contextName);
  // Callers tend to send the same address again and again: remember the last IPv6 parse.
  let lastInput: string | undefined;
  let lastParsed: Ip6 | undefined;
  return (ctx) => {
    const v = get(ctx);
    if (v === undefined) return false;
    if (v4.length > 0) {
      const packed = parseIp4Packed(v);
      if (packed >= 0) return anyOf(v4, packed);
    }
    if (v6.length === 0) return false;
    if (v !== lastInput) {
      lastInput = v;
      lastParsed = parseIp6(v);
    }
    return lastParsed !== undefined && anyOf(v6, lastParsed);
  };
}

function operator(c: Constraint): Predicate | undefined {
  const op = c.operator;
  if (op === 'IN' || op === 'NOT_IN') return membership(c, op === 'NOT_IN');
  const str = stringTests.get(op);
  if (str !== undefined) return stringOp(c, str);
  const num = numberTests.get(op);
  if (num !== undefined) return numberOp(c, num);
  if (op === 'DATE_AFTER' || op === 'DATE_BEFORE') return dateOp(c, op === 'DATE_AFTER');
  const sem = semverTests.get(op);
  if (sem !== undefined) return semverOp(c, sem);
  if (op === 'REGEX') return regexOp(c);
  if (op === 'IN_CIDR') return cidrOp(c);
  return undefined;
}

/** Compiles one constraint; an unknown operator never matches, even when inverted. */
export function compileConstraint(c: Constraint): Predicate {
  const p = operator(c);
  if (p === undefined) return NEVER;
  if (c.inverted !== true) return p;
  if (p === NEVER) return ALWAYS;
  if (p === ALWAYS) return NEVER;
  return (ctx) => !p(ctx);
}
