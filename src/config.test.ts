import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { configTable } from '../scripts/config-table.ts';
import { ConfigError, configVariables, loadConfig } from './config.ts';

describe('configuration', () => {
  test('defaults: embedded database on 127.0.0.1:8080, 1 MiB bodies', () => {
    const config = loadConfig({});
    assert.equal(config.HOST, '127.0.0.1');
    assert.equal(config.PORT, 8080);
    assert.equal(config.STEWARD_DATA_DIR, './data');
    assert.equal(config.DATABASE_URL, undefined);
    assert.equal(config.BODY_LIMIT_BYTES, 1048576);
    assert.equal(config.STEWARD_MASTER_KEY, undefined, 'no default for a secret');
  });

  test('lists and numbers are parsed; empty means unset', () => {
    const config = loadConfig({
      PORT: '',
      CORS_ORIGINS: 'https://a.example, https://b.example',
      TRUST_PROXY: '10.0.0.0/8',
    });
    assert.equal(config.PORT, 8080);
    assert.deepEqual(config.CORS_ORIGINS, ['https://a.example', 'https://b.example']);
    assert.deepEqual(config.TRUST_PROXY, ['10.0.0.0/8']);
  });

  test('a wrong value is one line naming the variable, without echoing the value', () => {
    const cases: Record<string, string> = {
      PORT: 'eighty',
      DATABASE_URL: 'mysql://user:hunter2@db/x',
      REDIS_URL: 'not a url hunter2',
      LOG_LEVEL: 'loud',
      BODY_LIMIT_BYTES: '12',
      REDIS_PREFIX: 'staging hunter2',
      // The first superuser's address is a new account's: within RFC 5321's limits.
      STEWARD_ADMIN_EMAIL: `${'a'.repeat(65)}@example.com`,
    };
    for (const [name, value] of Object.entries(cases)) {
      assert.throws(
        () => loadConfig({ [name]: value }),
        (error: unknown) =>
          error instanceof ConfigError &&
          error.message.startsWith(`Invalid ${name}:`) &&
          !error.message.includes('\n') &&
          !error.message.includes('hunter2'),
        name,
      );
    }
  });

  test('a first superuser address of 64 octets before the @ is accepted', () => {
    const email = `${'a'.repeat(64)}@example.com`;
    assert.equal(loadConfig({ STEWARD_ADMIN_EMAIL: email }).STEWARD_ADMIN_EMAIL, email);
  });

  test('the process stops at boot with that line and exit code 2', () => {
    const run = spawnSync(process.execPath, ['bin/steward.js', 'serve'], {
      env: { ...process.env, PORT: 'eighty' },
      encoding: 'utf8',
      timeout: 30000,
    });
    assert.equal(run.status, 2);
    assert.equal(run.stderr.trim().split('\n').length, 1, run.stderr);
    assert.match(run.stderr, /^steward: Invalid PORT:/);
  });

  test("the README's configuration table is the schema's, variable for variable", () => {
    const readme = readFileSync('README.md', 'utf8');
    assert.ok(
      readme.includes(configTable()),
      'README table is stale: run node --import tsx scripts/config-table.ts',
    );
    for (const name of configVariables) assert.ok(readme.includes(`\`${name}\``), name);
  });
});
