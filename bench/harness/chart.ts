/**
 * The recovery chart: throughput (sent and offered rows/s) and lag (rows) over time around the
 * spike, with the spike's commit, the recovery moment and the baseline threshold marked. Drawn by
 * Vega-Lite and rendered to SVG by Vega, headless; the bench writes no SVG itself.
 *
 * vega and vega-lite are devDependencies: the bench is a development tool.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { TimelinePoint } from '../phases/recovery.js';

export interface RecoveryChart {
  readonly title: string;
  readonly subtitle: string;
  readonly points: readonly TimelinePoint[];
  /** Seconds from the spike's commit until the lag was back to baseline; null if it never was. */
  readonly recoverySeconds: number | null;
  /** The lag the run counted as "back to baseline", rows. */
  readonly thresholdLag: number;
}

export function recoverySpec(chart: RecoveryChart): TopLevelSpec {
  const throughput = chart.points.flatMap((p) => [
    { t: p.t, series: 'sent by the relay', value: p.sentPerSec },
    { t: p.t, series: 'offered (steady load)', value: p.insertedPerSec },
  ]);
  const marks = [
    { t: 0, label: 'spike committed' },
    ...(chart.recoverySeconds === null ? [] : [{ t: chart.recoverySeconds, label: 'lag back to baseline' }]),
  ];
  const x = { field: 't', type: 'quantitative', title: 'seconds since the spike committed' } as const;
  const width = 640;
  const height = 200;
  const moments = [
    {
      data: { values: marks },
      mark: { type: 'rule' as const, strokeDash: [4, 4], color: 'gray' },
      encoding: { x },
    },
    {
      data: { values: marks },
      mark: {
        type: 'text' as const,
        align: 'left' as const,
        baseline: 'top' as const,
        dx: 4,
        dy: 4,
        color: 'gray',
      },
      encoding: { x, y: { value: 0 }, text: { field: 'label' } },
    },
  ];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: chart.title, subtitle: chart.subtitle },
    vconcat: [
      {
        width,
        height,
        layer: [
          {
            data: { values: throughput },
            mark: { type: 'line', interpolate: 'step-after' },
            encoding: {
              x,
              y: { field: 'value', type: 'quantitative', title: 'rows/s' },
              color: { field: 'series', type: 'nominal', title: null },
            },
          },
          ...moments,
        ],
      },
      {
        width,
        height,
        layer: [
          {
            data: { values: chart.points },
            mark: { type: 'line', interpolate: 'step-after', color: 'firebrick' },
            encoding: { x, y: { field: 'lag', type: 'quantitative', title: 'lag (rows not yet sent)' } },
          },
          {
            data: { values: [{ lag: chart.thresholdLag, label: 'baseline threshold' }] },
            mark: { type: 'rule', strokeDash: [2, 2], color: 'firebrick' },
            encoding: { y: { field: 'lag', type: 'quantitative' } },
          },
          ...moments,
        ],
      },
    ],
    config: { background: 'white', legend: { labelLimit: 400 } },
  };
}

/** Writes the chart to `file` as SVG, rendered headless (no canvas, no browser). */
export async function writeRecoveryChart(
  file: string,
  chart: RecoveryChart,
): Promise<{ readonly path: string }> {
  await mkdir(path.dirname(file), { recursive: true });
  const view = new View(parse(compile(recoverySpec(chart)).spec), { renderer: 'none' });
  try {
    await writeFile(file, await view.toSVG());
  } finally {
    view.finalize();
  }
  return { path: file };
}
