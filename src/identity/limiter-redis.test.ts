import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { openTestStore } from '../../test/helpers/stores.ts';
import { buildApp } from '../app.ts';
import { loadConfig } from '../config.ts';
import { createKeyring } from '../crypto/keyring.ts';
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
});
