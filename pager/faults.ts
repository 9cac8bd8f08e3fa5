/**
 * Fault service: a missing page gets zeros or its stored copy, a write to a
 * write-protected page marks it dirty, and a fault that cannot be served now
 * (EAGAIN, or no room under the budget) is replayed later by one `refault`.
 *
 * @module
 */

import { crashPoint } from "./crash.ts";
import { getLogger } from "@logtape/logtape";
import { addressOf, Errno, errnoName, kill, Signal, tgkill } from "../ffi/libc.ts";
import { listThreads } from "../ffi/proc.ts";
import {
  COPY_MODE_DONTWAKE,
  COPY_MODE_WP,
  uffdCopy,
  uffdWake,
  uffdWriteProtect,
  uffdZeropage,
  ZEROPAGE_MODE_DONTWAKE,
  zeroPageAddress,
} from "../ffi/uffd.ts";
import { PAGE_SIZE } from "../transport/store.ts";
import { DROPPING, Kind, KIND_MASK, NO_SLOT, PAGE, type Region } from "./page_table.ts";
import { streamOf, targetOfStream } from "./prefetch.ts";
import { errorText, hex, type PagerHooks, type PagerState, type Refault } from "./state.ts";
import type { Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/**
 * After a loss, how long the pager keeps serving faults for the targets to
 * reach their SIGSTOP before it gives up waiting and ends the run anyway.
 */
const STOP_WAIT_MS = 10_000;

/** Faults of one target waiting for the same store request. */
export interface Fetch {
  target: Target;
  addrs: number[];
  writes: boolean[];
  keys: Uint32Array;
  started: number[];
  /** Per page: 0 for a fault, 1 + the proposing thread id for a prefetch. */
  ahead?: number[];
}

/**
 * Serves the faults of a pager's targets.
 *
 * @example
 * ```ts
 * declare const faults: FaultService, t: Target;
 * const key = faults.missing(t, 0x7f0000001000, false, performance.now());
 * if (key !== NO_SLOT) faults.fetchOne(t, 0x7f0000001000, false, key, performance.now());
 * ```
 */
export class FaultService {
  readonly #s: PagerState;
  readonly #hooks: PagerHooks;
  readonly #buffers: Uint8Array[] = [];
  /**
   * Pages fetched for a read are placed write-protected, so that their first
   * write marks them dirty and an eviction of a clean page skips the store
   * write. Worth it where a write is dear (network stores); for the embedded
   * store a 4 KiB copy at eviction costs far less than the second fault a
   * write-protected page takes on its first write.
   */
  readonly #trackClean: boolean;
  #proposals = new Float64Array(0);
  /**
   * Per stream that writes what it reads: how many of its next pages fetched
   * ahead are placed writable (and dirty) instead of write-protected. A read
   * fault followed by a write (a read-modify-write sweep) would otherwise
   * cost every prefetched page a write-protect fault. Granted by a write to a
   * page fetched ahead for the stream, spent page by page, so a stream that
   * stops writing goes back to clean pages within one window.
   */
  readonly #writeCredit = new Map<number, number>();

  /** Fault service over the shared state. */
  constructor(state: PagerState, hooks: PagerHooks) {
    this.#s = state;
    this.#hooks = hooks;
    this.#trackClean = !state.store.local;
  }

  /**
   * A thread touched a page that is not present. Serves it at once if it can;
   * returns the store key to fetch otherwise ({@linkcode NO_SLOT} if none).
   */
  missing(t: Target, addr: number, write: boolean, started: number, tid = 0): number {
    const s = this.#s;
    const r = t.table.find(addr);
    if (r === null) {
      // A mapping we have not seen yet (a stack that grew, a new mmap): it has
      // never been evicted, so zeros are right. Track it on the next scan.
      this.#fillZero(t, null, 0, addr, write, started);
      this.#hooks.rescanSoon();
      return NO_SLOT;
    }
    const i = (addr - r.start) / PAGE;
    const st = r.state[i];
    const kind = st & KIND_MASK;
    if ((kind === Kind.EMPTY || kind === Kind.REMOTE) && this.#mustWaitForRoom(t, r, tid)) {
      s.budgetWaits.push({ target: t, addr, write, wp: false, tid, since: started });
      s.wakeLoop();
      return NO_SLOT;
    }
    switch (kind) {
      case Kind.EMPTY:
        // For a shared file: a hole (the pager places every page it holds), so zeros are right.
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
      case Kind.REMOTE:
        s.book.beginFetch(r, i);
        return r.slot[i];
      case Kind.FETCHING:
        return NO_SLOT; // our UFFDIO_COPY will wake this thread too
      case Kind.EVICTING:
        if (st & DROPPING) {
          // Dropped just now: the store holds its current contents.
          s.book.fetchDropped(r, i);
          return r.slot[i];
        }
        // Present a moment ago and now missing: the eviction must not drop it.
        s.book.dirtied(r, i);
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
      default: // RESIDENT: a late duplicate message, or a page the kernel freed lazily.
        this.#fillZero(t, r, i, addr, write, started);
        return NO_SLOT;
    }
  }

  /**
   * The page would take a shared file over its budget, or anonymous memory
   * past budget plus one eviction's worth (faults that outrun eviction, e.g.
   * many threads): the fault waits for an eviction. Never the thread an
   * eviction stops: it may touch this page (rseq) on its way to the stop.
   */
  #mustWaitForRoom(t: Target, r: Region, tid: number): boolean {
    const s = this.#s;
    if (s.detaching) return false;
    if (r.file !== null) return s.budget.fileFull(s.book);
    return s.budget.anonymousFull(s.book) && tid !== 0 && tid !== t.injectionTid;
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
    const c = this.#s.counters;
    const res = write
      ? uffdCopy(t.uffd, addr, zeroPageAddress(), PAGE, 0)
      : uffdZeropage(t.uffd, addr, PAGE);
    if (res !== PAGE && res !== -Errno.EEXIST) {
      this.#copyFailed(t, addr, write, res, started);
      return;
    }
    if (res === -Errno.EEXIST) {
      c.spuriousFaults++;
      uffdWake(t.uffd, addr, PAGE);
    } else {
      c.zeroFills++;
      c.faultLatency.record((performance.now() - started) * 1000);
    }
    if (r !== null && (r.state[i] & KIND_MASK) === Kind.EMPTY) {
      this.#s.book.zeroFilled(r, i);
      this.#s.admit(t, r, i);
    }
  }

  #copyFailed(t: Target, addr: number, write: boolean, res: number, started: number): void {
    if (res === -Errno.EAGAIN) {
      // The target's layout is changing (an event is pending): retry after reading it.
      this.#s.counters.retries++;
      this.#s.retries.push({ target: t, addr, write, wp: false, tid: 0, since: started });
    } else if (res === -Errno.ESRCH || res === -Errno.ENOSPC) {
      this.#hooks.targetGone(t, `UFFDIO_COPY: ${errnoName(-res)}`);
    } else if (res !== -Errno.ENOENT) {
      log.warn("serving fault at {addr} in pid {pid} failed: {err}", {
        addr: hex(addr),
        pid: t.pid,
        err: errnoName(-res),
      });
    }
  }

  /** A write to a write-protected page: a clean page turning dirty, or one being evicted. */
  writeProtect(t: Target, addr: number, tid: number, since = performance.now()): void {
    const s = this.#s;
    if (t.recovering && t.dropping.contains(addr)) {
      // A killed pager's drop is finishing: the page goes, then comes back by a fetch.
      t.deferredWakes.push(addr);
      return;
    }
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
        s.book.dirtied(r, i);
      } else if ((st & KIND_MASK) === Kind.RESIDENT) {
        s.book.written(r, i);
        this.dropSharedSlot(t, r, i);
        const who = s.book.takeAhead(r, i);
        if (who !== 0) {
          s.counters.prefetchHits++;
          const stream = streamOf(t.id, who - 1);
          s.prefetch.hit(stream);
          if (this.#trackClean) this.#writeCredit.set(stream, s.prefetch.maxDepth);
        }
      }
    }
    const res = uffdWriteProtect(t.uffd, addr, PAGE, false);
    if (res === -Errno.EAGAIN) {
      // Not unprotected, so the thread is not woken: replay the fault later.
      s.counters.retries++;
      s.retries.push({ target: t, addr, write: true, wp: true, tid, since });
    } else if (res === -Errno.ESRCH || res === -Errno.ENOSPC) {
      this.#hooks.targetGone(t, `UFFDIO_WRITEPROTECT: ${errnoName(-res)}`);
    }
  }

  /**
   * Asks the prefetch policy about a missing fault of thread `tid` at `addr`,
   * counts the prefetches its stream passed as hits, and adds the proposed
   * pages that are remote to `fetch` (with their keys in `keys`), as far as
   * there is room under the budget (less one page for the fault): a prefetch
   * never waits for room. Proposed anonymous pages never touched yet get zeros
   * at once, writable if the fault is a `write` (a first sweep over fresh
   * memory would otherwise fault on every page). Called before the fault
   * itself is served, so that those zeros are in place when its thread wakes.
   * Returns whether the stream writes what it reads (see `#writeCredit`): then
   * the faulting page too is best placed writable.
   */
  prefetch(
    t: Target,
    addr: number,
    tid: number,
    write: boolean,
    fetch: Fetch,
    keys: number[],
  ): boolean {
    const s = this.#s, policy = s.prefetch;
    if (policy.maxDepth === 0) return false;
    if (this.#proposals.length < policy.maxDepth) {
      this.#proposals = new Float64Array(policy.maxDepth);
    }
    const out = this.#proposals;
    const page = addr / PAGE, stream = streamOf(t.id, tid);
    const n = policy.onFault(stream, page, out);
    for (let j = 1; j <= policy.lastStepped; j++) {
      this.#touched(t, (page - j * policy.lastTrend) * PAGE);
    }
    // One page of room stays for the fault itself, which is accounted after this.
    let room = s.budget.pages - s.book.resident - s.book.incoming - fetch.addrs.length - 1;
    const now = performance.now();
    const zeros = this.#zeroRun;
    zeros.write = write;
    let writable = this.#writeCredit.get(stream) ?? 0, probe = -1;
    let k = 0;
    for (; k < n && room > 0; k++) {
      const a = out[k] * PAGE;
      const r = t.table.find(a);
      if (r === null) continue;
      const i = (a - r.start) / PAGE;
      const kind = r.state[i] & KIND_MASK;
      if (kind === Kind.EMPTY && r.file === null) {
        zeros.add(t, r, i);
        room--;
      } else if (kind === Kind.REMOTE) {
        probe = this.#fetchAhead(r, i, tid, writable > 0, fetch, keys, now);
        if (writable > 0) writable--;
        room--;
      }
    }
    // Cut short for room: the stream's window is what was taken, and its
    // depth is not what the next fault should judge.
    if (k < n) policy.cut(stream, k);
    // The window's last page stays write-protected: a write to it renews the
    // credit, and a stream that has stopped writing lets it run out.
    if (probe >= 0 && fetch.writes[probe]) {
      fetch.writes[probe] = false;
      writable++;
    }
    // The faulting page spends credit too: with no window (no trend), no
    // probe renews it, and a stream that only reads goes back to clean pages.
    const writing = writable > 0;
    this.#spendWriteCredit(stream, writing ? writable - 1 : 0);
    zeros.flush();
    if (fetch.ahead !== undefined) {
      while (fetch.ahead.length < fetch.addrs.length) fetch.ahead.push(0);
    }
    return writing;
  }

  /** Adds page `i` of `r` to `fetch` as a page fetched ahead for thread `tid`; returns its index. */
  #fetchAhead(
    r: Region,
    i: number,
    tid: number,
    writable: boolean,
    fetch: Fetch,
    keys: number[],
    now: number,
  ): number {
    const s = this.#s;
    s.book.beginFetch(r, i);
    s.slots.retain(r.slot[i]);
    keys.push(r.slot[i]);
    fetch.addrs.push(r.start + i * PAGE);
    fetch.writes.push(writable);
    fetch.started.push(now);
    (fetch.ahead ??= new Array(fetch.addrs.length - 1).fill(0)).push(tid + 1);
    return fetch.addrs.length - 1;
  }

  /** Forgets what was learnt of target `id`'s streams (it exited). */
  forgetTarget(id: number): void {
    for (const stream of this.#writeCredit.keys()) {
      if (targetOfStream(stream) === id) this.#writeCredit.delete(stream);
    }
  }

  /** What is left of `stream`'s write credit after a fault's proposals. */
  #spendWriteCredit(stream: number, left: number): void {
    if (left > 0) this.#writeCredit.set(stream, left);
    else this.#writeCredit.delete(stream);
  }

  /**
   * Maps zeros over runs of never-touched pages, one ioctl per run, without
   * waking anyone: `UFFDIO_ZEROPAGE` for a reading stream, a copy of zeros
   * (writable pages) for a writing one.
   */
  readonly #zeroRun = new ZeroRun((t, r, from, to, write) => {
    const s = this.#s;
    const at = r.start + from * PAGE, bytes = (to - from) * PAGE;
    // A writing stream gets writable pages: the zero page would cost each of
    // them a copy-on-write fault (and a TLB flush) on its first write.
    const done = write
      ? uffdCopy(t.uffd, at, zeroPageAddress(to - from), bytes, COPY_MODE_DONTWAKE)
      : uffdZeropage(t.uffd, at, bytes, ZEROPAGE_MODE_DONTWAKE);
    // A page that turns out present (EEXIST) ends the run: those after it
    // stay as they are, and fault as usual.
    const pages = done > 0 ? done / PAGE : 0;
    for (let i = from; i < from + pages; i++) {
      if ((r.state[i] & KIND_MASK) !== Kind.EMPTY) continue;
      s.book.zeroFilled(r, i);
      s.admit(t, r, i);
    }
    s.counters.zeroFillsAhead += pages;
  });

  /** A touch of the page at `addr` was seen: a prefetch placed there was a hit. */
  #touched(t: Target, addr: number): void {
    const r = t.table.find(addr);
    if (r === null || r.ahead === null) return;
    if (this.#s.book.takeAhead(r, (addr - r.start) / PAGE) !== 0) this.#s.counters.prefetchHits++;
  }

  /** A page that is about to differ from its stored copy keeps the key only if it owns it alone. */
  dropSharedSlot(t: Target, r: Region, i: number): void {
    const key = r.slot[i];
    if (key !== NO_SLOT && this.#s.slots.refs(key) > 1) {
      t.record?.released(key);
      this.#s.slots.release(key);
      r.slot[i] = NO_SLOT;
    }
  }

  /** Replays a fault against the current state: parked after EAGAIN, or waiting for room. */
  refault(p: Refault): void {
    if (p.wp) {
      this.writeProtect(p.target, p.addr, p.tid, p.since);
      return;
    }
    const key = this.missing(p.target, p.addr, p.write, p.since, p.tid);
    if (key !== NO_SLOT) this.fetchOne(p.target, p.addr, p.write, key, p.since);
  }

  /** Fetches one page whose key {@linkcode missing} returned. */
  fetchOne(t: Target, addr: number, write: boolean, key: number, since: number): void {
    this.#s.slots.retain(key);
    this.start({
      target: t,
      addrs: [addr],
      writes: [write],
      keys: Uint32Array.of(key),
      started: [since],
    });
  }

  /** Replays the faults parked after EAGAIN (the event that caused it has been read now). */
  retryParked(): void {
    const s = this.#s;
    if (s.retries.length === 0) return;
    const parked = s.retries;
    s.retries = [];
    for (const p of parked) {
      if (p.target.exited) continue;
      if (performance.now() - p.since > 10_000) {
        log.warn("fault at {addr} in pid {pid} still parked after 10 s; retrying", {
          addr: hex(p.addr),
          pid: p.target.pid,
        });
        p.since = performance.now();
      }
      this.refault(p); // parked missing faults carry tid 0: they never wait for room
    }
  }

  /** Replays the faults that waited for room, as far as there is room now. */
  serveBudgetWaits(): void {
    const s = this.#s;
    if (s.budgetWaits.length === 0) return;
    if (!s.detaching && s.budget.fileFull(s.book)) return;
    const waiting = s.budgetWaits;
    s.budgetWaits = [];
    for (let k = 0; k < waiting.length; k++) {
      const p = waiting[k];
      if (p.target.exited) continue;
      if (!s.detaching && s.budget.fileFull(s.book)) {
        // A loop, not push(...rest): a spread of thousands of waiters could overflow the stack.
        for (let j = k; j < waiting.length; j++) s.budgetWaits.push(waiting[j]);
        break;
      }
      this.refault(p);
    }
  }

  /** Asks the store for the pages of `f` and places them when they come. */
  start(f: Fetch): Promise<void> {
    const s = this.#s;
    const buf = this.#takeBuffer(f.addrs.length);
    if (s.store.getNow !== undefined) {
      // A local store: the faulting threads wake within this call.
      const lost = s.store.getNow(f.keys, buf);
      if (lost === null) this.#place(f, buf);
      else this.lost(f.target, f.addrs, lost);
      for (const k of f.keys) s.slots.release(k);
      this.#buffers.push(buf);
      if (s.evicting === null && s.evictionDue()) s.wakeLoop();
      return Promise.resolve();
    }
    s.inflight++;
    return s.store.get(f.keys, buf).then(
      () => this.#place(f, buf),
      (e) => this.lost(f.target, f.addrs, e),
    ).finally(() => {
      s.inflight--;
      for (const k of f.keys) s.slots.release(k);
      this.#buffers.push(buf);
      // The loop may be asleep in poll while this took the target over budget.
      if (s.evicting === null && s.evictionDue()) s.wakeLoop();
    });
  }

  #takeBuffer(pages: number): Uint8Array {
    const b = this.#buffers.pop();
    return b !== undefined && b.length >= pages * PAGE_SIZE
      ? b
      : new Uint8Array(Math.max(pages, 16) * PAGE_SIZE);
  }

  #place(f: Fetch, buf: Uint8Array): void {
    const t = f.target;
    if (t.exited) return;
    const base = addressOf(buf), ahead = f.ahead;
    // The faulting pages first (their threads wait), then those fetched ahead.
    for (let k = 0; k < f.addrs.length; k++) {
      if ((ahead?.[k] ?? 0) === 0) this.#placeOne(f, k, base);
    }
    if (ahead === undefined) return;
    for (let k = 0; k < f.addrs.length;) {
      if (ahead[k] === 0) {
        k++;
        continue;
      }
      // Pages fetched ahead that follow one another go in one UFFDIO_COPY.
      const r = this.#stillFetching(f, k);
      let end = k + 1;
      while (
        r !== null && end < f.addrs.length && f.addrs[end] === f.addrs[end - 1] + PAGE &&
        ahead[end] !== 0 && f.writes[end] === f.writes[k] && this.#stillFetching(f, end) === r
      ) end++;
      if (end - k === 1) {
        this.#placeOne(f, k, base);
        k++;
        continue;
      }
      // Fetched ahead: protected, unless for a stream that writes what it reads.
      const protect = this.#trackClean && !f.writes[k];
      const res = uffdCopy(
        t.uffd,
        f.addrs[k],
        base + k * PAGE,
        (end - k) * PAGE,
        protect ? COPY_MODE_WP : 0,
      );
      const done = res > 0 ? res / PAGE : 0;
      for (let j = k; j < k + done; j++) this.#placed(f, j, r!, PAGE, protect);
      // A page the run stopped at (EEXIST, EAGAIN) is looked at on its own.
      k += done;
      if (done === 0) {
        this.#placeOne(f, k, base);
        k++;
      }
    }
  }

  /** The region of page `k` of `f` if it still waits for this fetch, else null. */
  #stillFetching(f: Fetch, k: number): Region | null {
    const r = f.target.table.find(f.addrs[k]);
    if (r === null) return null;
    const i = (f.addrs[k] - r.start) / PAGE;
    return (r.state[i] & KIND_MASK) === Kind.FETCHING && r.slot[i] === f.keys[k] ? r : null;
  }

  /** Places page `k` of `f` alone (from `base + k * PAGE`), or says why not. */
  #placeOne(f: Fetch, k: number, base: number): void {
    const t = f.target, addr = f.addrs[k];
    const r = t.table.find(addr);
    if (r === null) return; // unmapped meanwhile
    if (this.#stillFetching(f, k) !== r) {
      // Freed or moved while we fetched: the thread must fault again and see the new state.
      uffdWake(t.uffd, addr, PAGE);
      return;
    }
    const write = f.writes[k];
    // Tracking clean pages, a read leaves the page write-protected: its first
    // write tells us it is dirty. Otherwise every page counts as dirty.
    const protect = !write && this.#trackClean;
    const res = uffdCopy(t.uffd, addr, base + k * PAGE, PAGE, protect ? COPY_MODE_WP : 0);
    if (res === PAGE || res === -Errno.EEXIST) this.#placed(f, k, r, res, protect);
    else {
      if (res === -Errno.EAGAIN) this.#s.book.fetchDeferred(r, (addr - r.start) / PAGE); // fetch again after the event
      this.#copyFailed(t, addr, write, res, f.started[k]);
    }
  }

  /** Page `k` of `f` is in place (`res` PAGE), or was already (EEXIST): account it. */
  #placed(f: Fetch, k: number, r: Region, res: number, protect: boolean): void {
    crashPoint("placed");
    const t = f.target, i = (f.addrs[k] - r.start) / PAGE;
    const clean = res === PAGE && protect;
    const c = this.#s.counters;
    this.#s.book.fetched(r, i, clean);
    if (!clean) this.dropSharedSlot(t, r, i);
    c.pagesFetched++;
    const ahead = f.ahead?.[k] ?? 0;
    if (ahead === 0) c.faultLatency.record((performance.now() - f.started[k]) * 1000);
    else if (res === PAGE) {
      c.pagesPrefetched++;
      this.#s.book.prefetched(r, i, ahead - 1);
    }
    this.#s.admit(t, r, i, ahead !== 0 && res === PAGE);
  }

  /**
   * The store lost pages the target needs: stop every target with SIGSTOP
   * rather than let it read wrong data. The faulting threads of these pages
   * are never woken; the pager ends once the targets have stopped (see
   * {@linkcode PagerState.stopping}).
   */
  lost(t: Target, addrs: number[], e: unknown): void {
    const s = this.#s;
    if (s.end !== null || s.stopping !== null) return; // already stopping
    const list = addrs.slice(0, 8).map(hex).join(", ") + (addrs.length > 8 ? ", ..." : "");
    const message = `pages of pid ${t.pid} could not be read back (${errorText(e)}); ` +
      `stopped the target with SIGSTOP so it cannot read wrong data; pages: ${list}`;
    for (const other of s.targets.values()) stopEveryThread(other.pid);
    s.stopping = { message, deadline: performance.now() + STOP_WAIT_MS };
    s.wakeLoop();
  }
}

/**
 * SIGSTOP to each thread of `pid`, not once to the process: a process-wide
 * signal wakes one thread to start the group stop, and if that one is blocked
 * in the kernel on a page that cannot come back, the others never hear of it.
 * Sent to each, every thread that can stop does.
 */
function stopEveryThread(pid: number): void {
  kill(pid, Signal.SIGSTOP);
  for (const tid of listThreads(pid)) tgkill(pid, tid, Signal.SIGSTOP);
}

/** Collects consecutive pages of one region into runs and hands each run to `place`. */
class ZeroRun {
  /** The runs are for a writing stream (placed writable). */
  write = false;
  #t: Target | null = null;
  #r: Region | null = null;
  #from = 0;
  #to = 0;
  readonly #place: (t: Target, r: Region, from: number, to: number, write: boolean) => void;

  constructor(
    place: (t: Target, r: Region, from: number, to: number, write: boolean) => void,
  ) {
    this.#place = place;
  }

  /** Adds page `i` of `r`; a page that does not extend the run starts a new one. */
  add(t: Target, r: Region, i: number): void {
    if (this.#r === r && this.#t === t && i === this.#to) {
      this.#to++;
      return;
    }
    this.flush();
    this.#t = t;
    this.#r = r;
    this.#from = i;
    this.#to = i + 1;
  }

  /** Places the run collected so far, if any. */
  flush(): void {
    if (this.#r !== null && this.#t !== null) {
      this.#place(this.#t, this.#r, this.#from, this.#to, this.write);
    }
    this.#t = this.#r = null;
  }
}
