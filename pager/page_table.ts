/**
 * Per-page state of one target, in typed arrays: one byte of state and one
 * 32-bit store key per page of every registered range.
 *
 * @module
 */

import { PAGE_SIZE } from "../transport/store.ts";
import { Verdict } from "./policy.ts";

/** Page size: the stores' page, under the pager's short name. */
export const PAGE = PAGE_SIZE;
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
  /**
   * Per page, made on the first prefetch into the range: 1 + the thread id
   * whose stream proposed it, while the page was placed by a prefetch and no
   * touch of it has been seen; 0 otherwise.
   */
  ahead: Int32Array | null = null;

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
    if (this.ahead !== null) r.ahead = this.ahead.slice(from, to);
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

/** A page was asked to make a move its state does not allow. */
export class IllegalTransition extends Error {
  /** Builds the error naming the move and the state found. */
  constructor(move: string, state: number) {
    super(`illegal page-state move ${move} from state 0x${state.toString(16)}`);
    this.name = "IllegalTransition";
  }
}

/**
 * Every change of a page's state, one named move each, keeping the counts of
 * resident, remote and incoming pages with it. Search for a move's name to
 * find every place it happens.
 *
 * A move checks the kind it starts from. A book made `strict` (tests, the
 * CLI's `--strict-pages`) throws {@linkcode IllegalTransition} on a wrong
 * one; otherwise the first of each kind is reported to `onIllegal` and the
 * move is made anyway, as it was asked.
 *
 * @example
 * ```ts
 * const book = new PageBook(true);
 * const r = new Region(0x10000, 4);
 * book.zeroFilled(r, 0);       // EMPTY -> RESIDENT
 * book.beginEviction(r, 0);    // RESIDENT -> EVICTING
 * book.evicted(r, 0);          // EVICTING -> REMOTE
 * console.log(book.resident, book.remote); // 0 1
 * ```
 */
export class PageBook {
  /** Pages present in the targets (RESIDENT or EVICTING). */
  resident = 0;
  /** Pages only in the store (REMOTE or FETCHING). */
  remote = 0;
  /** Pages of shared files being fetched: each will take room in its file. */
  incoming = 0;
  readonly #strict: boolean;
  readonly #onIllegal: (e: IllegalTransition) => void;
  readonly #reported = new Set<string>();

  /** A book; `strict` makes an illegal move throw. */
  constructor(strict = false, onIllegal: (e: IllegalTransition) => void = () => {}) {
    this.#strict = strict;
    this.#onIllegal = onIllegal;
  }

  #expect(r: Region, i: number, kinds: number, move: string): number {
    const st = r.state[i];
    if ((kinds >> (st & KIND_MASK)) & 1) return st;
    const e = new IllegalTransition(move, st);
    if (this.#strict) throw e;
    if (!this.#reported.has(move)) {
      this.#reported.add(move);
      this.#onIllegal(e);
    }
    return st;
  }

  /** A page found present when its range was registered: RESIDENT. */
  foundResident(r: Region, i: number): void {
    r.state[i] = Kind.RESIDENT;
    this.resident++;
  }

  /** A forked child's page that only the store holds: REMOTE with its copy. */
  foundRemote(r: Region, i: number): void {
    r.state[i] = Kind.REMOTE | HAS_COPY;
    this.remote++;
  }

  /**
   * Recovery: a page found present, then dropped by the killed pager's drop
   * that was still under way (its copy is in the store): RESIDENT -> REMOTE.
   */
  droppedByDeadPager(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.RESIDENT, "droppedByDeadPager");
    r.state[i] = (st & ~(KIND_MASK | QUEUED | REFERENCED | DIRTIED)) | Kind.REMOTE | HAS_COPY;
    this.resident--;
    this.remote++;
  }

  /** A forked child's page that is neither present nor stored: EMPTY. */
  foundEmpty(r: Region, i: number): void {
    r.state[i] = Kind.EMPTY;
  }

  /** Zeros were placed in a page never evicted: EMPTY -> RESIDENT. */
  zeroFilled(r: Region, i: number): void {
    this.#expect(r, i, 1 << Kind.EMPTY, "zeroFilled");
    r.state[i] = Kind.RESIDENT;
    this.resident++;
  }

  /** A fault needs the stored copy: REMOTE -> FETCHING. */
  beginFetch(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.REMOTE, "beginFetch");
    r.state[i] = (st & ~KIND_MASK) | Kind.FETCHING;
    if (r.file !== null) this.incoming++;
  }

  /**
   * A fault on a page dropped a moment ago, its eviction not yet settled:
   * the store holds its current contents. EVICTING (dropping) -> FETCHING.
   */
  fetchDropped(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "fetchDropped");
    r.state[i] = (st & ~(KIND_MASK | DROPPING | QUEUED)) | Kind.FETCHING;
    this.resident--;
    this.remote++;
  }

  /**
   * The page was placed by a prefetch proposed by thread `tid`'s stream
   * (right after {@linkcode fetched}): untouched as far as we know.
   */
  prefetched(r: Region, i: number, tid: number): void {
    (r.ahead ??= new Int32Array(r.pages))[i] = tid + 1;
  }

  /** 1 + the thread id whose stream proposed the page, if it was placed by a prefetch and not seen touched; else 0. */
  proposer(r: Region, i: number): number {
    return r.ahead === null ? 0 : r.ahead[i];
  }

  /**
   * Clears the page's prefetch mark: a touch of it was seen (a hit), or it is
   * being evicted (untouched: waste). Returns 1 + the thread id whose stream
   * proposed it if it was an untouched prefetch, else 0.
   */
  takeAhead(r: Region, i: number): number {
    const a = r.ahead;
    if (a === null || a[i] === 0) return 0;
    const who = a[i];
    a[i] = 0;
    return who;
  }

  /**
   * The fetched copy was placed: FETCHING -> RESIDENT. `clean` (placed
   * write-protected, equal to its copy) keeps HAS_COPY.
   */
  fetched(r: Region, i: number, clean: boolean): void {
    const st = this.#expect(r, i, 1 << Kind.FETCHING, "fetched");
    r.state[i] = (st & ~(KIND_MASK | HAS_COPY | DIRTIED)) | Kind.RESIDENT | (clean ? HAS_COPY : 0);
    this.remote--;
    this.resident++;
    if (r.file !== null) this.incoming--;
  }

  /** The copy could not be placed yet (EAGAIN): FETCHING -> REMOTE, to fetch again. */
  fetchDeferred(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.FETCHING, "fetchDeferred");
    r.state[i] = (st & ~KIND_MASK) | Kind.REMOTE;
    if (r.file !== null) this.incoming--;
  }

  /** The first write to a clean resident page: its stored copy is stale now. */
  written(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.RESIDENT, "written");
    r.state[i] = (st & ~HAS_COPY) | REFERENCED;
  }

  /** A clean resident page lets go of its stored copy (the store must give the key up). */
  copyGivenUp(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.RESIDENT, "copyGivenUp");
    r.state[i] = st & ~HAS_COPY;
  }

  /**
   * Written, refused by the store or not read while being evicted: the
   * eviction must not drop it. A page no longer EVICTING (freed or unmapped
   * while the batch was stored) has nothing to keep: no change.
   */
  dirtied(r: Region, i: number): void {
    const st = r.state[i];
    if ((st & KIND_MASK) === Kind.EVICTING) r.state[i] = st | DIRTIED;
  }

  /** Chosen for eviction: RESIDENT -> EVICTING (write-protected from here on). */
  beginEviction(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.RESIDENT, "beginEviction");
    r.state[i] = (st & ~(KIND_MASK | DIRTIED)) | Kind.EVICTING;
  }

  /** The store confirmed a current copy of an EVICTING page. */
  stored(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "stored");
    r.state[i] = st | HAS_COPY;
  }

  /** About to be dropped inside the target (anonymous memory). */
  dropping(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "dropping");
    r.state[i] = st | HAS_COPY | DROPPING;
  }

  /** Dropped from the target, its copy in the store: EVICTING -> REMOTE. */
  evicted(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "evicted");
    r.state[i] = (st & ~(KIND_MASK | DROPPING | QUEUED | REFERENCED | DIRTIED)) | Kind.REMOTE;
    this.resident--;
    this.remote++;
  }

  /** Not dropped after all, unchanged and equal to its copy: EVICTING -> RESIDENT. */
  keptClean(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "keptClean");
    r.state[i] = (st & ~(KIND_MASK | DROPPING)) | Kind.RESIDENT;
  }

  /** Written during its eviction: EVICTING -> RESIDENT, dirty (no current copy). */
  cancelEviction(r: Region, i: number): void {
    const st = this.#expect(r, i, 1 << Kind.EVICTING, "cancelEviction");
    r.state[i] = (st & ~(KIND_MASK | DIRTIED | HAS_COPY | DROPPING)) | Kind.RESIDENT;
  }

  /** The target freed or unmapped the page, or exited: it reads as zeros from now on. */
  forget(r: Region, i: number): boolean {
    const kind = r.state[i] & KIND_MASK;
    if (kind === Kind.RESIDENT || kind === Kind.EVICTING) this.resident--;
    else if (kind === Kind.REMOTE || kind === Kind.FETCHING) this.remote--;
    if (kind === Kind.FETCHING && r.file !== null) this.incoming--;
    r.state[i] = Kind.EMPTY;
    if (r.ahead !== null) r.ahead[i] = 0;
    return kind !== Kind.EMPTY;
  }

  /**
   * Puts the page in the eviction queue, or marks it used if it is there
   * already. Returns true when the policy must be told of a new entry.
   */
  enqueue(r: Region, i: number): boolean {
    if (r.state[i] & QUEUED) {
      r.state[i] |= REFERENCED;
      return false;
    }
    r.state[i] |= QUEUED;
    return true;
  }

  /** Whether page `i` of `r` is resident and in the eviction queue (a look, not a move). */
  queuedResident(r: Region, i: number): boolean {
    const st = r.state[i];
    return (st & KIND_MASK) === Kind.RESIDENT && (st & QUEUED) !== 0;
  }

  /** The policy offers a queued page: a {@linkcode Verdict} (second chance, victim, or stale). */
  secondChance(r: Region, i: number): number {
    const st = r.state[i];
    if ((st & KIND_MASK) !== Kind.RESIDENT || !(st & QUEUED)) return Verdict.STALE;
    if (st & REFERENCED) {
      r.state[i] = st & ~REFERENCED;
      return Verdict.REFERENCED;
    }
    r.state[i] = st & ~QUEUED;
    return Verdict.VICTIM;
  }
}
