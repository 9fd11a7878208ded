/**
 * Driver side of the IPC protocol in ipc.ts: starts a measured process (the relay or the SQL
 * floor) and sends it requests. Each phase run gets a fresh process, so `maxRSS` is the peak of
 * that run alone.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type {
  BenchRequest,
  BenchResponse,
  ChildUsage,
  FloorRun,
  RequestEnvelope,
  ResponseEnvelope,
} from './ipc.js';

const SOURCES = {
  relay: 'bench/processes/relayProcess.ts',
  floor: 'bench/processes/floorProcess.ts',
} as const;
type ChildKind = keyof typeof SOURCES;

/**
 * Where the child scripts are: by default the TypeScript sources, run with the driver's own tsx
 * loader (fork() inherits execArgv); after `useCompiledChildren`, the compiled JavaScript (see
 * compile.ts for why), run by plain Node.
 */
let locate = (kind: ChildKind) => ({
  script: fileURLToPath(new URL(`../../${SOURCES[kind]}`, import.meta.url)),
  execArgv: process.execArgv,
});

export function useCompiledChildren(
  compiled: (relativeTs: string) => string,
  options: { readonly cpuProfileDir?: string; readonly relayNodeFlags?: readonly string[] } = {},
): void {
  // A V8 CPU profile of each relay process, written when it exits: where its time goes; and any
  // flags asked for (`--relay-node-flags`, e.g. a GC trace).
  const relayFlags = [
    ...(options.cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfileDir}`] : []),
    ...(options.relayNodeFlags ?? []),
  ];
  locate = (kind) => ({
    script: compiled(SOURCES[kind]),
    execArgv: kind === 'relay' ? relayFlags : [],
  });
}

/** Children still running, so an interrupted bench can end exactly the processes it started. */
const live = new Set<ChildProcess>();

export function killAllChildren(): void {
  for (const child of live) child.kill('SIGKILL');
  live.clear();
}

export class BenchChild {
  readonly #process: ChildProcess;
  readonly #pending = new Map<number, { resolve: (r: BenchResponse) => void; reject: (e: Error) => void }>();
  #nextId = 1;
  #exited: Error | undefined;

  private constructor(kind: ChildKind) {
    const { script, execArgv } = locate(kind);
    this.#process = fork(script, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    live.add(this.#process);
    this.#process.on('message', (message: ResponseEnvelope) => {
      const waiter = this.#pending.get(message.id);
      if (!waiter) return;
      this.#pending.delete(message.id);
      if ('error' in message) waiter.reject(new Error(`${kind} process: ${message.error}`));
      else waiter.resolve(message.response);
    });
    this.#process.on('exit', (code, signal) => {
      live.delete(this.#process);
      this.#exited = new Error(`${kind} process exited (code ${code}, signal ${signal})`);
      for (const waiter of this.#pending.values()) waiter.reject(this.#exited);
      this.#pending.clear();
    });
  }

  static spawn(kind: ChildKind): BenchChild {
    return new BenchChild(kind);
  }

  get pid(): number | undefined {
    return this.#process.pid;
  }

  request(request: BenchRequest, timeoutMs = 60_000): Promise<BenchResponse> {
    if (this.#exited) return Promise.reject(this.#exited);
    const id = this.#nextId++;
    return new Promise<BenchResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`no answer to ${request.kind} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#process.send({ id, request } satisfies RequestEnvelope);
    });
  }

  async usage(): Promise<ChildUsage> {
    const response = await this.request({ kind: 'usage' });
    if (response.kind !== 'usage') throw new Error(`expected usage, got ${response.kind}`);
    return response;
  }

  async runFloor(timeoutMs: number): Promise<FloorRun> {
    const response = await this.request({ kind: 'runFloor' }, timeoutMs);
    if (response.kind !== 'floorRun') throw new Error(`expected floorRun, got ${response.kind}`);
    return response;
  }

  /**
   * Polls until the child has recorded `rows` rows as sent; throws after `timeoutMs`, saying how
   * far it got. The drain's end time is the child's own `lastBatchAt`, so the poll interval does
   * not blur it.
   */
  async waitForSent(rows: number, timeoutMs: number, pollMs = 100): Promise<ChildUsage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const usage = await this.usage();
      if (usage.sent >= rows) return usage;
      if (Date.now() > deadline) {
        throw new Error(
          `only ${usage.sent} of ${rows} rows sent within ${timeoutMs} ms` +
            (usage.errors.length > 0 ? `; errors: ${usage.errors.join('; ')}` : ''),
        );
      }
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
  }

  /** Asks the child to stop cleanly, then makes sure it is gone. */
  async stop(): Promise<void> {
    if (!this.#exited) {
      await this.request({ kind: 'stop' }, 30_000).catch(() => {});
      if (this.#process.connected) this.#process.disconnect();
    }
    if (this.#process.exitCode === null && this.#process.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.#process.once('exit', () => resolve()));
      const timer = setTimeout(() => this.#process.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
  }
}
