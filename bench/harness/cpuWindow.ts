/**
 * CPU spent during one measured window, split by who spent it: the measured process (relay or
 * floor), PostgreSQL, the broker (RabbitMQ phases), the bench driver, and everything else on the
 * machine — the noise of a shared machine.
 */
import type { BenchChild } from './child.js';
import { BenchDatabase, type PostgresCpuReading } from './database.js';
import { machineBusyMs, ownCpuMs } from './processCpu.js';

/** A broker whose CPU a window measures (RabbitMQ's AmqpBench, the broker sinks' test brokers). */
export interface MeasuredBroker {
  /** CPU of the broker so far, ms; NaN when unknown. */
  brokerCpuMs(): number;
}

export interface CpuSpent {
  readonly wallMs: number;
  readonly childMs: number;
  /** NaN when the server's processes cannot be read. */
  readonly postgresMs: number;
  /** NaN when no broker is measured. */
  readonly brokerMs: number;
  readonly driverMs: number;
  /** Busy CPU of other processes, in cores (0.5 = half a core busy on average): the noise. */
  readonly otherCores: number;
  /** Rows the measured process sent in the window, and in how many batches. */
  readonly sent: number;
  readonly batches: number;
  /** The measured process's main-thread GC pauses in the window, ms (part of `childMs`). */
  readonly childGcPauseMs: number;
}

interface Snapshot {
  readonly wall: number;
  readonly child: number;
  readonly postgres: PostgresCpuReading;
  readonly broker: number;
  readonly driver: number;
  readonly machine: number;
  readonly sent: number;
  readonly batches: number;
  readonly gcPause: number;
}

/** The name the ActiveMQ phase uses for the same thing. */
export type BrokerCpu = MeasuredBroker;

export class CpuWindow {
  private constructor(
    private readonly child: BenchChild,
    private readonly database: BenchDatabase,
    private readonly broker: MeasuredBroker | undefined,
    private readonly start: Snapshot,
  ) {}

  /** `broker`: also measure RabbitMQ (only where the phase uses it; otherwise it is noise). */
  static async open(child: BenchChild, database: BenchDatabase, broker?: MeasuredBroker): Promise<CpuWindow> {
    return new CpuWindow(child, database, broker, await CpuWindow.#snapshot(child, database, broker));
  }

  static async #snapshot(
    child: BenchChild,
    database: BenchDatabase,
    broker: MeasuredBroker | undefined,
  ): Promise<Snapshot> {
    const usage = await child.usage();
    return {
      wall: performance.now(),
      child: usage.cpuUs / 1000,
      postgres: await database.postgresCpuReading(),
      broker: broker ? broker.brokerCpuMs() : Number.NaN,
      driver: ownCpuMs(),
      machine: machineBusyMs(),
      sent: usage.sent,
      batches: usage.batches,
      gcPause: usage.gcPauseMs,
    };
  }

  async close(): Promise<CpuSpent> {
    const end = await CpuWindow.#snapshot(this.child, this.database, this.broker);
    const wallMs = end.wall - this.start.wall;
    const childMs = end.child - this.start.child;
    const postgresMs = BenchDatabase.postgresCpuSpentMs(this.start.postgres, end.postgres);
    const brokerMs = end.broker - this.start.broker;
    const driverMs = end.driver - this.start.driver;
    const machineMs = end.machine - this.start.machine;
    // Without PostgreSQL's figure the rest cannot be split: NaN rather than a wrong number.
    const otherMs = machineMs - childMs - driverMs - postgresMs - (Number.isNaN(brokerMs) ? 0 : brokerMs);
    return {
      wallMs,
      childMs,
      postgresMs,
      brokerMs,
      driverMs,
      otherCores: Number.isNaN(otherMs) ? Number.NaN : Math.max(0, otherMs) / wallMs,
      sent: end.sent - this.start.sent,
      batches: end.batches - this.start.batches,
      childGcPauseMs: end.gcPause - this.start.gcPause,
    };
  }
}
