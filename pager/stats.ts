/**
 * Pager counters and the fault-latency histogram. Plain numbers and one
 * typed array: cheap enough to bump on every fault.
 *
 * @module
 */

/**
 * Upper bounds of the fault-latency histogram buckets, in microseconds; the
 * last bucket (index `LATENCY_BOUNDS_US.length`) counts everything slower.
 */
export const LATENCY_BOUNDS_US: readonly number[] = [
  1,
  2,
  4,
  6,
  8,
  10,
  15,
  20,
  30,
  40,
  60,
  80,
  100,
  150,
  200,
  300,
  500,
  1000,
  2000,
  5000,
  10000,
  50000,
  100000,
];

/** A latency histogram with fixed microsecond buckets. */
export class LatencyHistogram {
  /** Count per bucket; `counts[i]` holds samples `<= LATENCY_BOUNDS_US[i]`. */
  readonly counts: Float64Array = new Float64Array(LATENCY_BOUNDS_US.length + 1);
  /** Sum of all samples, in microseconds. */
  sumUs = 0;
  /** Number of samples. */
  count = 0;

  /** Records one sample. */
  record(us: number): void {
    let i = 0;
    while (i < LATENCY_BOUNDS_US.length && us > LATENCY_BOUNDS_US[i]) i++;
    this.counts[i]++;
    this.sumUs += us;
    this.count++;
  }

  /** Estimates the q-quantile (0..1) by linear interpolation inside a bucket. */
  quantile(q: number): number {
    if (this.count === 0) return 0;
    const rank = q * this.count;
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      const c = this.counts[i];
      if (seen + c >= rank && c > 0) {
        const lo = i === 0 ? 0 : LATENCY_BOUNDS_US[i - 1];
        const hi = i < LATENCY_BOUNDS_US.length ? LATENCY_BOUNDS_US[i] : lo * 2;
        return lo + (hi - lo) * ((rank - seen) / c);
      }
      seen += c;
    }
    return LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.length - 1];
  }

  /** A JSON-friendly copy. */
  snapshot(): HistogramSnapshot {
    return {
      boundsUs: [...LATENCY_BOUNDS_US],
      counts: [...this.counts],
      sumUs: this.sumUs,
      count: this.count,
      p50Us: this.quantile(0.5),
      p99Us: this.quantile(0.99),
    };
  }
}

/** A histogram as plain data (for `/stats`, `/metrics` and the exit report). */
export interface HistogramSnapshot {
  /** Bucket upper bounds in microseconds; one more count than bounds (+Inf). */
  boundsUs: number[];
  /** Count per bucket (not cumulative). */
  counts: number[];
  /** Sum of samples in microseconds. */
  sumUs: number;
  /** Number of samples. */
  count: number;
  /** Estimated median, microseconds. */
  p50Us: number;
  /** Estimated 99th percentile, microseconds. */
  p99Us: number;
}

/**
 * Every counter of a pager session, once: its field name, its Prometheus
 * family, and its help text. The {@linkcode Counters} fields, the
 * `PagerStats.counters` type, `/metrics` and the fake pager all derive from
 * this list, in this order.
 *
 * @example
 * ```ts
 * for (const c of COUNTERS) console.log(c.name, c.prometheus, c.help);
 * ```
 */
export const COUNTERS = [
  {
    name: "faults",
    prometheus: "remora_faults_total",
    help: "Page faults read from userfaultfd (missing and write-protect).",
  },
  {
    name: "missingFaults",
    prometheus: "remora_missing_faults_total",
    help: "Missing-page faults.",
  },
  // First write to a clean page, or a write during eviction.
  { name: "wpFaults", prometheus: "remora_wp_faults_total", help: "Write-protect faults." },
  {
    name: "zeroFills",
    prometheus: "remora_zero_fills_total",
    help: "Faults served with a zero page (page never evicted).",
  },
  {
    // Along a fault's trend, pages never touched yet: one ioctl per run, no faults.
    name: "zeroFillsAhead",
    prometheus: "remora_zero_fills_ahead_total",
    help: "Never-touched pages mapped with zeros ahead of a fault along its stream's trend.",
  },
  {
    name: "pagesFetched",
    prometheus: "remora_pages_fetched_total",
    help: "Pages fetched from the backend into the target.",
  },
  {
    name: "pagesEvicted",
    prometheus: "remora_pages_evicted_total",
    help: "Pages dropped from the target after the backend held a copy.",
  },
  {
    name: "pagesWritten",
    prometheus: "remora_pages_written_total",
    help: "Pages written to the backend.",
  },
  {
    // The backend already held a current copy.
    name: "writesAvoided",
    prometheus: "remora_writes_avoided_total",
    help: "Evictions of clean pages that needed no write.",
  },
  {
    name: "evictionsCancelled",
    prometheus: "remora_evictions_cancelled_total",
    help: "Evictions cancelled because the target wrote the page meanwhile.",
  },
  {
    // EEXIST from UFFDIO_COPY, or a duplicate message.
    name: "spuriousFaults",
    prometheus: "remora_spurious_faults_total",
    help: "Fault messages that found their page already resolved.",
  },
  {
    name: "retries",
    prometheus: "remora_fault_retries_total",
    help: "EAGAIN retries of UFFDIO_COPY/UFFDIO_ZEROPAGE.",
  },
  {
    // Unmapped, removed (MADV_DONTNEED by the target) or the process exited.
    name: "pagesFreed",
    prometheus: "remora_pages_freed_total",
    help: "Pages freed because the target unmapped them or exited.",
  },
  {
    name: "pagesRestored",
    prometheus: "remora_pages_restored_total",
    help: "Pages put back into the target on detach.",
  },
  {
    // The store had to give their keys up with no other place for them (a peer's partial drain).
    name: "pagesPulledHome",
    prometheus: "remora_pages_pulled_home_total",
    help: "Pages brought home because the store had nowhere else to keep them.",
  },
  {
    // Single-threaded targets: no REMOVE event, so no round trip through the pager per run.
    name: "guardedDropRuns",
    prometheus: "remora_guarded_drop_runs_total",
    help: "Runs of evicted pages dropped with guard markers instead of DONTNEED.",
  },
  {
    // In the same store batch as a missing fault, placed before any touch.
    name: "pagesPrefetched",
    prometheus: "remora_pages_prefetched_total",
    help: "Pages fetched ahead of a fault along the faulting stream's trend.",
  },
  {
    name: "prefetchHits",
    prometheus: "remora_prefetch_hits_total",
    help: "Prefetched pages seen touched (written, or passed by their stream's faults).",
  },
  {
    name: "prefetchWasted",
    prometheus: "remora_prefetch_wasted_total",
    help: "Prefetched pages evicted with no touch seen.",
  },
] as const;

/** The name of one counter, e.g. `"pagesFetched"`. */
export type CounterName = typeof COUNTERS[number]["name"];

/**
 * Every counter as a plain number, in {@linkcode COUNTERS} order.
 *
 * @example
 * ```ts
 * const zero: CounterValues = zeroCounters();
 * ```
 */
export type CounterValues = Record<CounterName, number>;

/**
 * All counters at zero, in {@linkcode COUNTERS} order.
 *
 * @example
 * ```ts
 * const c = zeroCounters();
 * c.faults = 3;
 * ```
 */
export function zeroCounters(): CounterValues {
  const out = {} as CounterValues;
  for (const c of COUNTERS) out[c.name] = 0;
  return out;
}

// The class below gets one number field per entry of COUNTERS (typed here,
// set in the constructor), so the fault path keeps `counters.faults++`.
/** The number fields of {@linkcode Counters} (merged into the class). */
export interface Counters extends CounterValues {}

/**
 * Monotonic counters of one pager session (all processes it pages): one
 * number field per entry of {@linkcode COUNTERS}, and two latency histograms.
 *
 * @example
 * ```ts
 * const c = new Counters();
 * c.faults++;
 * c.faultLatency.record(12);
 * c.snapshot().faults; // 1
 * ```
 */
export class Counters {
  /** Fault latency: message read to UFFDIO_COPY/ZEROPAGE done. */
  readonly faultLatency: LatencyHistogram = new LatencyHistogram();
  /** Eviction batch latency (write-protect to drop), microseconds. */
  readonly evictLatency: LatencyHistogram = new LatencyHistogram();

  /** All counters at zero. */
  constructor() {
    Object.assign(this, zeroCounters());
  }

  /** The counters as plain numbers (a copy), in {@linkcode COUNTERS} order. */
  snapshot(): CounterValues {
    const out = {} as CounterValues;
    for (const c of COUNTERS) out[c.name] = this[c.name];
    return out;
  }
}

/** A point-in-time view of a pager, as served by `/stats` and printed at exit. */
export interface PagerStats {
  /** Seconds since the pager attached. */
  uptimeSeconds: number;
  /** Pids currently paged (the target and its forked children). */
  pids: number[];
  /** Local budget in pages (`--local`). */
  budgetPages: number;
  /** Pages resident in the targets, as tracked by the pager. */
  residentPages: number;
  /** Pages whose only copy is in the backend. */
  remotePages: number;
  /** Bytes of registered (managed) address space. */
  managedBytes: number;
  /** Backend name, e.g. `embedded`. */
  backend: string;
  /** Counters, as plain numbers. */
  counters: CounterValues;
  /** Fault service latency. */
  faultLatency: HistogramSnapshot;
  /** Latency of whole eviction batches (write-protect to drop). */
  evictLatency: HistogramSnapshot;
  /** Bytes of pager metadata per managed page (page table, queue, key table). */
  metadataBytesPerPage: number;
  /** Backend health: per-endpoint state and replication deficit. */
  store: import("../transport/store.ts").StoreHealth;
}

/** What the control endpoint (HTTP) may ask of a running pager. */
export interface PagerControl {
  /** Current statistics. */
  stats(): PagerStats;
  /** Sets the local budget in bytes (grow or shrink, applied live); resolves once applied. */
  resize(bytes: number): Promise<PagerStats>;
  /** Puts every page back, detaches from every target; resolves when done. */
  detach(): Promise<PagerStats>;
}
