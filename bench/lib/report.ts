/**
 * Turns run records into the summary table, the goal ratios, the Markdown
 * report and the SVG charts.
 *
 * @module
 */

import type { RunRecord, WorkloadOut } from "./runner.ts";
import {
  type BoundHist,
  boundHistCdf,
  FAULT_THRESHOLD_NS,
  type LogHist,
  logHistCdf,
  mergeBoundHists,
  mergeLogHists,
  slowTouches,
  spread,
} from "./stats.ts";
import { cdfChart, lineChart, PALETTE, type Series } from "./svg.ts";

/** Aggregate of the repetitions of one (workload, config, fraction) cell. */
export interface Cell {
  workload: string;
  config: string;
  kind: RunRecord["kind"];
  fraction: number;
  /** Successful runs / all runs. */
  ok: number;
  runs: number;
  /** First error seen, if any. */
  error?: string;
  time: ReturnType<typeof spread>;
  ops: ReturnType<typeof spread>;
  faults: number;
  slowP50: number;
  slowP99: number;
  pagerP50: number;
  pagerP99: number;
  kernelEst: number;
  pagerCpu: number;
  pagerHwmKb: number;
  appCpu: number;
}

/** Fills `kernelEstUs` of kernel rows: extra time over the baseline divided by major faults. */
export function estimateKernelLatency(recs: RunRecord[]): void {
  for (const r of recs) {
    if (r.kind !== "kernel" || !r.ok || r.faults <= 0) continue;
    const base = spread(
      recs.filter((b) => b.kind === "baseline" && b.workload === r.workload && b.ok).map((b) =>
        b.timeMs
      ),
    ).med;
    if (Number.isFinite(base)) r.kernelEstUs = Math.max(0, (r.timeMs - base) * 1000 / r.faults);
  }
}

/** Groups records into cells (median over repetitions). */
export function cells(recs: RunRecord[]): Cell[] {
  const groups = new Map<string, RunRecord[]>();
  for (const r of recs) {
    const k = `${r.workload}\u0000${r.config}\u0000${r.fraction}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const med = (rs: RunRecord[], f: (r: RunRecord) => number | undefined) =>
    spread(rs.map((r) => f(r) ?? NaN)).med;
  return [...groups.values()].map((all) => {
    const rs = all.filter((r) => r.ok);
    return {
      workload: all[0].workload,
      config: all[0].config,
      kind: all[0].kind,
      fraction: all[0].fraction,
      ok: rs.length,
      runs: all.length,
      error: all.find((r) => r.error)?.error,
      time: spread(rs.map((r) => r.timeMs)),
      ops: spread(rs.map((r) => r.opsPerSec ?? NaN)),
      faults: med(rs, (r) => r.faults),
      slowP50: med(rs, (r) => r.slowTouchP50Us),
      slowP99: med(rs, (r) => r.slowTouchP99Us),
      pagerP50: med(rs, (r) => r.pagerP50Us),
      pagerP99: med(rs, (r) => r.pagerP99Us),
      kernelEst: med(rs, (r) => r.kernelEstUs),
      pagerCpu: med(rs, (r) => r.pagerCpuMs),
      pagerHwmKb: med(rs, (r) => r.pagerHwmKb),
      appCpu: med(rs, (r) => r.appCpuMs),
    };
  });
}

const n = (v: number, digits = 0) => Number.isFinite(v) ? v.toFixed(digits) : "-";

function timeCell(c: Cell): string {
  if (c.ok === 0) return "FAILED";
  const t = c.time;
  return t.n > 1 ? `${n(t.med)} (${n(t.min)}-${n(t.max)})` : n(t.med);
}

/** Column headers of the main table. */
const HEAD = [
  "workload",
  "config",
  "time ms (min-max)",
  "x base",
  "kops/s",
  "faults",
  "app p50/p99 us",
  "pager p50/p99 us",
  "kern est us",
  "pager CPU ms",
  "pager RSS MiB",
  "app CPU ms",
];

/** Rows of the main table, for the given fraction. */
export function tableRows(cs: Cell[], fraction: number, order: string[]): string[][] {
  const rows: string[][] = [];
  const workloads = [...new Set(cs.map((c) => c.workload))];
  for (const w of workloads) {
    const base = cs.find((c) => c.workload === w && c.kind === "baseline");
    for (const cfg of order) {
      const c = cs.find((c) =>
        c.workload === w && c.config === cfg && (c.kind === "baseline" || c.fraction === fraction)
      );
      if (!c) continue;
      rows.push([
        w,
        cfg,
        timeCell(c) + (c.ok < c.runs && c.ok > 0 ? ` [${c.runs - c.ok} failed]` : ""),
        base && c.ok ? n(c.time.med / base.time.med, 2) : "-",
        Number.isFinite(c.ops.med) ? n(c.ops.med / 1000, 1) : "-",
        n(c.faults),
        Number.isFinite(c.slowP50) ? `${n(c.slowP50, 1)}/${n(c.slowP99, 1)}` : "-",
        Number.isFinite(c.pagerP50) ? `${n(c.pagerP50, 1)}/${n(c.pagerP99, 1)}` : "-",
        n(c.kernelEst, 1),
        n(c.pagerCpu),
        Number.isFinite(c.pagerHwmKb) ? n(c.pagerHwmKb / 1024, 1) : "-",
        n(c.appCpu),
      ]);
    }
  }
  return rows;
}

/** Column headers of the prefetch table. */
export const PREFETCH_HEAD: string[] = [
  "workload",
  "config",
  "fetch faults",
  "pages in",
  "prefetched",
  "hits",
  "wasted",
  "hit %",
];

/**
 * A counter from a remora run's pager stats; NaN (printed "-") when its
 * stats do not carry it, e.g. a pager without prefetch.
 */
function pagerCounter(r: RunRecord, name: string): number {
  const cs = r.raw.extra?.pagerStats?.counters as unknown as Record<string, unknown> | undefined;
  const v = cs?.[name];
  return typeof v === "number" ? v : NaN;
}

/**
 * One run's prefetch figures: remora's own counters (faults that fetched,
 * pages fetched, prefetched, hits, wasted), or for kernel rows its
 * major faults, swap-ins and swap readahead (none for zram, whose swap-ins are
 * synchronous and skip readahead; the kernel counts no waste).
 */
function prefetchFigures(r: RunRecord): number[] {
  if (r.kind === "remora") {
    // Zero fills (first touches) are minor faults for the kernel: left out, as there.
    const fetchFaults = pagerCounter(r, "missingFaults") - pagerCounter(r, "zeroFills");
    return [
      fetchFaults,
      ...["pagesFetched", "pagesPrefetched", "prefetchHits", "prefetchWasted"].map((name) =>
        pagerCounter(r, name)
      ),
    ];
  }
  const k = r.kernelSwap;
  return [r.faults, k?.pswpin ?? NaN, k?.swapRa ?? NaN, k?.swapRaHit ?? NaN, NaN];
}

/**
 * Rows of the prefetch table at `fraction`: per workload, remora and kernel
 * configurations in `order`, medians over the successful repetitions; hit %
 * is hits over pages prefetched.
 *
 * @example
 * ```ts
 * declare const recs: RunRecord[];
 * console.log(textTable(PREFETCH_HEAD, prefetchRows(recs, 0.25, ["swapfile", "remora-embedded"])));
 * ```
 */
export function prefetchRows(recs: RunRecord[], fraction: number, order: string[]): string[][] {
  const rows: string[][] = [];
  for (const w of [...new Set(recs.map((r) => r.workload))]) {
    for (const cfg of order) {
      const rs = recs.filter((r) =>
        r.ok && r.workload === w && r.config === cfg && r.kind !== "baseline" &&
        r.fraction === fraction
      );
      if (rs.length === 0) continue;
      const figs = rs.map(prefetchFigures);
      const med = figs[0].map((_, i) => spread(figs.map((f) => f[i])).med);
      const [, , prefetched, hits] = med;
      rows.push([
        w,
        cfg,
        ...med.map((v) => n(v)),
        n(prefetched > 0 ? hits / prefetched * 100 : NaN),
      ]);
    }
  }
  return rows;
}

/** A plain-text table with aligned columns (for the terminal). */
export function textTable(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) => r.map((c, i) => (c ?? "").padEnd(w[i])).join("  ").trimEnd();
  return [line(head), w.map((x) => "-".repeat(x)).join("  "), ...rows.map(line)].join("\n");
}

/** A Markdown table. */
export function mdTable(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `|${head.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

/** One goal the issue sets: `a` over `b` at most `limit`, on completion time or pager median latency. */
export interface Goal {
  a: string;
  b: string;
  limit: number;
  label: string;
  /** What is compared (default completion time). */
  metric?: "time" | "pagerP50";
}

/**
 * The goals: remora-embedded faster than swapfile and within 1.3x of zram;
 * remora-peer no slower than swapfile; memcached and Redis within 1.5x of the
 * peer's median fault latency.
 */
export const GOALS: Goal[] = [
  {
    a: "remora-embedded",
    b: "swapfile",
    limit: 1.0,
    label: "remora-embedded vs swapfile, time (goal: faster, < 1.0)",
  },
  {
    a: "remora-embedded",
    b: "zram",
    limit: 1.3,
    label: "remora-embedded vs zram, time (goal: within 1.3x)",
  },
  {
    a: "remora-peer",
    b: "swapfile",
    limit: 1.0,
    label: "remora-peer vs swapfile, time (goal: no slower, <= 1.0)",
  },
  {
    a: "remora-memcached",
    b: "remora-peer",
    limit: 1.5,
    metric: "pagerP50",
    label: "remora-memcached vs remora-peer, median fault latency (goal: within 1.5x)",
  },
  {
    a: "remora-redis",
    b: "remora-peer",
    limit: 1.5,
    metric: "pagerP50",
    label: "remora-redis vs remora-peer, median fault latency (goal: within 1.5x)",
  },
];

/** Goal ratios per workload and their geometric mean; `skipped` explains absent rows. */
export function goalLines(cs: Cell[], fraction: number, skipped: Map<string, string>): string[] {
  const out: string[] = [];
  const workloads = [...new Set(cs.map((c) => c.workload))];
  for (const g of GOALS) {
    const miss = [g.a, g.b].find((x) => skipped.has(x));
    if (miss) {
      out.push(`${g.label}: n/a (${miss} skipped: ${skipped.get(miss)})`);
      continue;
    }
    const absent = [g.a, g.b].find((x) => !cs.some((c) => c.config === x));
    if (absent) {
      out.push(`${g.label}: n/a (${absent} not in this run)`);
      continue;
    }
    const metric = (c: Cell) => g.metric === "pagerP50" ? c.pagerP50 : c.time.med;
    const parts: string[] = [];
    const logs: number[] = [];
    for (const w of workloads) {
      const a = cs.find((c) => c.workload === w && c.config === g.a && c.fraction === fraction);
      const b = cs.find((c) => c.workload === w && c.config === g.b && c.fraction === fraction);
      if (!a || !b) continue;
      const r = metric(a) / metric(b);
      if (!Number.isFinite(r)) {
        parts.push(`${w} -`);
        continue;
      }
      logs.push(Math.log(r));
      parts.push(`${w} ${r.toFixed(2)}`);
    }
    if (logs.length === 0) {
      out.push(`${g.label}: n/a (no successful runs of both) [${parts.join(", ")}]`);
      continue;
    }
    const gm = Math.exp(logs.reduce((s, x) => s + x, 0) / logs.length);
    const verdict = gm <= g.limit
      ? "MET"
      : `NOT MET, missed by ${((gm / g.limit - 1) * 100).toFixed(0)}%`;
    out.push(`${g.label}: geomean ${gm.toFixed(2)} ${verdict} [${parts.join(", ")}]`);
  }
  return out;
}

/**
 * Cross-check of the time goals with a second, independent clock: the ratio
 * of runstat's wall time (fork to reap, measured outside the program; for
 * remora rows it includes the pager's start-up of a few hundred ms) next to
 * the ratio of the program's own completion time.
 */
export function crossCheckLines(recs: RunRecord[], fraction: number): string[] {
  const out: string[] = [];
  const workloads = [...new Set(recs.map((r) => r.workload))];
  for (const g of GOALS.filter((g) => (g.metric ?? "time") === "time")) {
    const parts: string[] = [];
    for (const w of workloads) {
      const pick = (cfg: string, f: (r: RunRecord) => number) =>
        spread(
          recs.filter((r) =>
            r.ok && r.workload === w && r.config === cfg && r.fraction === fraction
          )
            .map(f),
        ).med;
      const prog = pick(g.a, (r) => r.timeMs) / pick(g.b, (r) => r.timeMs);
      const wall = pick(g.a, (r) => r.wallMs) / pick(g.b, (r) => r.wallMs);
      if (Number.isFinite(prog) && Number.isFinite(wall)) {
        parts.push(`${w} ${prog.toFixed(2)} / ${wall.toFixed(2)}`);
      }
    }
    if (parts.length) {
      out.push(`${g.a} / ${g.b} (program clock / outside wall clock): ${parts.join(", ")}`);
    }
  }
  return out;
}

/** The summary printed at the end of a run (also the top of the report). */
export function summaryText(
  cs: Cell[],
  fraction: number,
  order: string[],
  skipped: Map<string, string>,
  recs: RunRecord[] = [],
): string {
  const cross = crossCheckLines(recs, fraction);
  const prefetch = prefetchRows(recs, fraction, order);
  return [
    textTable(HEAD, tableRows(cs, fraction, order)),
    "",
    ...(prefetch.length
      ? ["Prefetch (remora) and swap readahead (kernel):", textTable(PREFETCH_HEAD, prefetch), ""]
      : []),
    ...goalLines(cs, fraction, skipped),
    ...(cross.length ? ["", "Cross-check of the time ratios:", ...cross] : []),
  ].join("\n");
}

/** Writes the charts into `dir`; returns their file names with captions. */
export function writeCharts(
  dir: string,
  recs: RunRecord[],
  order: string[],
  sweepWorkload: string,
  fractions: number[],
): { file: string; caption: string }[] {
  const color = (cfg: string) => PALETTE[order.indexOf(cfg) % PALETTE.length];
  const files: { file: string; caption: string }[] = [];
  for (const w of [...new Set(recs.map((r) => r.workload))]) {
    const mainFrac = recs.find((r) => r.workload === w && r.kind !== "baseline")?.fraction;
    const series: Series[] = [];
    for (const cfg of order) {
      const rs = recs.filter((r) =>
        r.workload === w && r.config === cfg && r.ok && r.fraction === mainFrac
      );
      const touch = mergeLogHists(
        rs.map((r) => (r.raw.out as WorkloadOut | undefined)?.touchHist).filter((h): h is LogHist =>
          !!h
        ).map((h) => slowTouches(h).hist),
      );
      if (touch && touch.buckets.length > 0) {
        series.push({ name: `${cfg} (app)`, color: color(cfg), pts: cdfPts(logHistCdf(touch)) });
      }
      const pager = mergeBoundHists(
        rs.map((r) => r.raw.extra?.pagerStats?.faultLatency as BoundHist | undefined).filter((
          h,
        ): h is BoundHist => !!h),
      );
      if (pager) {
        const pts = boundHistCdf(pager);
        if (pts.length) {
          series.push({
            name: `${cfg} (pager)`,
            color: color(cfg),
            dashed: true,
            pts: cdfPts(pts),
          });
        }
      }
    }
    if (series.length === 0) continue;
    const file = `cdf-${w}.svg`;
    Deno.writeTextFileSync(
      `${dir}/${file}`,
      cdfChart(
        `Fault latency CDF: ${w}, local ${pct(mainFrac ?? 0)} of working set`,
        "latency (µs, log scale)",
        series,
      ),
    );
    files.push({
      file,
      caption: `${w}: solid = touches the program saw take >= ${
        FAULT_THRESHOLD_NS / 1000
      } µs; dashed = remora's own fault-service histogram`,
    });
  }
  const sweep = recs.filter((r) => r.workload === sweepWorkload && r.ok);
  if (sweep.length > 0) {
    const series: Series[] = [];
    for (const cfg of order) {
      const rs = sweep.filter((r) => r.config === cfg);
      if (rs.length === 0) continue;
      const kind = rs[0].kind;
      const pts = (kind === "baseline" ? fractions : [...new Set(rs.map((r) => r.fraction))]).map(
        (f) => {
          const s = spread(
            rs.filter((r) => kind === "baseline" || r.fraction === f).map((r) => r.timeMs),
          );
          return { x: f * 100, y: s.med, lo: s.min, hi: s.max };
        },
      );
      series.push({ name: cfg, color: color(cfg), dashed: kind === "baseline", pts });
    }
    const file = `time-vs-local-${sweepWorkload}.svg`;
    Deno.writeTextFileSync(
      `${dir}/${file}`,
      lineChart(
        `Completion time vs local memory: ${sweepWorkload}`,
        "local memory (% of working set)",
        "completion time (ms, log scale)",
        fractions.map((f) => f * 100),
        series,
        (v) => `${+v.toPrecision(3)}%`,
      ),
    );
    files.push({
      file,
      caption: `${sweepWorkload}: median completion time, bars span min-max over repetitions; ` +
        `baseline (dashed) has no limit`,
    });
  }
  return files;
}

function cdfPts(p: [number, number][]): { x: number; y: number }[] {
  return p.map(([x, y]) => ({ x, y }));
}

/** `0.25` → `25%`. */
export function pct(f: number): string {
  return `${+(f * 100).toPrecision(3)}%`;
}

/** Sweep table: completion time per config and local fraction. */
export function sweepTable(
  cs: Cell[],
  workload: string,
  fractions: number[],
  order: string[],
): string {
  const head = ["config", ...fractions.map((f) => `${pct(f)} local`)];
  const rows: string[][] = [];
  for (const cfg of order) {
    const mine = cs.filter((c) => c.workload === workload && c.config === cfg);
    if (mine.length === 0) continue;
    rows.push([
      cfg,
      ...fractions.map((f) => {
        const c = mine.find((c) => c.kind === "baseline" || c.fraction === f);
        return c ? timeCell(c) : "-";
      }),
    ]);
  }
  return mdTable(head, rows);
}

export { HEAD };
