/**
 * Eviction: choose victims, write-protect them, read them, store them, wait
 * for the store's confirmation, then drop them (inside the target for
 * anonymous memory, by punching holes for a shared file). A page written at
 * any point before the drop stays. Runs in batches down to the low watermark.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  addressOf,
  Errno,
  errnoName,
  eventfdDrain,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocate,
  pread,
} from "../ffi/libc.ts";
import { startRead } from "../ffi/shim.ts";
import { uffdWake, uffdWriteProtect } from "../ffi/uffd.ts";
import {
  DIRTIED,
  DROPPING,
  HAS_COPY,
  Kind,
  KIND_MASK,
  NO_SLOT,
  PAGE,
  REFERENCED,
} from "./page_table.ts";
import type { Region } from "./page_table.ts";
import { crashPoint } from "./crash.ts";
import { Verdict } from "./policy.ts";
import { streamOf } from "./prefetch.ts";
import { errorText, forRuns, type PagerHooks, type PagerState, sleep } from "./state.ts";
import { processAlive, type Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/**
 * How long an eviction waits for its read of the target in a synchronous
 * poll before it lets the event loop turn once. A read of 512 pages takes
 * about a millisecond; a read that raised a fault on a remote page needs
 * the event loop for the store's reply.
 */
const READ_WAIT_MS = 2;

/**
 * Largest hole between two runs of a batch that is filled with the pages in
 * it (see `#fillHoles`). Each run is one zap inside the target, and each zap
 * ends in a TLB flush: here about 100 us a run whatever its length (one run of
 * 257 pages 70-120 us, ten runs of 25 pages 0.9-1.2 ms, by a C program), where
 * a page evicted too soon costs one fault (10-20 us) if it is wanted again.
 */
const HOLE_PAGES = 4;

/** The pages of one batch: their regions and indexes, and which need a write to the store. */
interface Batch {
  target: Target;
  addrs: number[];
  regions: Region[];
  index: Int32Array;
  /** Indexes into the batch of the pages without a current stored copy. */
  dirty: number[];
}

/**
 * Keeps a pager's targets within its budget.
 *
 * @example
 * ```ts
 * declare const evictor: Evictor;
 * await evictor.run();            // down to the low watermark
 * await evictor.flushReleased(true); // and nothing unreferenced left in the store
 * ```
 */
export class Evictor {
  readonly #s: PagerState;
  readonly #hooks: PagerHooks;
  #deleting: Promise<void> | null = null;
  /**
   * The buffer a batch reads its pages into, kept for the next batch (local
   * stores only, see `#giveBack`): memory touched for the first time costs a
   * fault per page (4 ms a MiB here, 25 us once mapped), and a fresh MiB a
   * batch showed as reads of 3-7 ms.
   */
  #spare: Uint8Array | null = null;

  /** Eviction over the shared state. */
  constructor(state: PagerState, hooks: PagerHooks) {
    this.#s = state;
    this.#hooks = hooks;
  }

  #inspect = (id: number, page: number): number => {
    const t = this.#s.targets.get(id);
    const r = t?.table.find(page);
    if (!r) return Verdict.STALE;
    const i = (page - r.start) / PAGE;
    // Kept resident (Target.rseqPage): back in the queue, its state untouched.
    if (page === t!.rseqPage && this.#s.book.queuedResident(r, i)) return Verdict.REFERENCED;
    // Fetched ahead of a stream that has not got there yet: not wasted but
    // about to be used (a sweep's next pages). To the main queue with it.
    const who = this.#s.book.proposer(r, i);
    if (who !== 0 && this.#s.prefetch.pending(streamOf(id, who - 1), page / PAGE)) {
      if (this.#s.book.queuedResident(r, i)) return Verdict.REFERENCED;
    }
    return this.#s.book.secondChance(r, i);
  };

  /** Evicts batches until the targets are down to the low watermark. */
  async run(): Promise<void> {
    const s = this.#s;
    const ids: number[] = [], pages: number[] = [];
    while (!s.detaching && s.end === null && s.evictionDue()) {
      const low = s.budget.lowWatermark();
      const want = Math.max(1, Math.min(s.budget.batch, s.book.resident + s.book.incoming - low));
      ids.length = 0;
      pages.length = 0;
      if (s.policy.pick(want, this.#inspect, ids, pages) === 0) break;
      const byTarget = new Map<number, number[]>();
      for (let k = 0; k < ids.length; k++) {
        let list = byTarget.get(ids[k]);
        if (!list) byTarget.set(ids[k], list = []);
        list.push(pages[k]);
      }
      for (const [id, list] of byTarget) {
        const t = s.targets.get(id);
        if (t) await this.#evictFrom(t, list);
      }
      await this.flushReleased();
    }
  }

  async #evictFrom(t: Target, picked: number[]): Promise<void> {
    const t0 = performance.now();
    // Picked before an earlier target's batch was awaited: since then a page
    // may have been freed, unmapped or fetched again. Only resident ones go.
    const list = picked.filter((a) => {
      const r = t.table.find(a);
      return r !== null && (r.state[(a - r.start) / PAGE] & KIND_MASK) === Kind.RESIDENT;
    });
    list.sort((a, b) => a - b);
    this.#fillHoles(t, list);
    const shared = list.filter((a) => t.table.find(a)?.file != null);
    const own = shared.length === 0 ? list : list.filter((a) => t.table.find(a)?.file == null);
    try {
      if (shared.length > 0) await this.#evictShared(t, shared);
      if (own.length > 0) await this.#evictAnonymous(t, own);
    } catch (e) {
      // A target that exited mid-batch fails in ptrace or process_vm_readv
      // (ESRCH) before its pidfd is looked at: ask /proc.
      if (!processAlive(t.pid)) this.#hooks.targetGone(t, `eviction failed: ${errorText(e)}`);
      else {
        log.error("eviction from pid {pid} failed: {err}", { pid: t.pid, err: errorText(e) });
        await sleep(100); // a failing store: do not spin on it
      }
    }
    this.#s.counters.evictLatency.record((performance.now() - t0) * 1000);
  }

  /**
   * A buffer for `pages` pages: the spare one if it is large enough. One that
   * will be kept (see `#giveBack`) has room for two full batches (a batch
   * grows by the holes it fills), so that the next batches, a few pages
   * longer, reuse it: memory touched for the first time costs a fault a page.
   */
  #takeBuffer(pages: number): Uint8Array {
    const spare = this.#spare;
    this.#spare = null;
    if (spare !== null && spare.length >= pages * PAGE) return spare.subarray(0, pages * PAGE);
    const room = this.#s.store.local ? Math.max(pages, 2 * this.#s.budget.batch) : pages;
    return new Uint8Array(room * PAGE).subarray(0, pages * PAGE);
  }

  /**
   * Keeps a batch's buffer for the next one, if the store is local: a remote
   * store's write that timed out may still read from it after its promise
   * settled.
   */
  #giveBack(buf: Uint8Array): void {
    if (this.#s.store.local) this.#spare = new Uint8Array(buf.buffer);
  }

  /**
   * Adds to sorted `list`, in order, the pages in each hole of up to
   * {@linkcode HOLE_PAGES} between two of its anonymous pages, if every page
   * of the hole is resident and was not referenced since the policy last
   * looked at it. A sequential sweep leaves such holes: the page a fault
   * brought in is queued behind the pages fetched ahead with it.
   */
  #fillHoles(t: Target, list: number[]): void {
    const n = list.length;
    for (let k = 0; k + 1 < n; k++) {
      const gap = (list[k + 1] - list[k]) / PAGE - 1;
      if (gap === 0 || gap > HOLE_PAGES) continue;
      const r = t.table.find(list[k]);
      if (r === null || r.file !== null || t.table.find(list[k + 1]) !== r) continue;
      const first = (list[k] - r.start) / PAGE + 1;
      if (this.#evictable(t, r, first, gap)) {
        for (let i = first; i < first + gap; i++) list.push(r.start + i * PAGE);
      }
    }
    if (list.length > n) list.sort((a, b) => a - b);
  }

  /** Pages `first..first+count` of `r` are resident and not referenced (nor kept resident). */
  #evictable(t: Target, r: Region, first: number, count: number): boolean {
    for (let i = first; i < first + count; i++) {
      const st = r.state[i];
      if ((st & KIND_MASK) !== Kind.RESIDENT || (st & REFERENCED) !== 0) return false;
      if (r.start + i * PAGE === t.rseqPage) return false;
    }
    return true;
  }

  /**
   * Step 1 of every eviction: marks the pages of sorted `addrs` EVICTING and
   * write-protects those without a current stored copy, so that no write can
   * slip in unseen from here on. A run the kernel would not protect (EAGAIN
   * while an event is pending) is dirtied: it is not evicted this time.
   */
  #begin(t: Target, addrs: number[]): Batch {
    const n = addrs.length;
    const regions: Region[] = new Array(n);
    const index = new Int32Array(n);
    const dirty: number[] = [];
    for (let k = 0; k < n; k++) {
      const r = t.table.find(addrs[k])!;
      const i = (addrs[k] - r.start) / PAGE;
      regions[k] = r;
      index[k] = i;
      this.#s.book.beginEviction(r, i);
      if (!(r.state[i] & HAS_COPY)) dirty.push(k);
    }
    forRuns(dirty.map((k) => addrs[k]), (start, len) => {
      if (uffdWriteProtect(t.uffd, start, len, true) >= 0) return;
      for (const k of dirty) {
        const addr = addrs[k];
        if (addr >= start && addr < start + len) this.#s.book.dirtied(regions[k], index[k]);
      }
    });
    return { target: t, addrs, regions, index, dirty };
  }

  /**
   * Stores the pages `ks` (indexes into the batch), read into `buf` in that
   * order, and resolves once the store confirmed them. If it refuses, they
   * are dirtied: they stay in the target.
   */
  async #store(b: Batch, ks: number[], buf: Uint8Array): Promise<void> {
    if (ks.length === 0) return;
    const { slots } = this.#s;
    const keys = new Uint32Array(ks.length);
    for (let q = 0; q < ks.length; q++) {
      const r = b.regions[ks[q]], i = b.index[ks[q]];
      let key = r.slot[i];
      if (key === NO_SLOT || slots.refs(key) > 1) {
        if (key !== NO_SLOT) b.target.record?.released(key); // the shared copy is not this page's
        slots.release(key);
        key = r.slot[i] = slots.allocate();
        b.target.record?.noteKey(key);
      }
      slots.retain(key); // held by this request until it completes
      keys[q] = key;
    }
    try {
      await this.#s.store.put(keys, buf.subarray(0, ks.length * PAGE));
      this.#s.counters.pagesWritten += ks.length;
      // Confirmed: now the record may say where these pages are, and only
      // then may they be dropped (see record.ts).
      crashPoint("stored");
      const rec = b.target.record;
      for (let q = 0; rec !== null && q < ks.length; q++) rec.stored(keys[q], b.addrs[ks[q]]);
      crashPoint("recorded");
    } catch (e) {
      for (const k of ks) this.#s.book.dirtied(b.regions[k], b.index[k]);
      log.error("store refused {n} pages: {err}; they stay in the target", {
        n: ks.length,
        err: errorText(e),
      });
    } finally {
      for (const key of keys) slots.release(key);
    }
  }

  /**
   * The page `k` of the batch is still this page, still EVICTING; if it was
   * written meanwhile its eviction is cancelled here. True if it may go.
   */
  #stillEvicting(b: Batch, k: number): boolean {
    const r = b.regions[k], i = b.index[k];
    // Still this page? (UNMAP/REMAP may have replaced the region.)
    if (b.target.table.find(b.addrs[k]) !== r) return false;
    const st = r.state[i];
    if ((st & KIND_MASK) !== Kind.EVICTING) return false;
    if (st & DIRTIED) {
      this.#cancel(b.target, r, i, b.addrs[k]);
      return false;
    }
    return true;
  }

  /** Evicted: counted, and whether the store write was avoided (a clean page). */
  #evicted(b: Batch, k: number, wasDirty: boolean): void {
    const who = this.#s.book.takeAhead(b.regions[k], b.index[k]);
    if (who !== 0) {
      this.#s.counters.prefetchWasted++;
      this.#s.prefetch.wasted(streamOf(b.target.id, who - 1));
    }
    this.#s.book.evicted(b.regions[k], b.index[k]);
    this.#s.counters.pagesEvicted++;
    if (!wasDirty) this.#s.counters.writesAvoided++;
  }

  /**
   * Evicts sorted `addrs` of anonymous memory of `t`: write-protect, read,
   * store and wait for the store's confirmation, then drop inside the target
   * (one ptrace stop). Pages written meanwhile stay.
   */
  async #evictAnonymous(t: Target, addrs: number[]): Promise<void> {
    const b = this.#begin(t, addrs);
    if (b.dirty.length > 0) {
      // Read them (on a worker thread: the read itself may fault).
      const buf = this.#takeBuffer(b.dirty.length);
      // Not given back if the read fails: the shim's thread may still write into it.
      const got = await this.#readPages(t, b.dirty.map((k) => addrs[k]), buf);
      const readable = Math.floor(got / PAGE);
      for (let d = readable; d < b.dirty.length; d++) {
        this.#s.book.dirtied(b.regions[b.dirty[d]], b.index[b.dirty[d]]); // not read: must stay
      }
      await this.#store(b, b.dirty.slice(0, readable), buf); // settles the store's promise
      this.#giveBack(buf);
    }
    // Stop a thread of the target, then drop, inside it, the pages still
    // EVICTING and not written meanwhile.
    const drop: number[] = [];
    const decide = () => {
      for (let k = 0; k < addrs.length; k++) {
        if (!this.#stillEvicting(b, k)) continue;
        this.#s.book.dropping(b.regions[k], b.index[k]);
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
      const res = await t.dropPages(decide, this.#hooks.pump);
      crashPoint("dropped");
      if (res.dropped > 0) droppedEnd = res.starts[res.dropped - 1] + res.lengths[res.dropped - 1];
      this.#s.counters.guardedDropRuns += res.guarded;
    } finally {
      this.#settleDrops(b, drop, droppedEnd);
    }
  }

  /** After a drop: the pages below `droppedEnd` are gone, the others stay. */
  #settleDrops(b: Batch, drop: number[], droppedEnd: number): void {
    const t = b.target;
    const dirtySet = new Set(b.dirty);
    for (const k of drop) {
      const r = b.regions[k], i = b.index[k];
      const st = r.state[i];
      if (
        t.table.find(b.addrs[k]) !== r ||
        (st & (KIND_MASK | DROPPING)) !== (Kind.EVICTING | DROPPING)
      ) {
        continue; // faulted back or freed meanwhile
      }
      if (b.addrs[k] < droppedEnd) {
        this.#evicted(b, k, dirtySet.has(k));
      } else if (st & DIRTIED) {
        this.#cancel(t, r, i, b.addrs[k]);
      } else {
        // Not dropped: still present, write-protected and clean.
        this.#s.book.keptClean(r, i);
        this.#s.admit(t, r, i);
      }
    }
    for (const addr of t.deferredWakes.splice(0)) uffdWake(t.uffd, addr, PAGE);
  }

  /**
   * Evicts sorted `addrs` of `t` that live in a shared file (guest RAM), with
   * no ptrace: write-protect them, read them from the file, store them and
   * wait for the store's confirmation, then punch holes where they were.
   * Pages written meanwhile stay. The next access to a punched page is a
   * missing fault that the stored copy serves.
   */
  async #evictShared(t: Target, addrs: number[]): Promise<void> {
    const b = this.#begin(t, addrs);
    const buf = this.#takeBuffer(b.dirty.length);
    await this.#store(b, this.#readFromFile(b, buf), buf);
    this.#giveBack(buf);
    // In one synchronous step (no fault is handled in between): pages still
    // EVICTING and not written meanwhile have a current copy in the store;
    // punch them out of the file. A write blocked on the protection now
    // finds the page gone and faults again as missing, served the copy.
    const punch: number[] = [];
    for (let k = 0; k < addrs.length; k++) {
      if (!this.#stillEvicting(b, k)) continue;
      this.#s.book.stored(b.regions[k], b.index[k]);
      punch.push(k);
    }
    this.#punch(b, punch);
  }

  /**
   * Reads the dirty pages of a shared-file batch into `buf` (a plain copy out
   * of the page cache: it never faults). Returns the batch indexes read, in
   * `buf`'s order; pages not read are dirtied.
   */
  #readFromFile(b: Batch, buf: Uint8Array): number[] {
    const read: number[] = [];
    forIndexRuns(b, b.dirty, (from, to) => {
      const r = b.regions[b.dirty[from]];
      const at = read.length * PAGE;
      const bytes = (to - from) * PAGE;
      const offset = r.file!.offset + b.index[b.dirty[from]] * PAGE;
      const got = pread(r.file!.fd, buf.subarray(at, at + bytes), bytes, offset);
      if (got === bytes) {
        for (let j = from; j < to; j++) read.push(b.dirty[j]);
        return;
      }
      // Short (the file shrank?) or failed: these must not be punched.
      for (let j = from; j < to; j++) this.#s.book.dirtied(r, b.index[b.dirty[j]]);
      if (got < 0) {
        log.warn("reading guest RAM of pid {pid} failed: {err}", {
          pid: b.target.pid,
          err: errnoName(-got),
        });
      }
    });
    return read;
  }

  /** Punches the pages `punch` (batch indexes) out of their file, a run at a time. */
  #punch(b: Batch, punch: number[]): void {
    const t = b.target;
    const dirtySet = new Set(b.dirty);
    forIndexRuns(b, punch, (from, to) => {
      if (t.exited) return;
      const r = b.regions[punch[from]];
      const offset = r.file!.offset + b.index[punch[from]] * PAGE;
      const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
      let res = fallocate(r.file!.fd, mode, offset, (to - from) * PAGE);
      if (res === -Errno.EINTR || res === -Errno.EAGAIN) {
        res = fallocate(r.file!.fd, mode, offset, (to - from) * PAGE);
      }
      if (res < 0) {
        log.warn("punching guest RAM of pid {pid} failed: {err}; the pages stay", {
          pid: t.pid,
          err: errnoName(-res),
        });
      }
      for (let j = from; j < to; j++) {
        const k = punch[j];
        if (res === 0) this.#evicted(b, k, dirtySet.has(k));
        else {
          // Still present, write-protected, and equal to its stored copy.
          this.#s.book.keptClean(r, b.index[k]);
          this.#s.admit(t, r, b.index[k]);
        }
      }
    });
  }

  #cancel(t: Target, r: Region, i: number, addr: number): void {
    this.#s.book.cancelEviction(r, i);
    this.#s.counters.evictionsCancelled++;
    // Its write fault already removed the protection; make sure of it.
    uffdWriteProtect(t.uffd, addr, PAGE, false);
    this.#s.admit(t, r, i);
  }

  /**
   * Reads sorted `addrs` of `t` into `buf`; returns the bytes read (a short
   * count stops at the first page not read).
   */
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
      const got = await this.#readOnThread(t, liov, riov, part.length / 2);
      if (got < 0) break;
      done += got;
      if (got < bytes) break;
    }
    return done;
  }

  /**
   * One process_vm_readv, on a thread of the shim: the read may raise a
   * userfault (a page the target just gave up) that only this thread can
   * serve. It waits for the read in a synchronous poll that serves the
   * targets too, and lets the event loop turn if the read takes long (a
   * fault it raised may wait for a remote store). The shim's thread writes
   * into `liov`'s memory and `result` until it signals: both stay referenced
   * here until then.
   */
  async #readOnThread(
    t: Target,
    liov: BigUint64Array,
    riov: BigUint64Array,
    runs: number,
  ): Promise<number> {
    const s = this.#s;
    const result = new BigInt64Array(1);
    const local = new Uint8Array(liov.buffer), remote = new Uint8Array(riov.buffer);
    const started = startRead(t.pid, local, 1, remote, runs, result, s.readDone);
    if (started < 0) return started;
    while (!this.#hooks.serveUntil(s.readDone, READ_WAIT_MS)) await this.#hooks.pump.turn();
    eventfdDrain(s.readDone);
    return Number(result[0]);
  }

  /** Deletes keys nobody references any more, then lets them be reused. */
  async flushReleased(all = false): Promise<void> {
    // One delete at a time; `all` waits for the one under way and then
    // deletes whatever is left, so nothing is still stored when it resolves.
    while (this.#deleting !== null) {
      if (!all) return;
      await this.#deleting;
    }
    const released = this.#s.slots.released;
    if (released.length === 0 || (!all && released.length < 256)) return;
    const keys = Uint32Array.from(released.splice(0));
    this.#deleting = this.#s.store.delete(keys).then(
      () => this.#s.slots.recycle(keys),
      (e) => {
        log.warn("store could not delete {n} pages: {err}", { n: keys.length, err: errorText(e) });
      },
    ).finally(() => this.#deleting = null);
    await this.#deleting;
  }
}

/**
 * Calls `fn(from, to)` for each run `ks[from..to)` of batch pages that are
 * consecutive pages of one region (one pread or one punch each).
 */
function forIndexRuns(b: Batch, ks: number[], fn: (from: number, to: number) => void): void {
  for (let from = 0; from < ks.length;) {
    const r = b.regions[ks[from]];
    let to = from + 1;
    while (
      to < ks.length && b.regions[ks[to]] === r && b.index[ks[to]] === b.index[ks[to - 1]] + 1
    ) {
      to++;
    }
    fn(from, to);
    from = to;
  }
}
