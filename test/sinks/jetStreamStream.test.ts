// The stream and connection helpers of the JetStream sink on their own, against a scripted stream
// API: the server's answers to a race of two replicas or an overlapping stream are hard to bring
// about on a real server at the right moment. A real server is in jetStreamSink.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StorageType, nanos, type StreamConfig, type StreamInfo } from 'nats';
import { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/logger.js';
import { connectionOptions, redactedServers } from '../../src/sinks/jetStreamConnection.js';
import {
  provisionStream,
  validateStreamSettings,
  type StreamSettings,
  type Streams,
} from '../../src/sinks/jetStreamStream.js';

const settings: StreamSettings = {
  stream: 'EVENTS',
  prefix: 'app',
  duplicateWindowMs: 120_000,
  ensureStream: true,
  where: 'nats://127.0.0.1:4222',
  log: silentLogger,
};

function apiError(errCode: number): Error {
  return Object.assign(new Error(`api error ${errCode}`), { api_error: { code: 400, err_code: errCode } });
}

function streamInfo(subjects: string[], windowMs = 120_000): StreamInfo {
  return { config: { name: 'EVENTS', subjects, duplicate_window: nanos(windowMs) } } as unknown as StreamInfo;
}

/** A stream API whose calls answer from the scripts, in order; `calls` records what was asked. */
function scripted(script: {
  info?: Array<() => StreamInfo>;
  add?: Array<(config: Partial<StreamConfig>) => StreamInfo>;
  find?: () => string;
}): { streams: Streams; calls: string[]; added: Array<Partial<StreamConfig>> } {
  const calls: string[] = [];
  const added: Array<Partial<StreamConfig>> = [];
  const streams = {
    info: async (name: string) => {
      calls.push(`info ${name}`);
      const next = script.info?.shift();
      if (!next) throw new Error('unexpected info');
      return next();
    },
    add: async (config: Partial<StreamConfig>) => {
      calls.push(`add ${config.name}`);
      added.push(config);
      const next = script.add?.shift();
      if (!next) throw new Error('unexpected add');
      return next(config);
    },
    find: async (subject: string) => {
      calls.push(`find ${subject}`);
      if (!script.find) throw new Error('no stream');
      return script.find();
    },
  } as unknown as Streams;
  return { streams, calls, added };
}

const notFound = (): StreamInfo => {
  throw apiError(10059);
};

describe('JetStream stream provisioning', () => {
  it('uses an existing stream as it is', async () => {
    const { streams, calls } = scripted({ info: [() => streamInfo(['app.>'])] });
    const info = await provisionStream(streams, settings);
    assert.deepEqual(info.config.subjects, ['app.>']);
    assert.deepEqual(calls, ['info EVENTS']);
  });

  it('creates a missing stream with file storage on <prefix>.> and the duplicate window', async () => {
    const { streams, calls, added } = scripted({
      info: [notFound],
      add: [(c) => streamInfo(c.subjects ?? [])],
    });
    await provisionStream(streams, settings);
    assert.deepEqual(calls, ['info EVENTS', 'add EVENTS']);
    assert.equal(added[0]?.storage, StorageType.File);
    assert.deepEqual(added[0]?.subjects, ['app.>']);
    assert.equal(added[0]?.duplicate_window, nanos(120_000));
  });

  it("uses another replica's stream when it was created between the look-up and the create", async () => {
    const { streams, calls } = scripted({
      info: [notFound, () => streamInfo(['app.>'])],
      add: [
        () => {
          throw apiError(10058);
        },
      ],
    });
    await provisionStream(streams, settings);
    assert.deepEqual(calls, ['info EVENTS', 'add EVENTS', 'info EVENTS']);
  });

  it('names the stream that already captures the subjects when creating would overlap', async () => {
    const { streams } = scripted({
      info: [notFound],
      add: [
        () => {
          throw apiError(10065);
        },
      ],
      find: () => 'ORDERS',
    });
    await assert.rejects(provisionStream(streams, settings), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /cannot create stream EVENTS on "app\.>": stream ORDERS already captures/);
      assert.match(error.fix ?? '', /SHARDRELAY_NATS_STREAM=ORDERS/);
      return true;
    });
  });

  it('says "another stream" when the overlapping stream cannot be found', async () => {
    const { streams } = scripted({
      info: [notFound],
      add: [
        () => {
          throw apiError(10065);
        },
      ],
    });
    await assert.rejects(provisionStream(streams, settings), /another stream already captures subjects/);
  });

  it('refuses a missing stream it may not create, and says how to create it', async () => {
    const { streams, calls } = scripted({ info: [notFound] });
    await assert.rejects(provisionStream(streams, { ...settings, ensureStream: false }), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /stream EVENTS does not exist on nats:\/\/127\.0\.0\.1:4222/);
      return true;
    });
    assert.deepEqual(calls, ['info EVENTS']);
  });

  it('passes other server errors through unchanged', async () => {
    const refused = apiError(10039);
    const { streams } = scripted({
      info: [
        () => {
          throw refused;
        },
      ],
    });
    await assert.rejects(provisionStream(streams, settings), (error) => error === refused);
  });

  it('refuses a stream name, subject prefix or window NATS would not accept', () => {
    assert.throws(() => validateStreamSettings('A.B', 'app', 1000), /'A\.B' is not a valid stream name/);
    assert.throws(() => validateStreamSettings('A', 'app.>', 1000), /'app\.>' is not a valid subject prefix/);
    assert.throws(() => validateStreamSettings('A', '', 1000), /'' is not a valid subject prefix/);
    assert.throws(() => validateStreamSettings('A', 'app', 0), /0 is not a positive duration/);
    validateStreamSettings('A_b-1', 'app.events', 1);
  });
});

describe('JetStream connection options', () => {
  it('moves user and password out of the URLs', () => {
    const options = connectionOptions('nats://u%40x:p%3Ass@h1:4222, nats://h2:4223', 5000, 1000);
    assert.deepEqual(options.servers, ['nats://h1:4222', 'nats://h2:4223']);
    assert.equal(options.user, 'u@x');
    assert.equal(options.pass, 'p:ss');
    assert.equal(options.token, undefined);
    assert.equal(options.maxReconnectAttempts, -1);
  });

  it('takes a user without a password for a token', () => {
    const options = connectionOptions('nats://s3cret@h1:4222', 5000, 1000);
    assert.equal(options.token, 's3cret');
    assert.equal(options.user, undefined);
  });

  it('shows the servers without their passwords', () => {
    const shown = redactedServers('nats://u:hunter2@h1:4222,nats://h2:4222');
    assert.doesNotMatch(shown, /hunter2/);
    assert.match(shown, /h1:4222/);
    assert.match(shown, /h2:4222/);
  });
});
