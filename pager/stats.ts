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

/** Monotonic counters of one pager session (all processes it pages). */
export class Counters {
  /** Page faults read from userfaultfd (missing + write-protect). */
  faults = 0;
  /** Missing-page faults. */
  missingFaults = 0;
  /** Write-protect faults (first write to a clean page, or a write during eviction). */
  wpFaults = 0;
  /** Faults served with a zero page (page never evicted). */
  zeroFills = 0;
  /** Pages fetched from the backend and placed in the target. */
  pagesFetched = 0;
  /** Pages dropped from the target after the backend held a current copy. */
  pagesEvicted = 0;
  /** Pages written to the backend. */
  pagesWritten = 0;
  /** Evictions of clean pages that needed no write (current remote copy). */
  writesAvoided = 0;
  /** Evictions cancelled because the target wrote the page meanwhile. */
  evictionsCancelled = 0;
  /** Fault messages that found their page already resolved (EEXIST, duplicates). */
  spuriousFaults = 0;
  /** EAGAIN retries of UFFDIO_COPY/ZEROPAGE. */
  retries = 0;
  /** Pages freed because the target unmapped, removed or exited. */
  pagesFreed = 0;
  /** Pages put back into the target on detach. */
  pagesRestored = 0;
  /** Fault latency: message read to UFFDIO_COPY/ZEROPAGE done. */
  readonly faultLatency: LatencyHistogram = new LatencyHistogram();
  /** Eviction batch latency (write-protect to drop), microseconds. */
  readonly evictLatency: LatencyHistogram = new LatencyHistogram();
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
  counters: {
    faults: number;
    missingFaults: number;
    wpFaults: number;
    zeroFills: number;
    pagesFetched: number;
    pagesEvicted: number;
    pagesWritten: number;
    writesAvoided: number;
    evictionsCancelled: number;
    spuriousFaults: number;
    retries: number;
    pagesFreed: number;
    pagesRestored: number;
  };
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
