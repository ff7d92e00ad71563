import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PGlite } from '@electric-sql/pglite';
import { openDatabase } from './client.ts';
import { isId, newId, pooledRandom, prefixOf } from './ids.ts';
import { DataDirLockedError, lockDataDir } from './lock.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'steward-db-'));

describe('ids', () => {
  test('the pooled random source gives every byte value, evenly, across pool refills', () => {
    const random = pooledRandom();
    const counts = new Array<number>(256).fill(0);
    const draws = 256 * 200; // 12.5 pools of 4 KiB
    for (let i = 0; i < draws; i++) {
      const r = random();
      assert.ok(r >= 0 && r < 1 && Number.isInteger(r * 256), String(r));
      counts[r * 256] = (counts[r * 256] ?? 0) + 1;
    }
    // Expected 200 each; a fair source stays within ±50% with overwhelming probability (σ ≈ 14).
    assert.ok(
      counts.every((n) => n > 100 && n < 300),
      `min ${Math.min(...counts)} max ${Math.max(...counts)}`,
    );
  });

  test('typed, well-formed and time-ordered', () => {
    const ids = Array.from({ length: 1000 }, () => newId('evt'));
    assert.ok(ids.every((id) => isId('evt', id)));
    assert.deepEqual([...ids].sort(), ids, 'monotonic within one millisecond too');
    assert.equal(new Set(ids).size, ids.length);
    const key = newId('key');
    assert.equal(prefixOf(key), 'key');
    assert.equal(isId('usr', key), false);
    for (const bad of [
      '',
      'key_',
      'key_123',
      'nope_01JAAAAAAAAAAAAAAAAAAAAAAA',
      'key_01JAAAAAAAAAAAAAAAAAAAAAAU',
    ]) {
      assert.equal(prefixOf(bad), null, bad);
    }
  });
});

describe('data directory lock', () => {
  test('a second holder is refused while the first lives, and admitted after release', () => {
    const dir = tempDir();
    const release = lockDataDir(dir);
    // Another process's pid: the parent of this test process is alive.
    writeFileSync(join(dir, 'steward.lock'), String(process.ppid));
    assert.throws(() => lockDataDir(dir), DataDirLockedError);
    writeFileSync(join(dir, 'steward.lock'), String(process.pid));
    release();
    const again = lockDataDir(dir);
    again();
    rmSync(dir, { recursive: true });
  });

  test('a lock left by a dead process is taken over', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'steward.lock'), '999999999');
    const release = lockDataDir(dir);
    assert.equal(readFileSync(join(dir, 'steward.lock'), 'utf8'), String(process.pid));
    release();
    rmSync(dir, { recursive: true });
  });

  test('a second Steward process on the same folder exits with a clear error', async () => {
    const dir = tempDir();
    const first = await openDatabase({ dataDir: dir });
    const child = spawn(process.execPath, ['bin/steward.js', 'migrate'], {
      env: { ...process.env, STEWARD_DATA_DIR: dir, DATABASE_URL: '' },
    });
    let stderr = '';
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    await first.close();
    rmSync(dir, { recursive: true });
    assert.equal(code, 2);
    assert.match(stderr, /in use by another Steward process \(pid \d+\)/);
    assert.doesNotMatch(stderr, /\n\s+at /, 'one line, no stack trace');
  });
});

describe('PGlite durability (fsync is off)', () => {
  test('committed transactions survive kill -9 of the writer, every time', async () => {
    const dir = tempDir();
    const rounds = 3;
    let lastAcknowledged = 0;
    for (let round = 0; round < rounds; round++) {
      const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/crash-writer.ts', dir]);
      lastAcknowledged = await new Promise<number>((resolve) => {
        let last = 0;
        let buffered = '';
        child.stdout.on('data', (chunk: Buffer) => {
          buffered += chunk.toString();
          const lines = buffered.split('\n');
          buffered = lines.pop() ?? '';
          for (const line of lines) last = Number(line);
          // Kill mid-stream, after a varying number of commits.
          if (last >= lastAcknowledged + 50 + round * 37) child.kill('SIGKILL');
        });
        child.on('exit', () => resolve(last));
      });
    }
    const db = await PGlite.create(dir);
    const { rows } = await db.query<{ n: number; c: number }>(
      'select max(n) as n, count(*)::int as c from crash_probe',
    );
    await db.close();
    rmSync(dir, { recursive: true });
    assert.ok((rows[0]?.n ?? 0) >= lastAcknowledged, `acknowledged ${lastAcknowledged}, found ${rows[0]?.n}`);
    assert.equal(rows[0]?.c, rows[0]?.n, 'no gaps: every committed row is there');
  });
});
