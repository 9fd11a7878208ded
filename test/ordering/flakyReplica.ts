/**
 * A relay replica as `shardrelay run` starts it (the public `startReplica`, configured from the
 * environment), whose RabbitMQ sink fails a random share of sends: each message, independently,
 * with probability SHARDRELAY_TEST_FAIL_PERCENT / 100, is not published and comes back as a
 * retryable failure. The ordering test (keyOrdering.test.ts) runs it as an OS process so it can be
 * killed with SIGKILL. SIGTERM stops it gracefully.
 */
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { startReplica } from '../../src/wiring/replica.js';
import { createSink } from '../../src/sinks/createSink.js';
import { retryable, type SendOutcome, type Sink } from '../../src/sinks/sink.js';

const config = loadConfig();
const logger = createLogger(config.logLevel, { replica: config.replicaId });
const failShare = Number(process.env.SHARDRELAY_TEST_FAIL_PERCENT ?? '5') / 100;
const inner = await createSink(config, logger);
if (inner.kind === 'in-database') throw new Error('the flaky replica wraps a broker sink, not pg-boss');
const flaky: Sink = {
  name: inner.name,
  start: () => inner.start(),
  close: () => inner.close(),
  async sendBatch(messages, context) {
    const fail = messages.map(() => Math.random() < failShare);
    const through = messages.filter((_, i) => !fail[i]);
    const got = through.length > 0 ? await inner.sendBatch(through, context) : [];
    let k = 0;
    return messages.map((_, i): SendOutcome =>
      fail[i] ? retryable('injected failure') : (got[k++] as SendOutcome),
    );
  },
};
const relay = await startReplica({ config, logger, sink: flaky });
let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  void relay.stop().then(({ clean }) => process.exit(clean ? 0 : 1));
});
