/** What one run of one phase measured; report.ts aggregates the runs of a phase. */
import type { CpuSpent } from './cpuWindow.js';
import type { Percentiles } from './database.js';

export const DRAIN_PHASES = [
  'sql-floor-narrow',
  'sql-floor',
  'pgboss-insert',
  'relay-null',
  'relay-pgboss',
  'relay-rabbitmq',
] as const;
export const LOAD_PHASES = ['max-sustainable', 'recovery'] as const;
export const EXTERNAL_PHASES = [
  'lanes',
  'confirm-pipelining',
  'activemq',
  'broker-sinks',
  'ordering',
] as const;
export const PHASES = [...DRAIN_PHASES, ...LOAD_PHASES, ...EXTERNAL_PHASES] as const;
export type PhaseName = (typeof PHASES)[number];

export interface RunResult {
  readonly phase: string;
  /** 1-based round of the interleaved schedule. */
  readonly round: number;
  /** Rows the phase's figure is about (drained, sustained, recovered). */
  readonly rows: number;
  readonly seconds: number;
  readonly rowsPerSec: number;
  /**
   * End-to-end latency, created_at → sent_at, ms. For the drain phases of the relay: under a
   * steady offered load after the drain (a drained backlog's latency is only its queueing time);
   * for max-sustainable: at the highest sustained rate; for recovery: rows created from the spike
   * until recovery. Null for the floor (it is a drain only).
   */
  readonly latencyMs: Percentiles | null;
  /** The offered rate `latencyMs` was measured at, rows/s. */
  readonly latencyAtRowsPerSec: number | null;
  /** created_at → sent_at over the drained backlog: queueing, comparable between floor and relay. */
  readonly drainLatencyMs: Percentiles | null;
  /** Peak RSS of the measured process (relay or floor client), MB. */
  readonly peakRssMb: number;
  /** CPU per 1,000 rows, ms: of the measured process, PostgreSQL and the broker (null: not measured). */
  readonly cpuMsPer1kRows: CpuPer1k;
  /** Mean rows per committed batch in the measured window: small batches mean per-batch costs dominate. */
  readonly rowsPerBatch: number | null;
  /** CPU taken by other processes during the window, in cores: the noise of this run. */
  readonly otherCpuCores: number | null;
  /** Rows retried or dead and errors the measured process saw; a clean run has none. */
  readonly problems: readonly string[];
  /** Phase-specific figures (steps of max-sustainable, recovery timeline, ...). */
  readonly detail?: Readonly<Record<string, unknown>>;
}

export interface CpuPer1k {
  readonly client: number | null;
  readonly postgres: number | null;
  readonly broker: number | null;
}

export const NO_CPU: CpuPer1k = Object.freeze({ client: null, postgres: null, broker: null });

export function cpuPer1k(cpu: CpuSpent | undefined, rows: number): CpuPer1k {
  if (!cpu) return NO_CPU;
  return {
    client: per1k(cpu.childMs, rows),
    postgres: per1k(cpu.postgresMs, rows),
    broker: per1k(cpu.brokerMs, rows),
  };
}

/** The measured process's main-thread GC pauses per 1,000 rows, ms (part of its CPU). */
export function gcPausePer1k(cpu: CpuSpent | undefined, rows: number): number | null {
  return cpu ? per1k(cpu.childGcPauseMs, rows) : null;
}

export function rowsPerBatch(cpu: CpuSpent | undefined): number | null {
  return cpu && cpu.batches > 0 ? Math.round(cpu.sent / cpu.batches) : null;
}

/** Other processes' CPU in cores, null when it could not be told apart. */
export function otherCores(cpu: CpuSpent | undefined): number | null {
  return cpu && Number.isFinite(cpu.otherCores) ? cpu.otherCores : null;
}

export function mb(bytes: number): number {
  return Math.round((bytes / 1024 / 1024) * 10) / 10;
}

/** ms per 1,000 rows; null when the CPU figure is unknown. */
export function per1k(cpuMs: number, rows: number): number | null {
  if (!Number.isFinite(cpuMs) || rows <= 0) return null;
  return Math.round((cpuMs / rows) * 1000 * 100) / 100;
}
