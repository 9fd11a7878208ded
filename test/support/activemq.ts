/**
 * A throw-away ActiveMQ Classic (Debian's `activemq` package, 5.17) for tests and the bench: its
 * own temp directory (config, KahaDB store, log), a STOMP connector on a free loopback port, and a
 * clean stop. Start-up takes ~1.3 s on an idle machine (up to ~15 s on a loaded one).
 *
 * The broker has no authentication (any login is accepted), persistent delivery to KahaDB, and
 * the STOMP connector's options can be set (e.g. `wireFormat.maxDataLength`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const ACTIVEMQ_HOME = process.env.ACTIVEMQ_HOME ?? '/usr/share/activemq';
const JAR = path.join(ACTIVEMQ_HOME, 'bin', 'activemq.jar');

export interface ActiveMq {
  readonly host: string;
  readonly stompPort: number;
  /** The JVM's process id (for CPU sampling). */
  readonly pid: number;
  /** Everything the broker printed so far. */
  output(): string;
  /** Stops the broker (SIGTERM, then SIGKILL after 15 s) and removes its directory. */
  stop(): Promise<void>;
}

/**
 * Why ActiveMQ cannot be started here, or null. Under `CI=true` a missing broker throws, so the
 * tests fail instead of passing without having run (`.ci/run` installs the package).
 */
export function activeMqMissing(): string | null {
  if (existsSync(JAR) && existsSync('/usr/bin/java')) return null;
  const reason = `ActiveMQ is not installed (${JAR} or java missing)`;
  if (process.env.CI === 'true') {
    throw new Error(`${reason}; CI must provide it: apt-get install -y activemq`);
  }
  return `${reason}; apt-get install -y activemq to run these tests`;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function config(stompUri: string, kahaDbAttributes: string): string {
  return `<beans xmlns="http://www.springframework.org/schema/beans" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
    http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="test" useJmx="false"
          persistent="true" schedulerSupport="false" dataDirectory="\${activemq.data}">
    <persistenceAdapter><kahaDB directory="\${activemq.data}/kahadb" journalMaxFileLength="16mb"${kahaDbAttributes}/></persistenceAdapter>
    <systemUsage><systemUsage>
      <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
      <storeUsage><storeUsage limit="1 gb"/></storeUsage>
      <tempUsage><tempUsage limit="256 mb"/></tempUsage>
    </systemUsage></systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="${stompUri.replace(/&/g, '&amp;')}"/>
    </transportConnectors>
  </broker>
</beans>
`;
}

const LOG4J = [
  'log4j.rootLogger=INFO, out',
  'log4j.logger.org.springframework=WARN',
  'log4j.appender.out=org.apache.log4j.ConsoleAppender',
  'log4j.appender.out.layout=org.apache.log4j.PatternLayout',
  'log4j.appender.out.layout.ConversionPattern=%d %-5p %m%n',
  '',
].join('\n');

export interface ActiveMqOptions {
  /** Query options of the STOMP connector URI, e.g. `{ 'wireFormat.maxDataLength': '1048576' }`. */
  readonly stompOptions?: Readonly<Record<string, string>>;
  /**
   * Extra KahaDB attributes, e.g. `{ journalDiskSyncStrategy: 'periodic' }` (the bench uses it to
   * tell the broker's disk syncs apart from the relay's own time). Default: KahaDB's defaults, a
   * disk sync for every persistent message.
   */
  readonly kahaDb?: Readonly<Record<string, string>>;
  /** Give up after this long. Default 90 s (a loaded 2-core machine is slow to start a JVM). */
  readonly startTimeoutMs?: number;
}

export async function startActiveMq(options: ActiveMqOptions = {}): Promise<ActiveMq> {
  const dir = mkdtempSync(path.join(tmpdir(), 'shardrelay-activemq-'));
  const conf = path.join(dir, 'conf');
  for (const sub of [conf, path.join(dir, 'data'), path.join(dir, 'tmp')])
    mkdirSync(sub, { recursive: true });
  const port = await freePort();
  const query = new URLSearchParams(options.stompOptions ?? {}).toString();
  writeFileSync(
    path.join(conf, 'activemq.xml'),
    config(
      `stomp://127.0.0.1:${port}${query ? `?${query}` : ''}`,
      Object.entries(options.kahaDb ?? {})
        .map(([name, value]) => ` ${name}="${value}"`)
        .join(''),
    ),
  );
  writeFileSync(path.join(conf, 'log4j.properties'), LOG4J);
  const child: ChildProcess = spawn(
    'java',
    [
      '-Xms64m',
      '-Xmx256m',
      '-XX:+UseSerialGC',
      '-XX:TieredStopAtLevel=1',
      '-XX:ActiveProcessorCount=2',
      `-Dactivemq.home=${ACTIVEMQ_HOME}`,
      `-Dactivemq.base=${dir}`,
      `-Dactivemq.conf=${conf}`,
      `-Dactivemq.data=${path.join(dir, 'data')}`,
      `-Dactivemq.classpath=${conf}`,
      `-Djava.io.tmpdir=${path.join(dir, 'tmp')}`,
      '-jar',
      JAR,
      'start',
      `xbean:file:${path.join(conf, 'activemq.xml')}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(new Error(`ActiveMQ did not start within ${options.startTimeoutMs ?? 90_000} ms:\n${output}`)),
      options.startTimeoutMs ?? 90_000,
    );
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      if (/\) started\s*$/m.test(output)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`ActiveMQ exited with code ${code} during start:\n${output}`));
    });
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await ready;
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    host: '127.0.0.1',
    stompPort: port,
    pid: child.pid ?? 0,
    output: () => output,
    stop,
  };
}
