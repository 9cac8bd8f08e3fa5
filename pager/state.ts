/**
 * The state a pager's parts share, in one place (as CRIU keeps one struct per
 * process): the store, the page book and budget, the targets, the queues of
 * faults waiting to be replayed, and how the run ends.
 *
 * @module
 */

import { eventfd, eventfdSignal } from "../ffi/libc.ts";
import type { Pump } from "../ffi/ptrace.ts";
import type { PageStore } from "../transport/store.ts";
import type { Budget } from "./budget.ts";
import { PAGE, type PageBook, type Region } from "./page_table.ts";
import type { EvictionPolicy } from "./policy.ts";
import { NoPrefetch, type PrefetchPolicy } from "./prefetch.ts";
import { SlotTable } from "./slots.ts";
import { Counters } from "./stats.ts";
import type { Target } from "./target.ts";

/** How a pager run ended. */
export type PagerEnd =
  | { kind: "detached" }
  | { kind: "exited"; pid: number }
  | { kind: "lost"; message: string }
  | { kind: "failed"; message: string };

/**
 * A fault to serve again: its UFFDIO_COPY/ZEROPAGE/WRITEPROTECT got EAGAIN
 * (the target's layout is changing, e.g. one of our own drops is reporting
 * its REMOVE event), or it waits for room under the budget.
 */
export interface Refault {
  target: Target;
  addr: number;
  /** The missing fault was a write. */
  write: boolean;
  /** A write-protect fault (of thread `tid`), not a missing one. */
  wp: boolean;
  tid: number;
  since: number;
}

/** What the parts ask of the pager that owns them. */
export interface PagerHooks {
  /**
   * The process seems to have exited (`why` says what showed it): once it is
   * really gone, forget it and free what it had in the store.
   */
  targetGone(t: Target, why: string): void;
  /** A mapping may have appeared: look at the target's maps soon. */
  rescanSoon(): void;
  /** Serves the targets while the pager waits on one of them (ptrace stops, drops). */
  pump: Pump;
  /**
   * Waits in a synchronous poll, up to `timeoutMs`, for `fd` to turn
   * readable, serving the targets' faults and events meanwhile; true if it did.
   */
  serveUntil(fd: number, timeoutMs: number): boolean;
  /** Ends the run. */
  finish(end: PagerEnd): void;
}

/**
 * The state of one pager, shared by its parts.
 *
 * @example
 * ```ts
 * import { Budget } from "./budget.ts";
 * import { PageBook } from "./page_table.ts";
 * import { FifoSecondChance } from "./policy.ts";
 * declare const store: PageStore; // any backend
 * const state = new PagerState(store, new FifoSecondChance(), new Budget(8 << 20), new PageBook());
 * state.wakeLoop(); // the loop looks again
 * ```
 */
export class PagerState {
  /** Where evicted pages go. */
  readonly store: PageStore;
  /** Which resident page goes next. */
  readonly policy: EvictionPolicy;
  /** Which pages come back along with a missing fault. */
  prefetch: PrefetchPolicy = new NoPrefetch();
  /** The local budget. */
  readonly budget: Budget;
  /** Per-page state moves and the counts they keep. */
  readonly book: PageBook;
  /** Store keys and their references. */
  readonly slots: SlotTable = new SlotTable();
  /** Counters of this session. */
  readonly counters: Counters = new Counters();
  /** The managed processes, by id. */
  readonly targets: Map<number, Target> = new Map();
  /** Pids seen so far (a forked child is the one not among them). */
  readonly knownPids: Set<number> = new Set();
  /** Signalled to wake the loop from its poll. */
  readonly wake: number = eventfd();
  /** Signalled by the shim when an eviction's read of the target is done. */
  readonly readDone: number = eventfd();
  /** When the session started (performance.now()). */
  readonly started: number = performance.now();
  /** Faults to replay once the pending events are read (EAGAIN). */
  retries: Refault[] = [];
  /** Faults waiting for room under the budget. */
  budgetWaits: Refault[] = [];
  /** Fetches in flight. */
  inflight = 0;
  /** The eviction run under way, if any. */
  evicting: Promise<void> | null = null;
  /** A detach is under way: no budget, no eviction. */
  detaching = false;
  /**
   * Pages were lost and the targets were sent SIGSTOP: the loop still serves
   * the faults it can (a thread must get to its signal to stop, and on the way
   * may fault, e.g. on its rseq area) but evicts nothing, until every thread
   * has stopped or `deadline` (performance.now()) passes; then the run ends
   * with `message`.
   */
  stopping: { message: string; deadline: number } | null = null;
  /**
   * A take-over is giving back a thread the killed pager had borrowed: the
   * loop serves faults and events (that thread's drop waits for its REMOVE
   * events to be read) but evicts nothing, which would borrow a thread too.
   */
  takingOver = false;
  /** How the run ended, once it has. */
  end: PagerEnd | null = null;
  #nextId = 0;

  /** The state of a pager with these parts. */
  constructor(store: PageStore, policy: EvictionPolicy, budget: Budget, book: PageBook) {
    this.store = store;
    this.policy = policy;
    this.budget = budget;
    this.book = book;
  }

  /** A new small integer to name a target in the eviction queue. */
  nextTargetId(): number {
    return this.#nextId++;
  }

  /** Wakes the loop from its poll (an eviction ended, a fault waits for room, detach...). */
  wakeLoop(): void {
    eventfdSignal(this.wake);
  }

  /**
   * Tells the root target's record how many forked children are paged with
   * it: a take-over says which of them it leaves blocked.
   */
  noteFamily(): void {
    for (const t of this.targets.values()) {
      if (t.record !== null) t.record.children = this.targets.size - 1;
    }
  }

  /** Eviction is due (see {@linkcode Budget.evictionDue}). */
  evictionDue(): boolean {
    if (this.stopping !== null || this.takingOver) return false;
    return this.budget.evictionDue(this.book, this.budgetWaits.length);
  }

  /**
   * A page became resident (or was used again): queue it for eviction. A page
   * placed by a prefetch (`ahead`) goes to the queue of pages evicted first.
   */
  admit(t: Target, r: Region, i: number, ahead = false): void {
    if (!this.book.enqueue(r, i)) return;
    const addr = r.start + i * PAGE;
    if (ahead && this.policy.admitAhead !== undefined) this.policy.admitAhead(t.id, addr);
    else this.policy.admit(t.id, addr);
  }
}

/** `0x`-prefixed hexadecimal, for addresses in messages. */
export function hex(n: number): string {
  return "0x" + n.toString(16);
}

/** The message of an error, or the thing itself as text. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Calls `fn(start, length)` for each run of consecutive pages in sorted `addrs`.
 *
 * @example
 * ```ts
 * forRuns([0x1000, 0x2000, 0x5000], (s, n) => console.log(s, n)); // 4096 8192, 20480 4096
 * ```
 */
export function forRuns(addrs: number[], fn: (start: number, len: number) => void): void {
  let k = 0;
  while (k < addrs.length) {
    const start = addrs[k];
    let end = start + PAGE;
    while (++k < addrs.length && addrs[k] === end) end += PAGE;
    fn(start, end - start);
  }
}
