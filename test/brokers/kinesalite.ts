/**
 * kinesalite (an in-memory Kinesis emulator, npm devDependency) on a free loopback port, in a child
 * process of its own so its CPU can be measured apart from the relay's (bench) and so it dies with
 * its parent: the child exits when its stdin closes. Its CLI has no host option (it would listen
 * on every interface), hence the small program below instead of `kinesalite --port`.
 *
 * kinesalite never returns a per-record ErrorCode; tests of partial failures wrap the client.
 */
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { DescribeStreamSummaryCommand, KinesisClient, CreateStreamCommand } from '@aws-sdk/client-kinesis';
import { NodeHttpHandler } from '@smithy/node-http-handler';

export interface Kinesalite {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly port: number;
  readonly pid: number;
  /** A client of this emulator (test credentials, HTTP/1.1). */
  client(): KinesisClient;
  /** Creates a stream and waits until it is ACTIVE. */
  createStream(name: string, shards: number): Promise<void>;
  stop(): Promise<void>;
}

/** Credentials kinesalite accepts (it checks none); also what the tests look for in logs. */
export const KINESALITE_CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'kinesalite-secret-key' };
export const KINESALITE_REGION = 'us-east-1';

const PROGRAM = `
const kinesalite = require('kinesalite');
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 });
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
`;

export async function startKinesalite(): Promise<Kinesalite> {
  const child = spawn(process.execPath, ['-e', PROGRAM], {
    stdio: ['pipe', 'pipe', 'pipe'],
    cwd: process.cwd(),
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const port = await new Promise<number>((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).once('line', (line) => resolve(Number(line)));
    child.once('exit', (code) => reject(new Error(`kinesalite exited with ${code}: ${stderr}`)));
  });
  const endpoint = `http://127.0.0.1:${port}`;
  const client = (): KinesisClient =>
    new KinesisClient({
      endpoint,
      region: KINESALITE_REGION,
      credentials: KINESALITE_CREDENTIALS,
      requestHandler: new NodeHttpHandler(),
    });
  return {
    endpoint,
    port,
    pid: child.pid ?? 0,
    client,
    async createStream(name, shards) {
      const admin = client();
      try {
        await admin.send(new CreateStreamCommand({ StreamName: name, ShardCount: shards }));
        for (;;) {
          const summary = await admin.send(new DescribeStreamSummaryCommand({ StreamName: name }));
          if (summary.StreamDescriptionSummary?.StreamStatus === 'ACTIVE') return;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      } finally {
        admin.destroy();
      }
    },
    async stop() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(timer);
    },
  };
}
