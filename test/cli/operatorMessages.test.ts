import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { runCli } from '../support/cli.js';
import { createTestDatabase, type TestDatabase } from '../support/testDatabase.js';

/** What an operator reads when a setting is wrong: the real problem, its fix, and never a secret. */
describe('operator messages', () => {
  let t: TestDatabase;
  before(async () => {
    t = await createTestDatabase('operator_messages');
  });
  after(() => t.close());

  const SECRET = 'Qs-S3cret-7f1';
  // Port 1 on loopback: nothing listens, so the connection is refused at once.
  const unreachable = `postgres://127.0.0.1:1/db?user=relay&password=${SECRET}`;

  for (const command of [['run', '--sink', 'null'], ['status']]) {
    it(`${command[0]} never prints a password given in the query string of DATABASE_URL`, async () => {
      const result = await runCli(command, { DATABASE_URL: unreachable });
      assert.equal(result.code, 2, result.stderr);
      assert.match(
        result.stderr,
        /cannot reach PostgreSQL at postgres:\/\/127\.0\.0\.1:1\/db\?user=relay&password=\*\*\*/,
      );
      assert.match(result.stderr, /fix: check DATABASE_URL/);
      assert.ok(!`${result.stdout}${result.stderr}`.includes(SECRET), result.stderr);
    });
  }

  it('run never prints a password given in the user-info of DATABASE_URL', async () => {
    const result = await runCli(['run', '--sink', 'null'], {
      DATABASE_URL: `postgres://relay:${SECRET}@127.0.0.1:1/db`,
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /postgres:\/\/relay:\*\*\*@127\.0\.0\.1:1\/db/);
    assert.ok(!`${result.stdout}${result.stderr}`.includes(SECRET), result.stderr);
  });

  it('a port of 99999 in DATABASE_URL is reported as a bad port, with the password hidden', async () => {
    const result = await runCli(['status'], {
      DATABASE_URL: `postgres://relay:${SECRET}@127.0.0.1:99999/db`,
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /--database-url \/ DATABASE_URL: postgres:\/\/relay:\*\*\*@127\.0\.0\.1:99999\/db \(port 99999 is not a port number/,
    );
    assert.doesNotMatch(result.stderr, /must be a URL starting with/);
    assert.match(result.stderr, /fix: set DATABASE_URL/);
    assert.ok(!result.stderr.includes(SECRET), result.stderr);
  });

  it('RabbitMQ refusing the login keeps its own fix, not "is the broker running"', async () => {
    const result = await runCli(['run', '--sink', 'rabbitmq'], {
      DATABASE_URL: t.url,
      AMQP_URL: `amqp://relay-nobody:${SECRET}@127.0.0.1:5672`,
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /cannot connect to RabbitMQ at amqp:\/\/relay-nobody:\*\*\*@127\.0\.0\.1:5672: .*ACCESS.REFUSED/,
    );
    assert.match(
      result.stderr,
      /fix: RabbitMQ refused the login of user 'relay-nobody': check the user name and password/,
    );
    assert.doesNotMatch(result.stderr, /broker is running/);
    assert.ok(!`${result.stdout}${result.stderr}`.includes(SECRET), result.stderr);
  });

  it('a RabbitMQ vhost that does not exist is named, with the command that creates it', async () => {
    const result = await runCli(['run', '--sink', 'rabbitmq'], {
      DATABASE_URL: t.url,
      AMQP_URL: 'amqp://guest:guest@127.0.0.1:5672/no-such-vhost',
    });
    assert.equal(result.code, 2, result.stderr);
    assert.match(
      result.stderr,
      /fix: vhost 'no-such-vhost' does not exist or user '.*' may not use it: create it \(rabbitmqctl add_vhost 'no-such-vhost'\)/,
    );
  });

  it('a URL without a scheme is still reported as such', async () => {
    const result = await runCli(['status'], { DATABASE_URL: '127.0.0.1:5432/db' });
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /must be a URL starting with postgres:\/\/ or postgresql:\/\//);
  });
});
