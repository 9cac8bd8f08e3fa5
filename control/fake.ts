/**
 * A simulated {@linkcode PagerControl} whose numbers move with time: for the
 * HTTP and dashboard tests, and for working on the dashboard without a
 * target (`deno run --allow-net control/fake.ts [PORT]` serves it).
 *
 * It has nothing to do with paging; it only produces plausible snapshots.
 *
 * @module
 */

import {
  type CounterValues,
  LATENCY_BOUNDS_US,
  LatencyHistogram,
  type PagerControl,
  type PagerStats,
  zeroCounters,
} from "../pager/stats.ts";
import type { EndpointHealth } from "../transport/store.ts";
import { PAGE_SIZE } from "../transport/store.ts";

/** Options of {@linkcode FakePager}. */
export interface FakePagerOptions {
  /** Simulated target size in bytes (64 MiB by default). */
  managedBytes?: number;
  /** Initial budget in bytes (16 MiB by default). */
  budgetBytes?: number;
  /** Faults per second the simulated target causes (20 000 by default). */
  faultsPerSecond?: number;
  /** Simulated peers; none (the embedded store) by default. */
  endpoints?: EndpointHealth[];
}

/** A time-driven fake pager; see the module doc. */
export class FakePager implements PagerControl {
  /** Every `resize` call, in bytes, for tests to inspect. */
  readonly resizes: number[] = [];
  /** How many times `detach` was called. */
  detaches = 0;
  /** Set to make the next `resize` reject with this error. */
  failNextResize?: Error;
  /** Milliseconds `detach` takes, to test concurrent requests. */
  detachDelayMs = 0;
  /** When set, `detach` waits for it: a test holds a detach open as long as it needs. */
  detachGate?: Promise<unknown>;

  readonly #start = performance.now();
  readonly #managedPages: number;
  readonly #faultsPerSecond: number;
  readonly #endpoints: EndpointHealth[];
  #budgetPages: number;
  #detachedAt?: number;
  #restored = 0;

  /** Builds a fake with the given shape. */
  constructor(opts: FakePagerOptions = {}) {
    this.#managedPages = Math.floor((opts.managedBytes ?? 64 << 20) / PAGE_SIZE);
    this.#budgetPages = Math.floor((opts.budgetBytes ?? 16 << 20) / PAGE_SIZE);
    this.#faultsPerSecond = opts.faultsPerSecond ?? 20_000;
    this.#endpoints = opts.endpoints ?? [];
  }

  /** A snapshot whose counters grow with elapsed time (frozen after detach). */
  stats(): PagerStats {
    const now = this.#detachedAt ?? performance.now();
    const t = (now - this.#start) / 1000;
    const faults = Math.floor(t * this.#faultsPerSecond);
    const wp = Math.floor(faults / 5);
    const detached = this.#detachedAt !== undefined;
    // Residency ramps up to the budget in the first seconds, like a real attach.
    const resident = detached
      ? this.#managedPages
      : Math.min(this.#budgetPages, this.#managedPages, Math.floor(t * 4000));
    const remote = detached ? 0 : Math.max(0, this.#managedPages - resident);
    // Spread the faults over the buckets with a fixed, plausible shape.
    const shape = LATENCY_BOUNDS_US.map((b) =>
      Math.exp(-((Math.log(b) - Math.log(12)) ** 2) / 1.5)
    );
    shape.push(0.0005);
    const norm = shape.reduce((a, b) => a + b, 0);
    const counts = shape.map((w) => Math.floor((faults * w) / norm));
    const count = counts.reduce((a, b) => a + b, 0);
    let sumUs = 0;
    counts.forEach((c, i) => {
      const hi = i < LATENCY_BOUNDS_US.length ? LATENCY_BOUNDS_US[i] : 200_000;
      sumUs += c * hi * 0.75;
    });
    return {
      uptimeSeconds: t,
      pids: detached ? [] : [4242, 4243],
      budgetPages: this.#budgetPages,
      residentPages: resident,
      remotePages: remote,
      managedBytes: this.#managedPages * PAGE_SIZE,
      backend: this.#endpoints.length ? "peers" : "embedded",
      counters: this.#counters(faults, wp),
      faultLatency: {
        ...new LatencyHistogram().snapshot(),
        counts,
        sumUs,
        count,
        p50Us: 12,
        p99Us: 80,
      },
      evictLatency: new LatencyHistogram().snapshot(),
      metadataBytesPerPage: 5,
      store: {
        pages: remote,
        replicationDeficit: 0,
        endpoints: this.#endpoints.map((e, i) => ({
          ...e,
          requests: e.requests + Math.floor(faults / (i + 2)),
          medianLatencyUs: e.medianLatencyUs + 5 * Math.sin(t + i),
        })),
      },
    };
  }

  /**
   * Plausible counters for `faults` faults of which `wp` write-protect ones;
   * a counter the fake does not model stays 0.
   */
  #counters(faults: number, wp: number): CounterValues {
    const c = zeroCounters();
    c.faults = faults;
    c.missingFaults = faults - wp;
    c.wpFaults = wp;
    c.zeroFills = Math.floor(faults / 50);
    c.pagesFetched = faults - wp - c.zeroFills;
    c.pagesEvicted = Math.floor(faults * 0.8);
    c.pagesWritten = Math.floor(faults * 0.3);
    c.writesAvoided = Math.floor(faults * 0.5);
    c.evictionsCancelled = Math.floor(faults / 1000);
    c.spuriousFaults = Math.floor(faults / 500);
    c.pagesRestored = this.#restored;
    c.pagesPrefetched = Math.floor(c.pagesFetched * 0.6);
    c.prefetchHits = Math.floor(c.pagesPrefetched * 0.9);
    c.prefetchWasted = Math.floor(c.pagesPrefetched * 0.05);
    return c;
  }

  /** Records the call and applies the budget; rejects with `failNextResize` once if set. */
  resize(bytes: number): Promise<PagerStats> {
    this.resizes.push(bytes);
    const err = this.failNextResize;
    if (err) {
      this.failNextResize = undefined;
      return Promise.reject(err);
    }
    this.#budgetPages = Math.floor(bytes / PAGE_SIZE);
    return Promise.resolve(this.stats());
  }

  /** Freezes the numbers as a detached pager would leave them. */
  async detach(): Promise<PagerStats> {
    this.detaches++;
    if (this.detachDelayMs) await new Promise((r) => setTimeout(r, this.detachDelayMs));
    await this.detachGate;
    const before = this.stats();
    this.#restored = before.remotePages;
    this.#detachedAt = performance.now();
    return this.stats();
  }
}

if (import.meta.main) {
  // A demo for working on the dashboard: a fake pager with two peers.
  const { serveControl, httpBase } = await import("./http.ts");
  const port = Number(Deno.args[0] ?? 9477);
  const fake = new FakePager({
    endpoints: [
      {
        address: "tcp://10.0.0.2:7070",
        state: "up",
        requests: 0,
        medianLatencyUs: 40,
        pages: 6000,
      },
      {
        address: "tcp://10.0.0.3:7070",
        state: "draining",
        requests: 0,
        medianLatencyUs: 90,
        pages: 6288,
      },
    ],
  });
  const server = await serveControl(fake, { hostname: "127.0.0.1", port });
  console.error(`fake pager dashboard at ${httpBase(server.addr)}/`);
}
