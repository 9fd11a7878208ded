/**
 * The RabbitMQ link manager on its own, against the machine's RabbitMQ (through a TCP proxy where a
 * fault is needed): one link shared until it dies, then the next link number; the back-off after a
 * failed connect; the hard drop when a batch's lease lapses (buffered publishes never leave); the
 * basic.return bookkeeping; close. What the sink makes of it is in rabbitmqSink.test.ts and the
 * conformance suite.
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../src/logger.js';
import { createRabbitMqLinks, takeReturn, type RabbitMqLinkOptions } from '../../src/sinks/rabbitmqLink.js';
import { AMQP_URL, hostAndPort, requireBroker, uniqueName } from '../support/brokers.js';
import { startTcpProxy, type TcpProxy } from '../support/tcpProxy.js';

const broker = hostAndPort(AMQP_URL, 5672);
const skip = await requireBroker('RabbitMQ', broker.host, broker.port);

function viaPort(port: number): string {
  const url = new URL(AMQP_URL);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return url.toString();
}

function options(url: string, overrides: Partial<RabbitMqLinkOptions> = {}): RabbitMqLinkOptions {
  return {
    url,
    exchange: '',
    declareExchange: false,
    heartbeatSeconds: 10,
    connectTimeoutMs: 5_000,
    reconnectBackoff: { initialMs: 10, maxMs: 10 },
    log: silentLogger,
    ...overrides,
  };
}

async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const giveUp = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > giveUp) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('RabbitMQ link manager', { skip }, () => {
  let proxy: TcpProxy;
  before(async () => {
    proxy = await startTcpProxy(broker.host, broker.port);
  });
  after(() => proxy?.close());

  it('shares one link until it dies, then opens the next link number', async () => {
    const links = createRabbitMqLinks(options(viaPort(proxy.port)));
    try {
      const deadline = Date.now() + 5_000;
      const [first, same] = await Promise.all([links.current(deadline), links.current(deadline)]);
      assert.equal(first, same, 'concurrent callers share one connect');
      assert.equal(first.number, 1);
      proxy.cutAll();
      await until(() => first.closed, 5_000, 'the cut link is retired');
      const next = await links.current(Date.now() + 5_000);
      assert.equal(next.number, 2);
      assert.equal(next.closed, false);
    } finally {
      await links.close();
    }
  });

  it('after a failed connect, fails fast without dialling until the back-off has passed', async () => {
    // A server that hangs up on every connection: the AMQP handshake fails each time.
    let dialled = 0;
    const refusing = net.createServer((socket) => {
      dialled += 1;
      socket.destroy();
    });
    await new Promise<void>((resolve) => refusing.listen(0, '127.0.0.1', resolve));
    const { port } = refusing.address() as AddressInfo;
    const links = createRabbitMqLinks(
      options(viaPort(port), { reconnectBackoff: { initialMs: 60_000, maxMs: 60_000 } }),
    );
    try {
      await assert.rejects(links.current(Date.now() + 5_000));
      assert.equal(dialled, 1);
      await assert.rejects(
        links.current(Date.now() + 5_000),
        /reconnecting in \d+ ms after 1 failed attempt/,
      );
      assert.equal(dialled, 1, 'no second dial during the back-off');
    } finally {
      await links.close();
      await new Promise((resolve) => refusing.close(resolve));
    }
  });

  it('drops the link hard when the lease lapses: publishes still buffered never leave', async () => {
    const links = createRabbitMqLinks(options(viaPort(proxy.port)));
    try {
      const link = await links.current(Date.now() + 5_000);
      let leaseHeld = true;
      const lease = links.watchLease(link, () => leaseHeld);
      // The proxy stops reading: what is published next fills the kernel's buffers, then Node's.
      proxy.stall();
      const before = proxy.clientBytes;
      const body = Buffer.alloc(512 * 1024, 'x');
      const published = 64 * body.length;
      for (let i = 0; i < 64; i += 1) {
        // The default exchange, to a queue nobody declared: the broker would drop what arrives.
        link.channel.publish('', uniqueName('sr_nowhere'), body, {}, () => undefined);
      }
      leaseHeld = false;
      lease.check();
      assert.equal(link.closed, true, 'check() retires the link at once');
      lease.stop();
      proxy.resume();
      // Only what already sat in the kernel's buffers could still arrive (measured: none); a
      // close that flushed instead had passed 4 to 14 MB through by then on a loaded 2-core machine.
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      const through = proxy.clientBytes - before;
      assert.ok(
        through < published / 16,
        `${through} of ${published} bytes went through after the drop; the buffered rest must not`,
      );
      const next = await links.current(Date.now() + 5_000);
      assert.equal(next.number, 2, 'the next batch gets a fresh link');
    } finally {
      proxy.resume();
      await links.close();
    }
  });

  it('drops the link on its own timer when the lease lapses between publishes; not after stop()', async () => {
    const links = createRabbitMqLinks(options(viaPort(proxy.port)));
    try {
      const first = await links.current(Date.now() + 5_000);
      let leaseHeld = true;
      const watch = links.watchLease(first, () => leaseHeld);
      leaseHeld = false;
      await until(() => first.closed, 1_000, 'the watchdog drops the link');
      watch.stop();

      const second = await links.current(Date.now() + 5_000);
      let secondLease = true;
      links.watchLease(second, () => secondLease).stop();
      secondLease = false;
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(second.closed, false, 'a stopped watch no longer drops the link');
      // Without mayContinue there is nothing to watch.
      links.watchLease(second, undefined).check();
      assert.equal(second.closed, false);
    } finally {
      await links.close();
    }
  });

  it('matches a basic.return to the ack of the same message id', async () => {
    const exchange = uniqueName('sr_link_test');
    const links = createRabbitMqLinks(options(AMQP_URL, { exchange, declareExchange: true }));
    try {
      const link = await links.current(Date.now() + 5_000);
      const returned = await new Promise<string | undefined>((resolve, reject) => {
        link.channel.publish(
          exchange,
          'unbound',
          Buffer.from('{}'),
          { mandatory: true, messageId: 'm-1' },
          (error) => (error ? reject(error as Error) : resolve(takeReturn(link, 'm-1'))),
        );
      });
      assert.match(returned ?? '', /^312 NO_ROUTE/);
      assert.equal(takeReturn(link, 'm-1'), undefined, 'a return is consumed once');
      await link.channel.deleteExchange(exchange);
    } finally {
      await links.close();
    }
  });

  it('after close, retires its link and opens no other', async () => {
    const links = createRabbitMqLinks(options(viaPort(proxy.port)));
    const link = await links.current(Date.now() + 5_000);
    await links.close();
    assert.equal(link.closed, true);
    await assert.rejects(links.current(Date.now() + 5_000), /the sink is closed/);
  });
});
