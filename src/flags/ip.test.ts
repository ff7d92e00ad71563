// IN_CIDR and the remoteAddress strategy, Steward's engine against unleash-client's own
// evaluator (its operator table and its RemoteAddressStrategy), with no server in between.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Context, Strategy as SdkStrategy } from 'unleash-client';
import SdkRemoteAddress from 'unleash-client/lib/strategy/remote-addresss-strategy.js';
import { createFlagEngine } from './engine.ts';
import { parseIp4, parseIp6 } from './ip.ts';
import type { Strategy } from './types.ts';

// The deep import is CommonJS: under ESM its `default` export arrives as a property.
const sdkRemoteAddress = new SdkRemoteAddress.default();
const sdkDefault = new SdkStrategy('default', true);

const sdkInCidr = (values: string[], address: string) =>
  sdkDefault.isEnabledWithConstraints(
    {},
    { remoteAddress: address } as Context,
    [{ contextName: 'remoteAddress', operator: 'IN_CIDR', values, inverted: false }] as never,
  );
const sdkIps = (ips: string, address: string) =>
  sdkRemoteAddress.isEnabled({ IPs: ips }, { remoteAddress: address } as Context);

const engineWith = (strategy: Strategy) =>
  createFlagEngine({ features: [{ name: 'f', enabled: true, strategies: [strategy] }] });
const ours = (strategy: Strategy) => {
  const engine = engineWith(strategy);
  return (address: string) => engine.isEnabled('f', { remoteAddress: address });
};
const oursInCidr = (values: string[]) =>
  ours({ name: 'default', constraints: [{ contextName: 'remoteAddress', operator: 'IN_CIDR', values }] });
const oursIps = (ips: string) => ours({ name: 'remoteAddress', parameters: { IPs: ips } });

const ADDRESSES = [
  '10.0.0.5',
  '10.0.1.7',
  '10.255.255.255',
  '11.0.0.1',
  '0.0.0.0',
  '255.255.255.255',
  '::ffff:10.0.0.5',
  '::ffff:a00:5',
  '::FFFF:0A00:0005',
  '::10.0.0.5',
  '10.0.0.0/25',
  '10.0.0.5/32',
  '10.0.0.5/8',
  '10.0.0.5/08',
  '10.0.0.5/0',
  '10.0.0.5/33',
  '10.0.0.5/032',
  '10.0.0.5/',
  '010.0.0.5',
  '10.0.0.256',
  '10.0.0',
  '10.0.0.5.6',
  ' 10.0.0.5',
  '10.0.0.5 ',
  '10.0.0.5%eth0',
  '2001:db8::9',
  '2001:DB8::9',
  '2001:0db8:0000:0000:0000:0000:0000:0009',
  '2001:db8::9%eth0',
  '2001:db8::9/64%eth0',
  '2001:db8::/48',
  '2001:db8::9/129',
  '2001:db9::1',
  'fe80::1%eth0',
  'fe80::1%a/b',
  'fe80::1%a/12',
  'fe80::1%a\nb',
  '::',
  '::1',
  '::/0',
  '1:2:3:4:5:6:7:8',
  '1:2:3:4:5:6:7:8:9',
  '1:2:3:4:5:6:7::',
  '1:2:3:4:5:6:7:8::',
  '1::2::3',
  '1:::2',
  ':1::2',
  '1::2:',
  '12345::1',
  '::ffff:010.0.0.5',
  '::ffff:10.0.0.5/104',
  '',
  'junk',
  '0.0.0.0/0',
];

const RANGES = [
  '::/0',
  '::ffff:0:0/96',
  '::ffff:10.0.0.0/104',
  '::ffff:10.0.0.5',
  '10.0.0.0/8',
  '10.0.0.0/08',
  '10.0.0.0/24',
  '10.0.0.0/25',
  '10.0.0.5',
  '10.0.0.5/24',
  '10.0.0.5/8',
  '0.0.0.0/0',
  '10.0.0.0/33',
  '010.0.0.0/8',
  ' 10.0.0.0/8 ',
  '2001:db8::/32',
  '2001:db8::9',
  '2001:db8::9/64',
  '2001:DB8::/32',
  '2001:db8::/129',
  'fe80::/10',
  'fe80::1%eth1',
  '::1',
  'junk',
  '',
];

const disagreements = (check: (range: string, address: string) => string | undefined) =>
  RANGES.flatMap((range) => ADDRESSES.map((address) => check(range, address))).filter((d) => d !== undefined);

describe('IP matching agrees with unleash-client', () => {
  it('IN_CIDR, one range against every address shape', () => {
    const found = disagreements((range, address) => {
      const sdk = sdkInCidr([range], address);
      const steward = oursInCidr([range])(address);
      return sdk === steward ? undefined : `IN_CIDR [${JSON.stringify(range)}] ${JSON.stringify(address)}`;
    });
    assert.deepEqual(found, []);
  });

  it('IN_CIDR, several ranges at once (both families)', () => {
    const lists = [RANGES, ['10.0.0.0/8', '2001:db8::/32'], ['2001:db8::/32'], ['10.0.0.0/8', 'junk']];
    for (const values of lists) {
      const steward = oursInCidr(values);
      for (const address of ADDRESSES)
        assert.equal(steward(address), sdkInCidr(values, address), `${values.join(',')} ${address}`);
    }
  });

  it('the remoteAddress strategy, one entry and lists', () => {
    const found = disagreements((range, address) => {
      const sdk = sdkIps(range, address);
      const steward = oursIps(range)(address);
      return sdk === steward ? undefined : `IPs ${JSON.stringify(range)} ${JSON.stringify(address)}`;
    });
    assert.deepEqual(found, []);
    for (const ips of ['10.0.0.0/8, 2001:db8::/32, junk', RANGES.join(','), ' 10.0.0.0/8 ,, ::1']) {
      const steward = oursIps(ips);
      for (const address of ADDRESSES)
        assert.equal(steward(address), sdkIps(ips, address), `${ips} ${address}`);
    }
  });

  it('the cases reported: the families stay apart, CIDR-shaped addresses are read', () => {
    assert.equal(oursInCidr(['::/0'])('10.0.0.5'), false);
    assert.equal(oursInCidr(['::ffff:0:0/96'])('10.0.0.5'), false);
    assert.equal(oursInCidr(['10.0.0.0/8'])('::ffff:10.0.0.5'), false);
    assert.equal(oursInCidr(['::ffff:10.0.0.0/104'])('10.0.1.7'), false);
    assert.equal(oursInCidr(['::ffff:10.0.0.0/104'])('::ffff:10.0.1.7'), true);
    assert.equal(oursInCidr(['10.0.0.0/8'])('10.0.0.0/25'), true);
    assert.equal(oursInCidr(['10.0.0.0/8'])('10.0.0.5/32'), true);
    assert.equal(oursIps('10.0.0.0/8')('::ffff:10.0.0.5'), false);
    assert.equal(oursIps('10.0.0.0/8')('10.0.0.0/25'), true);
  });

  // Strings made by mutating the tables: what the parser accepts must be what ip-address accepts.
  it('agrees on mutated strings (seeded, reproducible)', () => {
    // A linear congruential generator (Numerical Recipes' constants): seeded, so a failure replays.
    let state = 20_250_601;
    const random = () => {
      state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
      return state / 2 ** 32;
    };
    const alphabet = '0123456789abcdefABCDEF:./% x\n';
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)] as T;
    const mutate = (s: string) => {
      const chars = [...s];
      for (let n = 1 + Math.floor(random() * 3); n > 0; n--) {
        const at = Math.floor(random() * (chars.length + 1));
        const op = random();
        if (op < 0.4) chars.splice(at, 1);
        else if (op < 0.7) chars.splice(at, 0, pick([...alphabet]));
        else chars.splice(at, 1, pick([...alphabet]));
      }
      return chars.join('');
    };
    const found: string[] = [];
    for (let i = 0; i < 3000 && found.length < 10; i++) {
      const range = random() < 0.5 ? mutate(pick(RANGES)) : pick(RANGES);
      const addresses = Array.from({ length: 8 }, () => mutate(pick(ADDRESSES)));
      const cidr = oursInCidr([range]);
      const ips = oursIps(range);
      for (const address of addresses) {
        if (cidr(address) !== sdkInCidr([range], address))
          found.push(`IN_CIDR [${JSON.stringify(range)}] ${JSON.stringify(address)}`);
        if (ips(address) !== sdkIps(range, address))
          found.push(`IPs ${JSON.stringify(range)} ${JSON.stringify(address)}`);
      }
    }
    assert.deepEqual(found, []);
  });
});

describe('parseIp4 / parseIp6', () => {
  it('read prefixes and IPv4 tails as ip-address does', () => {
    assert.deepEqual(parseIp4('10.0.0.5/08'), { value: 0x0a000005, prefix: 8 });
    assert.deepEqual(parseIp4('255.255.255.255'), { value: 0xffffffff, prefix: 32 });
    assert.equal(parseIp4('10.0.0.5/033'), undefined);
    assert.deepEqual(parseIp6('::ffff:10.0.0.5/104%eth0'), {
      groups: [0, 0, 0, 0, 0, 0xffff, 0x0a00, 5],
      prefix: 104,
    });
    assert.equal(parseIp6('10.0.0.5'), undefined);
    assert.equal(parseIp6('::/0/1'), undefined);
  });
});
