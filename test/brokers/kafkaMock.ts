/**
 * librdkafka's mock Kafka cluster (in memory, Kafka protocol on loopback ports), run as the small
 * C program kafka-mock.c beside this file, compiled on first use against the system's librdkafka
 * (Debian: librdkafka-dev and gcc; `.ci/run` installs both). Used by the Kafka sink's tests and
 * bench: there is no Apache Kafka on these machines. The mock answers Produce with real offsets,
 * serves consumer groups, and injects errors on command (`err`, `down`, `up`; see kafka-mock.c).
 *
 * The program exits when its stdin closes, so a crashed test run cannot leak it.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const SOURCE = fileURLToPath(new URL('./kafka-mock.c', import.meta.url));

export interface KafkaMock {
  /** `127.0.0.1:<port>,...`, one per mock broker (ids 1..n). */
  readonly bootstrap: string;
  readonly pid: number;
  /** Sends one command line (`err 0 10`, `down 1`, `up 1`); resolves when the mock answered ok. */
  command(line: string): Promise<void>;
  stop(): Promise<void>;
}

/** Why the mock cannot be built here, or null. */
export function kafkaMockProblem(): string | null {
  if (!existsSync('/usr/include/librdkafka/rdkafka_mock.h')) {
    return 'librdkafka-dev is not installed (apt-get install librdkafka-dev gcc)';
  }
  return null;
}

/** Compiles kafka-mock.c once per source version into the temp directory; returns the binary. */
async function binary(): Promise<string> {
  const problem = kafkaMockProblem();
  if (problem) throw new Error(problem);
  const hash = createHash('sha256').update(readFileSync(SOURCE)).digest('hex').slice(0, 12);
  const target = path.join(os.tmpdir(), `shardrelay-kafka-mock-${hash}`);
  if (existsSync(target)) return target;
  // Built under a private name, then renamed: parallel test files may compile at the same time.
  const building = `${target}.${process.pid}`;
  await promisify(execFile)('gcc', ['-O2', '-Wall', '-o', building, SOURCE, '-lrdkafka']);
  await rename(building, target);
  return target;
}

/**
 * Starts a mock cluster of `brokers` brokers with the given topics (`name:partitions`); topics
 * not listed are auto-created by producers with 4 partitions.
 */
export async function startKafkaMock(brokers = 3, topics: readonly string[] = []): Promise<KafkaMock> {
  const bin = await binary();
  const child = spawn(bin, [String(brokers), ...topics], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  const lines = readline.createInterface({ input: child.stdout });
  const answers: ((line: string) => void)[] = [];
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`kafka-mock exited with ${code}: ${stderr}`)));
  });
  lines.on('line', (line) => answers.shift()?.(line));
  return {
    bootstrap: first.trim(),
    pid: child.pid ?? 0,
    command(line) {
      return new Promise((resolve, reject) => {
        answers.push((answer) =>
          answer === 'ok' ? resolve() : reject(new Error(`kafka-mock refused "${line}"`)),
        );
        child.stdin.write(`${line}\n`);
      });
    },
    async stop() {
      if (exited) return;
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(timer);
    },
  };
}
