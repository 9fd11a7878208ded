import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { collect } from '../support/cli.js';

describe('the demo', () => {
  it(
    '`npm start` drains a synthetic workload on an embedded PostgreSQL with every event sent',
    { timeout: 120_000 },
    async () => {
      // No DATABASE_URL: the demo must bring its own PostgreSQL (only Node is needed).
      const child = spawn('npm', ['start', '--', '--count', '5000', '--no-progress'], {
        env: { ...process.env, DATABASE_URL: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const result = await collect(child);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /Starting an embedded PostgreSQL/);
      assert.match(result.stdout, /database\s+embedded/);
      assert.match(result.stdout, /enqueued\s+5000/);
      assert.match(result.stdout, /sent\s+5000/);
      assert.match(result.stdout, /dead\s+0/);
      assert.match(result.stdout, /latency\s+p50 \d+ ms, p99 \d+ ms/);
    },
  );
});
