import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { maskSecrets, redact } from '../../src/redact.js';

describe('redact', () => {
  const cases: [string, string, string][] = [
    [
      'a password in the query string',
      'postgres://host/db?user=u&password=S3cret',
      'postgres://host/db?user=u&password=***',
    ],
    [
      'a password in the user-info',
      'amqp://guest:S3cret@127.0.0.1:5672/v',
      'amqp://guest:***@127.0.0.1:5672/v',
    ],
    [
      'a URL that does not parse (bad port, several hosts)',
      'postgres://u:S3cret@h1:99999,h2:5432/db?sslpassword=K3ypass',
      'postgres://u:***@h1:99999,h2:5432/db?sslpassword=***',
    ],
    ['a NATS token', 'nats://T0ken@127.0.0.1:4222', 'nats://***@127.0.0.1:4222'],
    ['an API key parameter', 'https://h/p?api_key=K3y&x=1', 'https://h/p?api_key=***&x=1'],
    ['a libpq keyword string', 'host=h user=u password=S3cret', 'host=h user=u password=***'],
    [
      'a URL inside a JSON log line, leaving the rest intact',
      '{"err":"at postgres://u:S3cret@h/db?password=S3cret","next":"kept"}',
      '{"err":"at postgres://u:***@h/db?password=***","next":"kept"}',
    ],
    [
      'a URL without credentials, unchanged',
      'postgres://u@h:5432/db?sslmode=require',
      'postgres://u@h:5432/db?sslmode=require',
    ],
  ];
  for (const [name, input, expected] of cases) {
    it(`masks ${name}`, () => {
      assert.equal(redact(input), expected);
    });
  }

  it('masks the secrets of the given URLs wherever a library echoed them', () => {
    const url = 'postgres://u:p%40ss-w0rd@h/db?password=Other-S3cret';
    const out = redact('auth failed (p@ss-w0rd, Other-S3cret) for p%40ss-w0rd', url);
    assert.equal(out, 'auth failed (***, ***) for ***');
  });

  it('masks given secrets (a SASL password, an AWS key) wherever they occur, longest first; skips empty ones', () => {
    const out = maskSecrets('login ab failed: key abcd, session abcd-TOKEN, again ab', [
      'ab',
      '',
      undefined,
      'abcd-TOKEN',
    ]);
    assert.equal(out, 'login *** failed: key ***cd, session ***, again ***');
    assert.equal(maskSecrets('nothing to hide', [undefined, '']), 'nothing to hide');
  });

  it('masks every log line of the relay logger', () => {
    const logger = fileURLToPath(new URL('../../src/logger.ts', import.meta.url));
    const script = `const { createLogger } = await import(${JSON.stringify(logger)});
      createLogger('info').warn({ err: 'connect to postgres://u:S3cret@h/db?password=Q-S3cret failed' }, 'at amqp://a:P-S3cret@h');`;
    const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    const line = JSON.parse(run.stderr.trim()) as { err: string; msg: string };
    assert.equal(line.err, 'connect to postgres://u:***@h/db?password=*** failed');
    assert.equal(line.msg, 'at amqp://a:***@h');
  });
});
