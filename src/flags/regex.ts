// Unleash's REGEX operator is specified as RE2 syntax (unleash-client uses re2js). We have no
// RE2 dependency, so patterns are translated to JavaScript RegExp at compile time:
// - constructs RE2 refuses (lookaround, backreferences) are refused here too, so the
//   constraint is false instead of matching where other SDKs would not;
// - inline flags `(?ims)` / `(?ims:…)` are applied to the whole pattern (JS in Node 20 has
//   no scoped modifiers), which differs from RE2 only for patterns that switch flags midway;
// - POSIX classes `[[:alpha:]]`, `\Q…\E`, `\A`, `\z` and `(?P<name>` are rewritten.
// JS regexes backtrack, unlike RE2: a pathological pattern can be slow. Patterns come from
// flag authors, not end users; the route that stores flags should bound their length.

const POSIX: Record<string, string> = {
  alnum: '0-9A-Za-z',
  alpha: 'A-Za-z',
  ascii: '\\x00-\\x7F',
  blank: '\\t ',
  cntrl: '\\x00-\\x1F\\x7F',
  digit: '0-9',
  graph: '\\x21-\\x7E',
  lower: 'a-z',
  print: '\\x20-\\x7E',
  punct: '\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7E',
  space: '\\t\\n\\v\\f\\r ',
  upper: 'A-Z',
  word: '0-9A-Za-z_',
  xdigit: '0-9A-Fa-f',
};

const hex = (ch: string): string => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`;
const isPunct = (ch: string): boolean => /^[!-/:-@[-`{-~]$/.test(ch);

interface Translation {
  source: string;
  flags: Set<string>;
}

function translate(pattern: string): Translation | undefined {
  const flags = new Set<string>();
  let out = '';
  let inClass = false;
  let i = 0;
  while (i < pattern.length) {
    const ch = pattern[i] as string;
    if (ch === '\\') {
      const next = pattern[i + 1];
      if (next === undefined) return undefined;
      if (next === 'Q') {
        const end = pattern.indexOf('\\E', i + 2);
        const literal = pattern.slice(i + 2, end < 0 ? undefined : end);
        for (const c of literal) out += isPunct(c) ? hex(c) : c;
        i = end < 0 ? pattern.length : end + 2;
        continue;
      }
      if (!inClass && /[1-9k]/.test(next)) return undefined;
      if (next === 'Z' || next === 'C') return undefined;
      if (!inClass && next === 'A') out += '(?<![\\s\\S])';
      else if (!inClass && next === 'z') out += '(?![\\s\\S])';
      else out += isPunct(next) ? hex(next) : `\\${next}`;
      i += 2;
      continue;
    }
    if (inClass) {
      if (ch === '[' && pattern[i + 1] === ':') {
        const end = pattern.indexOf(':]', i + 2);
        const name = end < 0 ? undefined : pattern.slice(i + 2, end);
        const expansion = name !== undefined && Object.hasOwn(POSIX, name) ? POSIX[name] : undefined;
        if (expansion === undefined) return undefined;
        out += expansion;
        i = end + 2;
        continue;
      }
      if (ch === ']') inClass = false;
      out += ch === '[' ? '\\[' : ch;
      i++;
      continue;
    }
    if (ch === '[') {
      inClass = true;
      out += '[';
      i++;
      if (pattern[i] === '^') {
        out += '^';
        i++;
      }
      // RE2 reads a `]` right after the opening bracket as a literal; JS would close the class.
      if (pattern[i] === ']') {
        out += '\\]';
        i++;
      }
      continue;
    }
    if (ch === '(' && pattern[i + 1] === '?') {
      const rest = pattern.slice(i + 2);
      if (/^(?:=|!|<=|<!)/.test(rest)) return undefined;
      if (rest.startsWith('P<')) {
        out += '(?<';
        i += 4;
        continue;
      }
      const inline = /^([a-zA-Z-]+)([:)])/.exec(rest);
      if (inline !== null) {
        const [whole, letters, close] = inline as unknown as [string, string, string];
        for (const f of letters) {
          if (f !== 'i' && f !== 'm' && f !== 's') return undefined;
          flags.add(f);
        }
        if (close === ':') out += '(?:';
        i += 2 + whole.length;
        continue;
      }
    }
    out += ch;
    i++;
  }
  return inClass ? undefined : { source: out, flags };
}

/**
 * Compiles an RE2 pattern into a JS RegExp, or undefined when RE2 would refuse it or the
 * translation cannot express it (the constraint then never matches).
 */
export function compileRe2(pattern: string, caseInsensitive: boolean): RegExp | undefined {
  const t = translate(pattern);
  if (t === undefined) return undefined;
  if (caseInsensitive) t.flags.add('i');
  const flags = [...t.flags].join('');
  // `u` makes `.` match a code point as RE2 does; some RE2 literals (a lone `{`) are only
  // legal without it.
  try {
    return new RegExp(t.source, `${flags}u`);
  } catch {
    try {
      return new RegExp(t.source, flags);
    } catch {
      return undefined;
    }
  }
}
