/**
 * A documented subset of JSON Schema (draft 2020-12 semantics) for setting rules. No validator
 * package is installed, so Steward checks these keywords itself:
 *
 *   type (one name or an array), enum, const, properties, required, additionalProperties
 *   (boolean or schema), items (one schema), minItems, maxItems, minimum, maximum,
 *   exclusiveMinimum, exclusiveMaximum, multipleOf, minLength, maxLength, pattern
 *   (RE2 syntax, matched in linear time: see pattern.ts; not ECMA-262 as the standard says).
 *
 * Annotations ($schema, $id, $comment, title, description, default, examples) are accepted and
 * ignored. Any other keyword ($ref, allOf/anyOf/oneOf/not, if/then/else, patternProperties,
 * prefixItems, format, dependentRequired, …) is refused when the schema is saved, so a rule never
 * silently checks less than its author meant.
 */

import {
  createPatternChecker,
  createPatternMatcher,
  type PatternChecker,
  type PatternMatcher,
} from './pattern.ts';

export interface SchemaError {
  /** JSON Pointer of the failing part of the value (`/a/0`), '' for the root. */
  path: string;
  message: string;
}

type Schema = Record<string, unknown>;

const TYPES = ['string', 'number', 'integer', 'boolean', 'object', 'array', 'null'] as const;
const ANNOTATIONS = new Set(['$schema', '$id', '$comment', 'title', 'description', 'default', 'examples']);
const KEYWORDS = new Set([
  'type',
  'enum',
  'const',
  'properties',
  'required',
  'additionalProperties',
  'items',
  'minItems',
  'maxItems',
  'minimum',
  'maximum',
  'exclusiveMinimum',
  'exclusiveMaximum',
  'multipleOf',
  'minLength',
  'maxLength',
  'pattern',
]);
const MAX_DEPTH = 32;
const MAX_PATTERN = 500;

// Saving and applying a schema is bounded work, whatever the schema and the value: a schema of
// 2,000 patterns held the event loop for 2.4 s, an `items.enum` of 20,000 numbers against 20,000
// items (compared pairwise) for 3.8 s.
/** JSON values (objects, arrays, scalars, at any depth) a schema may hold. */
export const MAX_SCHEMA_SIZE = 10_000;
/** Options one `enum` may list. */
export const MAX_SCHEMA_ENUM = 1_000;
/** Units of work one value's validation may take: a value visited, a name looked up, a node compared. */
export const VALIDATION_BUDGET = 500_000;
/** Errors one validation lists; it stops at the next. */
export const MAX_SCHEMA_ERRORS = 100;

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const pointer = (path: string, key: string | number) =>
  `${path}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`;

/**
 * Whether a JSON document holds more than `limit` values. Values are counted as they are found,
 * so the walk stops within `limit` of them, however wide or deep the document.
 */
function largerThan(document: unknown, limit: number): boolean {
  const pending: unknown[] = [document];
  let count = 1;
  while (pending.length > 0) {
    const v = pending.pop();
    const children = Array.isArray(v) ? v : isObject(v) ? Object.values(v) : undefined;
    if (children === undefined) continue;
    count += children.length;
    if (count > limit) return true;
    for (const child of children) pending.push(child);
  }
  return false;
}

/** Where in a value a walk is; written as a JSON Pointer only when an error names it. */
type Path = { up: Path; key: string | number } | null;

function pointerOf(path: Path): string {
  const keys: (string | number)[] = [];
  for (let p = path; p !== null; p = p.up) keys.push(p.key);
  return keys.reduceRight<string>((at, key) => pointer(at, key), '');
}

/** Ends a walk early: a limit reached, or the budget spent (then `overBudgetAt` says where). */
class Stop {
  constructor(readonly overBudgetAt?: Path) {}
}

/** Units of work left to a walk. */
interface Budget {
  left: number;
}

/** Takes `units` of work from the budget; past it, the walk stops. */
function spend(budget: Budget, units: number, path: Path): void {
  budget.left -= units;
  if (budget.left < 0) throw new Stop(path);
}

/** One schema check: its errors and the patterns' checker, shared by every subschema. */
interface SchemaCheck {
  errors: SchemaError[];
  patterns: PatternChecker;
}

/**
 * Problems with a schema itself (too large, unknown keywords, wrong keyword types, patterns RE2
 * refuses); empty when usable. `patterns` is shared with the rule's other patterns (rules.ts):
 * checking stops at the first pattern refused.
 */
export function checkSchema(schema: unknown, patterns = createPatternChecker()): SchemaError[] {
  if (largerThan(schema, MAX_SCHEMA_SIZE)) {
    return [{ path: '', message: `a schema may hold at most ${MAX_SCHEMA_SIZE} JSON values` }];
  }
  const check: SchemaCheck = { errors: [], patterns };
  try {
    checkNode(schema, '', 0, check);
  } catch (error) {
    if (!(error instanceof Stop)) throw error;
  }
  return check.errors;
}

function checkNode(schema: unknown, path: string, depth: number, check: SchemaCheck): void {
  const bad = (at: string, message: string) => {
    check.errors.push({ path: at, message });
    if (check.errors.length >= MAX_SCHEMA_ERRORS) throw new Stop();
  };
  if (depth > MAX_DEPTH) {
    bad(path, 'schema nests too deeply');
    return;
  }
  if (typeof schema === 'boolean') return;
  if (!isObject(schema)) {
    bad(path, 'a schema is an object or a boolean');
    return;
  }
  for (const [key, value] of Object.entries(schema)) {
    const at = pointer(path, key);
    if (ANNOTATIONS.has(key)) continue;
    if (!KEYWORDS.has(key)) {
      bad(at, `unsupported keyword (supported: ${[...KEYWORDS].join(', ')})`);
      continue;
    }
    switch (key) {
      case 'type': {
        const names = Array.isArray(value) ? value : [value];
        if (names.length === 0 || !names.every((n) => (TYPES as readonly unknown[]).includes(n))) {
          bad(at, `type must be one of ${TYPES.join(', ')} (or an array of them)`);
        }
        break;
      }
      case 'enum':
        if (!Array.isArray(value) || value.length === 0) bad(at, 'enum must be a non-empty array');
        else if (value.length > MAX_SCHEMA_ENUM) bad(at, `enum may list at most ${MAX_SCHEMA_ENUM} values`);
        break;
      case 'properties':
        if (!isObject(value)) bad(at, 'properties must be an object of schemas');
        else
          for (const [name, sub] of Object.entries(value))
            checkNode(sub, pointer(at, name), depth + 1, check);
        break;
      case 'required':
        if (!Array.isArray(value) || !value.every((v) => typeof v === 'string'))
          bad(at, 'required must be an array of strings');
        break;
      case 'additionalProperties':
      case 'items':
        checkNode(value, at, depth + 1, check);
        break;
      case 'minItems':
      case 'maxItems':
      case 'minLength':
      case 'maxLength':
        if (!isCount(value)) bad(at, `${key} must be a non-negative integer`);
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        if (!isFiniteNumber(value)) bad(at, `${key} must be a number`);
        break;
      case 'multipleOf':
        if (!isFiniteNumber(value) || value <= 0) bad(at, 'multipleOf must be a number above 0');
        break;
      case 'pattern':
        if (typeof value !== 'string' || value.length > MAX_PATTERN) {
          bad(at, `pattern must be a string of at most ${MAX_PATTERN} characters`);
        } else if (!check.patterns.stopped) {
          const problem = check.patterns.problem(value);
          if (problem !== undefined) bad(at, problem); // as rules.pattern: the path names the keyword
        }
        break;
    }
  }
}

/** One validation: the pattern matcher, the errors and the work left, shared by every part of the value. */
interface Walk extends Budget {
  matcher: PatternMatcher;
  errors: SchemaError[];
}

/**
 * A JSON value written so that two values are JSON-equal (as JSON Schema defines it: object key
 * order does not matter, 1 and 1.0 are one number) exactly when they are written the same: one
 * string looked up in a set instead of a comparison with each option. Null once longer than
 * `max` characters: a value longer than every option equals none, and is not written out in full.
 * Costs a unit per value and per key written.
 */
function canonical(value: unknown, max: number, budget: Budget, path: Path): string | null {
  const writer = { text: '', max, budget, path };
  return write(writer, value) ? writer.text : null;
}

interface Writer {
  text: string;
  readonly max: number;
  readonly budget: Budget;
  readonly path: Path;
}

// Each check before writing refuses what cannot fit at its shortest: a string is two quotes
// more, an array of n items at least 2n + 1 characters, an object of n keys at least 4n + 1.
// Work is charged per value, per key, per 64 characters of a string and per key comparison of
// the sort, so that a unit costs about the same (~0.2 µs) whatever the value is made of.
function write(w: Writer, v: unknown): boolean {
  spend(w.budget, 1, w.path);
  if (typeof v === 'string') {
    if (v.length + 2 > w.max - w.text.length) return false;
    spend(w.budget, v.length >> 6, w.path);
    w.text += JSON.stringify(v);
  } else if (Array.isArray(v)) {
    if (2 * v.length + 1 > w.max - w.text.length) return false;
    w.text += '[';
    for (let i = 0; i < v.length; i++) {
      if (i > 0) w.text += ',';
      if (!write(w, v[i])) return false;
    }
    w.text += ']';
  } else if (isObject(v)) {
    const keys = Object.keys(v);
    if (4 * keys.length + 1 > w.max - w.text.length) return false;
    spend(w.budget, keys.length * Math.ceil(Math.log2(keys.length + 1)), w.path);
    keys.sort();
    w.text += '{';
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i] as string;
      if (key.length + 3 > w.max - w.text.length) return false;
      spend(w.budget, key.length >> 6, w.path);
      w.text += `${i > 0 ? ',' : ''}${JSON.stringify(key)}:`;
      if (!write(w, v[key])) return false;
    }
    w.text += '}';
  } else {
    w.text += JSON.stringify(v) ?? 'null';
  }
  return w.text.length <= w.max;
}

/** The canonical forms of an `enum`'s options (or a `const`) and the longest's length. */
interface Options {
  forms: Set<string>;
  longest: number;
}

/** Computed once per enum (or schema holding a const), for every value it is applied to. */
const optionForms = new WeakMap<object, Options>();

/**
 * Whether `value` equals one of `options`: one lookup, not a comparison with each, and never
 * more of the value written than the longest option. `holder` is the object the options belong
 * to (the enum array, the schema of a const), which keeps their forms.
 */
function amongOptions(
  holder: object,
  options: readonly unknown[],
  value: unknown,
  budget: Budget,
  path: Path,
): boolean {
  let known = optionForms.get(holder);
  if (known === undefined) {
    const forms = options.map((o) => canonical(o, Number.POSITIVE_INFINITY, budget, path) as string);
    known = { forms: new Set(forms), longest: forms.reduce((n, f) => Math.max(n, f.length), 0) };
    optionForms.set(holder, known);
  }
  const form = canonical(value, known.longest, budget, path);
  return form !== null && known.forms.has(form);
}

/**
 * Whether `value` equals one of `options` as JSON Schema's `enum` compares (rules.enum uses it too):
 * linear in the options, and in the value up to the longest option; `over_budget` past `budget` units.
 */
export function equalsOneOf(
  options: readonly unknown[],
  value: unknown,
  budget = VALIDATION_BUDGET,
): boolean | 'over_budget' {
  try {
    return amongOptions(options, options, value, { left: budget }, null);
  } catch (error) {
    if (error instanceof Stop) return 'over_budget';
    throw error;
  }
}

function typeMatches(name: unknown, value: unknown): boolean {
  switch (name) {
    case 'string':
      return typeof value === 'string';
    case 'number':
      return isFiniteNumber(value);
    case 'integer':
      return isFiniteNumber(value) && Number.isInteger(value);
    case 'boolean':
      return typeof value === 'boolean';
    case 'object':
      return isObject(value);
    case 'array':
      return Array.isArray(value);
    case 'null':
      return value === null;
    default:
      return false;
  }
}

/**
 * Validates a value against a schema already accepted by `checkSchema`. Every `pattern` met shares
 * `matcher`'s budget (pattern.ts), so one value cannot make a write match for long; everything
 * else shares `budget` units of work (VALIDATION_BUDGET). Lists at most MAX_SCHEMA_ERRORS errors.
 */
export function validate(
  schema: unknown,
  value: unknown,
  matcher: PatternMatcher = createPatternMatcher(),
  budget = VALIDATION_BUDGET,
): SchemaError[] {
  const walk: Walk = { matcher, left: budget, errors: [] };
  try {
    visit(schema, value, null, walk);
  } catch (error) {
    if (!(error instanceof Stop)) throw error;
    if (error.overBudgetAt !== undefined) {
      const path = pointerOf(error.overBudgetAt);
      walk.errors.push({ path, message: 'too large to check against the schema' });
    }
  }
  return walk.errors;
}

function fail(walk: Walk, path: Path, message: string): void {
  walk.errors.push({ path: pointerOf(path), message });
  if (walk.errors.length >= MAX_SCHEMA_ERRORS) throw new Stop();
}

// Called once per part of the value (up to ~500,000 in a 1 MB body): no closure or path string is
// made unless something fails.
function visit(schema: unknown, value: unknown, path: Path, walk: Walk): void {
  spend(walk, 1, path);
  if (schema === true) return;
  if (schema === false) {
    fail(walk, path, 'no value is allowed here');
    return;
  }
  if (!isObject(schema)) return;
  const s = schema as Schema;

  const type = s.type;
  if (type !== undefined) {
    const matches = Array.isArray(type) ? type.some((n) => typeMatches(n, value)) : typeMatches(type, value);
    if (!matches) {
      fail(walk, path, `must be of type ${Array.isArray(type) ? type.join(' or ') : type}`);
      return; // other keywords would only repeat the mismatch
    }
  }
  if (Array.isArray(s.enum) && !amongOptions(s.enum, s.enum, value, walk, path))
    fail(walk, path, 'must be one of the enum values');
  if ('const' in s && !amongOptions(s, [s.const], value, walk, path))
    fail(walk, path, 'must equal the const value');

  if (typeof value === 'string') visitString(s, value, path, walk);
  else if (isFiniteNumber(value)) visitNumber(s, value, path, walk);
  else if (Array.isArray(value)) visitArray(s, value, path, walk);
  else if (isObject(value)) visitObject(s, value, path, walk);
}

/** The code points of a string (a surrogate pair is one), without making an array of them. */
function codePoints(text: string): number {
  let count = text.length;
  for (let i = 0; i < text.length - 1; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        count--;
        i++;
      }
    }
  }
  return count;
}

function visitString(s: Schema, value: string, path: Path, walk: Walk): void {
  if (s.minLength !== undefined || s.maxLength !== undefined) {
    const length = codePoints(value); // as JSON Schema counts
    if (isCount(s.minLength) && length < (s.minLength as number))
      fail(walk, path, `must be at least ${s.minLength} characters`);
    if (isCount(s.maxLength) && length > (s.maxLength as number))
      fail(walk, path, `must be at most ${s.maxLength} characters`);
  }
  if (typeof s.pattern === 'string') {
    const matched = walk.matcher.test(s.pattern, value);
    if (matched === 'no_match') fail(walk, path, `must match ${s.pattern}`);
    else if (matched === 'invalid_pattern')
      fail(walk, path, 'the schema pattern is not RE2: save the rule again');
    else if (matched === 'over_budget') fail(walk, path, 'too long to check against the schema patterns');
  }
}

function visitNumber(s: Schema, value: number, path: Path, walk: Walk): void {
  if (isFiniteNumber(s.minimum) && value < s.minimum) fail(walk, path, `must be ≥ ${s.minimum}`);
  if (isFiniteNumber(s.maximum) && value > s.maximum) fail(walk, path, `must be ≤ ${s.maximum}`);
  if (isFiniteNumber(s.exclusiveMinimum) && value <= s.exclusiveMinimum)
    fail(walk, path, `must be > ${s.exclusiveMinimum}`);
  if (isFiniteNumber(s.exclusiveMaximum) && value >= s.exclusiveMaximum)
    fail(walk, path, `must be < ${s.exclusiveMaximum}`);
  if (isFiniteNumber(s.multipleOf)) {
    const q = value / s.multipleOf;
    if (Math.abs(q - Math.round(q)) > 1e-9) fail(walk, path, `must be a multiple of ${s.multipleOf}`);
  }
}

function visitArray(s: Schema, value: unknown[], path: Path, walk: Walk): void {
  if (isCount(s.minItems) && value.length < (s.minItems as number))
    fail(walk, path, `must have at least ${s.minItems} items`);
  if (isCount(s.maxItems) && value.length > (s.maxItems as number))
    fail(walk, path, `must have at most ${s.maxItems} items`);
  if (s.items === undefined) return;
  for (let i = 0; i < value.length; i++) visit(s.items, value[i], { up: path, key: i }, walk);
}

function visitObject(s: Schema, value: Record<string, unknown>, path: Path, walk: Walk): void {
  if (Array.isArray(s.required)) {
    // A long `required` costs its length on every object it applies to.
    spend(walk, s.required.length, path);
    for (const name of s.required as string[]) {
      if (!Object.hasOwn(value, name)) fail(walk, { up: path, key: name }, 'is required');
    }
  }
  const properties = isObject(s.properties) ? s.properties : undefined;
  for (const name of Object.keys(value)) {
    const inner =
      properties !== undefined && Object.hasOwn(properties, name) ? properties[name] : s.additionalProperties;
    if (inner !== undefined) visit(inner, value[name], { up: path, key: name }, walk);
    else spend(walk, 1, path);
  }
}
