/**
 * The ledger checker every fault scenario of test/ledger/ uses (Jepsen-style): the scenario says
 * which event ids it enqueued, a real consumer counts every delivery by event id, and at the end
 * each id is classified:
 *
 * - lost: enqueued, never received and not dead (a dead row is given up on purpose, with a reason);
 * - duplicated: deliveries beyond the first (the at-least-once re-sends), summed over ids;
 * - unexpected: received but never enqueued (must be 0: nothing is invented).
 *
 * Each scenario prints its figures (`# ledger ...`) and asserts lost = 0, unexpected = 0 and its
 * own bound on duplicates.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import amqplib, { type Channel, type ChannelModel } from 'amqplib';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../../src/db/schema.js';
import { AMQP_URL, ReceivedIds, uniqueName } from '../support/brokers.js';
import { waitFor } from '../support/cli.js';

export interface LedgerReport {
  readonly scenario: string;
  readonly enqueued: number;
  /** Distinct enqueued ids received at least once. */
  readonly received: number;
  readonly lost: number;
  readonly duplicates: number;
  readonly unexpected: number;
  readonly dead: number;
}

export class Ledger {
  readonly received = new ReceivedIds();
  /** performance.now() of every delivery, by event id. */
  readonly arrivals = new Map<string, number[]>();
  readonly #expected = new Set<string>();

  constructor(readonly scenario: string) {}

  /** A consumer saw `eventId` (each delivery counts). */
  receive(eventId: string): void {
    this.received.add(eventId);
    const at = this.arrivals.get(eventId);
    if (at) at.push(performance.now());
    else this.arrivals.set(eventId, [performance.now()]);
  }

  /** Deliveries after `since` (performance.now()) of ids that had been delivered before it. */
  redeliveredAfter(since: number): number {
    let n = 0;
    for (const at of this.arrivals.values())
      if (at.some((t) => t < since)) n += at.filter((t) => t >= since).length;
    return n;
  }

  /** Event ids the scenario enqueued (every one must arrive or be dead). */
  expect(eventIds: Iterable<string>): void {
    for (const id of eventIds) this.#expected.add(id);
  }

  get expectedIds(): string[] {
    return [...this.#expected];
  }

  /** Classifies every id; `dead` are the event ids of rows the relay gave up (with a reason). */
  report(dead: ReadonlySet<string>): LedgerReport {
    let received = 0;
    let lost = 0;
    let duplicates = 0;
    for (const id of this.#expected) {
      const n = this.received.counts.get(id) ?? 0;
      if (n > 0) received++;
      else if (!dead.has(id)) lost++;
      duplicates += Math.max(0, n - 1);
    }
    let unexpected = 0;
    for (const id of this.received.counts.keys()) if (!this.#expected.has(id)) unexpected++;
    return {
      scenario: this.scenario,
      enqueued: this.#expected.size,
      received,
      lost,
      duplicates,
      unexpected,
      dead: [...dead].filter((id) => this.#expected.has(id)).length,
    };
  }

  /**
   * Waits until nothing is pending in the outbox and every id arrived or is dead, then checks:
   * lost = 0, unexpected = 0, duplicates ≤ maxDuplicates. Prints the figures either way.
   */
  async check(
    db: Kysely<Database>,
    options: {
      /** A number, or computed once everything arrived (e.g. from the rows' attempts). */
      maxDuplicates: number | (() => Promise<number>);
      boundWhy: string;
      timeoutMs?: number;
    },
  ): Promise<LedgerReport> {
    let dead = new Set<string>();
    await waitFor(
      `${this.scenario}: every event received or dead`,
      async () => {
        const pending = await sql<{ n: number }>`
          SELECT count(*)::int AS n FROM shardrelay.outbox WHERE status = 'pending'`.execute(db);
        if ((pending.rows[0]?.n ?? 1) > 0) return false;
        dead = await deadEventIds(db);
        return this.expectedIds.every((id) => this.received.has(id) || dead.has(id));
      },
      options.timeoutMs ?? 60_000,
      100,
    ).catch((error: unknown) => {
      console.log(`# ledger ${this.scenario}: ${JSON.stringify(this.report(dead))}`);
      throw error;
    });
    const report = this.report(dead);
    const maxDuplicates =
      typeof options.maxDuplicates === 'number' ? options.maxDuplicates : await options.maxDuplicates();
    console.log(
      `# ledger ${this.scenario}: enqueued ${report.enqueued}, received ${report.received}, lost ${report.lost}, ` +
        `duplicates ${report.duplicates} (bound ${maxDuplicates}: ${options.boundWhy}), ` +
        `unexpected ${report.unexpected}, dead ${report.dead}`,
    );
    assert.equal(report.lost, 0, `${this.scenario}: no event lost`);
    assert.equal(report.unexpected, 0, `${this.scenario}: nothing received that was not enqueued`);
    assert.ok(
      report.duplicates <= maxDuplicates,
      `${this.scenario}: ${report.duplicates} duplicates > bound ${maxDuplicates} (${options.boundWhy})`,
    );
    return report;
  }
}

export async function deadEventIds(db: Kysely<Database>): Promise<Set<string>> {
  const { rows } = await sql<{ event_id: string }>`
    SELECT event_id::text FROM shardrelay.outbox WHERE status = 'dead'`.execute(db);
  return new Set(rows.map((r) => r.event_id));
}

/** A RabbitMQ consumer: its own topic exchange and a queue bound to every routing key. */
export interface RabbitConsumer {
  readonly exchange: string;
  close(): Promise<void>;
}

export async function rabbitConsumer(ledger: Ledger): Promise<RabbitConsumer> {
  const exchange = uniqueName('sr_ledger');
  const queue = `${exchange}_q`;
  const connection: ChannelModel = await amqplib.connect(AMQP_URL);
  const channel: Channel = await connection.createChannel();
  await channel.assertExchange(exchange, 'topic', { durable: true });
  await channel.assertQueue(queue, { durable: false });
  await channel.bindQueue(queue, exchange, '#');
  await channel.consume(queue, (m) => m && ledger.receive(String(m.properties.messageId)), {
    noAck: true,
  });
  return {
    exchange,
    async close() {
      await channel.deleteQueue(queue).catch(() => {});
      await channel.deleteExchange(exchange).catch(() => {});
      await connection.close().catch(() => {});
    },
  };
}

/**
 * An HTTP receiver counting structured CloudEvents by their `id` (2xx answers only: a refused
 * event was not received): answers `answer(eventId)` (status and body), 200 by default.
 */
export async function httpReceiver(
  ledger: Ledger,
  answer: (eventId: string) => { status: number; body: string } = () => ({ status: 200, body: '' }),
): Promise<{ readonly url: string; close(): Promise<void> }> {
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const id = String((JSON.parse(Buffer.concat(chunks).toString()) as { id?: unknown }).id);
      const { status, body } = answer(id);
      if (status < 300) ledger.receive(id);
      response.writeHead(status, { 'content-type': 'text/plain' }).end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return {
    url: `http://127.0.0.1:${address.port}/events`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
