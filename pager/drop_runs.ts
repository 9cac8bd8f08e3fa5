/**
 * The runs of pages one drop inside a target is taking away right now: the
 * kernel reports each run (or each VMA piece of it) as a REMOVE event, which
 * must be told apart from the target freeing memory itself.
 *
 * @module
 */

/**
 * Runs of a drop under way, sorted by address, with the bytes of each whose
 * REMOVE event is still to come. The kernel reports a run that spans several
 * VMAs as several events, so events are matched by containment.
 *
 * @example
 * ```ts
 * const runs = new DropRuns();
 * runs.set([0x10000, 0x40000], [0x2000, 0x1000]);
 * runs.ownRemove(0x10000, 0x11000); // true: part of our first run
 * runs.ownRemove(0x20000, 0x21000); // false: the target freed it
 * runs.clear();
 * ```
 */
export class DropRuns {
  readonly #starts: number[] = [];
  readonly #lengths: number[] = [];
  readonly #pending: number[] = [];

  /** Starts a drop of the runs `starts[k]`, `lengths[k]` for `k` in `[from, from + n)`. */
  set(starts: number[], lengths: number[], from = 0, n = starts.length - from): void {
    this.clear();
    for (let k = from; k < from + n; k++) {
      this.#starts.push(starts[k]);
      this.#lengths.push(lengths[k]);
      this.#pending.push(lengths[k]);
    }
  }

  /** The drop is over: every event it raised has been read. */
  clear(): void {
    this.#starts.length = this.#lengths.length = this.#pending.length = 0;
  }

  /** The runs, as `[start, length]` pairs. */
  runs(): Array<[number, number]> {
    return this.#starts.map((start, k): [number, number] => [start, this.#lengths[k]]);
  }

  /**
   * Whether a REMOVE event for `[start, end)` is part of this drop (and
   * accounts for it). Anything else is the target freeing memory.
   */
  ownRemove(start: number, end: number): boolean {
    const starts = this.#starts;
    let lo = 0, hi = starts.length - 1, k = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= start) {
        k = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    if (k < 0) return false;
    const runEnd = starts[k] + this.#lengths[k];
    if (end > runEnd || this.#pending[k] < end - start) return false;
    this.#pending[k] -= end - start;
    return true;
  }

  /** Whether `addr` lies in one of the runs. */
  contains(addr: number): boolean {
    for (let k = 0; k < this.#starts.length; k++) {
      if (addr >= this.#starts[k] && addr < this.#starts[k] + this.#lengths[k]) return true;
    }
    return false;
  }
}
