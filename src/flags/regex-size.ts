// RE2 refuses a pattern over 1,000 compiled instructions (src/flags/regex.ts), but only once it
// has compiled it, and compiling costs ~2-5 µs per instruction: 500 characters of `a{1000}`
// repeated compile to 71,003 instructions in 150-330 ms, `(a|b){1000}` repeated to 135,003 —
// one such pattern held the event loop that long before being refused. The repeat counts say
// it in advance: `fewestInstructions` reads the pattern (no compiling) and gives a number of
// instructions its program cannot be smaller than, so a pattern above the limit is refused at
// once. It is a lower bound, never a guess above: a pattern it lets through is compiled and
// measured as before, and one it refuses really is too large (tested against re2js).
//
// What it counts: one instruction per literal character, character class, `.` and empty-width
// assertion (`^`, `$`, `\b`: each compiles to one, and RE2 does not fold their repeats — counted as
// none, `(?:^$){1000}` read as 0 and took 1.2 s to compile; measured: 2,000); `x{n,m}` is at
// least m copies of x (`x{n}` and `x{n,}`: n); an alternation is at least its largest branch
// (RE2 factors common prefixes out of the others); `*`, `+` and `?` add nothing. One exception
// to "never above": a class that matches no character at all (`[^\x00-\x{10FFFF}]`) compiles to
// nothing, so such a class repeated past the limit is refused although RE2 would drop it.

/** Where the reading is: the branches of the open group, and the weight of the last atom. */
interface Frame {
  /** The largest branch closed so far. */
  largest: number;
  /** The branch being read. */
  branch: number;
  /** The last atom of the branch (what a repeat applies to). */
  last: number;
}

const REPEAT = /^\{(\d{1,4})(,(\d{0,4}))?\}/;
const MAX_REPEAT = 1000;

/**
 * The fewest instructions RE2 can compile `pattern` to, read from its text; 0 when the text is
 * not understood (RE2 is then left to parse it, and refuse it if it must).
 */
export function fewestInstructions(pattern: string): number {
  const stack: Frame[] = [];
  let frame: Frame = { largest: 0, branch: 0, last: 0 };
  const atom = (weight: number) => {
    frame.branch += weight;
    frame.last = weight;
  };
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i] as string;
    if (c === '\\') {
      const skipped = escapeLength(pattern, i);
      if (skipped === 0) return 0;
      const letter = pattern[i + 1] as string;
      if (letter === 'Q') {
        // \Q…\E: literal characters; a repeat after it applies to the last one alone.
        const end = pattern.indexOf('\\E', i + 2);
        const text = pattern.slice(i + 2, end === -1 ? pattern.length : end);
        frame.branch += [...text].length;
        frame.last = text.length > 0 ? 1 : 0;
        i = end === -1 ? pattern.length : end + 2;
        continue;
      }
      atom(1);
      i += skipped;
    } else if (c === '[') {
      const end = classEnd(pattern, i);
      if (end === -1) return 0;
      atom(1);
      i = end + 1;
    } else if (c === '(') {
      const open = groupOpening(pattern, i);
      if (open === -1) return 0;
      if (pattern[open - 1] === ')') {
        atom(0); // a flag group, `(?i)`: no content
      } else {
        stack.push(frame);
        frame = { largest: 0, branch: 0, last: 0 };
      }
      i = open;
    } else if (c === ')') {
      const closed = Math.max(frame.largest, frame.branch);
      const outer = stack.pop();
      if (outer === undefined) return 0;
      frame = outer;
      atom(closed);
      i++;
    } else if (c === '|') {
      frame.largest = Math.max(frame.largest, frame.branch);
      frame.branch = 0;
      frame.last = 0;
      i++;
    } else if (c === '{' && REPEAT.test(pattern.slice(i, i + 11))) {
      const m = REPEAT.exec(pattern.slice(i, i + 11)) as RegExpExecArray;
      const min = Number(m[1]);
      const max = m[3] === undefined || m[3] === '' ? min : Number(m[3]);
      if (min > MAX_REPEAT || max > MAX_REPEAT) return 0; // RE2 refuses it when parsing
      const copies = Math.max(min, max);
      frame.branch += frame.last * (copies - 1);
      frame.last *= copies;
      i += m[0].length;
    } else {
      // `*`, `+`, `?` add nothing; anything else, `^` and `$` included, is one instruction (one
      // code point: a surrogate pair is one rune to RE2).
      if (c !== '*' && c !== '+' && c !== '?') atom(1);
      i += (pattern.codePointAt(i) as number) > 0xffff ? 2 : 1;
    }
  }
  // An unclosed group is a syntax error RE2 will report.
  return stack.length > 0 ? 0 : Math.max(frame.largest, frame.branch);
}

/**
 * How many characters the escape at `i` takes (`\d`, `\pL`, `\p{Greek}`, `\x41`, `\x{1F600}`,
 * `\123`); 0 if unreadable.
 */
function escapeLength(pattern: string, i: number): number {
  const letter = pattern[i + 1];
  if (letter === undefined) return 0;
  if (letter >= '0' && letter <= '7') {
    // An octal escape: up to three digits in all, one character.
    let end = i + 2;
    while (end < i + 4 && (pattern[end] ?? '') >= '0' && (pattern[end] ?? '') <= '7') end++;
    return end - i;
  }
  if ((letter === 'p' || letter === 'P' || letter === 'x') && pattern[i + 2] === '{') {
    const end = pattern.indexOf('}', i + 3);
    return end === -1 ? 0 : end - i + 1;
  }
  if (letter === 'p' || letter === 'P') return 3;
  if (letter === 'x') return 4;
  return 1 + ((pattern.codePointAt(i + 1) as number) > 0xffff ? 2 : 1);
}

/** The index of the `]` closing the class opened at `i`, or -1. */
function classEnd(pattern: string, i: number): number {
  let j = i + 1;
  if (pattern[j] === '^') j++;
  if (pattern[j] === ']') j++; // a `]` first in a class is a literal
  while (j < pattern.length) {
    const c = pattern[j];
    if (c === '\\') {
      const skipped = escapeLength(pattern, j);
      if (skipped === 0) return -1;
      j += skipped;
    } else if (c === '[' && pattern[j + 1] === ':') {
      const end = pattern.indexOf(':]', j + 2);
      j = end === -1 ? j + 1 : end + 2;
    } else if (c === ']') return j;
    else j++;
  }
  return -1;
}

/**
 * Where the group opened at `i` starts its content: after `(`, `(?:`, `(?i:`, `(?P<name>` or
 * `(?<name>`; after the `)` of a flag group `(?i)` (then the content is empty). -1 if unreadable.
 */
function groupOpening(pattern: string, i: number): number {
  if (pattern[i + 1] !== '?') return i + 1;
  if (pattern[i + 2] === 'P' && pattern[i + 3] === '<') {
    const end = pattern.indexOf('>', i + 4);
    return end === -1 ? -1 : end + 1;
  }
  if (pattern[i + 2] === '<' && pattern[i + 3] !== '=' && pattern[i + 3] !== '!') {
    const end = pattern.indexOf('>', i + 3);
    return end === -1 ? -1 : end + 1;
  }
  const flags = /^\(\?[A-Za-z-]*[:)]/.exec(pattern.slice(i, i + 20));
  return flags === null ? -1 : i + flags[0].length;
}
