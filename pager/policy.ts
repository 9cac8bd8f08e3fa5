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
  /** Picks up to `n` victims, appending `(target, page)` pairs to `out`; returns how many. */
  pick(n: number, inspect: Inspect, outTargets: number[], outPages: number[]): number;
  /** Entries held (including stale ones not yet met). */
  readonly size: number;
  /** Bytes of metadata held. */
  readonly bytes: number;
}

/**
 * FIFO by fault order with a second chance: a page that faulted again since
 * it was queued goes to the back once instead of out.
 */
export class FifoSecondChance implements EvictionPolicy {
  #pages = new Float64Array(4096);
  #targets = new Uint16Array(4096);
  #head = 0;
  #size = 0;

  /** Entries held. */
  get size(): number {
    return this.#size;
  }

  /** Bytes of metadata held. */
  get bytes(): number {
    return this.#pages.byteLength + this.#targets.byteLength;
  }

  /** Appends a page at the back. */
  admit(target: number, page: number): void {
    if (this.#size === this.#pages.length) this.#grow();
    const i = (this.#head + this.#size) % this.#pages.length;
    this.#pages[i] = page;
    this.#targets[i] = target;
    this.#size++;
  }

  /** Takes victims from the front, requeueing referenced pages once each. */
  pick(n: number, inspect: Inspect, outTargets: number[], outPages: number[]): number {
    let found = 0;
    // Each entry is looked at most twice per call: a referenced page loses
    // its bit on the first look, so this loop terminates.
    let budget = this.#size * 2 + 1;
    while (found < n && this.#size > 0 && budget-- > 0) {
      const page = this.#pages[this.#head];
      const target = this.#targets[this.#head];
      this.#head = (this.#head + 1) % this.#pages.length;
      this.#size--;
      const v = inspect(target, page);
      if (v === Verdict.VICTIM) {
        outTargets.push(target);
        outPages.push(page);
        found++;
      } else if (v === Verdict.REFERENCED) {
        this.admit(target, page);
      }
    }
    return found;
  }

  #grow(): void {
    const cap = this.#pages.length;
    const pages = new Float64Array(cap * 2);
    const targets = new Uint16Array(cap * 2);
    for (let k = 0; k < this.#size; k++) {
      const i = (this.#head + k) % cap;
      pages[k] = this.#pages[i];
      targets[k] = this.#targets[i];
    }
    this.#pages = pages;
    this.#targets = targets;
    this.#head = 0;
  }
}
