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

import { createPatternMatcher, type PatternMatcher, patternProblem } from './pattern.ts';

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

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const pointer = (path: string, key: string | number) =>
  `${path}/${String(key).replaceAll('~', '~0').replaceAll('/', '~1')}`;

/** Problems with a schema itself (unknown keywords, wrong keyword types); empty when usable. */
export function checkSchema(schema: unknown, path = '', depth = 0): SchemaError[] {
  if (depth > MAX_DEPTH) return [{ path, message: 'schema nests too deeply' }];
  if (typeof schema === 'boolean') return [];
  if (!isObject(schema)) return [{ path, message: 'a schema is an object or a boolean' }];
  const errors: SchemaError[] = [];
  const bad = (key: string, message: string) => errors.push({ path: pointer(path, key), message });
  for (const [key, value] of Object.entries(schema)) {
    if (ANNOTATIONS.has(key)) continue;
    if (!KEYWORDS.has(key)) {
      bad(key, `unsupported keyword (supported: ${[...KEYWORDS].join(', ')})`);
      continue;
    }
    switch (key) {
      case 'type': {
        const names = Array.isArray(value) ? value : [value];
        if (names.length === 0 || !names.every((n) => (TYPES as readonly unknown[]).includes(n))) {
          bad(key, `type must be one of ${TYPES.join(', ')} (or an array of them)`);
        }
        break;
      }
      case 'enum':
        if (!Array.isArray(value) || value.length === 0) bad(key, 'enum must be a non-empty array');
        break;
      case 'properties':
        if (!isObject(value)) bad(key, 'properties must be an object of schemas');
        else
          for (const [name, sub] of Object.entries(value))
            errors.push(...checkSchema(sub, pointer(pointer(path, key), name), depth + 1));
        break;
      case 'required':
        if (!Array.isArray(value) || !value.every((v) => typeof v === 'string'))
          bad(key, 'required must be an array of strings');
        break;
      case 'additionalProperties':
      case 'items':
        errors.push(...checkSchema(value, pointer(path, key), depth + 1));
        break;
      case 'minItems':
      case 'maxItems':
      case 'minLength':
      case 'maxLength':
        if (!isCount(value)) bad(key, `${key} must be a non-negative integer`);
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        if (!isFiniteNumber(value)) bad(key, `${key} must be a number`);
        break;
      case 'multipleOf':
        if (!isFiniteNumber(value) || value <= 0) bad(key, 'multipleOf must be a number above 0');
        break;
      case 'pattern':
        if (typeof value !== 'string' || value.length > MAX_PATTERN) {
          bad(key, `pattern must be a string of at most ${MAX_PATTERN} characters`);
        } else {
          const problem = patternProblem(value);
          if (problem !== undefined) bad(key, `pattern is ${problem}`);
        }
        break;
    }
  }
  return errors;
}

/** JSON equality as JSON Schema defines it (object key order does not matter). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a))
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return (
      ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && jsonEqual(a[k], b[k]))
    );
  }
  return false;
}

function typeMatches(name: string, value: unknown): boolean {
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
 * `matcher`'s budget (pattern.ts), so one value cannot make a write match for long.
 */
export function validate(
  schema: unknown,
  value: unknown,
  path = '',
  matcher: PatternMatcher = createPatternMatcher(),
): SchemaError[] {
  if (schema === true) return [];
  if (schema === false) return [{ path, message: 'no value is allowed here' }];
  if (!isObject(schema)) return [];
  const s = schema as Schema;
  const errors: SchemaError[] = [];
  const fail = (message: string) => errors.push({ path, message });

  if (s.type !== undefined) {
    const names = (Array.isArray(s.type) ? s.type : [s.type]) as string[];
    if (!names.some((n) => typeMatches(n, value))) {
      fail(`must be of type ${names.join(' or ')}`);
      return errors; // other keywords would only repeat the mismatch
    }
  }
  if (Array.isArray(s.enum) && !s.enum.some((e) => jsonEqual(e, value)))
    fail('must be one of the enum values');
  if ('const' in s && !jsonEqual(s.const, value)) fail('must equal the const value');

  if (typeof value === 'string') {
    const length = [...value].length; // code points, as JSON Schema counts
    if (isCount(s.minLength) && length < (s.minLength as number))
      fail(`must be at least ${s.minLength} characters`);
    if (isCount(s.maxLength) && length > (s.maxLength as number))
      fail(`must be at most ${s.maxLength} characters`);
    if (typeof s.pattern === 'string') {
      const matched = matcher.test(s.pattern, value);
      if (matched === 'no_match') fail(`must match ${s.pattern}`);
      else if (matched === 'invalid_pattern') fail('the schema pattern is not RE2: save the rule again');
      else if (matched === 'over_budget') fail('too long to check against the schema patterns');
    }
  }
  if (isFiniteNumber(value)) {
    if (isFiniteNumber(s.minimum) && value < s.minimum) fail(`must be ≥ ${s.minimum}`);
    if (isFiniteNumber(s.maximum) && value > s.maximum) fail(`must be ≤ ${s.maximum}`);
    if (isFiniteNumber(s.exclusiveMinimum) && value <= s.exclusiveMinimum)
      fail(`must be > ${s.exclusiveMinimum}`);
    if (isFiniteNumber(s.exclusiveMaximum) && value >= s.exclusiveMaximum)
      fail(`must be < ${s.exclusiveMaximum}`);
    if (isFiniteNumber(s.multipleOf)) {
      const q = value / s.multipleOf;
      if (Math.abs(q - Math.round(q)) > 1e-9) fail(`must be a multiple of ${s.multipleOf}`);
    }
  }
  if (Array.isArray(value)) {
    if (isCount(s.minItems) && value.length < (s.minItems as number))
      fail(`must have at least ${s.minItems} items`);
    if (isCount(s.maxItems) && value.length > (s.maxItems as number))
      fail(`must have at most ${s.maxItems} items`);
    if (s.items !== undefined)
      value.forEach((item, i) => {
        errors.push(...validate(s.items, item, pointer(path, i), matcher));
      });
  }
  if (isObject(value)) {
    const properties = isObject(s.properties) ? s.properties : {};
    if (Array.isArray(s.required)) {
      for (const name of s.required as string[]) {
        if (!Object.hasOwn(value, name)) errors.push({ path: pointer(path, name), message: 'is required' });
      }
    }
    for (const [name, inner] of Object.entries(value)) {
      if (Object.hasOwn(properties, name))
        errors.push(...validate(properties[name], inner, pointer(path, name), matcher));
      else if (s.additionalProperties !== undefined)
        errors.push(...validate(s.additionalProperties, inner, pointer(path, name), matcher));
    }
  }
  return errors;
}
