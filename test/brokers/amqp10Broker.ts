/**
 * A RabbitMQ node of its own with the AMQP 1.0 plugin (Debian's rabbitmq-server ships it), for the
 * AMQP 1.0 sink's tests and bench: a real, durable broker. It runs from a temporary directory on
 * free loopback ports with a node name of its own, so it never touches the machine's RabbitMQ on
 * 5672, and parallel test files each get their own node. Ready in about 6 s on an idle 2-core
 * machine; stopped (and its directory removed) by `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

export interface Amqp10Broker {
  readonly host: string;
  readonly port: number;
  /** `amqp://<user>:<password>@127.0.0.1:<port>` */
  readonly url: string;
  readonly user: string;
  readonly password: string;
  /** The Erlang VM's pid, for CPU accounting. */
  readonly pid: number;
  stop(): Promise<void>;
}

/** Why the node cannot be started here (missing package), or null when it can. */
export function amqp10BrokerProblem(): string | null {
  if (!existsSync(RABBITMQ_SERVER)) return `${RABBITMQ_SERVER} is missing (apt-get install rabbitmq-server)`;
  return null;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts a node whose only user is `user`/`password` (default guest/guest), created at first boot
 * from the configuration file.
 */
export async function startAmqp10Broker(
  credentials: { readonly user: string; readonly password: string } = { user: 'guest', password: 'guest' },
  timeoutMs = 90_000,
): Promise<Amqp10Broker> {
  const problem = amqp10BrokerProblem();
  if (problem) throw new Error(problem);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'shardrelay-amqp10-'));
  const port = await freePort();
  const distPort = await freePort();
  await writeFile(
    path.join(dir, 'rabbitmq.conf'),
    [
      `listeners.tcp.local = 127.0.0.1:${port}`,
      'loopback_users = none',
      `default_user = ${credentials.user}`,
      `default_pass = ${credentials.password}`,
      'vm_memory_high_watermark.absolute = 256MiB',
      'disk_free_limit.absolute = 50MB',
      '',
    ].join('\n'),
  );
  await writeFile(path.join(dir, 'enabled_plugins'), '[rabbitmq_amqp1_0].\n');
  const node = `amqp10-${randomBytes(4).toString('hex')}@localhost`;
  const child: ChildProcess = spawn(RABBITMQ_SERVER, [], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, so stop() can end the Erlang VM and its helpers (epmd excepted: it is
    // shared with the machine's node and outlives both, as it is meant to).
    detached: true,
    env: {
      ...process.env,
      HOME: dir,
      RABBITMQ_NODENAME: node,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(port),
      RABBITMQ_DIST_PORT: String(distPort),
      RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq'),
      RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
      RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
      RABBITMQ_LOG_BASE: path.join(dir, 'log'),
      RABBITMQ_PID_FILE: path.join(dir, 'pid'),
      RABBITMQ_PLUGINS_EXPAND_DIR: path.join(dir, 'plugins'),
      RABBITMQ_CONF_ENV_FILE: '/dev/null',
      ERL_EPMD_ADDRESS: '127.0.0.1',
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
    },
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000)));
  child.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-4000)));
  let exited = false;
  child.once('exit', () => (exited = true));

  const stop = async (): Promise<void> => {
    if (!exited && child.pid !== undefined) {
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, 10_000);
      await gone;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };

  const started = Date.now();
  // No readiness message on stdout is stable across versions: the AMQP port opening is the signal.
  while (!(await portOpen(port))) {
    if (exited || Date.now() - started > timeoutMs) {
      await stop();
      throw new Error(
        `the AMQP 1.0 RabbitMQ node did not open port ${port} within ${timeoutMs} ms` +
          `${exited ? ' (it exited)' : ''}: ${output}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const pid =
    Number((await readFile(path.join(dir, 'pid'), 'utf8').catch(() => '')).trim()) || child.pid || 0;
  const { user, password } = credentials;
  const url = `amqp://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}`;
  return { host: '127.0.0.1', port, url, user, password, pid, stop };
}
