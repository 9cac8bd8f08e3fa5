/**
 * QEMU guest under remora: how long the guest's one-shot memverify takes at
 * an unlimited, a 16M and a 720K budget, and the guest RAM's resident pages
 * over time while the budget shrinks step by step. Writes
 * `bench/results/guest_bench.json` and `bench/results/guest_bench.svg`.
 *
 *   deno run --allow-all bench/guest_bench.ts [--mib 4] [--reps 3]
 *
 * Needs root, qemu-system-x86 and busybox-static; one guest, about a minute
 * plus whatever the 720K phase costs. `REMORA_PAGER` swaps the pager entry
 * point (as in testing/guest/http_pager.ts).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  bootGuest,
  type Guest,
  guestRamResidentPages,
  PAGE_SIZE,
  runVerify,
} from "../testing/guest/qemu.ts";
import { type PagerProc, parseSize, startHttpPager } from "../testing/guest/http_pager.ts";

/** One residency sample. */
interface Sample {
  /** Seconds since the pager attached. */
  t: number;
  /** Allocated pages of the guest RAM memfd. */
  pages: number;
  /** Pager budget in pages at that time (Infinity before attach/after detach). */
  budget: number;
}

/** Timings of the one-shot verification at one budget. */
interface PhaseResult {
  /** Budget label, e.g. `720K`. */
  budget: string;
  /** Guest-measured ms per run. */
  guestMs: number[];
  /** Host wall ms per run. */
  wallMs: number[];
  /** Failures (guest answer or timeout), if any. */
  errors: string[];
  /** Faults the pager served per second of wall time during the runs (0 without a pager). */
  faultsPerSec: number;
  /** Pages fetched back from the store during the runs. */
  pagesFetched: number;
}

const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "4" },
    reps: { type: "string", default: "3" },
    ram: { type: "string", default: "128" },
  },
});
const MIB = Number(values.mib);
const REPS = Number(values.reps);
const RAM_MIB = Number(values.ram);
const OUT = new URL("./results/", import.meta.url).pathname;

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The pager's fault and fetch counters (zeros without a pager). */
async function counters(pager?: PagerProc): Promise<{ faults: number; fetched: number }> {
  if (!pager) return { faults: 0, fetched: 0 };
  const c = (await pager.stats()).counters as { faults: number; pagesFetched: number };
  return { faults: c.faults, fetched: c.pagesFetched };
}

async function timeVerify(
  guest: Guest,
  budget: string,
  reps: number,
  pager?: PagerProc,
): Promise<PhaseResult> {
  const r: PhaseResult = {
    budget,
    guestMs: [],
    wallMs: [],
    errors: [],
    faultsPerSec: 0,
    pagesFetched: 0,
  };
  const before = await counters(pager);
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) {
    try {
      const v = await runVerify(guest, MIB, 120_000);
      if (!v.ok) r.errors.push(v.line);
      else {
        r.guestMs.push(v.ms);
        r.wallMs.push(v.wallMs);
      }
    } catch (e) {
      r.errors.push((e as Error).message);
      break; // a timed-out verify is still running in the guest
    }
  }
  const after = await counters(pager);
  r.faultsPerSec = Math.round((after.faults - before.faults) / ((performance.now() - t0) / 1000));
  r.pagesFetched = after.fetched - before.fetched;
  console.log(
    `${budget.padEnd(10)} verify ${MIB} MiB: guest median ${median(r.guestMs)} ms, ` +
      `wall median ${median(r.wallMs).toFixed(0)} ms, ${r.faultsPerSec} faults/s, ` +
      `${r.pagesFetched} pages fetched${r.errors.length ? `, errors: ${r.errors}` : ""}`,
  );
  return r;
}

/** A log-scale line plot of resident pages and budget over time. */
function svgPlot(samples: Sample[], marks: { t: number; label: string }[], total: number): string {
  const W = 800, H = 420, L = 70, R = 20, T = 30, B = 50;
  const tMax = Math.max(1, ...samples.map((s) => s.t));
  const yMin = 100, yMax = Math.max(total, ...samples.map((s) => s.pages)) * 1.2;
  const x = (t: number) => L + (t / tMax) * (W - L - R);
  const y = (p: number) => {
    // Budgets above the plot (e.g. the attach budget) are drawn at the top.
    const v = Math.log10(Math.min(Math.max(p, yMin), yMax));
    return T + (1 - (v - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * (H - T - B);
  };
  const line = (pts: [number, number][]) =>
    pts.map(([a, b], i) => `${i ? "L" : "M"}${a.toFixed(1)},${b.toFixed(1)}`).join(" ");
  const resident = line(samples.map((s) => [x(s.t), y(s.pages)]));
  const budget = line(
    samples.filter((s) => Number.isFinite(s.budget)).map((s) => [x(s.t), y(s.budget)]),
  );
  const ticks = [100, 180, 1000, 4096, 10000, total].filter((v) => v <= yMax);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="18" font-size="14">Guest RAM resident pages (memfd) under remora, ${RAM_MIB} MiB guest</text>`,
    ...ticks.map((v) =>
      `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>` +
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v}</text>`
    ),
    ...marks.map((m) =>
      `<line x1="${x(m.t)}" x2="${x(m.t)}" y1="${T}" y2="${
        H - B
      }" stroke="#bbb" stroke-dasharray="2,3"/>` +
      `<text x="${x(m.t) + 3}" y="${T + 12}" fill="#555">${m.label}</text>`
    ),
    `<path d="${budget}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="6,4"/>`,
    `<path d="${resident}" fill="none" stroke="#1f77b4" stroke-width="2"/>`,
    `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="black"/>`,
    `<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="black"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle">seconds since attach (0 .. ${
      tMax.toFixed(1)
    })</text>`,
    `<text x="16" y="${(T + H - B) / 2}" transform="rotate(-90 16 ${
      (T + H - B) / 2
    })" text-anchor="middle">pages (log)</text>`,
    `<text x="${W - R - 200}" y="${T + 30}" fill="#1f77b4">resident (memfd blocks)</text>`,
    `<text x="${W - R - 200}" y="${T + 46}" fill="#d62728">budget (--local / resize)</text>`,
    `</svg>`,
  ];
  return parts.join("\n") + "\n";
}

async function main(): Promise<void> {
  const guest = await bootGuest({ ramMiB: RAM_MIB, verifyMiB: 0 });
  let pager: PagerProc | undefined;
  const phases: PhaseResult[] = [];
  const samples: Sample[] = [];
  const marks: { t: number; label: string }[] = [];
  let budget = Infinity;
  let t0 = performance.now();
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      try {
        samples.push({
          t: (performance.now() - t0) / 1000,
          pages: await guestRamResidentPages(guest.pid),
          budget,
        });
      } catch {
        return;
      }
      await delay(50);
    }
  })();
  const mark = (label: string) => marks.push({ t: (performance.now() - t0) / 1000, label });
  try {
    console.log(`guest booted in ${guest.bootMs.toFixed(0)} ms (pid ${guest.pid})`);
    phases.push(await timeVerify(guest, "unlimited", REPS));
    samples.length = 0;
    t0 = performance.now();
    pager = await startHttpPager({ pid: guest.pid, local: `${RAM_MIB * 2}M` });
    budget = (RAM_MIB * 2 * 1024 * 1024) / PAGE_SIZE;
    mark("attach");
    await delay(1000);
    for (const step of ["64M", "16M", "4M", "720K"]) {
      await pager.resize(parseSize(step));
      budget = parseSize(step) / PAGE_SIZE;
      mark(step);
      await delay(2000);
      if (step === "16M" || step === "720K") {
        phases.push(await timeVerify(guest, step, REPS, pager));
      }
    }
    // Detaching puts every page back: mark it before, so its samples are not
    // taken for the last budget's.
    budget = Infinity;
    mark("detach");
    const code = await pager.terminate(60_000);
    mark(`detached (exit ${code})`);
    await delay(2000);
  } finally {
    sampling = false;
    await sampler;
    if (pager) await pager.dispose();
    await guest.kill();
  }
  await Deno.mkdir(OUT, { recursive: true });
  const total = (RAM_MIB * 1024 * 1024) / PAGE_SIZE;
  await Deno.writeTextFile(
    `${OUT}guest_bench.json`,
    JSON.stringify(
      { ramMiB: RAM_MIB, verifyMiB: MIB, bootMs: guest.bootMs, phases, marks, samples },
      null,
      1,
    ) +
      "\n",
  );
  await Deno.writeTextFile(`${OUT}guest_bench.svg`, svgPlot(samples, marks, total));
  console.log(`wrote ${OUT}guest_bench.json and guest_bench.svg (${samples.length} samples)`);
}

if (import.meta.main) await main();
