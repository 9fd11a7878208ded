import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import { createTestDatabase } from '../support/testDatabase.js';

describe('test database leak check', () => {
  it('a test that leaves a connection open fails, naming the connection', async () => {
    const t = await createTestDatabase('leak_check');
    const leaked = new pg.Client({ connectionString: t.url, application_name: 'deliberately-leaked' });
    await leaked.connect();
    await assert.rejects(t.close(), (error: Error) => {
      assert.match(
        error.message,
        /left 1 connection\(s\) open to database t_leak_check_\w+: deliberately-leaked/,
      );
      return true;
    });
    await leaked.end();
    // With the leak closed, the same check passes, so the test command can drop the database.
    await t.close();
  });
});
