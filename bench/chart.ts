/**
 * The recovery chart: throughput (sent and offered rows/s) and lag (rows) over time around the
 * spike, with the spike's commit, the recovery moment and the baseline threshold marked. Drawn by
 * Vega-Lite and rendered to SVG by Vega, headless; the bench writes no SVG itself.
 *
 * `vega` and `vega-lite` are loaded when installed. Without them the bench writes the Vega-Lite
 * specification with its data (`<chart>.vl.json`), which any Vega-Lite viewer renders, and says so.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { TimelinePoint } from './phases/recovery.js';

/** The parts of vega-lite and vega used here (loaded by name at run time, so typed here). */
interface VegaLite {
  compile(spec: object): { spec: object };
}
interface Vega {
  parse(spec: object): unknown;
  View: new (
    runtime: unknown,
    options: { renderer: 'none' },
  ) => { toSVG(): Promise<string>; finalize(): void };
}

export interface RecoveryChart {
  readonly title: string;
  readonly subtitle: string;
  readonly points: readonly TimelinePoint[];
  /** Seconds from the spike's commit until the lag was back to baseline; null if it never was. */
  readonly recoverySeconds: number | null;
  /** The lag the run counted as "back to baseline", rows. */
  readonly thresholdLag: number;
}

export function recoverySpec(chart: RecoveryChart): object {
  const throughput = chart.points.flatMap((p) => [
    { t: p.t, series: 'sent by the relay', value: p.sentPerSec },
    { t: p.t, series: 'offered (steady load)', value: p.insertedPerSec },
  ]);
  const marks = [
    { t: 0, label: 'spike committed' },
    ...(chart.recoverySeconds === null ? [] : [{ t: chart.recoverySeconds, label: 'lag back to baseline' }]),
  ];
  const x = { field: 't', type: 'quantitative', title: 'seconds since the spike committed' };
  const width = 640;
  const height = 200;
  const moments = [
    { data: { values: marks }, mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' }, encoding: { x } },
    {
      data: { values: marks },
      mark: { type: 'text', align: 'left', baseline: 'top', dx: 4, dy: 4, color: 'gray' },
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

async function load(name: string): Promise<unknown> {
  try {
    return await import(name);
  } catch {
    return undefined;
  }
}

/** Writes the chart to `file` (SVG); returns the path written and a note when it could not render. */
export async function writeRecoveryChart(
  file: string,
  chart: RecoveryChart,
): Promise<{ readonly path: string; readonly note?: string }> {
  await mkdir(path.dirname(file), { recursive: true });
  const spec = recoverySpec(chart);
  const vegaLite = (await load('vega-lite')) as VegaLite | undefined;
  const vega = (await load('vega')) as Vega | undefined;
  if (!vegaLite?.compile || !vega?.View) {
    const specFile = `${file.replace(/\.svg$/, '')}.vl.json`;
    await writeFile(specFile, `${JSON.stringify(spec, null, 2)}\n`);
    return {
      path: specFile,
      note: 'vega and vega-lite are not installed: wrote the Vega-Lite spec instead of the SVG',
    };
  }
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    await writeFile(file, await view.toSVG());
  } finally {
    view.finalize();
  }
  return { path: file };
}
