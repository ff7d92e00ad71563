import type { FastifySchemaCompiler } from 'fastify';
import { unstorableIn } from './body.ts';
import { httpErrors } from './errors.ts';

/**
 * Path parameters and query strings hold what PostgreSQL cannot store as easily as bodies do:
 * `%00` decodes to U+0000, which text, varchar and jsonb refuse (a 500 from the driver, in every
 * domain whose route passed the value on). The JSON parser refuses it in bodies (`body.ts`); this
 * wraps the route validators of the two other parts that reach SQL, so every route that declares
 * a params or querystring schema answers 400 `unsupported_character` naming the field, before its
 * own schema runs. (A lone surrogate cannot arrive this way — the router and the query parser
 * decode invalid UTF-8 to U+FFFD or refuse it — but it is checked with the same test.)
 *
 * Cost: the parsed parts are small, flat objects of strings; each value is asked `includes('\0')`
 * and `isWellFormed()`, a few tens of nanoseconds, and only a hit walks the value for its path.
 * Routes without such a schema (the hottest: key verification, whoami) run nothing.
 */
export function refusingUnstorable<S>(inner: FastifySchemaCompiler<S>): FastifySchemaCompiler<S> {
  return (route) => {
    const validate = inner(route);
    const root = route.httpPart === 'params' ? 'params' : route.httpPart === 'querystring' ? 'query' : null;
    if (root === null) return validate;
    return (data: unknown) => {
      if (!isStorable(data)) {
        const problem = unstorableIn(data, root);
        if (problem !== undefined) return { error: httpErrors.unsupported_character(problem) };
      }
      return validate(data);
    };
  };
}

/** True when every string of a flat object (or its arrays, from repeated query keys) is storable. */
function isStorable(data: unknown): boolean {
  if (data === null || typeof data !== 'object') return true;
  const record = data as Record<string, unknown>;
  for (const key in record) {
    const value = record[key];
    if (typeof value === 'string') {
      if (value.includes('\0') || !value.isWellFormed()) return false;
    } else if (value !== undefined) {
      // An array of repeated query keys, or anything unusual: the full walk decides.
      return false;
    }
  }
  return true;
}
