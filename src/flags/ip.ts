// IP addresses as unleash-client reads them. The SDK parses with the `ip-address` package
// (Address4 / Address6); this file reproduces exactly what that parser accepts and how its
// isInSubnet answers, because Unleash's behaviour is the specification here, quirks included:
// - IPv4 and IPv6 are separate worlds: 10.0.0.5 is not in ::/0 nor in ::ffff:0:0/96, and
//   ::ffff:10.0.0.5 is not in 10.0.0.0/8.
// - An address may carry a prefix of its own (10.0.0.0/25); it is inside a range when its
//   prefix is at least as long as the range's and the range's bits agree.
// - IPv4 octets have no leading zeros; IPv6 may carry a zone (%eth0), which is ignored.
// Ranges are parsed once at compile time; IPv4 context values parse without allocating,
// since IN_CIDR and remoteAddress sit on the evaluation hot path.

/** A parsed IPv4 address with the prefix written after it (32 when none). */
export interface Ip4 {
  readonly value: number;
  readonly prefix: number;
}

/** A parsed IPv6 address: eight 16-bit groups, plus the prefix written after it (128 when none). */
export interface Ip6 {
  readonly groups: readonly number[];
  readonly prefix: number;
}

const DOT = 46;
const SLASH = 47;
const ZERO = 48;
const NINE = 57;
const isDigit = (c: number) => c >= ZERO && c <= NINE;

/**
 * A strict dotted quad in s[start, end) (no leading zeros, each octet ≤ 255) as an unsigned
 * 32-bit number; -1 when it is not one.
 */
function dottedQuad(s: string, start: number, end: number): number {
  let value = 0;
  let octets = 0;
  let i = start;
  while (octets < 4) {
    const first = i;
    let octet = 0;
    while (i < end && isDigit(s.charCodeAt(i))) {
      octet = octet * 10 + s.charCodeAt(i) - ZERO;
      i++;
    }
    const digits = i - first;
    if (digits === 0 || digits > 3 || octet > 255) return -1;
    if (digits > 1 && s.charCodeAt(first) === ZERO) return -1;
    value = value * 256 + octet;
    octets++;
    if (octets < 4) {
      if (i >= end || s.charCodeAt(i) !== DOT) return -1;
      i++;
    }
  }
  return i === end ? value : -1;
}

/**
 * Parses as Address4 does: a dotted quad, optionally followed by `/` and one or two digits
 * (`/08` reads as 8) up to 32. Returns value × 64 + prefix, or -1 — one number, so that the
 * hot path allocates nothing.
 */
export function parseIp4Packed(s: string): number {
  const n = s.length;
  let end = n;
  let prefix = 32;
  // Address4 takes the suffix only as /\/\d{1,2}$/: "/033" is no suffix and fails as a whole.
  if (n >= 2 && isDigit(s.charCodeAt(n - 1))) {
    if (s.charCodeAt(n - 2) === SLASH) {
      prefix = s.charCodeAt(n - 1) - ZERO;
      end = n - 2;
    } else if (n >= 3 && isDigit(s.charCodeAt(n - 2)) && s.charCodeAt(n - 3) === SLASH) {
      prefix = (s.charCodeAt(n - 2) - ZERO) * 10 + s.charCodeAt(n - 1) - ZERO;
      end = n - 3;
    }
    if (prefix > 32) return -1;
  }
  const value = dottedQuad(s, 0, end);
  return value < 0 ? -1 : value * 64 + prefix;
}

/** Parses as Address4 does; undefined for anything it refuses. */
export function parseIp4(s: string): Ip4 | undefined {
  const packed = parseIp4Packed(s);
  return packed < 0 ? undefined : { value: Math.floor(packed / 64), prefix: packed % 64 };
}

// Address6's own expressions: a suffix is the first `/` and 1–3 digits before a zone or the end.
const V6_SUBNET = /\/\d{1,3}(?=%|$)/;
const V6_BAD_CHARACTER = /[^0-9a-f:/%]/i;
const V6_BAD_ADDRESS = /[0-9a-f]{5,}|:{3,}|[^:]:$|^:[^:]|\/$/i;
// A zone runs to the end and holds no line terminator (Address6 tests it with /^.*$/).
const LINE_TERMINATOR = /[\n\r\u2028\u2029]/;
const V6_GROUPS = 8;
// Five characters for each of six groups, then a 15-character dotted quad.
const V6_LONGEST = V6_GROUPS * 5 + 5;

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

/** Parses as Address6 does; undefined for anything it refuses. */
export function parseIp6(input: string): Ip6 | undefined {
  let s = input;
  let prefix = 128;
  const subnet = V6_SUBNET.exec(s);
  if (subnet !== null) {
    prefix = Number.parseInt(subnet[0].slice(1), 10);
    if (prefix > 128) return undefined;
    s = s.slice(0, subnet.index) + s.slice(subnet.index + subnet[0].length);
  }
  if (s.includes('/')) return undefined;
  const zone = s.indexOf('%');
  if (zone >= 0) {
    // Address6 keeps such a zone in the address, where its line terminator is refused.
    if (LINE_TERMINATOR.test(s.slice(zone))) return undefined;
    s = s.slice(0, zone);
  }
  if (s.length > V6_LONGEST) return undefined;
  if (s.includes('.')) {
    // An IPv4 tail (::ffff:10.0.0.5) stands for the last two groups.
    const lastColon = s.lastIndexOf(':');
    const quad = dottedQuad(s, lastColon + 1, s.length);
    if (quad < 0) return undefined;
    s = `${s.slice(0, lastColon + 1)}${hex4(Math.floor(quad / 0x10000))}:${hex4(quad % 0x10000)}`;
  }
  if (V6_BAD_CHARACTER.test(s) || V6_BAD_ADDRESS.test(s)) return undefined;
  const groups = expandGroups(s);
  if (groups === undefined) return undefined;
  return { groups: groups.map((g) => Number.parseInt(g, 16)), prefix };
}

/** The eight groups, `::` expanded; undefined when they do not come to eight. */
function expandGroups(s: string): string[] | undefined {
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const [head = '', tail] = halves;
  if (tail === undefined) {
    const groups = s.split(':');
    return groups.length === V6_GROUPS ? groups : undefined;
  }
  const first = head === '' ? [] : head.split(':');
  const last = tail === '' ? [] : tail.split(':');
  // `::` must stand for at least one group.
  const missing = V6_GROUPS - first.length - last.length;
  if (missing <= 0) return undefined;
  return [...first, ...Array<string>(missing).fill('0'), ...last];
}

/** A compiled IPv4 range: the test for a packed address (see parseIp4Packed). */
export type Ip4Test = (packed: number) => boolean;

const maskOf = (prefix: number) => (prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0);

/** Address4's isInSubnet: the address's prefix is no shorter and the range's bits agree. */
export function ip4InSubnet(range: Ip4): Ip4Test {
  const mask = maskOf(range.prefix);
  const network = (range.value & mask) >>> 0;
  return (packed) => packed % 64 >= range.prefix && (Math.floor(packed / 64) & mask) >>> 0 === network;
}

/** IN_CIDR's IPv4 test: the same address (whatever either prefix), or isInSubnet. */
export function ip4InCidr(range: Ip4): Ip4Test {
  const inSubnet = ip4InSubnet(range);
  return (packed) => Math.floor(packed / 64) === range.value || inSubnet(packed);
}

/** IN_CIDR's IPv6 test: the same address (zones and prefixes aside), or isInSubnet. */
export function ip6InCidr(range: Ip6): (address: Ip6) => boolean {
  const r = range.groups;
  const whole = range.prefix >>> 4;
  const partBits = range.prefix & 15;
  const partMask = partBits === 0 ? 0 : (0xffff << (16 - partBits)) & 0xffff;
  const inSubnet = (a: readonly number[]) => {
    for (let i = 0; i < whole; i++) if (a[i] !== r[i]) return false;
    return partMask === 0 || (((a[whole] as number) ^ (r[whole] as number)) & partMask) === 0;
  };
  const same = (a: readonly number[]) => {
    for (let i = 0; i < V6_GROUPS; i++) if (a[i] !== r[i]) return false;
    return true;
  };
  return (address) => same(address.groups) || (address.prefix >= range.prefix && inSubnet(address.groups));
}
