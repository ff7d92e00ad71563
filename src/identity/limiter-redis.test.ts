import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { pausableProxy } from '../../test/helpers/redis-proxy.ts';
import { openTestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
import { createKeyRateLimiters } from '../keys/limits.ts';
import { createLoginIpLimiter } from './limiter.ts';
import { ADMIN } from './test-support.ts';

const REDIS_URL = process.env.REDIS_URL;
const skip = REDIS_URL
  ? false
  : 'REDIS_URL is not set: the per-IP login limiter across instances needs Redis (CI always sets it)';

describe('per-IP login limiter shared by two instances over Redis', { skip }, () => {
  test('failures on A and B add up: the IP is refused on both, other IPs are not', async () => {
    // A random address from the benchmarking range, so parallel runs sharing the Redis never meet.
    const ip = `198.18.${randomInt(256)}.${randomInt(1, 255)}`;
    const other = `198.19.${randomInt(256)}.${randomInt(1, 255)}`;
    const store = await openTestStore('pglite');
    const keyring = createKeyring(randomBytes(32));
    const config = loadConfig({
      LOG_LEVEL: 'silent',
      REDIS_URL: REDIS_URL ?? '',
      LOGIN_IP_MAX_FAILURES: '4',
      LOGIN_IP_WINDOW_SECONDS: '60',
    });
    const a = await buildApp(config, { db: store.db, keyring });
    const b = await buildApp(config, { db: store.db, keyring });
    const redis = new Redis(REDIS_URL ?? '');
    try {
      await Promise.all([a.ready(), b.ready()]);
      await a.steward.identity.bootstrap(ADMIN);
      const login = (app: FastifyInstance, password: string, from = ip) =>
        app.inject({
          method: 'POST',
          url: '/v1/auth/login',
          remoteAddress: from,
          payload: { email: ADMIN.email, password },
        });

      for (const app of [a, b, a]) {
        const res = await login(app, 'a wrong password');
        assert.equal(res.statusCode, 401, res.body);
      }
      // Three failures of four: still allowed, and a success does not count.
      assert.equal((await login(b, ADMIN.password)).statusCode, 200);
      assert.equal((await login(b, 'a wrong password')).statusCode, 401);

      for (const app of [a, b]) {
        const refused = await login(app, ADMIN.password);
        assert.equal(refused.statusCode, 429, refused.body);
        assert.equal(refused.json().code, 'rate_limited');
        const retry = Number(refused.headers['retry-after']);
        assert.ok(retry > 0 && retry <= 60, `retry-after ${retry}`);
      }
      assert.equal((await login(a, ADMIN.password, other)).statusCode, 200, 'another IP is not limited');
      assert.equal((await login(b, ADMIN.password, other)).statusCode, 200);
    } finally {
      await redis.del(`steward:login-ip:${ip}`, `steward:login-ip:${other}`).catch(() => 0);
      redis.disconnect();
      await a.close();
      await b.close();
      await store.dispose();
    }
  });

  test('40 logins at once from one IP over A and B: at most the limit are checked, the rest 429', async () => {
    const ip = `198.18.${randomInt(256)}.${randomInt(1, 255)}`;
    const store = await openTestStore('pglite');
    const keyring = createKeyring(randomBytes(32));
    const config = loadConfig({
      LOG_LEVEL: 'silent',
      REDIS_URL: REDIS_URL ?? '',
      LOGIN_IP_MAX_FAILURES: '4',
      LOGIN_IP_WINDOW_SECONDS: '60',
    });
    const a = await buildApp(config, { db: store.db, keyring });
    const b = await buildApp(config, { db: store.db, keyring });
    const redis = new Redis(REDIS_URL ?? '');
    try {
      await Promise.all([a.ready(), b.ready()]);
      await a.steward.identity.bootstrap(ADMIN);
      const answers = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          (i % 2 ? a : b).inject({
            method: 'POST',
            url: '/v1/auth/login',
            remoteAddress: ip,
            payload: { email: `nobody${i}@example.com`, password: 'a wrong password' },
          }),
        ),
      );
      const statuses = answers.map((r) => r.statusCode);
      assert.equal(statuses.filter((s) => s === 401).length, 4, JSON.stringify(statuses));
      assert.equal(statuses.filter((s) => s === 429).length, 36, JSON.stringify(statuses));
      // Refusals gave back what they took: the count is the four failures.
      assert.equal(Number(await redis.get(`steward:login-ip:${ip}`)), 4);
    } finally {
      await redis.del(`steward:login-ip:${ip}`).catch(() => 0);
      redis.disconnect();
      await a.close();
      await b.close();
      await store.dispose();
    }
  });

  test('deployments sharing one Redis with their own REDIS_PREFIX keep their own counts', async () => {
    // Before session 10 every deployment wrote `steward:login-ip:<ip>`: failures against a staging
    // deployment refused the same IP's logins to production when both used one Redis.
    const ip = `198.18.${randomInt(256)}.${randomInt(1, 255)}`;
    const prefix = `test-${randomBytes(6).toString('hex')}`;
    const redis = new Redis(REDIS_URL ?? '');
    const staging = await createLoginIpLimiter({
      maxFailures: 2,
      windowSeconds: 60,
      redisUrl: REDIS_URL,
      redisPrefix: `${prefix}-staging`,
    });
    const production = await createLoginIpLimiter({
      maxFailures: 2,
      windowSeconds: 60,
      redisUrl: REDIS_URL,
      redisPrefix: `${prefix}-production`,
    });
    const keys = await createKeyRateLimiters({ redisUrl: REDIS_URL, redisPrefix: prefix });
    try {
      for (let i = 0; i < 2; i++) {
        const attempt = await staging.reserve(ip);
        assert.ok('fail' in attempt, 'within the limit');
        attempt.fail();
        await attempt.release();
      }
      assert.ok('waitMs' in (await staging.reserve(ip)), 'staging refuses the IP');
      const elsewhere = await production.reserve(ip);
      assert.ok('fail' in elsewhere, 'production does not');
      await elsewhere.release();
      assert.equal(Number(await redis.get(`${prefix}-staging:login-ip:${ip}`)), 2);
      assert.equal(await redis.get(`steward:login-ip:${ip}`), null);
      // API-key rate limits live under the prefix too.
      await keys.forLimit(5, 60).consume('key_x');
      assert.equal(Number(await redis.get(`${prefix}:key-rl:5/60:key_x`)), 1);
    } finally {
      await redis
        .del(
          `${prefix}-staging:login-ip:${ip}`,
          `${prefix}-production:login-ip:${ip}`,
          `${prefix}-staging:login-ip-busy:${ip}`,
          `${prefix}-production:login-ip-busy:${ip}`,
          `${prefix}:key-rl:5/60:key_x`,
        )
        .catch(() => 0);
      redis.disconnect();
      await Promise.all([staging.close(), production.close(), keys.close()]);
    }
  });

  test('a Redis that stops answering does not hold logins: the insurance answers, then at once', async () => {
    // The identity limiter had no watch: during a partition (socket open, nothing answered) every
    // one of a login's limiter calls paid the command timeout for as long as it lasted.
    const proxy = await pausableProxy(new URL(REDIS_URL ?? ''));
    const limiter = await createLoginIpLimiter({
      maxFailures: 5,
      windowSeconds: 60,
      redisUrl: proxy.url,
      redisPrefix: `test-${randomBytes(6).toString('hex')}`,
    });
    const ip = `198.18.${randomInt(256)}.${randomInt(1, 255)}`;
    const attempt = async () => {
      const started = performance.now();
      const point = await limiter.reserve(ip);
      assert.ok('release' in point, 'a point, from the insurance limiter');
      const slot = await limiter.enterAccount('account-key');
      await slot.leave();
      await point.release();
      return performance.now() - started;
    };
    try {
      await attempt();
      proxy.pause();
      const first = await attempt();
      assert.ok(first < 3000, `first attempt during the partition: ${first.toFixed(0)} ms`);
      await new Promise((r) => setTimeout(r, 2000)); // the watch's ping times out and drops the link
      const later = await attempt();
      assert.ok(later < 250, `later attempts fail over at once: ${later.toFixed(0)} ms`);
    } finally {
      proxy.resume();
      await limiter.close();
      await proxy.close();
    }
  });

  test("the account's proofs in flight never count below zero, and a lost leave expires in 30 s", async () => {
    // Before, the count was a fixed-window counter: a window that ended with proofs in flight
    // had their leaves make it negative (−5 after five), and the next burst checked five passwords
    // more than the limit. The probe forced it with PEXPIRE; deleting the key is the same.
    const prefix = `test-${randomBytes(6).toString('hex')}`;
    const redis = new Redis(REDIS_URL ?? '');
    const limiter = await createLoginIpLimiter({
      maxFailures: 5,
      windowSeconds: 60,
      redisUrl: REDIS_URL,
      redisPrefix: prefix,
    });
    const key = `${prefix}:login-account-busy:acct`;
    try {
      const slots = [];
      for (let i = 1; i <= 5; i++) {
        const slot = await limiter.enterAccount('acct');
        assert.equal(slot.count, i);
        slots.push(slot);
      }
      await redis.del(key); // the store lost them (an expiry, a restart)
      for (const slot of slots) await slot.leave();
      const next = await limiter.enterAccount('acct');
      assert.equal(next.count, 1, 'counted from zero, not below');
      // A member whose leave never arrives is gone on its own within 30 s.
      const [, score] = await redis.zrange(key, 0, 0, 'WITHSCORES');
      assert.ok(Number(score) <= Date.now() + 30_000 && Number(score) > Date.now() + 20_000, String(score));
      assert.ok((await redis.pttl(key)) <= 30_000);
      await next.leave();
      await next.leave(); // once is enough; twice changes nothing
      assert.equal(await redis.zcard(key), 0);
      assert.equal((await limiter.enterAccount('acct')).count, 1);
    } finally {
      await redis.del(key).catch(() => 0);
      redis.disconnect();
      await limiter.close();
    }
  });

  test('Redis gone: logins and password changes answer (the bus hint is lost, not the request)', async () => {
    // A regression probe: with Redis unreachable every login answered 500 although its session had
    // committed (the user-changed hint's publish failed and its error went through).
    const proxy = await pausableProxy(new URL(REDIS_URL ?? ''));
    const store = await openTestStore('pglite');
    const config = loadConfig({
      LOG_LEVEL: 'silent',
      REDIS_URL: proxy.url,
      REDIS_PREFIX: `test-${randomBytes(6).toString('hex')}`,
    });
    const app = await buildApp(config, { db: store.db, keyring: createKeyring(randomBytes(32)) });
    try {
      await app.ready();
      await app.steward.identity.bootstrap(ADMIN);
      await proxy.close(); // connection refused from now on
      const login = await app.inject({ method: 'POST', url: '/v1/auth/login', payload: ADMIN });
      assert.equal(login.statusCode, 200, login.body);
      const changed = await app.inject({
        method: 'POST',
        url: '/v1/auth/password',
        headers: { authorization: `Bearer ${login.json().access_token}` },
        payload: { current_password: ADMIN.password, new_password: 'a brand new passphrase for 2026' },
      });
      assert.equal(changed.statusCode, 200, changed.body);
    } finally {
      await app.close();
      await store.dispose();
    }
  });
});
