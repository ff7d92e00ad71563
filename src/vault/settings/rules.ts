import { z } from 'zod';
import { httpErrors } from '../../http/errors.ts';
import { checkSchema, equalsOneOf, validate } from './json-schema.ts';
import { createPatternChecker, createPatternMatcher } from './pattern.ts';
import type { SettingRules } from './schema.ts';

/** The types a setting's value may have. */
export const VALUE_TYPES = ['string', 'int', 'float', 'bool', 'json'] as const;
export type ValueType = (typeof VALUE_TYPES)[number];

/** The rules a setting may carry; which apply depends on the value type (see `checkRules`). */
export const rulesSchema = z
  .strictObject({
    min: z.number().optional().describe('int/float: smallest value allowed.'),
    max: z.number().optional().describe('int/float: largest value allowed.'),
    min_length: z.number().int().min(0).optional().describe('string: fewest characters.'),
    max_length: z.number().int().min(0).optional().describe('string: most characters.'),
    pattern: z
      .string()
      .max(500)
      .optional()
      .describe(
        'string: an RE2 regular expression the value must match (no lookaround or backreferences; ' +
          'matched in linear time).',
      ),
    enum: z.array(z.unknown()).min(1).max(200).optional().describe('The value must equal one of these.'),
    json_schema: z
      .record(z.string(), z.unknown())
      .optional()
      .describe('json (or any type): a JSON Schema of the supported subset (see the vault README).'),
  })
  .describe('Validation rules, checked on every write.');

type FieldError = { path: string; message: string };

const fail = (errors: FieldError[]) => {
  const first = errors[0];
  return httpErrors.validation_failed(first ? `${first.path}: ${first.message}` : 'Invalid setting', {
    errors,
  });
};

/**
 * Whether a JSON document holds a number no double can (JSON.parse reads `1e400` as Infinity),
 * at any depth. JSON has no Infinity: stored, it became null. Walked without recursion (a value
 * nested deeper than the stack is still a value the body limit let in).
 */
export function hasNonFiniteNumber(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const next = stack.pop();
    if (typeof next === 'number') {
      if (!Number.isFinite(next)) return true;
    } else if (Array.isArray(next)) {
      for (const item of next) stack.push(item);
    } else if (next !== null && typeof next === 'object') {
      for (const item of Object.values(next)) stack.push(item);
    }
  }
  return false;
}

const NON_FINITE = 'must hold finite numbers only (beyond ±1.8e308 a number cannot be stored)';

function typeError(type: ValueType, value: unknown): string | null {
  switch (type) {
    case 'string':
      return typeof value === 'string' ? null : 'must be a string';
    case 'int':
      return typeof value === 'number' && Number.isSafeInteger(value)
        ? null
        : 'must be an integer (safe range)';
    case 'float':
      return typeof value === 'number' && Number.isFinite(value) ? null : 'must be a finite number';
    case 'bool':
      return typeof value === 'boolean' ? null : 'must be true or false';
    case 'json':
      if (value === undefined) return 'is required';
      return hasNonFiniteNumber(value) ? NON_FINITE : null;
  }
}

/** Refuses rules that cannot apply to the type or contradict each other (400 validation_failed). */
export function checkRules(type: ValueType, rules: SettingRules): void {
  const errors: FieldError[] = [];
  const at = (key: string, message: string) => errors.push({ path: `body.rules.${key}`, message });
  const numeric = type === 'int' || type === 'float';
  if ((rules.min !== undefined || rules.max !== undefined) && !numeric) {
    at(rules.min !== undefined ? 'min' : 'max', 'min and max apply to int and float settings');
  }
  if (rules.min !== undefined && rules.max !== undefined && rules.min > rules.max)
    at('min', 'min is above max');
  if (
    (rules.min_length !== undefined || rules.max_length !== undefined || rules.pattern !== undefined) &&
    type !== 'string'
  ) {
    at(
      rules.pattern !== undefined ? 'pattern' : 'min_length',
      'min_length, max_length and pattern apply to string settings',
    );
  }
  if (
    rules.min_length !== undefined &&
    rules.max_length !== undefined &&
    rules.min_length > rules.max_length
  ) {
    at('min_length', 'min_length is above max_length');
  }
  // One checker for every pattern of the rules: their number and size are limited together, and
  // checking stops at the first refused (pattern.ts).
  const patterns = createPatternChecker();
  if (rules.pattern !== undefined) {
    const problem = patterns.problem(rules.pattern);
    if (problem !== undefined) at('pattern', problem);
  }
  if (rules.enum !== undefined) {
    rules.enum.forEach((option, i) => {
      const why = typeError(type, option);
      if (why !== null) at(`enum.${i}`, `option ${why}`);
    });
  }
  if (rules.json_schema !== undefined && hasNonFiniteNumber(rules.json_schema)) {
    at('json_schema', `the schema ${NON_FINITE}`);
  } else if (rules.json_schema !== undefined) {
    for (const e of checkSchema(rules.json_schema, patterns))
      at(`json_schema${e.path.replaceAll('/', '.')}`, e.message);
  }
  if (errors.length > 0) throw fail(errors);
}

/**
 * Where a value's error is reported. For a secret or encrypted setting nothing derived from the
 * value may appear in a response, and a JSON Schema error's path below `body.value` names the
 * value's keys (`additionalProperties: false` on `{"db_password_prod": …}`): every error is then
 * at `body.value`, each message once.
 */
function valueErrors(errors: FieldError[], hidden: boolean): FieldError[] {
  if (!hidden) return errors;
  const messages = new Set(errors.map((e) => (e.path.startsWith('body.value') ? e.message : '')));
  const masked = [...messages].filter((m) => m !== '').map((message) => ({ path: 'body.value', message }));
  return [...masked, ...errors.filter((e) => !e.path.startsWith('body.value'))];
}

/**
 * Checks a value against its type and rules; throws 400 validation_failed listing every failure
 * (at most MAX_SCHEMA_ERRORS of the JSON Schema's). `hidden`: the setting is secret or encrypted
 * (see `valueErrors`).
 */
export function checkValue(type: ValueType, rules: SettingRules, value: unknown, hidden = false): void {
  const why = typeError(type, value);
  if (why !== null) throw fail([{ path: 'body.value', message: `${why} (value_type ${type})` }]);
  const errors: FieldError[] = [];
  const at = (message: string, rule: string) =>
    errors.push({ path: 'body.value', message: `${message} (rule ${rule})` });
  const matcher = createPatternMatcher();
  if (typeof value === 'number') {
    if (rules.min !== undefined && value < rules.min) at(`must be ≥ ${rules.min}`, 'min');
    if (rules.max !== undefined && value > rules.max) at(`must be ≤ ${rules.max}`, 'max');
  }
  if (typeof value === 'string') {
    const length = [...value].length;
    if (rules.min_length !== undefined && length < rules.min_length)
      at(`must be at least ${rules.min_length} characters`, 'min_length');
    if (rules.max_length !== undefined && length > rules.max_length)
      at(`must be at most ${rules.max_length} characters`, 'max_length');
    if (rules.pattern !== undefined) {
      const matched = matcher.test(rules.pattern, value);
      if (matched === 'no_match') at('does not match the pattern', 'pattern');
      else if (matched === 'over_budget') at('is too long to check against the pattern', 'pattern');
      else if (matched === 'invalid_pattern') {
        errors.push({ path: 'body.rules.pattern', message: 'the saved pattern is not RE2: send new rules' });
      }
    }
  }
  if (rules.enum !== undefined) {
    const found = equalsOneOf(rules.enum, value);
    if (found === 'over_budget') at('is too large to compare with the allowed values', 'enum');
    else if (!found) at('must be one of the allowed values', 'enum');
  }
  if (rules.json_schema !== undefined) {
    for (const e of validate(rules.json_schema, value, matcher)) {
      errors.push({
        path: `body.value${e.path.replaceAll('/', '.')}`,
        message: `${e.message} (rule json_schema)`,
      });
    }
  }
  if (errors.length > 0) throw fail(valueErrors(errors, hidden));
}
