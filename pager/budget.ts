/**
 * The local budget and its watermarks: how many pages may stay resident,
 * when eviction is due, how far below the budget it goes, and when a fault
 * must wait for room. Pure arithmetic, free of FFI, so the CLI can import it.
 *
 * @module
 */

import { PAGE, type PageBook } from "./page_table.ts";

/** Smallest budget the pager accepts, in pages: below this a target cannot make progress. */
export const MIN_BUDGET_PAGES = 16;

/** Default pages per eviction batch. */
export const DEFAULT_EVICT_BATCH = 512;

/**
 * The budget in pages for `bytes` (whole pages, never below {@linkcode MIN_BUDGET_PAGES}).
 *
 * @example
 * ```ts
 * budgetPagesFor(8 << 20); // 2048
 * budgetPagesFor(1024);    // 16
 * ```
 */
export function budgetPagesFor(bytes: number): number {
  return Math.max(MIN_BUDGET_PAGES, Math.floor(bytes / PAGE));
}

/**
 * The local budget of a pager and its watermarks.
 *
 * @example
 * ```ts
 * import { PageBook } from "./page_table.ts";
 * const budget = new Budget(16 << 20);
 * const book = new PageBook();
 * book.resident = 5000;
 * budget.evictionDue(book, 0); // true: 5000 pages over a budget of 4096
 * budget.lowWatermark();       // 4096 - 512: where an eviction run stops
 * ```
 */
export class Budget {
  /** The budget in pages. */
  pages: number;
  /** Pages per eviction batch (the most one run frees below the budget). */
  readonly batch: number;
  /** Some target's shared file (guest RAM) is paged: its faults wait for room. */
  sharedPaging = false;

  /** A budget of `bytes`, evicting at most `batch` pages at a time. */
  constructor(bytes: number, batch = DEFAULT_EVICT_BATCH) {
    this.pages = budgetPagesFor(bytes);
    this.batch = batch;
  }

  /** Changes the budget to `bytes`. */
  resize(bytes: number): void {
    this.pages = budgetPagesFor(bytes);
  }

  /** Pages an eviction run frees below the budget (the low watermark's distance). */
  headroom(): number {
    // Each anonymous batch costs one ptrace stop of the target (~0.3-1 ms):
    // evict a quarter of the budget at a time, up to a full batch.
    const share = this.sharedPaging ? this.pages >> 3 : this.pages >> 2;
    return Math.min(this.batch, Math.max(this.sharedPaging ? 2 : 1, share));
  }

  /** Where an eviction run stops. */
  lowWatermark(): number {
    return this.pages - this.headroom();
  }

  /** Eviction is due: over budget, or `waiting` faults wait for room. */
  evictionDue(book: PageBook, waiting: number): boolean {
    if (book.resident > this.pages) return true;
    // Faults wait for room: evict even at the budget, or nothing wakes them.
    if (waiting > 0 && book.resident + book.incoming >= this.pages) return true;
    if (!this.sharedPaging) return false;
    // A fault on a shared file waits while the file is full: keep some room
    // free ahead of time, so that most faults do not wait for an eviction.
    return book.resident + book.incoming > this.pages - (this.headroom() >> 1);
  }

  /** A shared file is full: one more page would take it over the budget. */
  fileFull(book: PageBook): boolean {
    return book.resident + book.incoming >= this.pages;
  }

  /**
   * Anonymous memory is past the budget plus one eviction's worth: faults
   * have outrun eviction (e.g. many threads) and must wait for it.
   */
  anonymousFull(book: PageBook): boolean {
    return book.resident >= this.pages + this.headroom();
  }
}
