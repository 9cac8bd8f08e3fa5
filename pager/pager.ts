/**
 * The pager: one event loop that serves every fault of its targets, evicts
 * in batches to keep them under a local budget, follows their fork, remove,
 * unmap and remap events, and gives every page back on detach.
 *
 * Rule one: a page leaves a target only after the store confirmed its copy
 * (or it is clean and its copy is current). Every path below keeps it.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  addressOf,
  Errno,
  errnoName,
  eventfd,
  eventfdDrain,
  eventfdSignal,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocate,
  fstatfsType,
  getpid,
  HUGETLBFS_MAGIC,
  kill,
  pread,
  processVmReadvAsync,
  readSmallFile,
  Signal,
  TMPFS_MAGIC,
} from "../ffi/libc.ts";
import {
  dontForkMappings,
  listThreads,
  lockedMappings,
  type Mapping,
  otherProcessesMapping,
  readMaps,
} from "../ffi/proc.ts";
import { waitReadable } from "../ffi/shim.ts";
import {
  COPY_MODE_WP,
  PAGEFAULT_FLAG_WP,
  PAGEFAULT_FLAG_WRITE,
  readMessages,
  REGISTER_MODE_MISSING,
  REGISTER_MODE_WP,
  uffdCopy,
  UffdEvent,
  UffdMessages,
  uffdRegister,
  uffdWake,
  uffdWriteProtect,
  uffdZeropage,
  ZERO_PAGE_ADDR,
} from "../ffi/uffd.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";
import {
  DIRTIED,
  DROPPING,
  HAS_COPY,
  Kind,
  KIND_MASK,
  NO_SLOT,
  PAGE,
  QUEUED,
  REFERENCED,
  Region,
  type SharedFile,
} from "./page_table.ts";
import { type EvictionPolicy, FifoSecondChance, Verdict } from "./policy.ts";
import { SlotTable } from "./slots.ts";
import { Counters, type PagerControl, type PagerStats } from "./stats.ts";
import { AttachError, presentInFile, processAlive, SCRATCH_BYTES, Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/** How a pager run ended. */
export type PagerEnd =
  | { kind: "detached" }
  | { kind: "exited"; pid: number }
  | { kind: "lost"; message: string }
  | { kind: "failed"; message: string };

/** Options of a pager. */
export interface PagerOptions {
  /** Local budget: at most this many bytes of the targets' managed memory stay resident. */
  budgetBytes: number;
  /** Where evicted pages go. */
  store: PageStore;
  /** Pages per eviction batch (default 512). */
  evictBatchPages?: number;
  /** Eviction policy (default FIFO with second chance). */
  policy?: EvictionPolicy;
  /** Called with one line per mapping skipped at attach, and why. */
  onSkip?: (line: string) => void;
}

/** Smallest budget the pager accepts: below this the target cannot make progress. */
export const MIN_BUDGET_PAGES = 16;
const SPIN_MS = 0.1;
const MSG_BATCH = 64;
// New mappings raise no event: the address-space size is polled (one small
// read of /proc/PID/statm) and the maps are read again only when it changed.
const RESCAN_MIN_MS = 10;
const RESCAN_MAX_MS = 100;
/**
 * A pageable shared mapping at least this large is taken for a virtual
 * machine's guest RAM: the process's private memory is then left alone.
 */
const GUEST_RAM_MIN_BYTES = 16 << 20;

/** A fault waiting for the store. */
interface Fetch {
  target: Target;
  addrs: number[];
  writes: boolean[];
  keys: Uint32Array;
  started: number[];
}

/**
 * A fault whose UFFDIO_COPY/ZEROPAGE/WRITEPROTECT got EAGAIN (the target's
 * layout is changing, e.g. one of our own drops is reporting its REMOVE
 * event): it is replayed after the pending events are read.
 */
interface Retry {
  target: Target;
  addr: number;
  /** The missing fault was a write. */
  write: boolean;
  /** A write-protect fault (of thread `tid`), not a missing one. */
  wp: boolean;
  tid: number;
  since: number;
}

/** Pages of memory that a pager manages, with the loop that serves them. */
export class Pager implements PagerControl {
  /** Counters of this session. */
  readonly counters: Counters = new Counters();
  readonly #store: PageStore;
  readonly #policy: EvictionPolicy;
  readonly #slots = new SlotTable();
  readonly #targets = new Map<number, Target>();
  readonly #msgs = new UffdMessages(MSG_BATCH);
  readonly #wake = eventfd();
  readonly #batch: number;
  readonly #onSkip: (line: string) => void;
  readonly #started = performance.now();
  #budget: number;
  #resident = 0;
  #remote = 0;
  #nextId = 0;
  #inflight = 0;
  #evicting: Promise<void> | null = null;
  #retries: Retry[] = [];
  #pendingForks: Array<{ parent: Target; uffd: number }> = [];
  #knownPids = new Set<number>();
  #end: PagerEnd | null = null;
  #endWaiters: Array<(end: PagerEnd) => void> = [];
  #detaching = false;
  #rescanTimer: ReturnType<typeof setTimeout> | undefined;
  #rescanDelay = RESCAN_MIN_MS;
  #faultsAtLastRescan = 0;
  #forceRescan = false;
  #fetchBuffers: Uint8Array[] = [];
  /** Shared-file pages being fetched: they take a page of the file once placed. */
  #incoming = 0;
  /**
   * Faults on shared-file pages that would take the file over its budget:
   * served once an eviction made room, so that the file never holds more.
   */
  #budgetWaits: Retry[] = [];
  /** Some target has shared-file regions, whose faults wait for room (see #overBudget). */
  #sharedPaging = false;
  #deleting: Promise<void> | null = null;
  #pumpBusy = false;

  private constructor(opts: PagerOptions) {
    this.#store = opts.store;
    this.#budget = Math.max(MIN_BUDGET_PAGES, Math.floor(opts.budgetBytes / PAGE));
    this.#batch = opts.evictBatchPages ?? 512;
    this.#policy = opts.policy ?? new FifoSecondChance();
    this.#onSkip = opts.onSkip ?? (() => {});
  }

  /** Attaches to a running process and starts paging it. */
  static async attach(pid: number, opts: PagerOptions): Promise<Pager> {
    const pager = new Pager(opts);
    await pager.#adoptRoot(pid);
    return pager;
  }

  /**
   * Takes over a process that is a stopped tracee of ours at exec (see
   * `spawnUnderPager`), so it is paged from its first instruction.
   */
  static async attachAtExec(pid: number, opts: PagerOptions): Promise<Pager> {
    const pager = new Pager(opts);
    await pager.#adoptRoot(pid, pid);
    return pager;
  }

  async #adoptRoot(pid: number, stoppedTid?: number): Promise<void> {
    const t = await Target.attach(this.#nextId++, pid, () => this.#pumpAndYield(), stoppedTid);
    this.#targets.set(t.id, t);
    this.#knownPids.add(pid);
    try {
      this.#registerNewMappings(t, true);
    } catch (e) {
      await t.release(() => this.#pumpAndYield());
      this.#targets.delete(t.id);
      throw e;
    }
    this.#loop();
    this.#scheduleRescan();
  }

  /** Resolves when the pager stops: detached, target exited, or pages lost. */
  done(): Promise<PagerEnd> {
    if (this.#end !== null) return Promise.resolve(this.#end);
    return new Promise((resolve) => this.#endWaiters.push(resolve));
  }

  /** Current budget in pages. */
  get budgetPages(): number {
    return this.#budget;
  }

  // ---------------------------------------------------------------- control

  /** Statistics as plain data. */
  stats(): PagerStats {
    const c = this.counters;
    let managed = 0;
    for (const t of this.#targets.values()) managed += t.table.pages * PAGE;
    return {
      uptimeSeconds: (performance.now() - this.#started) / 1000,
      pids: [...this.#targets.values()].map((t) => t.pid),
      budgetPages: this.#budget,
      residentPages: this.#resident,
      remotePages: this.#remote,
      managedBytes: managed,
      backend: this.#store.name,
      counters: {
        faults: c.faults,
        missingFaults: c.missingFaults,
        wpFaults: c.wpFaults,
        zeroFills: c.zeroFills,
        pagesFetched: c.pagesFetched,
        pagesEvicted: c.pagesEvicted,
        pagesWritten: c.pagesWritten,
        writesAvoided: c.writesAvoided,
        evictionsCancelled: c.evictionsCancelled,
        spuriousFaults: c.spuriousFaults,
        retries: c.retries,
        pagesFreed: c.pagesFreed,
        pagesRestored: c.pagesRestored,
      },
      faultLatency: c.faultLatency.snapshot(),
      evictLatency: c.evictLatency.snapshot(),
      metadataBytesPerPage: this.metadataBytesPerPage(),
      store: this.#store.health(),
    };
  }

  /** Bytes of pager metadata per managed page (page table, queue, key table). */
  metadataBytesPerPage(): number {
    let pages = 0, bytes = this.#policy.bytes + this.#slots.bytes;
    for (const t of this.#targets.values()) {
      for (const r of t.table.regions) {
        pages += r.pages;
        bytes += r.state.byteLength + r.slot.byteLength;
      }
    }
    return pages === 0 ? 0 : bytes / pages;
  }

  /** Changes the local budget; resolves once the targets are within it. */
  async resize(bytes: number): Promise<PagerStats> {
    this.#budget = Math.max(MIN_BUDGET_PAGES, Math.floor(bytes / PAGE));
    eventfdSignal(this.#wake);
    for (let i = 0; i < 2000 && this.#resident > this.#budget && this.#end === null; i++) {
      await sleep(5);
    }
    return this.stats();
  }

  /** Puts every page back into every target, detaches, and ends the run. */
  async detach(): Promise<PagerStats> {
    if (this.#detaching || this.#end !== null) {
      await this.done();
      return this.stats();
    }
    this.#detaching = true;
    clearTimeout(this.#rescanTimer);
    eventfdSignal(this.#wake);
    if (this.#evicting) await this.#evicting;
    try {
      for (const t of [...this.#targets.values()]) await this.#restore(t);
      for (const t of [...this.#targets.values()]) {
        // Faults still waiting for room are served now (a detach has no
        // budget); every remote page is back, so none of them needs a fetch.
        this.#serveBudgetWaits();
        await t.release(() => this.#pumpAndYield());
        this.#targets.delete(t.id);
      }
      await this.#store.close();
      this.#finish({ kind: "detached" });
    } catch (e) {
      this.#finish({ kind: "failed", message: `detach failed: ${errorText(e)}` });
    }
    return this.stats();
  }

  // ------------------------------------------------------------- event loop

  /** The main loop: spin briefly while busy, sleep in the shim's poll when idle. */
  async #loop(): Promise<void> {
    let spinUntil = 0;
    const fds = new Int32Array(256);
    const revents = new Int16Array(256);
    while (this.#end === null) {
      const got = this.#pump();
      this.#retryParked();
      this.#serveBudgetWaits();
      if (!this.#detaching && this.#evicting === null && this.#overBudget()) {
        this.#evicting = this.#evictToBudget().finally(() => {
          this.#evicting = null;
          eventfdSignal(this.#wake); // over budget again meanwhile? the loop looks
        });
      }
      if (this.#pendingForks.length > 0) this.#adoptForks();
      const now = performance.now();
      if (got > 0 && this.#store.local) spinUntil = now + SPIN_MS;
      if (now < spinUntil) {
        // Faults are streaming in: look again after one turn of the event loop
        // (fetch completions run in it) instead of a round trip through poll.
        await yieldToEventLoop();
        continue;
      }
      // Sleep until a target raises a message or exits, or #wake is signalled
      // (an eviction ended, a fetch pushed the target over budget, detach).
      // Sockets and timers run meanwhile: nothing here spins on them.
      let n = 0;
      fds[n++] = this.#wake;
      const waited = [...this.#targets.values()];
      for (const t of waited) {
        fds[n++] = t.uffd;
        fds[n++] = t.pidfd;
      }
      const r = await waitReadable(fds, n, revents, this.#retries.length > 0 ? 1 : 1000);
      if (r > 0 && revents[0] !== 0) eventfdDrain(this.#wake);
      // A pidfd turns readable when its process exits; drain its last events first.
      waited.forEach((t, k) => {
        if (r > 0 && revents[2 + 2 * k] !== 0 && !t.exited) {
          this.#pump();
          this.#targetGone(t);
        }
      });
    }
  }

  /** Eviction is due: over budget, or faults wait for room in a shared file. */
  #overBudget(): boolean {
    if (this.#resident > this.#budget) return true;
    // Faults wait for room: evict even at the budget, or nothing wakes them.
    if (this.#budgetWaits.length > 0 && this.#resident + this.#incoming >= this.#budget) {
      return true;
    }
    if (!this.#sharedPaging) return false;
    // A fault on a shared file waits while the file is full: keep some room
    // free ahead of time, so that most faults do not wait for an eviction.
    return this.#resident + this.#incoming > this.#budget - (this.#headroom() >> 1);
  }

  /** Pages an eviction frees below the budget (the low watermark's distance). */
  #headroom(): number {
    // Each anonymous batch costs one ptrace stop of the target (~0.3-1 ms):
    // evict a quarter of the budget at a time, up to a full batch.
    const share = this.#sharedPaging ? this.#budget >> 3 : this.#budget >> 2;
    return Math.min(this.#batch, Math.max(this.#sharedPaging ? 2 : 1, share));
  }

  /** Replays the faults that waited for room, as far as there is room now. */
  #serveBudgetWaits(): void {
    if (this.#budgetWaits.length === 0) return;
    if (!this.#detaching && this.#resident + this.#incoming >= this.#budget) return;
    const waiting = this.#budgetWaits;
    this.#budgetWaits = [];
    for (let k = 0; k < waiting.length; k++) {
      const p = waiting[k];
      if (p.target.exited) continue;
      if (!this.#detaching && this.#resident + this.#incoming >= this.#budget) {
        // A loop, not push(...rest): a spread of thousands of waiters could overflow the stack.
        for (let j = k; j < waiting.length; j++) this.#budgetWaits.push(waiting[j]);
        break;
      }
      const key = this.#missingFault(p.target, p.addr, p.write, p.since, p.tid);
      if (key !== NO_SLOT) {
        this.#slots.retain(key);
        this.#startFetch({
          target: p.target,
          addrs: [p.addr],
          writes: [p.write],
          keys: Uint32Array.of(key),
          started: [p.since],
        });
      }
    }
  }

  /** Reads and handles every pending message of every target. Returns how many. */
  #pump(): number {
    if (this.#pumpBusy) return 0;
    this.#pumpBusy = true;
    let total = 0;
    try {
      for (const t of this.#targets.values()) {
        if (t.exited) continue;
        for (;;) {
          const n = readMessages(t.uffd, this.#msgs);
          if (n < 0) {
            if (n !== -Errno.EAGAIN) this.#targetGone(t);
            break;
          }
          if (n === 0) break;
          total += n;
          this.#dispatch(t, n);
          if (n < MSG_BATCH) break;
        }
      }
    } finally {
      this.#pumpBusy = false;
    }
    return total;
  }

  #dispatch(t: Target, n: number): void {
    const m = this.#msgs;
    let fetch: Fetch | null = null;
    const fetchKeys: number[] = [];
    const now = performance.now();
    for (let i = 0; i < n; i++) {
      switch (m.event(i)) {
        case UffdEvent.PAGEFAULT: {
          const flags = m.arg0(i);
          const addr = m.arg1(i) - (m.arg1(i) % PAGE);
          this.counters.faults++;
          if (flags & PAGEFAULT_FLAG_WP) {
            this.counters.wpFaults++;
            this.#writeProtectFault(t, addr, m.arg2(i) & 0xffffffff);
          } else {
            this.counters.missingFaults++;
            const write = (flags & PAGEFAULT_FLAG_WRITE) !== 0;
            const key = this.#missingFault(t, addr, write, now, m.arg2(i) & 0xffffffff);
            if (key !== NO_SLOT) {
              fetch ??= { target: t, addrs: [], writes: [], keys: new Uint32Array(0), started: [] };
              fetch.addrs.push(addr);
              fetch.writes.push((flags & PAGEFAULT_FLAG_WRITE) !== 0);
              fetch.started.push(now);
              this.#slots.retain(key);
              fetchKeys.push(key);
            }
          }
          break;
        }
        case UffdEvent.REMOVE:
          this.#removed(t, m.arg0(i), m.arg1(i), false);
          break;
        case UffdEvent.UNMAP:
          this.#removed(t, m.arg0(i), m.arg1(i), true);
          this.#rescanSoon(); // a new mapping of the same size would not change the total
          break;
        case UffdEvent.REMAP:
          this.#remapped(t, m.arg0(i), m.arg1(i), m.arg2(i));
          break;
        case UffdEvent.FORK:
          this.#forked(t, m.forkFd(i));
          break;
      }
    }
    if (fetch !== null) {
      fetch.keys = Uint32Array.from(fetchKeys);
      this.#startFetch(fetch);
    }
  }

  // ------------------------------------------------------------------ faults

  /**
   * A thread touched a page that is not present. Serves it at once if it can;
   * returns the store key to fetch otherwise.
   */
  #missingFault(t: Target, addr: number, write: boolean, started: number, tid = 0): number {
    const r = t.table.find(addr);
    if (r === null) {
      // A mapping we have not seen yet (a stack that grew, a new mmap): it has
      // never been evicted, so zeros are right. Track it on the next scan.
      this.#fillZero(t, null, 0, addr, write, started);
      this.#rescanSoon();
      return NO_SLOT;
    }
    const i = (addr - r.start) / PAGE;
    const st = r.state[i];
    const kind = st & KIND_MASK;
    if (
      (kind === Kind.EMPTY || kind === Kind.REMOTE) && !this.#detaching &&
      (r.file !== null
        ? this.#resident + this.#incoming >= this.#budget
        : this.#resident >= this.#budget + this.#headroom() && tid !== 0 &&
          tid !== t.injectionTid)
    ) {
      // The page would take the file over its budget, or anonymous memory
      // past budget plus one eviction's worth (faults that outrun eviction,
      // e.g. many threads): wait for an eviction. Never the thread an
      // eviction stops: it may touch this page (rseq) on its way to the stop.
      this.#budgetWaits.push({ target: t, addr, write, wp: false, tid, since: started });
      eventfdSignal(this.#wake);
      return NO_SLOT;
    }
    switch (kind) {
      case Kind.EMPTY:
        // For a shared file: a hole (the pager places every page it holds), so zeros are right.
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
      case Kind.REMOTE:
        r.state[i] = (st & ~KIND_MASK) | Kind.FETCHING;
        if (r.file !== null) this.#incoming++;
        return r.slot[i];
      case Kind.FETCHING:
        return NO_SLOT; // our UFFDIO_COPY will wake this thread too
      case Kind.EVICTING:
        if (st & DROPPING) {
          // Dropped just now: the store holds its current contents.
          r.state[i] = (st & ~(KIND_MASK | DROPPING | QUEUED)) | Kind.FETCHING;
          this.#resident--;
          this.#remote++;
          return r.slot[i];
        }
        // Present a moment ago and now missing: the eviction must not drop it.
        r.state[i] = st | DIRTIED;
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
      default: // RESIDENT: a late duplicate message, or a page the kernel freed lazily.
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
    }
  }

  /** Maps zeros at `addr` (a writable zero page for writes) and accounts it. */
  #fillZero(
    t: Target,
    r: Region | null,
    i: number,
    addr: number,
    write: boolean,
    started: number,
  ): void {
    const res = write
      ? uffdCopy(t.uffd, addr, ZERO_PAGE_ADDR, PAGE, 0)
      : uffdZeropage(t.uffd, addr, PAGE);
    if (res === PAGE || res === -Errno.EEXIST) {
      if (res === -Errno.EEXIST) {
        this.counters.spuriousFaults++;
        uffdWake(t.uffd, addr, PAGE);
      } else {
        this.counters.zeroFills++;
        this.counters.faultLatency.record((performance.now() - started) * 1000);
      }
      if (r !== null && (r.state[i] & KIND_MASK) === Kind.EMPTY) {
        r.state[i] = Kind.RESIDENT;
        this.#resident++;
        this.#admit(t, r, i);
      }
      return;
    }
    this.#copyFailed(t, addr, write, res, started);
  }

  #copyFailed(t: Target, addr: number, write: boolean, res: number, started: number): void {
    if (res === -Errno.EAGAIN) {
      // The target's layout is changing (an event is pending): retry after reading it.
      this.counters.retries++;
      this.#retries.push({ target: t, addr, write, wp: false, tid: 0, since: started });
    } else if (res === -Errno.ESRCH || res === -Errno.ENOSPC) {
      this.#targetGone(t);
    } else if (res !== -Errno.ENOENT) {
      log.warn("serving fault at {addr} in pid {pid} failed: {err}", {
        addr: hex(addr),
        pid: t.pid,
        err: errnoName(-res),
      });
    }
  }

  /** A write to a write-protected page: a clean page turning dirty, or one being evicted. */
  #writeProtectFault(t: Target, addr: number, tid: number, since = performance.now()): void {
    const r = t.table.find(addr);
    if (r !== null) {
      const i = (addr - r.start) / PAGE;
      const st = r.state[i];
      if ((st & KIND_MASK) === Kind.EVICTING) {
        if ((st & DROPPING) && tid !== t.injectingTid) {
          // The drop is under way: let the thread fault again once the page is gone.
          t.deferredWakes.push(addr);
          return;
        }
        // Written before we drop it (or by the thread that ran the drop, which
        // is past it: the page was not dropped). It stays, dirty.
        r.state[i] = st | DIRTIED;
      } else if ((st & KIND_MASK) === Kind.RESIDENT) {
        r.state[i] = (st & ~HAS_COPY) | REFERENCED;
        this.#dropSharedSlot(r, i);
      }
    }
    const res = uffdWriteProtect(t.uffd, addr, PAGE, false);
    if (res === -Errno.EAGAIN) {
      // Not unprotected, so the thread is not woken: replay the fault later.
      this.counters.retries++;
      this.#retries.push({ target: t, addr, write: true, wp: true, tid, since });
    } else if (res === -Errno.ESRCH || res === -Errno.ENOSPC) this.#targetGone(t);
  }

  /** A page that is about to differ from its stored copy keeps the key only if it owns it alone. */
  #dropSharedSlot(r: Region, i: number): void {
    const key = r.slot[i];
    if (key !== NO_SLOT && this.#slots.refs(key) > 1) {
      this.#slots.release(key);
      r.slot[i] = NO_SLOT;
    }
  }

  #takeBuffer(pages: number): Uint8Array {
    const b = this.#fetchBuffers.pop();
    return b !== undefined && b.length >= pages * PAGE_SIZE
      ? b
      : new Uint8Array(Math.max(pages, 16) * PAGE_SIZE);
  }

  #startFetch(f: Fetch): Promise<void> {
    const buf = this.#takeBuffer(f.addrs.length);
    this.#inflight++;
    return this.#store.get(f.keys, buf).then(
      () => this.#placeFetched(f, buf),
      (e) => this.#lost(f.target, f.addrs, e),
    ).finally(() => {
      this.#inflight--;
      for (const k of f.keys) this.#slots.release(k);
      this.#fetchBuffers.push(buf);
      // The loop may be asleep in poll while this took the target over budget.
      if (this.#evicting === null && this.#overBudget()) eventfdSignal(this.#wake);
    });
  }

  #placeFetched(f: Fetch, buf: Uint8Array): void {
    const t = f.target;
    if (t.exited) return;
    const base = addressOf(buf);
    for (let k = 0; k < f.addrs.length; k++) {
      const addr = f.addrs[k];
      const r = t.table.find(addr);
      if (r === null) continue; // unmapped meanwhile
      const i = (addr - r.start) / PAGE;
      const st = r.state[i];
      if ((st & KIND_MASK) !== Kind.FETCHING || r.slot[i] !== f.keys[k]) {
        // Freed or moved while we fetched: the thread must fault again and see the new state.
        uffdWake(t.uffd, addr, PAGE);
        continue;
      }
      const write = f.writes[k];
      // A read leaves the page write-protected: its first write tells us it is dirty.
      const res = uffdCopy(t.uffd, addr, base + k * PAGE, PAGE, write ? 0 : COPY_MODE_WP);
      if (r.file !== null && (res === PAGE || res === -Errno.EEXIST || res === -Errno.EAGAIN)) {
        this.#incoming--; // no longer FETCHING (a gone target is forgotten, FETCHING, instead)
      }
      if (res === PAGE || res === -Errno.EEXIST) {
        const clean = res === PAGE && !write;
        r.state[i] = (st & ~(KIND_MASK | HAS_COPY | DIRTIED)) | Kind.RESIDENT |
          (clean ? HAS_COPY : 0);
        if (!clean) this.#dropSharedSlot(r, i);
        this.#remote--;
        this.#resident++;
        this.counters.pagesFetched++;
        this.counters.faultLatency.record((performance.now() - f.started[k]) * 1000);
        this.#admit(t, r, i);
      } else if (res === -Errno.EAGAIN) {
        r.state[i] = (st & ~KIND_MASK) | Kind.REMOTE; // fetch again after the event
        this.#copyFailed(t, addr, write, res, f.started[k]);
      } else {
        this.#copyFailed(t, addr, write, res, f.started[k]);
      }
    }
  }

  #retryParked(): void {
    if (this.#retries.length === 0) return;
    const parked = this.#retries;
    this.#retries = [];
    for (const p of parked) {
      if (p.target.exited) continue;
      if (performance.now() - p.since > 10_000) {
        log.warn("fault at {addr} in pid {pid} still parked after 10 s; retrying", {
          addr: hex(p.addr),
          pid: p.target.pid,
        });
        p.since = performance.now();
      }
      // Replays the fault against the current state (the event that caused EAGAIN is read now).
      if (p.wp) {
        this.#writeProtectFault(p.target, p.addr, p.tid, p.since);
        continue;
      }
      const key = this.#missingFault(p.target, p.addr, p.write, p.since);
      if (key !== NO_SLOT) {
        this.#slots.retain(key);
        this.#startFetch({
          target: p.target,
          addrs: [p.addr],
          writes: [p.write],
          keys: Uint32Array.of(key),
          started: [p.since],
        });
      }
    }
  }

  /** The store lost pages the target needs: stop the target rather than let it read wrong data. */
  #lost(t: Target, addrs: number[], e: unknown): void {
    const list = addrs.slice(0, 8).map(hex).join(", ") + (addrs.length > 8 ? ", ..." : "");
    const message = `pages of pid ${t.pid} could not be read back (${errorText(e)}); ` +
      `stopped the target with SIGSTOP so it cannot read wrong data; pages: ${list}`;
    for (const other of this.#targets.values()) kill(other.pid, Signal.SIGSTOP);
    this.#finish({ kind: "lost", message });
  }

  // ----------------------------------------------------------------- events

  /** The target freed (`unmap` false: MADV_DONTNEED) or unmapped a range. */
  #removed(t: Target, start: number, end: number, unmap: boolean): void {
    if (!unmap && t.ownRemove(start, end)) return; // the REMOVE event of our own drop
    t.table.forEach(start, end, (r, i) => this.#forget(r, i));
    if (unmap) t.table.cut(start, end);
  }

  /** Forgets a page's contents: it reads as zeros from now on. */
  #forget(r: Region, i: number): void {
    const st = r.state[i];
    const kind = st & KIND_MASK;
    if (kind === Kind.RESIDENT || kind === Kind.EVICTING) this.#resident--;
    else if (kind === Kind.REMOTE || kind === Kind.FETCHING) this.#remote--;
    if (kind === Kind.FETCHING && r.file !== null) this.#incoming--;
    if (kind !== Kind.EMPTY) this.counters.pagesFreed++;
    this.#slots.release(r.slot[i]);
    r.slot[i] = NO_SLOT;
    r.state[i] = Kind.EMPTY;
  }

  /** mremap moved `[from, from+len)` to `to`: move the bookkeeping with it. */
  #remapped(t: Target, from: number, to: number, len: number): void {
    for (const stale of t.table.cut(to, to + len)) {
      for (let i = 0; i < stale.pages; i++) this.#forget(stale, i);
    }
    for (const piece of t.table.cut(from, from + len)) {
      piece.start = piece.start - from + to;
      t.table.add(piece);
      for (let i = 0; i < piece.pages; i++) {
        if (piece.state[i] & QUEUED) this.#policy.admit(t.id, piece.start + i * PAGE);
      }
    }
    this.#rescanSoon(); // a grown mapping has a tail we do not track yet
  }

  /**
   * The target forked. Its child's page tables are a copy of the parent's as
   * of now, so snapshot the parent's state now, with a reference on every
   * stored key the child may need.
   */
  #forked(parent: Target, uffd: number): void {
    // Shared-file regions are MADV_DONTFORK (only those are paged): the child has none.
    const snapshot = parent.table.regions.filter((r) => r.file === null).map((r) =>
      r.slice(0, r.pages)
    );
    for (const r of snapshot) {
      for (let i = 0; i < r.pages; i++) {
        if (r.state[i] & HAS_COPY && r.slot[i] !== NO_SLOT) this.#slots.retain(r.slot[i]);
        else r.slot[i] = NO_SLOT;
      }
    }
    this.#pendingForks.push({ parent, uffd });
    (this.#pendingSnapshots ??= new Map()).set(uffd, snapshot);
  }
  #pendingSnapshots: Map<number, Region[]> | undefined;
  #adopting = false;

  #adoptForks(): void {
    if (this.#adopting) return;
    this.#adopting = true;
    (async () => {
      while (this.#pendingForks.length > 0 && this.#end === null) {
        const { parent, uffd } = this.#pendingForks.shift()!;
        const snapshot = this.#pendingSnapshots!.get(uffd)!;
        this.#pendingSnapshots!.delete(uffd);
        try {
          const pid = await this.#findChild(parent);
          if (pid < 0) throw new Error("the forked child never appeared");
          const child = await Target.adopt(
            this.#nextId++,
            pid,
            uffd,
            parent,
            () => this.#pumpAndYield(),
          );
          this.#installChild(child, snapshot);
          log.info("pid {parent} forked {child}: paging the child too", {
            parent: parent.pid,
            child: pid,
          });
        } catch (e) {
          for (const r of snapshot) {
            for (let i = 0; i < r.pages; i++) this.#slots.release(r.slot[i]);
          }
          log.error("could not adopt a child of pid {pid}: {err}", {
            pid: parent.pid,
            err: errorText(e),
          });
        }
      }
    })().finally(() => this.#adopting = false);
  }

  async #findChild(parent: Target): Promise<number> {
    for (let tries = 0; tries < 2000; tries++) {
      for (const tid of listThreads(parent.pid)) {
        const text = readSmallFile(`/proc/${parent.pid}/task/${tid}/children`) ?? "";
        for (const word of text.split(/\s+/)) {
          const pid = parseInt(word, 10);
          if (pid > 0 && !this.#knownPids.has(pid)) {
            this.#knownPids.add(pid);
            return pid;
          }
        }
      }
      this.#pump();
      await sleep(1);
    }
    return -1;
  }

  #installChild(child: Target, snapshot: Region[]): void {
    const present = new Uint8Array(65536);
    let resident = 0, remote = 0;
    for (const r of snapshot) {
      // The child inherited write-protection bits; it starts with nothing clean.
      uffdWriteProtect(child.uffd, r.start, r.end - r.start, false);
      for (let from = 0; from < r.pages; from += present.length) {
        const n = Math.min(present.length, r.pages - from);
        child.presentPages(r.start + from * PAGE, n, present);
        for (let k = 0; k < n; k++) {
          const i = from + k;
          if (present[k]) {
            this.#slots.release(r.slot[i]);
            r.slot[i] = NO_SLOT;
            r.state[i] = Kind.RESIDENT;
            resident++;
          } else if (r.slot[i] !== NO_SLOT) {
            r.state[i] = Kind.REMOTE | HAS_COPY;
            remote++;
          } else {
            r.state[i] = Kind.EMPTY;
          }
        }
      }
      child.table.add(r);
    }
    this.#targets.set(child.id, child);
    this.#resident += resident;
    this.#remote += remote;
    for (const r of child.table.regions) {
      for (let i = 0; i < r.pages; i++) if (r.state[i] === Kind.RESIDENT) this.#admit(child, r, i);
    }
    eventfdSignal(this.#wake);
  }

  /** The process exited: free what it had in the store. */
  #targetGone(t: Target): void {
    if (!this.#targets.has(t.id)) return;
    t.exited = true;
    for (const r of t.table.regions) for (let i = 0; i < r.pages; i++) this.#forget(r, i);
    this.#targets.delete(t.id);
    t.closeFds();
    this.#flushReleased();
    log.info("pid {pid} exited; freed its pages in the store", { pid: t.pid });
    if (this.#targets.size === 0 && !this.#detaching) {
      this.#flushReleased(true).then(() => this.#finish({ kind: "exited", pid: t.pid }));
    }
  }

  // ----------------------------------------------------------------- eviction

  #admit(t: Target, r: Region, i: number): void {
    if (r.state[i] & QUEUED) {
      r.state[i] |= REFERENCED;
      return;
    }
    r.state[i] |= QUEUED;
    this.#policy.admit(t.id, r.start + i * PAGE);
  }

  #inspect = (id: number, page: number): number => {
    const t = this.#targets.get(id);
    const r = t?.table.find(page);
    if (!r) return Verdict.STALE;
    const i = (page - r.start) / PAGE;
    const st = r.state[i];
    if ((st & KIND_MASK) !== Kind.RESIDENT || !(st & QUEUED)) return Verdict.STALE;
    if (st & REFERENCED) {
      r.state[i] = st & ~REFERENCED;
      return Verdict.REFERENCED;
    }
    r.state[i] = st & ~QUEUED;
    return Verdict.VICTIM;
  };

  async #evictToBudget(): Promise<void> {
    const ids: number[] = [], pages: number[] = [];
    while (!this.#detaching && this.#end === null && this.#overBudget()) {
      const low = this.#budget - this.#headroom();
      const want = Math.max(1, Math.min(this.#batch, this.#resident + this.#incoming - low));
      ids.length = 0;
      pages.length = 0;
      if (this.#policy.pick(want, this.#inspect, ids, pages) === 0) break;
      const byTarget = new Map<number, number[]>();
      for (let k = 0; k < ids.length; k++) {
        let list = byTarget.get(ids[k]);
        if (!list) byTarget.set(ids[k], list = []);
        list.push(pages[k]);
      }
      for (const [id, list] of byTarget) {
        const t = this.#targets.get(id);
        if (!t) continue;
        const t0 = performance.now();
        list.sort((a, b) => a - b);
        const shared = list.filter((a) => t.table.find(a)?.file != null);
        const own = shared.length === 0 ? list : list.filter((a) => t.table.find(a)?.file == null);
        try {
          if (shared.length > 0) await this.#evictShared(t, shared);
          if (own.length > 0) await this.#evictBatch(t, own);
        } catch (e) {
          // A target that exited mid-batch fails in ptrace or process_vm_readv
          // (ESRCH) before its pidfd is looked at: ask /proc.
          if (!processAlive(t.pid)) this.#targetGone(t);
          else {
            log.error("eviction from pid {pid} failed: {err}", { pid: t.pid, err: errorText(e) });
            await sleep(100); // a failing store: do not spin on it
          }
        }
        this.counters.evictLatency.record((performance.now() - t0) * 1000);
      }
      await this.#flushReleased();
    }
  }

  /**
   * Step 1 of every eviction: marks the pages of sorted `addrs` EVICTING and
   * write-protects those without a current stored copy (`dirty`, indexes
   * into `addrs`), so that no write can slip in unseen from here on. A run
   * the kernel would not protect (EAGAIN while an event is pending) is marked
   * DIRTIED: it is not evicted this time.
   */
  #beginEviction(
    t: Target,
    addrs: number[],
  ): { regions: Region[]; index: Int32Array; dirty: number[] } {
    const n = addrs.length;
    const regions: Region[] = new Array(n);
    const index = new Int32Array(n);
    const dirty: number[] = [];
    for (let k = 0; k < n; k++) {
      const r = t.table.find(addrs[k])!;
      const i = (addrs[k] - r.start) / PAGE;
      regions[k] = r;
      index[k] = i;
      r.state[i] = (r.state[i] & ~(KIND_MASK | DIRTIED)) | Kind.EVICTING;
      if (!(r.state[i] & HAS_COPY)) dirty.push(k);
    }
    forRuns(dirty.map((k) => addrs[k]), (start, len) => {
      if (uffdWriteProtect(t.uffd, start, len, true) >= 0) return;
      for (const k of dirty) {
        const addr = regions[k].start + index[k] * PAGE;
        if (addr >= start && addr < start + len) regions[k].state[index[k]] |= DIRTIED;
      }
    });
    return { regions, index, dirty };
  }

  /**
   * Stores the pages `ks` (indexes into the batch), read into `buf` in that
   * order, and resolves once the store confirmed them. If it refuses, they
   * are marked DIRTIED: they stay in the target.
   */
  async #storeBatch(regions: Region[], index: Int32Array, ks: number[], buf: Uint8Array) {
    if (ks.length === 0) return;
    const keys = new Uint32Array(ks.length);
    for (let q = 0; q < ks.length; q++) {
      const r = regions[ks[q]], i = index[ks[q]];
      let key = r.slot[i];
      if (key === NO_SLOT || this.#slots.refs(key) > 1) {
        this.#slots.release(key);
        key = r.slot[i] = this.#slots.allocate();
      }
      this.#slots.retain(key); // held by this request until it completes
      keys[q] = key;
    }
    try {
      await this.#store.put(keys, buf.subarray(0, ks.length * PAGE));
      this.counters.pagesWritten += ks.length;
    } catch (e) {
      for (const k of ks) regions[k].state[index[k]] |= DIRTIED;
      log.error("store refused {n} pages: {err}; they stay in the target", {
        n: ks.length,
        err: errorText(e),
      });
    } finally {
      for (const key of keys) this.#slots.release(key);
    }
  }

  /**
   * Evicts sorted `addrs` of `t`: write-protect, read, store and wait for the
   * store's confirmation, then drop inside the target. Pages written
   * meanwhile stay.
   */
  async #evictBatch(t: Target, addrs: number[]): Promise<void> {
    const n = addrs.length;
    const { regions, index, dirty } = this.#beginEviction(t, addrs);
    // 2. Read them (on a worker thread: the read itself may fault).
    if (dirty.length > 0) {
      const buf = new Uint8Array(dirty.length * PAGE);
      const got = await this.#readPages(t, dirty.map((k) => addrs[k]), buf);
      const readable = Math.floor(got / PAGE);
      for (let d = readable; d < dirty.length; d++) {
        const k = dirty[d];
        regions[k].state[index[k]] |= DIRTIED; // not read: must not be dropped
      }
      // 3. Store, and wait for the confirmation.
      await this.#storeBatch(regions, index, dirty.slice(0, readable), buf);
    }
    const dirtySet = new Set(dirty);
    // 4. Stop a thread of the target, then drop, inside it, the pages still
    //    EVICTING and not written meanwhile.
    const drop: number[] = [];
    const decide = () => {
      for (let k = 0; k < n; k++) {
        const r = regions[k], i = index[k];
        // Still this page? (UNMAP/REMAP may have replaced the region.)
        if (t.table.find(addrs[k]) !== r) continue;
        const st = r.state[i];
        if ((st & KIND_MASK) !== Kind.EVICTING) continue;
        if (st & DIRTIED) {
          this.#cancelEviction(t, r, i, addrs[k]);
          continue;
        }
        r.state[i] = st | HAS_COPY | DROPPING;
        drop.push(k);
      }
      const starts: number[] = [], lengths: number[] = [];
      forRuns(drop.map((k) => addrs[k]), (start, len) => {
        starts.push(start);
        lengths.push(len);
      });
      return { starts, lengths };
    };
    let droppedEnd = 0;
    try {
      const res = await t.dropPages(decide, () => this.#pumpAndYield());
      if (res.dropped > 0) droppedEnd = res.starts[res.dropped - 1] + res.lengths[res.dropped - 1];
    } finally {
      for (const k of drop) {
        const r = regions[k], i = index[k];
        const st = r.state[i];
        if (
          t.table.find(addrs[k]) !== r ||
          (st & (KIND_MASK | DROPPING)) !== (Kind.EVICTING | DROPPING)
        ) {
          continue; // faulted back or freed meanwhile
        }
        if (addrs[k] < droppedEnd) {
          r.state[i] = (st & ~(KIND_MASK | DROPPING | QUEUED | REFERENCED | DIRTIED)) | Kind.REMOTE;
          this.#resident--;
          this.#remote++;
          this.counters.pagesEvicted++;
          if (!dirtySet.has(k)) this.counters.writesAvoided++;
        } else if (st & DIRTIED) {
          r.state[i] = st & ~DROPPING;
          this.#cancelEviction(t, r, i, addrs[k]);
        } else {
          // Not dropped: still present, write-protected and clean.
          r.state[i] = (st & ~(KIND_MASK | DROPPING)) | Kind.RESIDENT;
          this.#admit(t, r, i);
        }
      }
      const wakes = t.deferredWakes.splice(0);
      for (const addr of wakes) uffdWake(t.uffd, addr, PAGE);
    }
  }

  /**
   * Evicts sorted `addrs` of `t` that live in a shared file (guest RAM), with
   * no ptrace: write-protect them, read them from the file, store them and
   * wait for the store's confirmation, then punch holes where they were.
   * Pages written meanwhile stay. The next access to a punched page is a
   * missing fault that the stored copy serves.
   */
  async #evictShared(t: Target, addrs: number[]): Promise<void> {
    const n = addrs.length;
    const { regions, index, dirty } = this.#beginEviction(t, addrs);
    // 2. Read them from the file (a plain copy out of the page cache: it never faults).
    const buf = new Uint8Array(dirty.length * PAGE);
    const read: number[] = []; // indexes into `dirty` of the pages read, packed in `buf`
    for (let d = 0; d < dirty.length;) {
      const r = regions[dirty[d]];
      let e = d + 1;
      while (
        e < dirty.length && regions[dirty[e]] === r && index[dirty[e]] === index[dirty[e - 1]] + 1
      ) e++;
      const at = read.length * PAGE;
      const bytes = (e - d) * PAGE;
      const got = pread(
        r.file!.fd,
        buf.subarray(at, at + bytes),
        bytes,
        r.file!.offset + index[dirty[d]] * PAGE,
      );
      if (got === bytes) {
        for (let j = d; j < e; j++) read.push(j);
      } else {
        // Short (the file shrank?) or failed: these must not be punched.
        for (let j = d; j < e; j++) regions[dirty[j]].state[index[dirty[j]]] |= DIRTIED;
        if (got < 0) {
          log.warn("reading guest RAM of pid {pid} failed: {err}", {
            pid: t.pid,
            err: errnoName(-got),
          });
        }
      }
      d = e;
    }
    // 3. Store, and wait for the confirmation.
    await this.#storeBatch(regions, index, read.map((q) => dirty[q]), buf);
    const dirtySet = new Set(dirty);
    // 4. In one synchronous step (no fault is handled in between): pages still
    //    EVICTING and not written meanwhile have a current copy in the store;
    //    punch them out of the file. A write blocked on the protection now
    //    finds the page gone and faults again as missing, served the copy.
    const punch: number[] = [];
    for (let k = 0; k < n; k++) {
      const r = regions[k], i = index[k];
      if (t.table.find(addrs[k]) !== r) continue; // unmapped or moved meanwhile
      const st = r.state[i];
      if ((st & KIND_MASK) !== Kind.EVICTING) continue;
      if (st & DIRTIED) {
        this.#cancelEviction(t, r, i, addrs[k]);
        continue;
      }
      r.state[i] = st | HAS_COPY;
      punch.push(k);
    }
    for (let p = 0; p < punch.length && !t.exited;) {
      const r = regions[punch[p]];
      let e = p + 1;
      while (
        e < punch.length && regions[punch[e]] === r && index[punch[e]] === index[punch[e - 1]] + 1
      ) e++;
      const offset = r.file!.offset + index[punch[p]] * PAGE;
      let res = fallocate(
        r.file!.fd,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        offset,
        (e - p) * PAGE,
      );
      if (res === -Errno.EINTR || res === -Errno.EAGAIN) {
        res = fallocate(
          r.file!.fd,
          FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
          offset,
          (e - p) * PAGE,
        );
      }
      if (res < 0) {
        log.warn("punching guest RAM of pid {pid} failed: {err}; the pages stay", {
          pid: t.pid,
          err: errnoName(-res),
        });
      }
      for (let j = p; j < e; j++) {
        const k = punch[j], i = index[k];
        const st = r.state[i];
        if (res === 0) {
          r.state[i] = (st & ~(KIND_MASK | QUEUED | REFERENCED | DIRTIED)) | Kind.REMOTE;
          this.#resident--;
          this.#remote++;
          this.counters.pagesEvicted++;
          if (!dirtySet.has(k)) this.counters.writesAvoided++;
        } else {
          // Still present, write-protected, and equal to its stored copy.
          r.state[i] = (st & ~KIND_MASK) | Kind.RESIDENT;
          this.#admit(t, r, i);
        }
      }
      p = e;
    }
  }

  #cancelEviction(t: Target, r: Region, i: number, addr: number): void {
    const st = r.state[i];
    r.state[i] = (st & ~(KIND_MASK | DIRTIED | HAS_COPY)) | Kind.RESIDENT;
    this.counters.evictionsCancelled++;
    // Its write fault already removed the protection; make sure of it.
    uffdWriteProtect(t.uffd, addr, PAGE, false);
    this.#admit(t, r, i);
  }

  /** While we wait on the target (ptrace stops, drops) it raises events and faults: keep serving. */
  async #pumpAndYield(): Promise<void> {
    this.#pump();
    await yieldToEventLoop();
  }

  async #readPages(t: Target, addrs: number[], buf: Uint8Array): Promise<number> {
    const remote: number[] = [];
    forRuns(addrs, (start, len) => remote.push(start, len));
    let done = 0;
    for (let from = 0; from < remote.length; from += 2048) {
      const part = remote.slice(from, from + 2048);
      let bytes = 0;
      const riov = new BigUint64Array(part.length);
      for (let k = 0; k < part.length; k++) riov[k] = BigInt(part[k]);
      for (let k = 1; k < part.length; k += 2) bytes += part[k];
      const liov = new BigUint64Array([BigInt(addressOf(buf) + done), BigInt(bytes)]);
      const got = await processVmReadvAsync(
        t.pid,
        new Uint8Array(liov.buffer),
        1,
        new Uint8Array(riov.buffer),
        part.length / 2,
      );
      if (got < 0) break;
      done += got;
      if (got < bytes) break;
    }
    return done;
  }

  /** Deletes keys nobody references any more, then lets them be reused. */
  async #flushReleased(all = false): Promise<void> {
    // One delete at a time; `all` waits for the one under way and then
    // deletes whatever is left, so nothing is still stored when it resolves.
    while (this.#deleting !== null) {
      if (!all) return;
      await this.#deleting;
    }
    const released = this.#slots.released;
    if (released.length === 0 || (!all && released.length < 256)) return;
    const keys = Uint32Array.from(released.splice(0));
    this.#deleting = this.#store.delete(keys).then(
      () => this.#slots.recycle(keys),
      (e) => {
        log.warn("store could not delete {n} pages: {err}", { n: keys.length, err: errorText(e) });
      },
    ).finally(() => this.#deleting = null);
    await this.#deleting;
  }

  // ----------------------------------------------------------- registration

  /**
   * Registers every pageable mapping not yet tracked, and counts the pages
   * already present in it as resident. `reportSkips` says why others are left out.
   */
  #registerNewMappings(t: Target, reportSkips: boolean): void {
    const maps = readMaps(t.pid);
    if (maps === null) return;
    const shared = this.#sharedMappings(t, maps, reportSkips);
    if (reportSkips && shared.some(({ m }) => m.end - m.start >= GUEST_RAM_MIN_BYTES)) {
      t.sharedOnly = true;
      const ram = shared.filter(({ m }) => m.end - m.start >= GUEST_RAM_MIN_BYTES);
      log.info(
        "pid {pid}: guest RAM {ram} is paged through its shared file (evicted by punching holes); " +
          "the process's private memory is not paged",
        {
          pid: t.pid,
          ram: ram.map(({ m }) => `${m.path} (${(m.end - m.start) >> 20} MiB)`).join(", "),
        },
      );
    }
    const candidates = t.sharedOnly
      ? []
      : maps.filter((m) => isAnonymousWritable(m) && m.start !== t.scratch);
    const fresh = candidates.filter((m) => t.table.gaps(m.start, m.end).length > 0);
    if (fresh.length === 0 && shared.length === 0 && !reportSkips) return;
    const locked = fresh.length > 0 || reportSkips ? lockedMappings(t.pid) : new Set<number>();
    if (reportSkips) {
      for (const m of maps) {
        if (m.start === t.scratch || m.perms[3] === "s") continue; // shared: reported above
        let why = skipReason(m, locked);
        if (why === null && t.sharedOnly && isAnonymousWritable(m)) {
          why = "private memory of a process whose guest RAM is paged: not paged";
        }
        if (why !== null) {
          this.#onSkip(`${hex(m.start)}-${hex(m.end)} ${m.path || "(anonymous)"}: ${why}`);
        }
      }
    }
    const present = new Uint8Array(65536);
    const all: Array<{ m: Mapping; file: SharedFile | null }> = [
      ...shared,
      ...fresh.filter((m) => !locked.has(m.start)).map((m) => ({ m, file: null })),
    ];
    for (const { m, file } of all) {
      for (const [start, end] of t.table.gaps(m.start, m.end)) {
        const res = uffdRegister(
          t.uffd,
          start,
          end - start,
          REGISTER_MODE_MISSING | REGISTER_MODE_WP,
        );
        if (res === -Errno.EBUSY) {
          throw new AttachError(
            `pid ${t.pid} is already under another userfaultfd (EBUSY at ${hex(start)}): ` +
              `another pager or a tool like CRIU owns its memory`,
          );
        }
        if (res < 0) {
          if (file !== null) {
            log.warn("registering guest RAM {where} of pid {pid} failed: {err}; not paged", {
              where: `${hex(start)}-${hex(end)} ${m.path}`,
              pid: t.pid,
              err: errnoName(-res),
            });
          }
          // The mapping changed under us (unmapped, split): the next scan sees the new shape.
          continue;
        }
        const r = new Region(
          start,
          (end - start) / PAGE,
          file === null ? null : { fd: file.fd, offset: file.offset + (start - m.start) },
        );
        for (let from = 0; from < r.pages; from += present.length) {
          const n = Math.min(present.length, r.pages - from);
          // Shared file: the pages the file holds (mapped here or not), not the page table.
          if (r.file !== null) presentInFile(r.file.fd, r.file.offset + from * PAGE, n, present);
          else t.presentPages(start + from * PAGE, n, present);
          for (let k = 0; k < n; k++) if (present[k]) r.state[from + k] = Kind.RESIDENT;
        }
        t.table.add(r);
        if (r.file !== null) this.#sharedPaging = true;
        for (let i = 0; i < r.pages; i++) {
          if (r.state[i] === Kind.RESIDENT) {
            this.#resident++;
            this.#admit(t, r, i);
          }
        }
      }
    }
  }

  /**
   * Shared writable mappings of `t` not yet tracked that can be paged
   * through their file: shmem (memfd, tmpfs, shared anonymous) mapped once,
   * by this process alone. Says why the others are not paged.
   */
  #sharedMappings(
    t: Target,
    maps: Mapping[],
    reportSkips: boolean,
  ): Array<{ m: Mapping; file: SharedFile }> {
    const out: Array<{ m: Mapping; file: SharedFile }> = [];
    let dontFork: Set<number> | null = null;
    for (const m of maps) {
      if (m.perms[1] !== "w" || m.perms[3] !== "s" || m.start === t.scratch) continue;
      if (t.table.gaps(m.start, m.end).length === 0) continue; // tracked already
      const id = `${hex(m.start)}-${hex(m.end)}:${m.dev}:${m.inode}`;
      if (t.sharedSkipped.has(id)) continue;
      const where = `${hex(m.start)}-${hex(m.end)} ${m.path || "(shared)"}`;
      const skip = (why: string, warn = false) => {
        t.sharedSkipped.add(id);
        if (warn) log.warn("pid {pid}: {where}: {why}", { pid: t.pid, where, why });
        if (reportSkips) this.#onSkip(`${where}: ${why}`);
      };
      const fd = t.openShared(m);
      if (fd < 0) {
        skip(`shared mapping whose file cannot be opened (${errnoName(-fd)}): not paged`, true);
        continue;
      }
      const fs = fstatfsType(fd);
      if (fs === HUGETLBFS_MAGIC) {
        skip(
          "guest RAM on hugetlbfs is not supported (huge pages cannot be evicted 4 KiB at a " +
            "time): not paged; use memory-backend-memfd without hugetlb, or a file in /dev/shm",
          true,
        );
        continue;
      }
      if (fs !== TMPFS_MAGIC) {
        skip("shared mapping of a file on disk: not paged");
        continue;
      }
      // A child would share the file: its faults and our punches could not be kept apart.
      dontFork ??= dontForkMappings(t.pid);
      if (!dontFork.has(m.start)) {
        skip("shared mapping that a fork would share (not MADV_DONTFORK): not paged");
        continue;
      }
      const aliases = maps.filter((o) => o.dev === m.dev && o.inode === m.inode).length;
      if (aliases > 1) {
        skip(`its file is mapped ${aliases} times in the process: not paged`, true);
        continue;
      }
      const others = otherProcessesMapping(m.dev, m.inode, t.pid);
      if (others.length > 0) {
        skip(`its file is also mapped by pid ${others.join(", ")}: not paged`, true);
        continue;
      }
      out.push({ m, file: { fd, offset: m.offset } });
    }
    return out;
  }

  #rescanSoon(): void {
    this.#forceRescan = true;
    if (this.#rescanDelay > RESCAN_MIN_MS) {
      this.#rescanDelay = RESCAN_MIN_MS;
      clearTimeout(this.#rescanTimer);
      this.#scheduleRescan();
    }
  }

  /**
   * New mappings have no event: look at /proc/PID/maps often while the
   * target is busy, rarely while it is idle.
   */
  #scheduleRescan(): void {
    this.#rescanTimer = setTimeout(() => {
      if (this.#end !== null || this.#detaching) return;
      const force = this.#forceRescan;
      this.#forceRescan = false;
      for (const t of this.#targets.values()) {
        const size = t.addressSpacePages();
        if (!force && size === t.scannedSize) continue;
        t.scannedSize = size;
        try {
          this.#registerNewMappings(t, false);
        } catch (e) {
          log.warn("scan of pid {pid} failed: {err}", { pid: t.pid, err: errorText(e) });
        }
      }
      // A program is most likely to map its memory right after it starts.
      const busy = this.counters.faults !== this.#faultsAtLastRescan ||
        performance.now() - this.#started < 1000;
      this.#faultsAtLastRescan = this.counters.faults;
      this.#rescanDelay = busy ? RESCAN_MIN_MS : Math.min(RESCAN_MAX_MS, this.#rescanDelay * 2);
      if (this.#resident > this.#budget) eventfdSignal(this.#wake);
      this.#scheduleRescan();
    }, this.#rescanDelay);
  }

  // ------------------------------------------------------------------ detach

  /** Fetches every remote page of `t` back into it. */
  async #restore(t: Target): Promise<void> {
    const batch = 256;
    for (const r of t.table.regions) {
      for (let i = 0; i < r.pages;) {
        if (t.exited) return;
        const f: Fetch = {
          target: t,
          addrs: [],
          writes: [],
          keys: new Uint32Array(batch),
          started: [],
        };
        let n = 0;
        for (; i < r.pages && n < batch; i++) {
          if ((r.state[i] & KIND_MASK) !== Kind.REMOTE) continue;
          r.state[i] = (r.state[i] & ~KIND_MASK) | Kind.FETCHING;
          if (r.file !== null) this.#incoming++;
          f.addrs.push(r.start + i * PAGE);
          f.writes.push(true); // restored pages are plain, unprotected memory
          f.started.push(performance.now());
          this.#slots.retain(r.slot[i]);
          f.keys[n++] = r.slot[i];
        }
        if (n === 0) continue;
        f.keys = f.keys.subarray(0, n);
        const before = this.counters.pagesFetched;
        await this.#startFetch(f);
        this.counters.pagesRestored += this.counters.pagesFetched - before;
        if (this.#end !== null) return;
      }
    }
    while (this.#retries.length > 0 && this.#end === null) {
      this.#pump();
      this.#retryParked();
      await sleep(1);
    }
  }

  #finish(end: PagerEnd): void {
    if (this.#end !== null) return;
    this.#end = end;
    clearTimeout(this.#rescanTimer);
    eventfdSignal(this.#wake);
    for (const w of this.#endWaiters) w(end);
    this.#endWaiters = [];
  }
}

/** Calls `fn(start, length)` for each run of consecutive pages in sorted `addrs`. */
function forRuns(addrs: number[], fn: (start: number, len: number) => void): void {
  let k = 0;
  while (k < addrs.length) {
    const start = addrs[k];
    let end = start + PAGE;
    while (++k < addrs.length && addrs[k] === end) end += PAGE;
    fn(start, end - start);
  }
}

function isAnonymousWritable(m: Mapping): boolean {
  return m.perms[1] === "w" && m.perms[3] === "p" && isAnonymousPath(m.path);
}

function isAnonymousPath(path: string): boolean {
  return path === "" || path === "[heap]" || path === "[stack]" || path.startsWith("[anon:") ||
    path.startsWith("[stack:");
}

function skipReason(m: Mapping, locked: Set<number>): string | null {
  if (m.perms[1] !== "w") return null; // code and read-only data: nothing to page
  if (m.path === "[vvar]" || m.path === "[vdso]" || m.path === "[vsyscall]") {
    return "special mapping";
  }
  if (m.perms[3] === "s") return "shared mapping: not paged";
  if (!isAnonymousPath(m.path)) return "file-backed: not paged";
  if (locked.has(m.start)) return "mlocked: not paged";
  return null;
}

function hex(n: number): string {
  return "0x" + n.toString(16);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const channel = new MessageChannel();
const yieldWaiters: Array<() => void> = [];
channel.port1.onmessage = () => yieldWaiters.shift()?.();
// The channel must not keep the process alive on its own.
(channel.port1 as unknown as { unref?: () => void }).unref?.();

/** Lets sockets and timers run (a macrotask turn, ~10 us), unlike a microtask. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    yieldWaiters.push(resolve);
    channel.port2.postMessage(0);
  });
}

/** Our own pid, for messages. */
export const PAGER_PID: number = getpid();
/** Re-exported for the CLI's attach messages. */
export { AttachError, SCRATCH_BYTES };
