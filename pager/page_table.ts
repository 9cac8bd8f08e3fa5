/**
 * Per-page state of one target, in typed arrays: one byte of state and one
 * 32-bit store key per page of every registered range.
 *
 * @module
 */

/** Page size. */
export const PAGE = 4096;
/** Store key meaning "no copy in the store". */
export const NO_SLOT = 0xffffffff;

/** The page's kind (low three bits of its state byte). */
export const Kind = {
  /** Never placed by the pager and not present: a fault gets zeros. */
  EMPTY: 0,
  /** Present in the target. */
  RESIDENT: 1,
  /** Only in the store. */
  REMOTE: 2,
  /** Being fetched; the faulting threads wait for our UFFDIO_COPY. */
  FETCHING: 3,
  /** Present and write-protected, being written to the store or dropped. */
  EVICTING: 4,
} as const;

/** Mask of the kind bits. */
export const KIND_MASK = 7;
/** The store holds a copy equal to the page's current contents. */
export const HAS_COPY = 8;
/** Faulted since it was queued: gets a second chance. */
export const REFERENCED = 16;
/** Has an entry in the eviction queue. */
export const QUEUED = 32;
/** Written (or lost) while being evicted: the eviction must not drop it. */
export const DIRTIED = 64;
/** In the set the target is being told to drop right now. */
export const DROPPING = 128;

/**
 * The file behind a shared-memory region (guest RAM in a memfd or a tmpfs
 * file): the pager reads pages from it and punches holes in it to evict.
 */
export interface SharedFile {
  /** Our own fd of the file. */
  fd: number;
  /** File offset of the region's first page. */
  offset: number;
}

/** One registered address range of a target. */
export class Region {
  /** First address (page aligned). */
  start: number;
  /** State byte per page. */
  state: Uint8Array;
  /** Store key per page, {@linkcode NO_SLOT} if none. */
  slot: Uint32Array;
  /** The shared file behind the range, or null for private anonymous memory. */
  file: SharedFile | null;

  /** Creates a region of `pages` pages at `start`, all EMPTY. */
  constructor(start: number, pages: number, file: SharedFile | null = null) {
    this.start = start;
    this.state = new Uint8Array(pages);
    this.slot = new Uint32Array(pages).fill(NO_SLOT);
    this.file = file;
  }

  /** One past the last address. */
  get end(): number {
    return this.start + this.state.length * PAGE;
  }

  /** Number of pages. */
  get pages(): number {
    return this.state.length;
  }

  /** A new region holding pages `[from, to)` of this one (copies of their state). */
  slice(from: number, to: number): Region {
    const file = this.file === null
      ? null
      : { fd: this.file.fd, offset: this.file.offset + from * PAGE };
    const r = new Region(this.start + from * PAGE, to - from, file);
    r.state.set(this.state.subarray(from, to));
    r.slot.set(this.slot.subarray(from, to));
    return r;
  }
}

/** Visits one page: its region and index. */
export type PageVisitor = (region: Region, index: number) => void;

/** The registered ranges of one target, sorted by address. */
export class PageTable {
  /** Regions, sorted, non-overlapping. */
  readonly regions: Region[] = [];
  #last: Region | null = null;

  /** The region holding `addr`, or null. */
  find(addr: number): Region | null {
    const last = this.#last;
    if (last !== null && addr >= last.start && addr < last.end) return last;
    const rs = this.regions;
    let lo = 0, hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = rs[mid];
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return this.#last = r;
    }
    return null;
  }

  /** Adds a region (it must not overlap an existing one). */
  add(region: Region): void {
    const i = this.regions.findIndex((r) => r.start > region.start);
    this.regions.splice(i < 0 ? this.regions.length : i, 0, region);
  }

  /** Address ranges in `[start, end)` not covered by any region. */
  gaps(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let cur = start;
    for (const r of this.regions) {
      if (r.end <= cur) continue;
      if (r.start >= end) break;
      if (r.start > cur) out.push([cur, r.start]);
      cur = Math.max(cur, r.end);
    }
    if (cur < end) out.push([cur, end]);
    return out;
  }

  /** Calls `visit` for every tracked page in `[start, end)`. */
  forEach(start: number, end: number, visit: PageVisitor): void {
    for (const r of this.regions) {
      if (r.end <= start || r.start >= end) continue;
      const from = Math.max(0, (start - r.start) / PAGE);
      const to = Math.min(r.pages, (end - r.start) / PAGE);
      for (let i = from; i < to; i++) visit(r, i);
    }
  }

  /**
   * Removes `[start, end)` from the table, splitting regions at its edges.
   * Returns the removed pieces (their state is what was there).
   */
  cut(start: number, end: number): Region[] {
    const removed: Region[] = [];
    const keep: Region[] = [];
    for (const r of this.regions) {
      if (r.end <= start || r.start >= end) {
        keep.push(r);
        continue;
      }
      const from = Math.max(0, (start - r.start) / PAGE);
      const to = Math.min(r.pages, (end - r.start) / PAGE);
      if (from > 0) keep.push(r.slice(0, from));
      removed.push(r.slice(from, to));
      if (to < r.pages) keep.push(r.slice(to, r.pages));
    }
    // Assigned, not push(...keep): a spread of many regions could overflow the stack.
    this.regions.length = 0;
    for (const r of keep) this.regions.push(r);
    this.#last = null;
    return removed;
  }

  /** Pages tracked in all regions. */
  get pages(): number {
    let n = 0;
    for (const r of this.regions) n += r.pages;
    return n;
  }
}
