/** What the figures were measured on, and which code: they mean little without it. */
import { execFileSync } from 'node:child_process';
import os from 'node:os';

export interface MachineInfo {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryGb: number;
  readonly os: string;
  readonly node: string;
  readonly postgres: string;
  readonly rabbitmq: string | null;
  /** The git commit measured, `+changes` when the work tree differs from it; null outside git. */
  readonly revision: string | null;
  /** 1-minute load average when the bench started and ended: above the core count, others were busy. */
  readonly loadAverageAtStart: number;
  loadAverageAtEnd: number;
}

export function describeMachine(postgres: string, rabbitmq: string | null): MachineInfo {
  return {
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model.trim() ?? 'unknown',
    memoryGb: Math.round(os.totalmem() / 1024 ** 3),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres,
    rabbitmq,
    revision: revision(),
    loadAverageAtStart: Number((os.loadavg()[0] ?? 0).toFixed(2)),
    loadAverageAtEnd: Number.NaN,
  };
}

export function finishMachine(machine: MachineInfo): void {
  machine.loadAverageAtEnd = Number((os.loadavg()[0] ?? 0).toFixed(2));
}

function revision(): string | null {
  const git = (...args: string[]) =>
    execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  try {
    const commit = git('rev-parse', '--short', 'HEAD');
    return git('status', '--porcelain', '--untracked-files=no') === '' ? commit : `${commit}+changes`;
  } catch {
    return null;
  }
}
