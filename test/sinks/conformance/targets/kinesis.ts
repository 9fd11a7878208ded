/**
 * Kinesis: kinesalite (test/brokers/kinesalite.ts), an in-memory emulator in a child process on a
 * free loopback port. Each destination is a stream of its own (2 shards) read by a shard-iterator
 * poller per shard that counts the CloudEvent `id` of each record. The secret is the AWS secret
 * access key the sink signs with (kinesalite accepts any).
 */
import { randomBytes } from 'node:crypto';
import { GetRecordsCommand, GetShardIteratorCommand, ListShardsCommand } from '@aws-sdk/client-kinesis';
import { createKinesisSink } from '../../../../src/sinks/kinesisSink.js';
import { startKinesalite, type Kinesalite } from '../../../brokers/kinesalite.js';
import { ReceivedIds, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination } from '../target.js';

/**
 * Reads every shard of `stream` from its start, counting each record's CloudEvent id, until
 * `close()`. Kinesis consumers poll (GetRecords has no push); 50 ms between empty reads.
 */
export function pollStream(
  kinesis: Kinesalite,
  stream: string,
  received: ReceivedIds,
): { close(): Promise<void> } {
  const client = kinesis.client();
  let open = true;
  const shards = (async () => {
    const listed = await client.send(new ListShardsCommand({ StreamName: stream }));
    await Promise.all(
      (listed.Shards ?? []).map(async (shard) => {
        let iterator = (
          await client.send(
            new GetShardIteratorCommand({
              StreamName: stream,
              ShardId: shard.ShardId,
              ShardIteratorType: 'TRIM_HORIZON',
            }),
          )
        ).ShardIterator;
        while (open && iterator) {
          const page = await client.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 10_000 }));
          for (const record of page.Records ?? []) {
            received.add((JSON.parse(Buffer.from(record.Data ?? []).toString('utf8')) as { id: string }).id);
          }
          iterator = page.NextShardIterator;
          if ((page.Records ?? []).length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }),
    );
  })();
  return {
    async close() {
      open = false;
      await shards.catch(() => undefined);
      client.destroy();
    },
  };
}

export const kinesisTarget: ConformanceTarget = {
  name: 'kinesis',
  // Kinesis's own limit: 1 MiB of data and partition key per record, checked by the sink.
  oversized: { payloadBytes: 1024 * 1024 + 1, refusedBy: 'sink' },
  async start() {
    const kinesis = await startKinesalite();
    const secret = `kinesis-${randomBytes(8).toString('hex')}`;
    return {
      endpoint: { host: '127.0.0.1', port: kinesis.port },
      secret,
      async destination(): Promise<Destination> {
        const stream = uniqueName('sr_conf');
        await kinesis.createStream(stream, 2);
        const received = new ReceivedIds();
        const poller = pollStream(kinesis, stream, received);
        return {
          topic: 'orders.created',
          received,
          createSink: ({ via, log, secret: secretAccessKey }) =>
            createKinesisSink({
              endpoint: `http://${via.host}:${via.port}`,
              region: 'us-east-1',
              stream,
              credentials: { accessKeyId: 'conformance', secretAccessKey },
              // The relay retries; SDK retries would hide a cut connection from the scenario.
              maxAttempts: 1,
              // Small calls one at a time, so the suite's cut (once the consumer has seen the first
              // records) finds a call in flight rather than a batch already answered.
              recordsPerCall: 100,
              concurrency: 1,
              log,
            }),
          close: () => poller.close(),
        };
      },
      stop: () => kinesis.stop(),
    };
  },
};
