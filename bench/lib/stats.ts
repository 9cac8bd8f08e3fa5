/**
 * Small statistics helpers: medians with spread, and quantiles and CDFs of
 * the two histogram shapes the benchmark sees (the workloads' log-spaced
 * touch histogram, the pager's fixed-bound fault histogram).
 *
 * @module
 */

/** A workload's touch-latency histogram (see bench/workloads/common.h). */
export interface LogHist {
  /** Upper bound of bucket 0, divided by `ratio`, in ns. */
  minNs: number;
  /** Growth factor between bucket bounds. */
  ratio: number;
  /** Sparse `[bucket, count]` pairs. */
  buckets: [number, number][];
}

/**
 * Touches at or above this latency are counted as having waited for a fault.
 * A resident 4 KiB page costs well under 1 µs even with a TLB and cache miss;
 * serving a fault from swap or from a pager takes several µs.
 */
export const FAULT_THRESHOLD_NS = 2000;

/** Lower bound of bucket `b`, ns. */
export function bucketLo(h: LogHist, b: number): number {
  return b === 0 ? 0 : h.minNs * Math.pow(h.ratio, b);
}

/** Upper bound of bucket `b`, ns. */
export function bucketHi(h: LogHist, b: number): number {
  return h.minNs * Math.pow(h.ratio, b + 1);
}

/** The part of `h` at or above {@linkcode FAULT_THRESHOLD_NS}, and its size. */
export function slowTouches(h: LogHist): { hist: LogHist; count: number } {
  const buckets = h.buckets.filter(([b]) => bucketLo(h, b) >= FAULT_THRESHOLD_NS * 0.999);
  return { hist: { ...h, buckets }, count: buckets.reduce((s, [, c]) => s + c, 0) };
}

/** Adds histograms with the same shape. */
export function mergeLogHists(hs: LogHist[]): LogHist | null {
  if (hs.length === 0) return null;
  const m = new Map<number, number>();
  for (const h of hs) for (const [b, c] of h.buckets) m.set(b, (m.get(b) ?? 0) + c);
  return { ...hs[0], buckets: [...m.entries()].sort((a, b) => a[0] - b[0]) };
}

/** q-quantile of a log histogram in ns, geometric interpolation inside a bucket. */
export function logHistQuantile(h: LogHist, q: number): number {
  const total = h.buckets.reduce((s, [, c]) => s + c, 0);
  if (total === 0) return NaN;
  const rank = q * total;
  let seen = 0;
  for (const [b, c] of h.buckets) {
    if (seen + c >= rank) {
      const lo = Math.max(bucketLo(h, b), 1), hi = bucketHi(h, b);
      return lo * Math.pow(hi / lo, (rank - seen) / c);
    }
    seen += c;
  }
  return bucketHi(h, h.buckets[h.buckets.length - 1][0]);
}

/** CDF points `[x, F(x)]` of a log histogram, x in µs. */
export function logHistCdf(h: LogHist): [number, number][] {
  const total = h.buckets.reduce((s, [, c]) => s + c, 0);
  const pts: [number, number][] = [];
  let seen = 0;
  for (const [b, c] of h.buckets) {
    if (pts.length === 0) pts.push([Math.max(bucketLo(h, b), 1) / 1000, 0]);
    seen += c;
    pts.push([bucketHi(h, b) / 1000, seen / total]);
  }
  return pts;
}

/** The pager's histogram (bounds in µs, one more count than bounds). */
export interface BoundHist {
  /** Bucket upper bounds, µs. */
  boundsUs: number[];
  /** Counts per bucket, last one open-ended. */
  counts: number[];
}

/** Adds pager histograms. */
export function mergeBoundHists(hs: BoundHist[]): BoundHist | null {
  if (hs.length === 0) return null;
  const counts = hs[0].counts.map((_, i) => hs.reduce((s, h) => s + (h.counts[i] ?? 0), 0));
  return { boundsUs: hs[0].boundsUs, counts };
}

/** CDF points of a pager histogram, x in µs. */
export function boundHistCdf(h: BoundHist): [number, number][] {
  const total = h.counts.reduce((s, c) => s + c, 0);
  if (total === 0) return [];
  const pts: [number, number][] = [];
  let seen = 0;
  for (let i = 0; i < h.counts.length; i++) {
    const lo = i === 0 ? 0.5 : h.boundsUs[i - 1];
    const hi = i < h.boundsUs.length ? h.boundsUs[i] : lo * 2;
    if (h.counts[i] === 0) continue;
    if (pts.length === 0) pts.push([lo, 0]);
    seen += h.counts[i];
    pts.push([hi, seen / total]);
  }
  return pts;
}

/** Median, minimum and maximum of the finite values (NaN when none). */
export function spread(xs: number[]): { med: number; min: number; max: number; n: number } {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { med: NaN, min: NaN, max: NaN, n: 0 };
  const mid = Math.floor(v.length / 2);
  const med = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  return { med, min: v[0], max: v[v.length - 1], n: v.length };
}

/**
 * System-wide swap-in and swap-readahead counters from /proc/vmstat.
 *
 * @example
 * ```ts
 * const { swapRa, swapRaHit } = readSwapCounters();
 * ```
 */
export interface SwapCounters {
  /** Pages read in from swap. */
  pswpin: number;
  /** Pages the kernel's swap readahead brought in. */
  swapRa: number;
  /** Of those, pages a fault then found in the swap cache (readahead hits). */
  swapRaHit: number;
}

/**
 * Reads the swap counters now; zeros where the kernel lacks them.
 *
 * @example
 * ```ts
 * const before = readSwapCounters();
 * // ... run something under kernel swap ...
 * const delta = swapCountersSince(before);
 * ```
 */
export function readSwapCounters(): SwapCounters {
  const c: SwapCounters = { pswpin: 0, swapRa: 0, swapRaHit: 0 };
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/vmstat");
  } catch { /* not Linux: zeros */ }
  for (const line of text.split("\n")) {
    const [k, v] = line.split(" ");
    if (k === "pswpin") c.pswpin = Number(v);
    else if (k === "swap_ra") c.swapRa = Number(v);
    else if (k === "swap_ra_hit") c.swapRaHit = Number(v);
  }
  return c;
}

/**
 * What the counters rose by since `before`. They count the whole machine: a
 * benchmark runs alone (it refuses to start while swap is active), so the
 * kernel rows' program is the only thing swapping.
 *
 * @example
 * ```ts
 * const d = swapCountersSince(readSwapCounters());
 * console.log(d.swapRaHit / d.swapRa);
 * ```
 */
export function swapCountersSince(before: SwapCounters): SwapCounters {
  const now = readSwapCounters();
  return {
    pswpin: now.pswpin - before.pswpin,
    swapRa: now.swapRa - before.swapRa,
    swapRaHit: now.swapRaHit - before.swapRaHit,
  };
}
