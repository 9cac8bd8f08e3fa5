/**
 * The pager: one loop that serves every fault of its targets, keeps them
 * under a local budget, follows their fork, remove, unmap and remap events,
 * and gives every page back on detach. The work itself lives in parts:
 * faults.ts (fault service), eviction.ts, mappings.ts (what is paged),
 * forks.ts (children), budget.ts (watermarks), page_table.ts (page states).
 *
 * Rule one: a page leaves a target only after the store confirmed its copy
 * (or it is clean and its copy is current). Every path keeps it.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { cpuAffinity, Errno, errnoName } from "../ffi/libc.ts";
import { quietRuntimeHelpers, threadStates } from "../ffi/proc.ts";
import type { Pump } from "../ffi/ptrace.ts";
import {
  PAGEFAULT_FLAG_WP,
  PAGEFAULT_FLAG_WRITE,
  readMessages,
  UffdEvent,
  UffdMessages,
  uffdWake,
  uffdWriteProtect,
} from "../ffi/uffd.ts";
import type { PageStore } from "../transport/store.ts";
import { Budget, DEFAULT_EVICT_BATCH } from "./budget.ts";
import { Evictor } from "./eviction.ts";
import { FaultService, type Fetch } from "./faults.ts";
import { Forks } from "./forks.ts";
import { fetchRemote, pullHome } from "./homeward.ts";
import { Mappings } from "./mappings.ts";
import { Kind, KIND_MASK, NO_SLOT, PAGE, PageBook, QUEUED, type Region } from "./page_table.ts";
import { type EvictionPolicy, FifoSecondChance } from "./policy.ts";
import { LeapPrefetcher, NoPrefetch, type PrefetchPolicy } from "./prefetch.ts";
import type { SessionRecord } from "./record.ts";
import {
  adoptRecordedKeys,
  newRecord,
  openRecord,
  type RecordedKeys,
  type Recovered,
  reopenStore,
  UnrecoverableError,
} from "./recovery.ts";
import { errorText, type PagerEnd, type PagerHooks, PagerState, sleep } from "./state.ts";
import type { Counters, PagerControl, PagerStats } from "./stats.ts";
import { AttachError, processAlive, Target } from "./target.ts";
import { yieldToEventLoop } from "../ffi/yield.ts";
import { LoopWaits, SLICE_MS } from "./waits.ts";
import { Colocation, giveBackAffinity } from "./colocate.ts";

export { AttachError, UnrecoverableError };
export { MIN_BUDGET_PAGES } from "./budget.ts";
export type { PagerEnd } from "./state.ts";

const log = getLogger(["remora", "pager"]);

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
  /** An illegal page-state move throws (tests, debugging) instead of being logged once. */
  strictPages?: boolean;
  /** Which pages come back with a missing fault (default `leap`; `off`: none). */
  prefetch?: "leap" | "off" | PrefetchPolicy;
  /**
   * While the pager has one target with one thread, run that thread and the
   * pager's loop on one CPU, where a fault costs no cross-CPU wake-up
   * (default true; see pager/colocate.ts). The target's affinity comes back
   * when it starts a second thread, forks, or is detached.
   */
  colocate?: boolean;
  /**
   * Put this process's V8 helper threads (background GC and compilation) at
   * `SCHED_IDLE` when the loop starts, so that they never take a CPU from a
   * target (default true; see `quietRuntimeHelpers` in ffi/proc.ts).
   */
  quietRuntime?: boolean;
}

/** After a message, look for the next one in a synchronous poll this long. */
const HOT_MS = 1;
/** After a loss, how often the loop looks whether the targets have stopped. */
const STOP_CHECK_MS = 10;
const MSG_BATCH = 64;

/**
 * Pages of memory that a pager manages, with the loop that serves them.
 *
 * @example
 * ```ts
 * declare const store: PageStore;
 * const pager = await Pager.attach(4242, { budgetBytes: 32 << 20, store });
 * const end = await pager.done(); // detached, exited, lost or failed
 * ```
 */
export class Pager implements PagerControl {
  readonly #s: PagerState;
  readonly #faults: FaultService;
  readonly #evictor: Evictor;
  readonly #mappings: Mappings;
  readonly #forks: Forks;
  readonly #waits: LoopWaits;
  readonly #msgs = new UffdMessages(MSG_BATCH);
  #endWaiters: Array<(end: PagerEnd) => void> = [];
  #pumpBusy = false;
  /** Targets already warned about by {@linkcode Pager.#targetGone}. */
  readonly #goneButAlive = new WeakSet<Target>();
  #nextStopCheck = 0;
  readonly #quietRuntime: boolean;
  readonly #colocation: Colocation;

  private constructor(opts: PagerOptions) {
    this.#quietRuntime = opts.quietRuntime ?? true;
    this.#colocation = new Colocation(opts.colocate ?? true);
    const book = new PageBook(
      opts.strictPages ?? false,
      (e) => log.error("{err}", { err: e.message }),
    );
    const budget = new Budget(opts.budgetBytes, opts.evictBatchPages ?? DEFAULT_EVICT_BATCH);
    this.#s = new PagerState(opts.store, opts.policy ?? new FifoSecondChance(), budget, book);
    this.#s.prefetch = prefetchPolicy(opts.prefetch ?? "leap");
    const hooks: PagerHooks = {
      targetGone: (t, why) => this.#targetGone(t, why),
      rescanSoon: () => this.#mappings.soon(),
      pump: this.#pumper,
      serveUntil: (fd, ms) => this.#waits.serveUntil(fd, ms),
      finish: (end) => this.#finish(end),
    };
    this.#faults = new FaultService(this.#s, hooks);
    this.#evictor = new Evictor(this.#s, hooks);
    this.#mappings = new Mappings(this.#s, opts.onSkip ?? (() => {}));
    this.#forks = new Forks(this.#s, hooks);
    this.#waits = new LoopWaits(this.#s, {
      pump: () => this.#pump(),
      mayLook: () => !this.#colocation.active,
      exited: (t) => {
        this.#pump();
        this.#targetGone(t, "its pidfd turned readable");
      },
    });
    // The pages' keys are released at once: the store waits for their deletes
    // to empty the slab, and a few released keys would otherwise wait for more.
    opts.store.setPullHome?.((keys) =>
      pullHome(this.#s, this.#faults, keys).then(() => this.#evictor.flushReleased(true))
    );
  }

  /** What a recovery found, if this pager took its target over from a killed one. */
  recovered: Recovered | null = null;

  /**
   * Attaches to a running process and starts paging it; if a remora pager
   * that was killed left a record of it, takes it over from that record.
   */
  static async attach(pid: number, opts: PagerOptions): Promise<Pager> {
    const pager = new Pager(opts);
    const record = openRecord(pid);
    if (record !== null) await pager.#takeOver(pid, record);
    else await pager.#adoptRoot(pid);
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
    const s = this.#s;
    const pump = this.#pumper;
    const t = await Target.attach(
      s.nextTargetId(),
      pid,
      pump,
      stoppedTid,
      () => newRecord(pid, s.store),
    );
    const record = t.record;
    s.targets.set(t.id, t);
    s.knownPids.add(pid);
    try {
      this.#mappings.register(t, true);
    } catch (e) {
      await t.release(pump);
      record?.remove();
      s.targets.delete(t.id);
      throw e;
    }
    this.#loop();
    this.#mappings.start();
  }

  /**
   * Takes over `pid` from a killed pager's `record`: its userfaultfd and
   * layout, the store's side (see `reopenStore`), its registered ranges
   * (present pages are resident), the keys of the rest; gives back a thread
   * left in an injected call once its drop has finished, then unprotects and
   * wakes every range (a fault the dead pager read is not delivered again:
   * woken, the thread faults anew).
   */
  async #takeOver(pid: number, record: SessionRecord): Promise<void> {
    const s = this.#s;
    const pump = this.#pumper;
    let t: Target;
    try {
      t = Target.reclaim(s.nextTargetId(), pid, record); // fds only: nothing in the target changes
    } catch (e) {
      record.close();
      throw e;
    }
    if (record.children > 0) {
      log.warn(
        "pid {pid} had {n} forked child(ren) paged with it: they are not taken over (each runs on " +
          "while its pages are present and blocks on the first that is not)",
        { pid, n: record.children },
      );
    }
    let recorded: RecordedKeys;
    try {
      recorded = await reopenStore(s.store, record, pid);
    } catch (e) {
      t.closeFds();
      record.close();
      throw e;
    }
    s.targets.set(t.id, t);
    s.knownPids.add(pid);
    try {
      this.#mappings.register(t, true);
      this.recovered = adoptRecordedKeys(s, t, record, recorded);
      const own = record.ownAffinity, narrow = cpuAffinity(pid);
      if (own !== null && narrow !== null) {
        giveBackAffinity(pid, own, narrow); // the dead pager had narrowed it (colocate.ts)
        record.ownAffinity = null;
      }
      await this.#evictor.flushReleased(true); // the copies no page refers to
      // The loop reads the events of the dead pager's drop meanwhile.
      s.takingOver = true;
      this.#loop();
      for (const [start, len] of await t.giveBackBorrowed(record, pump)) {
        const present = new Uint8Array(len / PAGE);
        t.presentPages(start, present.length, present);
        this.#droppedByDeadPager(t, start, start + len, present);
      }
    } catch (e) {
      this.#finish({ kind: "failed", message: errorText(e) });
      // The store holds the dead pager's pages now: they must stay where they
      // are (no store.close(), which would delete them) for a later try.
      throw new UnrecoverableError(
        `taking over pid ${pid} failed: ${errorText(e)}; it stays blocked`,
      );
    }
    for (const r of t.table.regions) {
      uffdWriteProtect(t.uffd, r.start, r.end - r.start, false);
      uffdWake(t.uffd, r.start, r.end - r.start);
    }
    t.deferredWakes.length = 0;
    s.takingOver = false;
    s.wakeLoop();
    this.#mappings.start();
  }

  /** Counters of this session. */
  get counters(): Counters {
    return this.#s.counters;
  }

  /** Resolves when the pager stops: detached, target exited, or pages lost. */
  done(): Promise<PagerEnd> {
    if (this.#s.end !== null) return Promise.resolve(this.#s.end);
    return new Promise((resolve) => this.#endWaiters.push(resolve));
  }

  /** Current budget in pages. */
  get budgetPages(): number {
    return this.#s.budget.pages;
  }

  // ---------------------------------------------------------------- control

  /** Statistics as plain data. */
  stats(): PagerStats {
    const s = this.#s, c = s.counters;
    let managed = 0;
    for (const t of s.targets.values()) managed += t.table.pages * PAGE;
    return {
      uptimeSeconds: (performance.now() - s.started) / 1000,
      pids: [...s.targets.values()].map((t) => t.pid),
      budgetPages: s.budget.pages,
      residentPages: s.book.resident,
      remotePages: s.book.remote,
      managedBytes: managed,
      backend: s.store.name,
      counters: c.snapshot(),
      faultLatency: c.faultLatency.snapshot(),
      evictLatency: c.evictLatency.snapshot(),
      metadataBytesPerPage: this.metadataBytesPerPage(),
      store: s.store.health(),
    };
  }

  /** Bytes of pager metadata per managed page (page table, queue, key table). */
  metadataBytesPerPage(): number {
    const s = this.#s;
    let pages = 0, bytes = s.policy.bytes + s.slots.bytes;
    for (const t of s.targets.values()) {
      for (const r of t.table.regions) {
        pages += r.pages;
        bytes += r.state.byteLength + r.slot.byteLength + (r.ahead?.byteLength ?? 0);
      }
    }
    return pages === 0 ? 0 : bytes / pages;
  }

  /** Changes the local budget; resolves once the targets are within it. */
  async resize(bytes: number): Promise<PagerStats> {
    const s = this.#s;
    s.budget.resize(bytes);
    s.wakeLoop();
    for (let i = 0; i < 2000 && s.book.resident > s.budget.pages && s.end === null; i++) {
      await sleep(5);
    }
    return this.stats();
  }

  /** Puts every page back into every target, detaches, and ends the run. */
  async detach(): Promise<PagerStats> {
    const s = this.#s;
    if (s.detaching || s.end !== null || s.stopping !== null) {
      await this.done(); // after a loss, the run ends once the targets have stopped
      return this.stats();
    }
    s.detaching = true;
    this.#colocation.end();
    this.#mappings.stop();
    s.wakeLoop();
    if (s.evicting) await s.evicting;
    try {
      for (const t of [...s.targets.values()]) await this.#restore(t);
      for (const t of [...s.targets.values()]) {
        // Faults still waiting for room are served now (a detach has no
        // budget); every remote page is back, so none of them needs a fetch.
        this.#faults.serveBudgetWaits();
        await t.release(this.#pumper);
        t.record?.remove();
        t.record = null;
        s.targets.delete(t.id);
      }
      await s.store.close();
      this.#finish({ kind: "detached" });
    } catch (e) {
      this.#finish({ kind: "failed", message: `detach failed: ${errorText(e)}` });
    }
    return this.stats();
  }

  // ------------------------------------------------------------------- loop

  /**
   * The main loop. While faults stream in (an embedded store, or a store whose
   * sockets it polls itself), it waits for the next one in a synchronous poll,
   * which wakes within microseconds, and lets the event loop turn only every
   * {@linkcode SLICE_MS} or when async work (an eviction, a fork adoption, a
   * detach) needs it. Idle, it sleeps in a poll on a worker thread, using no
   * CPU. The waits themselves are in `waits.ts`.
   */
  async #loop(): Promise<void> {
    if (this.#quietRuntime) quietRuntimeHelpers();
    this.#waits.drive();
    try {
      await this.#serveLoop();
    } finally {
      this.#waits.release();
    }
  }

  async #serveLoop(): Promise<void> {
    const s = this.#s, waits = this.#waits, polled = waits.waiter !== undefined;
    let hotUntil = 0, turnedAt = 0;
    while (s.end === null) {
      if (s.stopping !== null && this.#targetsStopped()) {
        this.#finish({ kind: "lost", message: s.stopping.message });
        break;
      }
      const got = this.#pump();
      this.#faults.retryParked();
      this.#faults.serveBudgetWaits();
      if (!s.detaching && s.evicting === null && s.evictionDue()) {
        s.evicting = this.#evictor.run().finally(() => {
          s.evicting = null;
          s.wakeLoop(); // over budget again meanwhile? the loop looks
        });
      }
      if (this.#forks.pending > 0) this.#forks.adoptPending();
      const now = performance.now();
      if (!s.detaching) this.#colocation.check(s.targets, now);
      if (got > 0 && (s.store.local || polled)) hotUntil = now + HOT_MS;
      waits.prepare();
      if (now < hotUntil) {
        const asyncWork = s.evicting !== null || this.#forks.busy || s.detaching;
        if (asyncWork || now - turnedAt >= SLICE_MS) {
          await yieldToEventLoop();
          turnedAt = performance.now();
          if (asyncWork) {
            // The store's sockets wait on this loop, not on the event loop.
            if (polled && waits.look()) hotUntil = now + HOT_MS;
            continue;
          }
        }
        // Fetch completions of the embedded store run as microtasks: place
        // the pages before blocking (the faulting threads wait for them).
        await null;
        if (s.inflight > 0 && !polled) continue;
        if (await waits.lookThenWait()) hotUntil = performance.now() + HOT_MS;
        continue;
      }
      if (await waits.sleep(s.retries.length > 0 ? 1 : idleWaitMs(s))) {
        hotUntil = performance.now() + HOT_MS;
      }
    }
  }

  /**
   * After a loss: whether every thread of every target has stopped (or
   * exited), or the wait for it is over. Looked at every few milliseconds.
   */
  #targetsStopped(): boolean {
    const stopping = this.#s.stopping!;
    const now = performance.now();
    if (now >= stopping.deadline) return true;
    if (now < this.#nextStopCheck) return false;
    this.#nextStopCheck = now + STOP_CHECK_MS;
    for (const t of this.#s.targets.values()) {
      if (t.exited) continue;
      if (!threadStates(t.pid).every((c) => c === "T" || c === "t")) return false;
    }
    return true;
  }

  /** Reads and handles every pending message of every target. Returns how many. */
  #pump(): number {
    if (this.#pumpBusy) return 0;
    this.#pumpBusy = true;
    let total = 0;
    try {
      for (const t of this.#s.targets.values()) {
        if (t.exited) continue;
        for (;;) {
          const n = readMessages(t.uffd, this.#msgs);
          if (n < 0) {
            if (n !== -Errno.EAGAIN) {
              this.#targetGone(t, `reading its userfaultfd: ${errnoName(-n)}`);
            }
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

  /** Handles `n` messages of `t`; the missing pages among them go to the store in one request. */
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
          const tid = m.arg2(i) & 0xffffffff;
          const c = this.#s.counters;
          c.faults++;
          if (flags & PAGEFAULT_FLAG_WP) {
            c.wpFaults++;
            this.#faults.writeProtect(t, addr, tid);
            break;
          }
          c.missingFaults++;
          const write = (flags & PAGEFAULT_FLAG_WRITE) !== 0;
          fetch ??= { target: t, addrs: [], writes: [], keys: new Uint32Array(0), started: [] };
          // The pages along this thread's trend first: they travel in the same
          // store request, and zeros ahead are in place before the thread wakes
          // (placed after it, the thread faulted on the next page at once, and
          // the trend's window never grew past a few pages).
          const writing = this.#faults.prefetch(t, addr, tid, write, fetch, fetchKeys);
          const key = this.#faults.missing(t, addr, write, now, tid);
          if (key !== NO_SLOT) {
            fetch.addrs.push(addr);
            fetch.writes.push(write || writing); // writable: its write is likely next
            fetch.started.push(now);
            fetch.ahead?.push(0);
            this.#s.slots.retain(key);
            fetchKeys.push(key);
          }
          break;
        }
        case UffdEvent.REMOVE:
          this.#removed(t, m.arg0(i), m.arg1(i), false);
          break;
        case UffdEvent.UNMAP:
          this.#removed(t, m.arg0(i), m.arg1(i), true);
          this.#mappings.soon(); // a new mapping of the same size would not change the total
          break;
        case UffdEvent.REMAP:
          this.#remapped(t, m.arg0(i), m.arg1(i), m.arg2(i));
          break;
        case UffdEvent.FORK:
          this.#forks.forked(t, m.forkFd(i));
          this.#colocation.forked();
          break;
      }
    }
    if (fetch !== null && fetch.addrs.length > 0) {
      fetch.keys = Uint32Array.from(fetchKeys);
      this.#faults.start(fetch);
    }
  }

  /** While we wait on the target (ptrace stops, drops) it raises events and faults: keep serving. */
  readonly #pumper: Pump = {
    now: () => void this.#pump(),
    turn: async () => {
      this.#pump();
      await yieldToEventLoop();
    },
  };

  // ----------------------------------------------------------------- events

  /** The target freed (`unmap` false: MADV_DONTNEED) or unmapped a range. */
  #removed(t: Target, start: number, end: number, unmap: boolean): void {
    if (!unmap && t.dropping.ownRemove(start, end)) {
      // The REMOVE event of our own drop; of a killed pager's, at recovery:
      // the pages found present before it are zapped now, their copies stored.
      if (t.recovering) this.#droppedByDeadPager(t, start, end, null);
      return;
    }
    t.table.forEach(start, end, (r, i) => this.#forget(t, r, i));
    if (unmap) t.table.cut(start, end);
  }

  /**
   * Recovery: pages of `[start, end)` found present, with a stored copy, that
   * the dead pager's drop (finishing now) takes away are REMOTE. At its
   * REMOVE event (`zapped` null) all of them: the kernel zaps them right after
   * the event is read, before anyone could fault on them. After the drop
   * (`zapped` from pagemap), those no longer present: a guard marker looked
   * like a swapped page when the ranges were registered.
   */
  #droppedByDeadPager(t: Target, start: number, end: number, zapped: Uint8Array | null): void {
    t.table.forEach(start, end, (r, i) => {
      const gone = zapped === null || zapped[(r.start + i * PAGE - start) / PAGE] === 0;
      if ((r.state[i] & KIND_MASK) === Kind.RESIDENT && r.slot[i] !== NO_SLOT && gone) {
        this.#s.book.droppedByDeadPager(r, i);
      }
    });
  }

  /** Forgets a page's contents (it reads as zeros from now on) and releases its key. */
  #forget(t: Target, r: Region, i: number): void {
    if (this.#s.book.forget(r, i)) this.#s.counters.pagesFreed++;
    if (r.slot[i] !== NO_SLOT) t.record?.released(r.slot[i]);
    this.#s.slots.release(r.slot[i]);
    r.slot[i] = NO_SLOT;
  }

  /** mremap moved `[from, from+len)` to `to`: move the bookkeeping with it. */
  #remapped(t: Target, from: number, to: number, len: number): void {
    for (const stale of t.table.cut(to, to + len)) {
      for (let i = 0; i < stale.pages; i++) this.#forget(t, stale, i);
    }
    for (const piece of t.table.cut(from, from + len)) {
      piece.start = piece.start - from + to;
      t.table.add(piece);
      for (let i = 0; i < piece.pages; i++) {
        if (piece.state[i] & QUEUED) this.#s.policy.admit(t.id, piece.start + i * PAGE);
        if (piece.slot[i] !== NO_SLOT) t.record?.stored(piece.slot[i], piece.start + i * PAGE);
      }
    }
    this.#mappings.soon(); // a grown mapping has a tail we do not track yet
  }

  /** The process exited: free what it had in the store. */
  #targetGone(t: Target, why: string): void {
    const s = this.#s;
    if (!s.targets.has(t.id)) return;
    if (processAlive(t.pid)) {
      // Freeing a running target's pages would feed it zeros: only its exit
      // does. A process on its way out is seen again when its pidfd turns
      // readable (it is a zombie or gone by then).
      if (!this.#goneButAlive.has(t)) {
        this.#goneButAlive.add(t);
        log.warn("pid {pid} looked gone ({why}) but still runs: paging on", { pid: t.pid, why });
      }
      return;
    }
    t.exited = true;
    for (const r of t.table.regions) for (let i = 0; i < r.pages; i++) this.#forget(t, r, i);
    t.record?.remove();
    t.record = null;
    s.targets.delete(t.id);
    s.noteFamily();
    s.prefetch.forgetTarget(t.id);
    this.#faults.forgetTarget(t.id);
    t.closeFds();
    this.#evictor.flushReleased();
    log.info("pid {pid} exited; freed its pages in the store", { pid: t.pid });
    if (s.targets.size === 0 && !s.detaching) {
      this.#evictor.flushReleased(true).then(() => this.#finish({ kind: "exited", pid: t.pid }));
    }
  }

  // ------------------------------------------------------------------ detach

  /** Fetches every remote page of `t` back into it. */
  async #restore(t: Target): Promise<void> {
    const s = this.#s;
    s.counters.pagesRestored += await fetchRemote(s, this.#faults, t, () => true);
    if (s.end !== null || t.exited) return;
    while (s.retries.length > 0 && s.end === null) {
      this.#pump();
      this.#faults.retryParked();
      await sleep(1);
    }
  }

  #finish(end: PagerEnd): void {
    const s = this.#s;
    if (s.end !== null) return;
    s.end = end;
    this.#colocation.end();
    this.#mappings.stop();
    s.wakeLoop();
    for (const w of this.#endWaiters) w(end);
    this.#endWaiters = [];
  }
}

/** How long the idle loop sleeps in poll: long, unless targets are being stopped. */
function idleWaitMs(s: PagerState): number {
  return s.stopping !== null ? STOP_CHECK_MS : 1000;
}

/** The prefetch policy a {@linkcode PagerOptions.prefetch} names. */
function prefetchPolicy(p: "leap" | "off" | PrefetchPolicy): PrefetchPolicy {
  if (p === "leap") return new LeapPrefetcher();
  if (p === "off") return new NoPrefetch();
  return p;
}
