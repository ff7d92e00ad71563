import type { FieldError } from '../http/problem.ts';
import { parseIp4, parseIp6 } from './ip.ts';
import { type RegexBudget, re2Problem } from './regex.ts';
import { parseSemver } from './semver.ts';
import type { Constraint, Feature, Strategy, VariantDefinition } from './types.ts';

// What a flag or segment must satisfy to be written, beyond the zod shapes: Unleash's admin-API
// rules, plus whatever would make unleash-client throw (it calls `.split` on `userIds`, `.filter`
// on a missing `values`…) or could never mean anything. The engine stays lenient on purpose:
// flags stored before these rules, and Unleash payloads, still load and evaluate.

type Issues = FieldError[];

// --- names ----------------------------------------------------------------------------------

/**
 * Names a flag, a variant or a segment cannot have: the members of `Object.prototype`
 * (`constructor`, `toString`, `hasOwnProperty`, `__proto__`…). unleash-client keeps flags and its
 * metric counts in plain `{}` objects, where such a name is already "there": `getVariant` on a flag
 * `constructor` throws, a flag `__proto__` rewrites `Object.prototype` in the application (and its
 * deletion is never seen), and a variant `constructor` turns the SDK's metrics report into one
 * Steward must refuse. Computed from the running engine, so the list is what JavaScript has.
 */
export const RESERVED_NAMES: ReadonlySet<string> = new Set([
  ...Object.getOwnPropertyNames(Object.prototype),
  '__proto__',
]);

export const RESERVED_NAME_MESSAGE =
  'a member of Object.prototype (constructor, toString, __proto__…) cannot name a flag, variant or ' +
  'segment: unleash-client keeps them in plain objects, where such a name breaks it';

const nameIssue = (name: string, path: string): Issues =>
  RESERVED_NAMES.has(name) ? [{ path, message: RESERVED_NAME_MESSAGE }] : [];

// Operators taking `values` (a non-empty list) and those taking one `value`, as Unleash has them.
const LIST_OPERATORS = new Set([
  'IN',
  'NOT_IN',
  'STR_STARTS_WITH',
  'STR_ENDS_WITH',
  'STR_CONTAINS',
  'IN_CIDR',
]);
const NUMBER_OPERATORS = new Set(['NUM_EQ', 'NUM_GT', 'NUM_GTE', 'NUM_LT', 'NUM_LTE']);
const DATE_OPERATORS = new Set(['DATE_AFTER', 'DATE_BEFORE']);
const SEMVER_OPERATORS = new Set(['SEMVER_EQ', 'SEMVER_GT', 'SEMVER_GTE', 'SEMVER_LT', 'SEMVER_LTE']);
const OPERATORS = [...LIST_OPERATORS, ...NUMBER_OPERATORS, ...DATE_OPERATORS, ...SEMVER_OPERATORS, 'REGEX'];

// RFC 3339: the ISO 8601 profile that the stricter SDK date parsers expect (JavaScript's reads
// more). A zone is required: a local time would mean something else on every machine.
const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$/;

function isDateTime(value: string): boolean {
  const m = DATE_TIME.exec(value);
  if (m === null) return false;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // Date.parse rolls 2024-02-30 over to March; refuse days the month does not have.
  return month >= 1 && month <= 12 && day >= 1 && day <= new Date(Date.UTC(year, month, 0)).getUTCDate();
}

const isNumber = (value: string): boolean => value.trim() !== '' && Number.isFinite(Number(value));

// Unleash's parseStrictSemVer: no leading `v`, no surrounding spaces (our parser allows both).
const isSemver = (value: string): boolean =>
  !/^v/i.test(value) && value === value.trim() && parseSemver(value) !== undefined;

// Addresses are checked with the parsers evaluation uses (./ip.ts, unleash-client's reading), so
// that an entry accepted here is one evaluation understands, and one it cannot read is refused.
const isIpEntry = (v: string): boolean => parseIp4(v) !== undefined || parseIp6(v) !== undefined;
// A successful IPv6 parse with a `/` is a range: the written prefix is the only `/` it may hold.
const isIp6Range = (v: string): boolean => parseIp4(v) === undefined && v.includes('/') && isIpEntry(v);

function singleValueProblem(c: Constraint, budget: RegexBudget): string | undefined {
  const v = c.value;
  if (v === undefined) return `${c.operator} compares with one \`value\`, which is missing`;
  if (NUMBER_OPERATORS.has(c.operator) && !isNumber(v)) return `${JSON.stringify(v)} is not a number`;
  if (DATE_OPERATORS.has(c.operator) && !isDateTime(v))
    return `${JSON.stringify(v)} is not an RFC 3339 date-time with a zone, e.g. 2025-01-31T09:00:00Z`;
  if (SEMVER_OPERATORS.has(c.operator) && !isSemver(v))
    return `${JSON.stringify(v)} is not a semantic version such as 1.2.3 (no leading v)`;
  if (c.operator === 'REGEX') return re2Problem(v, c.caseInsensitive === true, budget);
  return undefined;
}

function constraintIssues(c: Constraint, path: string, budget: RegexBudget): Issues {
  if (!OPERATORS.includes(c.operator))
    return [{ path: `${path}.operator`, message: `unknown operator; one of ${OPERATORS.join(', ')}` }];
  if (!LIST_OPERATORS.has(c.operator)) {
    const problem = singleValueProblem(c, budget);
    return problem === undefined ? [] : [{ path: `${path}.value`, message: problem }];
  }
  if (c.values === undefined || c.values.length === 0)
    return [
      { path: `${path}.values`, message: `${c.operator} needs \`values\`: a non-empty list of strings` },
    ];
  if (c.operator !== 'IN_CIDR') return [];
  // Evaluation trims each entry (as unleash-client does); an empty one it drops is refused here.
  return c.values.flatMap((v, i) =>
    isIpEntry(v.trim())
      ? []
      : [
          {
            path: `${path}.values[${i}]`,
            message:
              `${JSON.stringify(v)} is not an IP address or CIDR range as unleash-client reads it ` +
              '(IPv4 octets without leading zeros, prefix /0 to /32; IPv6, prefix /0 to /128)',
          },
        ],
  );
}

/**
 * Problems of a list of constraints (a strategy's or a segment's), each with its path. `budget`
 * is shared by every list of one write (a segment's own; a flag's across its strategies).
 */
export function constraintsIssues(
  constraints: readonly Constraint[] | undefined,
  path: string,
  budget: RegexBudget = { spent: 0 },
): Issues {
  return (constraints ?? []).flatMap((c, i) => constraintIssues(c, `${path}[${i}]`, budget));
}

// --- strategies -----------------------------------------------------------------------------

/** Checks one parameter value (already known to be a string); a message when it is wrong. */
type ParameterCheck = (value: string) => string | undefined;

const percentage: ParameterCheck = (v) =>
  /^(?:\d|[1-9]\d|100)$/.test(v) ? undefined : 'must be a whole percentage from "0" to "100"';
const nonEmptyList: ParameterCheck = (v) =>
  v.split(',').some((e) => e.trim() !== '') ? undefined : 'must list at least one value, comma-separated';
const quoted = (entries: readonly string[]) => entries.map((e) => JSON.stringify(e)).join(', ');
// Split as unleash-client splits. Its remoteAddress strategy parses IPv4 entries only; any other
// entry matches a context address written exactly so. An IPv6 address can (`::1`, as Node writes
// a client's address); an IPv6 range never matches a real address, so it is refused rather than
// stored to do nothing, pointing at IN_CIDR, which does read IPv6 ranges. Anything that is no
// address at all is refused too.
const addresses: ParameterCheck = (v) => {
  const entries = v.split(/\s*,\s*/);
  const unreadable = entries.filter((e) => !isIpEntry(e));
  const ranges6 = entries.filter(isIp6Range);
  const problems = [
    ...(unreadable.length === 0 ? [] : [`not IP addresses or CIDR ranges: ${quoted(unreadable)}`]),
    ...(ranges6.length === 0
      ? []
      : [
          `IPv6 ranges never match here: ${quoted(ranges6)} (like unleash-client, remoteAddress reads ` +
            'only IPv4 ranges and takes an IPv6 entry as one address, written exactly so); ' +
            'use an IN_CIDR constraint on remoteAddress for an IPv6 range',
        ]),
  ];
  return problems.length === 0 ? undefined : problems.join('; ');
};
const nonEmpty: ParameterCheck = (v) => (v === '' ? 'cannot be empty' : undefined);
const anything: ParameterCheck = () => undefined;

interface ParameterRule {
  required: boolean;
  check: ParameterCheck;
}
const required = (check: ParameterCheck): ParameterRule => ({ required: true, check });
const optional = (check: ParameterCheck): ParameterRule => ({ required: false, check });

// The strategies the engine implements and their parameters, as Unleash defines them. Steward has
// no custom strategies: any other name would evaluate to false everywhere, so it is refused, as
// Unleash's admin API refuses a strategy that is not defined.
const STRATEGIES = new Map<string, Record<string, ParameterRule>>([
  ['default', {}],
  ['userWithId', { userIds: required(nonEmptyList) }],
  [
    'flexibleRollout',
    { rollout: required(percentage), stickiness: optional(nonEmpty), groupId: optional(anything) },
  ],
  ['gradualRolloutUserId', { percentage: required(percentage), groupId: optional(anything) }],
  ['gradualRolloutSessionId', { percentage: required(percentage), groupId: optional(anything) }],
  ['gradualRolloutRandom', { percentage: required(percentage), groupId: optional(anything) }],
  ['remoteAddress', { IPs: required(addresses) }],
  ['applicationHostname', { hostNames: required(nonEmptyList) }],
]);

function parameterIssues(s: Strategy, rules: Record<string, ParameterRule>, path: string): Issues {
  const given = s.parameters ?? {};
  const names = Object.keys(rules);
  const issues: Issues = [];
  for (const [name, value] of Object.entries(given)) {
    const at = `${path}.parameters.${name}`;
    const rule = Object.hasOwn(rules, name) ? rules[name] : undefined;
    if (rule === undefined) {
      const known = names.length === 0 ? 'none' : names.join(', ');
      issues.push({ path: at, message: `${s.name} has no such parameter (it takes: ${known})` });
    } else if (typeof value !== 'string') {
      issues.push({ path: at, message: 'must be a string, as every Unleash strategy parameter' });
    } else {
      const problem = rule.check(value);
      if (problem !== undefined) issues.push({ path: at, message: problem });
    }
  }
  for (const [name, rule] of Object.entries(rules)) {
    if (rule.required && given[name] === undefined)
      issues.push({ path: `${path}.parameters.${name}`, message: `${s.name} requires it` });
  }
  return issues;
}

function strategyIssues(s: Strategy, path: string, budget: RegexBudget): Issues {
  const rules = STRATEGIES.get(s.name);
  const own =
    rules === undefined
      ? [{ path: `${path}.name`, message: `unknown strategy; one of ${[...STRATEGIES.keys()].join(', ')}` }]
      : parameterIssues(s, rules, path);
  return [
    ...own,
    ...constraintsIssues(s.constraints, `${path}.constraints`, budget),
    ...variantsIssues(s.variants, `${path}.variants`),
  ];
}

// --- variants -------------------------------------------------------------------------------

const MAX_WEIGHT = 1000;

function payloadProblem(v: VariantDefinition): string | undefined {
  const p = v.payload;
  if (p?.type === 'number' && !isNumber(p.value)) return `${JSON.stringify(p.value)} is not a number`;
  if (p?.type === 'json') {
    try {
      JSON.parse(p.value);
    } catch {
      return 'is not valid JSON';
    }
  }
  return undefined;
}

function variantIssues(v: VariantDefinition, i: number, seen: Set<string>, path: string): Issues {
  const issues: Issues = nameIssue(v.name, `${path}[${i}].name`);
  if (v.weight > MAX_WEIGHT)
    issues.push({ path: `${path}[${i}].weight`, message: `weights are per mille: 0 to ${MAX_WEIGHT}` });
  if (seen.has(v.name)) issues.push({ path: `${path}[${i}].name`, message: 'variant names must be unique' });
  seen.add(v.name);
  const payload = payloadProblem(v);
  if (payload !== undefined) issues.push({ path: `${path}[${i}].payload.value`, message: payload });
  return issues;
}

// Unleash stores fixed weights as sent and spreads what is left of 1,000 over the variable
// variants; its client API then serves weights summing to 1,000. Steward stores and serves the
// weights as sent, so with a fixed weight the whole list must already sum to 1,000, else a fixed
// weight would not be the share of traffic it says.
function weightsProblem(variants: readonly VariantDefinition[]): string | undefined {
  const sum = (list: readonly VariantDefinition[]) => list.reduce((n, v) => n + v.weight, 0);
  const fixed = variants.filter((v) => v.weightType === 'fix');
  const fixedSum = sum(fixed);
  const total = sum(variants);
  if (fixedSum > MAX_WEIGHT) return `fixed weights sum to ${fixedSum}, more than ${MAX_WEIGHT}`;
  if (fixed.length > 0 && fixed.length === variants.length && fixedSum < MAX_WEIGHT)
    return `fixed weights sum to ${fixedSum}: add a variable variant for the other ${MAX_WEIGHT - fixedSum}`;
  if (fixed.length > 0 && total !== MAX_WEIGHT)
    return `variable weights must make up the ${MAX_WEIGHT - fixedSum} the fixed ones leave; they sum to ${total - fixedSum}`;
  if (total === 0) return 'weights sum to 0: no variant could ever be chosen';
  return undefined;
}

function variantsIssues(variants: readonly VariantDefinition[] | null | undefined, path: string): Issues {
  if (variants === null || variants === undefined || variants.length === 0) return [];
  const seen = new Set<string>();
  const issues = variants.flatMap((v, i) => variantIssues(v, i, seen, path));
  const weights = issues.length === 0 ? weightsProblem(variants) : undefined;
  return weights === undefined ? issues : [...issues, { path, message: weights }];
}

/** Every problem of a flag as written (not its references: the service checks those). */
export function flagIssues(f: Feature, path = 'body'): Issues {
  const budget: RegexBudget = { spent: 0 };
  return [
    ...nameIssue(f.name, `${path}.name`),
    ...f.strategies.flatMap((s, i) => strategyIssues(s, `${path}.strategies[${i}]`, budget)),
    ...variantsIssues(f.variants, `${path}.variants`),
    ...(f.dependencies ?? []).flatMap((d, i) => nameIssue(d.feature, `${path}.dependencies[${i}].feature`)),
  ];
}

/** Every problem of a segment as written: its name and its constraints. */
export function segmentIssues(
  s: { name: string; constraints: readonly Constraint[] },
  path = 'body',
): Issues {
  return [...nameIssue(s.name, `${path}.name`), ...constraintsIssues(s.constraints, `${path}.constraints`)];
}
