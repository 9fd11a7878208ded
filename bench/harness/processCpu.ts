/**
 * CPU time from /proc (Linux): of the PostgreSQL server and of the whole machine.
 *
 * PostgreSQL runs one process per connection plus background workers (WAL writer, checkpointer,
 * autovacuum), all children of the postmaster. Their CPU is the sum over the live children plus
 * the postmaster's own and its `cutime/cstime`: when a backend exits (a pool closing) the kernel
 * adds its CPU to the parent's "children" counters, so a delta taken across a phase still counts
 * the connections that closed in between.
 *
 * The machine's busy time (from /proc/stat) minus what the bench's own processes used says how
 * much CPU something else took during a phase: on a shared 2-core machine that is the noise.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}

const MS_PER_TICK = 1000 / clockTicksPerSecond();

interface ProcStat {
  readonly command: string;
  readonly ppid: number;
  /** utime + stime, ticks. */
  readonly own: number;
  /** cutime + cstime (waited-for children), ticks. */
  readonly children: number;
}

function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // exited meanwhile
  }
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const close = text.lastIndexOf(')');
  const fields = text.slice(close + 2).split(' ');
  const num = (i: number) => Number(fields[i] ?? 0);
  // fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
  return {
    command: text.slice(text.indexOf('(') + 1, close),
    ppid: num(1),
    own: num(11) + num(12),
    children: num(13) + num(14),
  };
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number);
}

/** CPU time of processes and their live children, reaped children included, in ms. */
export function processTreeCpuMs(...rootPids: readonly number[]): number {
  let ticks = 0;
  for (const pid of rootPids) {
    const root = readStat(pid);
    if (!root) return Number.NaN;
    ticks += root.own + root.children;
  }
  const roots = new Set(rootPids);
  for (const pid of allPids()) {
    const stat = readStat(pid);
    if (stat && roots.has(stat.ppid)) ticks += stat.own + stat.children;
  }
  return ticks * MS_PER_TICK;
}

/** CPU time of one process (not its children), ms; undefined when it has exited. */
export function processCpuMs(pid: number): number | undefined {
  const stat = readStat(pid);
  return stat ? stat.own * MS_PER_TICK : undefined;
}

/** Processes whose command name is `command` (e.g. `beam.smp`, RabbitMQ's Erlang VM). */
export function processesNamed(command: string): number[] {
  return allPids().filter((pid) => readStat(pid)?.command === command);
}

/** The postmaster of a backend (its parent), if this looks like a local PostgreSQL server. */
export function postmasterOf(backendPid: number): number | undefined {
  const stat = readStat(backendPid);
  if (!stat) return undefined;
  try {
    const command = readFileSync(`/proc/${stat.ppid}/cmdline`, 'utf8');
    return /postgres/.test(command) ? stat.ppid : undefined;
  } catch {
    return undefined;
  }
}

/** Busy CPU time of the whole machine (all cores, everything but idle and iowait), in ms. */
export function machineBusyMs(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const [, ...values] = line.trim().split(/\s+/);
  const ticks = values.map(Number);
  const total = ticks.slice(0, 8).reduce((a, b) => a + b, 0); // guest time is already in user
  const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
  return (total - idle) * MS_PER_TICK;
}

/** This process's own CPU, ms. */
export function ownCpuMs(): number {
  const usage = process.resourceUsage();
  return (usage.userCPUTime + usage.systemCPUTime) / 1000;
}
