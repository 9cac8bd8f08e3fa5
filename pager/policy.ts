/**
 * Which resident page to evict next. The pager keeps the per-page bits; a
 * policy keeps only an order.
 *
 * @module
 */

/** What the pager says of a queued page when the policy offers it. */
export const Verdict = {
  /** The entry is stale (page gone, moved or already evicted): forget it. */
  STALE: 0,
  /** Used since it was queued: requeue it at the back (second chance). */
  REFERENCED: 1,
  /** Evict it. */
  VICTIM: 2,
} as const;

/** Inspects a queued page; may clear its referenced bit. */
export type Inspect = (target: number, page: number) => number;

/** An eviction policy. */
export interface EvictionPolicy {
  /** A page became resident in target `target` (a small integer) at address `page`. */
  admit(target: number, page: number): void;
  /**
   * A page was placed by a prefetch, untouched: it goes before every other
   * page (a prefetch must never push out the hot set). Policies without
   * such a queue admit it as any other.
   */
  admitAhead?(target: number, page: number): void;
  /** Picks up to `n` victims, appending `(target, page)` pairs to `out`; returns how many. */
  pick(n: number, inspect: Inspect, outTargets: number[], outPages: number[]): number;
  /** Entries held (including stale ones not yet met). */
  readonly size: number;
  /** Bytes of metadata held. */
  readonly bytes: number;
}

/** A FIFO of (target, page) entries in typed arrays that grow by doubling. */
class PageRing {
  pages: Float64Array;
  targets: Uint16Array;
  head = 0;
  size = 0;

  constructor(capacity: number) {
    this.pages = new Float64Array(capacity);
    this.targets = new Uint16Array(capacity);
  }

  get bytes(): number {
    return this.pages.byteLength + this.targets.byteLength;
  }

  push(target: number, page: number): void {
    if (this.size === this.pages.length) this.#grow();
    const i = (this.head + this.size) % this.pages.length;
    this.pages[i] = page;
    this.targets[i] = target;
    this.size++;
  }

  /** Removes the front entry; read it from `pages[head]`/`targets[head]` before. */
  shift(): void {
    this.head = (this.head + 1) % this.pages.length;
    this.size--;
  }

  #grow(): void {
    const cap = this.pages.length;
    const pages = new Float64Array(cap * 2);
    const targets = new Uint16Array(cap * 2);
    for (let k = 0; k < this.size; k++) {
      const i = (this.head + k) % cap;
      pages[k] = this.pages[i];
      targets[k] = this.targets[i];
    }
    this.pages = pages;
    this.targets = targets;
    this.head = 0;
  }
}

/**
 * FIFO by fault order with a second chance: a page that faulted again since
 * it was queued goes to the back once instead of out. Pages placed by a
 * prefetch wait in a queue of their own that is emptied first: untouched,
 * they go before any page the target used; touched, they join the main queue.
 *
 * @example
 * ```ts
 * const fifo = new FifoSecondChance();
 * fifo.admit(0, 0x1000);
 * fifo.admitAhead(0, 0x9000);
 * const t: number[] = [], p: number[] = [];
 * fifo.pick(1, () => Verdict.VICTIM, t, p); // p = [0x9000]: the prefetched page first
 * ```
 */
export class FifoSecondChance implements EvictionPolicy {
  readonly #main = new PageRing(4096);
  // Prefetched pages leave soon (evicted first, or moved to #main): a small start.
  readonly #ahead = new PageRing(64);

  /** Entries held. */
  get size(): number {
    return this.#main.size + this.#ahead.size;
  }

  /** Bytes of metadata held. */
  get bytes(): number {
    return this.#main.bytes + this.#ahead.bytes;
  }

  /** Appends a page at the back. */
  admit(target: number, page: number): void {
    this.#main.push(target, page);
  }

  /** Appends a prefetched page to the queue that is emptied first. */
  admitAhead(target: number, page: number): void {
    this.#ahead.push(target, page);
  }

  /**
   * Takes victims: untouched prefetched pages first (a touched one moves to
   * the main queue), then from the front of the main queue, requeueing
   * referenced pages once each.
   */
  pick(n: number, inspect: Inspect, outTargets: number[], outPages: number[]): number {
    let found = this.#take(this.#ahead, n, inspect, outTargets, outPages, this.#main);
    if (found < n) {
      found += this.#take(this.#main, n - found, inspect, outTargets, outPages, this.#main);
    }
    return found;
  }

  /** Takes up to `n` victims from `ring`; a referenced entry goes to the back of `requeue`. */
  #take(
    ring: PageRing,
    n: number,
    inspect: Inspect,
    outTargets: number[],
    outPages: number[],
    requeue: PageRing,
  ): number {
    let found = 0;
    // Each entry is looked at most twice per call: a referenced page loses
    // its bit on the first look, so this loop terminates.
    let budget = ring.size * 2 + 1;
    while (found < n && ring.size > 0 && budget-- > 0) {
      const page = ring.pages[ring.head];
      const target = ring.targets[ring.head];
      ring.shift();
      const v = inspect(target, page);
      if (v === Verdict.VICTIM) {
        outTargets.push(target);
        outPages.push(page);
        found++;
      } else if (v === Verdict.REFERENCED) {
        requeue.push(target, page);
      }
    }
    return found;
  }
}
