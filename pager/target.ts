/**
 * One process the pager manages: its userfaultfd, its pidfd, the scratch page
 * we mapped inside it, and the ways we act inside it (ptrace injection).
 *
 * @module
 */

import {
  addressOf,
  close,
  Errno,
  errnoName,
  getpid,
  lseek,
  O_RDONLY,
  O_RDWR,
  open,
  pidfdGetfd,
  pidfdOpen,
  pread,
  processVmReadv,
  processVmWritev,
  SEEK_DATA,
  SEEK_HOLE,
  SYS,
  SyscallError,
} from "../ffi/libc.ts";
import { listThreads, type Mapping, readStatus, threadWaitChannel } from "../ffi/proc.ts";
import {
  findSyscallInstruction,
  type Pump,
  type RegisterKeeper,
  TargetGoneError,
  ThreadInjection,
} from "../ffi/ptrace.ts";
import {
  remoteClose,
  remoteGuardRuns,
  remoteMapScratch,
  remoteMapTrampoline,
  remoteMunmap,
  remotePidfdGetfd,
  remotePidfdOpen,
  remoteUserfaultfd,
  TRAMPOLINE_BYTES,
} from "../ffi/remote.ts";
import {
  isUserfaultfd,
  REMORA_FEATURES,
  uffdApi,
  uffdUnregister,
  uffdWriteProtect,
} from "../ffi/uffd.ts";
import { DropRuns } from "./drop_runs.ts";
import { InsideDrop, MAX_IOV } from "./target_drop.ts";
import { PAGE, PageTable } from "./page_table.ts";
import type { SessionRecord } from "./record.ts";
import { getLogger } from "@logtape/logtape";

const log = getLogger(["remora", "pager"]);

/** Scratch space inside the target: room for {@linkcode MAX_IOV} iovecs. */
const SCRATCH_BYTES = 16384;

/** Attach failed in a way the user can act on; the message is one line. */
export class AttachError extends Error {
  /** Builds the error with a one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "AttachError";
  }
}

/** A managed process. */
export class Target {
  /** Small integer naming this target in the eviction queue. */
  readonly id: number;
  /** Process id. */
  readonly pid: number;
  /** Our copy of its userfaultfd. */
  readonly uffd: number;
  /** A pidfd: readable once the process has exited. */
  readonly pidfd: number;
  /** Its userfaultfd's number in its own fd table (keeps the target blocked if we die). */
  remoteUffd: number;
  /** Other fds we placed in its table, closed at detach. */
  readonly remoteFds: number[] = [];
  /** Address of our scratch area inside it. */
  readonly scratch: number;
  /** Address of the vDSO's `syscall` instruction in it. */
  readonly vdsoSyscallAddr: number;
  /** Address of our trampoline page in it (see `remoteMapTrampoline`), or -1. */
  readonly trampoline: number;
  /** Registered ranges and per-page state. */
  readonly table: PageTable = new PageTable();
  /** The runs of our drop under way, whose REMOVE events are ours (see {@linkcode DropRuns}). */
  readonly dropping: DropRuns = new DropRuns();
  /** Write faults on pages being dropped; woken once the drop is done. */
  readonly deferredWakes: number[] = [];
  /** Set once the process has exited or its mm is gone. */
  exited = false;
  /** Address-space size (pages) at the last scan of its mappings. */
  scannedSize = -1;
  /** The thread we are running system calls in right now, or -1. */
  injectingTid = -1;
  /**
   * The page holding the rseq area of the thread we inject into, or -1: it
   * stays resident, because the kernel writes it on the thread's way back to
   * user space, and a thread blocked there on a page that cannot come back
   * can neither run nor stop (after a loss, SIGSTOP would never take).
   */
  rseqPage = -1;
  /** Our fds of the shared files behind its guest RAM, by `dev:inode`. */
  readonly files: Map<string, number> = new Map();
  /**
   * Its guest RAM lives in a shared file that we page: its private memory
   * (the emulator's own heap) is left alone and the budget counts guest RAM.
   */
  sharedOnly = false;
  /** Shared mappings found not pageable (`start-end:dev:inode`), not examined again. */
  readonly sharedSkipped: Set<string> = new Set();
  #pagemap: number;
  #statm: number;
  readonly #statmBuf = new Uint8Array(32);
  #tid: number;
  /** How its pages are dropped from inside it (see {@linkcode InsideDrop}). */
  readonly #drop: InsideDrop;
  /**
   * Where a new pager finds this target if we are killed (the root target
   * only): the injected thread's registers, and which key holds which page.
   */
  record: SessionRecord | null = null;

  private constructor(
    id: number,
    pid: number,
    uffd: number,
    pidfd: number,
    remoteUffd: number,
    scratch: number,
    code: { vdsoSyscallAddr: number; trampoline: number },
  ) {
    this.id = id;
    this.pid = pid;
    this.uffd = uffd;
    this.pidfd = pidfd;
    this.remoteUffd = remoteUffd;
    this.scratch = scratch;
    this.vdsoSyscallAddr = code.vdsoSyscallAddr;
    this.trampoline = code.trampoline;
    this.#tid = pid;
    this.#drop = new InsideDrop(pid, scratch, {
      record: () => this.record,
      writeScratch: (bytes) => this.#writeScratch(bytes),
    });
    this.#pagemap = open(`/proc/${pid}/pagemap`, O_RDONLY);
    this.#statm = open(`/proc/${pid}/statm`, O_RDONLY);
  }

  /**
   * Takes over process `pid`: creates a userfaultfd inside it, maps a scratch
   * area, and fetches the fd into our table. `stoppedTid` is a thread that is
   * already a stopped tracee of ours (at exec), if any.
   */
  static async attach(
    id: number,
    pid: number,
    pump: Pump,
    stoppedTid?: number,
    makeRecord: () => SessionRecord | null = () => null,
  ): Promise<Target> {
    checkAttachable(pid);
    const syscallAddr = findSyscallInstruction(pid);
    // Made once the process is known to be one we can page: it keeps the
    // registers of the thread the attach borrows from here on.
    const record = makeRecord();
    try {
      return await Target.#attachChecked(id, pid, pump, syscallAddr, stoppedTid, record);
    } catch (e) {
      record?.remove();
      throw e;
    }
  }

  static async #attachChecked(
    id: number,
    pid: number,
    pump: Pump,
    syscallAddr: number,
    stoppedTid: number | undefined,
    record: SessionRecord | null,
  ): Promise<Target> {
    const tid = stoppedTid ?? pickThread(pid);
    let inj: ThreadInjection;
    try {
      inj = await beginWhenUntraced(tid, syscallAddr, pump, stoppedTid !== undefined, pid, record);
    } catch (e) {
      const tracer = readStatus(tid)?.tracerPid ?? 0;
      if (e instanceof SyscallError && e.errno === Errno.EPERM && tracer !== 0) {
        throw new AttachError(
          `pid ${pid} is being traced by pid ${tracer} (a debugger or another pager)`,
        );
      }
      if (e instanceof SyscallError && (e.errno === Errno.EPERM || e.errno === Errno.EACCES)) {
        throw new AttachError(
          `not allowed to ptrace pid ${pid} (${errnoName(e.errno)}): run the pager as root ` +
            `or as the target's owner with CAP_SYS_PTRACE (check /proc/sys/kernel/yama/ptrace_scope)`,
        );
      }
      if (e instanceof SyscallError && e.errno === Errno.ESRCH) {
        throw new AttachError(`pid ${pid} exited while attaching`);
      }
      throw e;
    }
    let remoteFd = -1, scratch = -1, trampoline = -1, pidfd = -1, uffd = -1;
    const rseq = inj.rseqArea();
    try {
      remoteFd = await remoteUserfaultfd(inj);
      if (remoteFd < 0) {
        throw new AttachError(
          `userfaultfd() inside pid ${pid} failed: ${errnoName(-remoteFd)}` +
            (remoteFd === -Errno.EPERM ? " (the pager must run as root)" : ""),
        );
      }
      scratch = await remoteMapScratch(inj, SCRATCH_BYTES);
      if (scratch < 0) {
        await remoteClose(inj, remoteFd);
        throw new AttachError(`mmap inside pid ${pid} failed: ${errnoName(-scratch)}`);
      }
      trampoline = await remoteMapTrampoline(inj, pid);
      if (trampoline < 0) {
        log.warn(
          "pid {pid}: no trampoline page ({error}): a pager killed while it runs a system call " +
            "in the target may crash the target",
          { pid, error: errnoName(-trampoline) },
        );
      }
      // Taken while the thread is still stopped: a program just started under
      // the pager, released by the detach, sometimes made pidfd_getfd fail
      // with ESRCH while it ran on (5 of 60 starts).
      pidfd = pidfdOpen(pid);
      uffd = pidfd < 0 ? pidfd : pidfdGetfd(pidfd, remoteFd);
    } finally {
      inj.end();
    }
    if (uffd === -Errno.ESRCH) throw new AttachError(`pid ${pid} exited while attaching`);
    if (uffd < 0) throw new AttachError(`pidfd_getfd on pid ${pid} failed: ${errnoName(-uffd)}`);
    const features = uffdApi(uffd, REMORA_FEATURES);
    if (features < 0) {
      throw new AttachError(`UFFDIO_API on pid ${pid} failed: ${errnoName(-features)}`);
    }
    const t = new Target(id, pid, uffd, pidfd, remoteFd, scratch, {
      vdsoSyscallAddr: syscallAddr,
      trampoline,
    });
    t.#noteRseq(rseq);
    t.#keepIn(record);
    return t;
  }

  /**
   * Takes over process `pid` from a pager that was killed, as its `record`
   * left it: its userfaultfd (a copy of the target's, by number), scratch
   * area and trampoline are in place; a drop under way is staged as ours.
   * Opens fds only: nothing in the target changes. A thread the dead pager
   * borrowed is given back later, by {@linkcode giveBackBorrowed}. Throws
   * {@linkcode AttachError} with one line.
   */
  static reclaim(
    id: number,
    pid: number,
    record: SessionRecord,
  ): Target {
    const layout = record.layout;
    const pidfd = pidfdOpen(pid);
    if (pidfd < 0) throw new AttachError(`no process with pid ${pid}`);
    const uffd = pidfdGetfd(pidfd, layout.remoteUffd);
    if (uffd < 0 || !isUserfaultfd(uffd)) {
      close(pidfd);
      if (uffd >= 0) close(uffd);
      throw new AttachError(
        `pid ${pid} has no userfaultfd at fd ${layout.remoteUffd} as ${record.path} says ` +
          `(${uffd < 0 ? errnoName(-uffd) : "another kind of file"}): nothing was touched`,
      );
    }
    const t = new Target(id, pid, uffd, pidfd, layout.remoteUffd, layout.scratch, {
      vdsoSyscallAddr: layout.vdsoSyscall,
      trampoline: layout.trampoline,
    });
    t.record = record;
    t.#stageDeadDrop(record.dropRuns);
    return t;
  }

  /** Set while a recovery waits for a dead pager's drop to finish (see {@linkcode reclaim}). */
  recovering = false;

  /**
   * A drop the dead pager had under way: its runs, still in the scratch area,
   * are ours, so that their REMOVE events are not taken for the target's own.
   */
  #stageDeadDrop(n: number): void {
    if (n <= 0 || n > MAX_IOV) return;
    const iov = new BigUint64Array(n * 2);
    const bytes = new Uint8Array(iov.buffer);
    if (processVmReadv(this.pid, ...this.#scratchIovecs(bytes)) !== bytes.length) return;
    const starts = [], lengths = [];
    for (let k = 0; k < n; k++) {
      starts.push(Number(iov[2 * k]));
      lengths.push(Number(iov[2 * k + 1]));
    }
    this.dropping.set(starts, lengths);
    this.recovering = true;
  }

  /** From now on `record` keeps our layout and the registers we borrow. */
  #keepIn(record: SessionRecord | null): void {
    if (record === null) return;
    record.layout = {
      remoteUffd: this.remoteUffd,
      scratch: this.scratch,
      trampoline: this.trampoline,
      vdsoSyscall: this.vdsoSyscallAddr,
    };
    this.record = record;
  }

  /**
   * A thread a killed pager was running a system call in sits in the
   * trampoline's `pause` loop (or finishes the call first): put its own
   * registers back (it carries on where it was stopped) and take away guard
   * markers the call may have left. Not through the record's keeper: a kill
   * meanwhile must find the thread's own registers there still. Returns the
   * runs of the drop the dead pager had under way (done now), whose pages
   * the caller must look at again: a guard marker looked like a swapped page
   * in pagemap before it was removed.
   */
  async giveBackBorrowed(record: SessionRecord, pump: Pump): Promise<Array<[number, number]>> {
    const borrowed = record.borrowed();
    if (borrowed !== null && this.trampoline > 0 && processAlive(borrowed.tid)) {
      // Served meanwhile: a thread still inside the dead pager's drop waits
      // for its REMOVE events to be read before it gets to the stop.
      const inj = await whileSaying(
        () =>
          `pid ${this.pid}: still waiting for thread ${borrowed.tid} to stop (${
            threadWaitChannel(this.pid, borrowed.tid)
          })`,
        ThreadInjection.begin(borrowed.tid, this.syscallAddr, pump, false, this.pid),
      );
      try {
        const at = inj.stoppedAt;
        if (at >= this.trampoline && at < this.trampoline + TRAMPOLINE_BYTES) {
          log.info("pid {pid}: thread {tid} was left in an injected call; giving it back", {
            pid: this.pid,
            tid: borrowed.tid,
          });
          const runs = record.dropRuns;
          if (runs > 0 && runs <= MAX_IOV) await remoteGuardRuns(inj, this.scratch, runs, false);
          inj.restoreOnEnd(borrowed.regs);
        }
      } finally {
        inj.end();
      }
    }
    record.done();
    record.dropRuns = 0;
    const runs = this.dropping.runs();
    this.dropping.clear();
    this.recovering = false;
    return runs;
  }

  /**
   * Where injected calls run from: the trampoline, so that a pager killed
   * mid-call leaves the thread blocked rather than crashed; the vDSO's
   * `syscall` until it exists (during attach) or if it could not be made.
   */
  get syscallAddr(): number {
    return this.trampoline > 0 ? this.trampoline : this.vdsoSyscallAddr;
  }

  #noteRseq(area: number): void {
    if (area !== 0) this.rseqPage = area - (area % PAGE);
  }

  /**
   * Adopts a forked child whose userfaultfd (`uffd`) arrived in a FORK event.
   * The child shares the parent's layout: same scratch address, same code.
   * We place a reference to its uffd inside it, so that it blocks rather than
   * reads zeros if the pager dies.
   */
  static async adopt(
    id: number,
    pid: number,
    uffd: number,
    parent: Target,
    pump: Pump,
  ): Promise<Target> {
    const pidfd = pidfdOpen(pid);
    if (pidfd < 0) throw new AttachError(`forked child ${pid} is gone`);
    const child = new Target(id, pid, uffd, pidfd, -1, parent.scratch, parent);
    // The child inherited the parent's uffd fd; it must not outlive a detach.
    child.remoteFds.push(parent.remoteUffd);
    await child.#inject(async (inj) => {
      const pagerFd = await remotePidfdOpen(inj, getpid());
      if (pagerFd < 0) return;
      child.remoteUffd = await remotePidfdGetfd(inj, pagerFd, uffd);
      await remoteClose(inj, pagerFd);
    }, pump);
    return child;
  }

  /**
   * Tells the target to drop runs of pages (MADV_DONTNEED from inside: the
   * kernel refuses that advice from another process). The thread is stopped
   * first and only then does `decide` choose the runs: a page must not be
   * held write-protected for dropping while that thread still has to reach
   * its stop, since it may need to write it on the way (rseq, a kernel-mode
   * fault). Returns the runs and how many of them, in order, were dropped.
   */
  async dropPages(
    decide: () => { starts: number[]; lengths: number[] },
    pump: Pump,
  ): Promise<{ starts: number[]; lengths: number[]; dropped: number; guarded: number }> {
    let runs = { starts: [] as number[], lengths: [] as number[] };
    const guardedBefore = this.#drop.guardedRuns;
    const dropped = await this.#inject(async (inj) => {
      runs = decide();
      const { starts, lengths } = runs;
      let done = 0;
      for (let from = 0; from < starts.length; from += MAX_IOV) {
        const n = Math.min(MAX_IOV, starts.length - from);
        this.dropping.set(starts, lengths, from, n);
        const got = await this.#drop.runs(inj, starts, lengths, from, n);
        // Every event of a finished madvise has been read (it waits for that).
        this.dropping.clear();
        if (this.record !== null) this.record.dropRuns = 0;
        done += got;
        if (got < n) break;
      }
      return done;
    }, pump);
    return { ...runs, dropped, guarded: this.#drop.guardedRuns - guardedBefore };
  }

  /** The thread the next injection will stop (the main thread unless it is gone). */
  get injectionTid(): number {
    return this.#tid;
  }

  /** Marks which of `pages` pages from `start` are present (1) in `out`, from /proc/PID/pagemap. */
  presentPages(start: number, pages: number, out: Uint8Array): void {
    out.fill(0, 0, pages);
    if (this.#pagemap < 0) return;
    const chunk = 8192;
    const buf = new Uint8Array(chunk * 8);
    const view = new DataView(buf.buffer);
    for (let done = 0; done < pages; done += chunk) {
      const n = Math.min(chunk, pages - done);
      const got = pread(this.#pagemap, buf, n * 8, ((start / PAGE) + done) * 8);
      if (got <= 0) return;
      for (let k = 0; k < got / 8; k++) {
        // Bit 63: present; bit 62: swapped (the kernel brings it back
        // itself); bit 58 (6.15+): a guard marker, which holds no data.
        const hi = view.getUint32(k * 8 + 4, true);
        out[done + k] = (hi & 0xc0000000) !== 0 && (hi & 0x04000000) === 0 ? 1 : 0;
      }
    }
  }

  /**
   * Gives the process back: unprotects and unregisters every range, closes
   * the fds we placed in it and unmaps the scratch area.
   */
  async release(pump: Pump): Promise<void> {
    for (const r of this.table.regions) {
      uffdWriteProtect(this.uffd, r.start, r.end - r.start, false);
      uffdUnregister(this.uffd, r.start, r.end - r.start);
    }
    if (!this.exited) {
      try {
        await this.#inject(async (inj) => {
          for (const fd of [this.remoteUffd, ...this.remoteFds]) {
            if (fd >= 0) await remoteClose(inj, fd);
          }
          await remoteMunmap(inj, this.scratch, SCRATCH_BYTES);
          if (this.trampoline > 0) {
            // Not from the page being unmapped.
            await inj.callAt(this.vdsoSyscallAddr, SYS.munmap, this.trampoline, TRAMPOLINE_BYTES);
          }
        }, pump);
      } catch {
        // Gone meanwhile: nothing left to give back.
      }
    }
    this.closeFds();
  }

  /**
   * Opens the shared file behind mapping `m` (read-write, for punching),
   * once per file. Returns our fd or `-errno`.
   */
  openShared(m: Mapping): number {
    const key = `${m.dev}:${m.inode}`;
    const have = this.files.get(key);
    if (have !== undefined) return have;
    const fd = open(
      `/proc/${this.pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`,
      O_RDWR,
    );
    if (fd >= 0) this.files.set(key, fd);
    return fd;
  }

  /** Closes our own fds for this target. */
  closeFds(): void {
    for (const fd of this.files.values()) close(fd);
    this.files.clear();
    close(this.uffd);
    close(this.pidfd);
    if (this.#pagemap >= 0) close(this.#pagemap);
    if (this.#statm >= 0) close(this.#statm);
    this.#pagemap = this.#statm = -1;
  }

  /**
   * Size of its address space in pages (-1 if unknown), from /proc/PID/statm
   * kept open: one pread, no allocation. New mappings raise no event; the
   * pager polls this to know when to read the maps again.
   */
  addressSpacePages(): number {
    if (this.#statm < 0) return -1;
    const n = pread(this.#statm, this.#statmBuf, this.#statmBuf.length, 0);
    if (n <= 0) return -1;
    let v = 0;
    for (let k = 0; k < n; k++) {
      const c = this.#statmBuf[k];
      if (c < 48 || c > 57) break;
      v = v * 10 + (c - 48);
    }
    return v;
  }

  async #inject<T>(work: (inj: ThreadInjection) => Promise<T>, pump: Pump): Promise<T> {
    for (let attempt = 0;; attempt++) {
      let inj: ThreadInjection;
      try {
        inj = await ThreadInjection.begin(
          this.#tid,
          this.syscallAddr,
          pump,
          false,
          this.pid,
          this.record,
        );
      } catch (e) {
        // The thread we used exited; another one will do, if the process lives.
        const gone = e instanceof TargetGoneError ||
          (e instanceof SyscallError && e.errno === Errno.ESRCH);
        if (attempt < 5 && gone && processAlive(this.pid)) {
          this.#tid = pickThread(this.pid);
          continue;
        }
        throw e;
      }
      this.injectingTid = this.#tid;
      // A program started under the pager registers rseq after exec, and a
      // new injection thread has its own: look each time (one ptrace call).
      this.#noteRseq(inj.rseqArea());
      try {
        return await work(inj);
      } finally {
        this.injectingTid = -1;
        inj.end();
      }
    }
  }

  /** One iovec over `bytes` here and one over the scratch area there, as process_vm_readv/writev take them. */
  #scratchIovecs(bytes: Uint8Array): [Uint8Array, number, Uint8Array, number] {
    const local = new BigUint64Array([BigInt(addressOf(bytes)), BigInt(bytes.length)]);
    const remote = new BigUint64Array([BigInt(this.scratch), BigInt(bytes.length)]);
    return [new Uint8Array(local.buffer), 1, new Uint8Array(remote.buffer), 1];
  }

  #writeScratch(bytes: Uint8Array): void {
    const r = processVmWritev(this.pid, ...this.#scratchIovecs(bytes));
    if (r !== bytes.length) {
      throw new SyscallError("process_vm_writev to scratch", r < 0 ? -r : Errno.EIO);
    }
  }
}

/** Throws {@linkcode AttachError} with one line if `pid` is nothing the pager can attach to. */
function checkAttachable(pid: number): void {
  const status = readStatus(pid);
  if (status === null) throw new AttachError(`no process with pid ${pid}`);
  if (status.isKernelThread) {
    throw new AttachError(
      `pid ${pid} (${status.name}) is a kernel thread: it has no user memory to page`,
    );
  }
  if (pid === getpid()) throw new AttachError(`pid ${pid} is the pager itself`);
  if (status.state === "Z") {
    throw new AttachError(`pid ${pid} (${status.name}) has exited (zombie)`);
  }
}

/**
 * Marks which of `pages` pages of file `fd` from byte `offset` hold data (1)
 * in `out`, by SEEK_DATA/SEEK_HOLE: for shmem, exactly the pages the file
 * holds in memory (a hole is not allocated and reads as zeros).
 */
export function presentInFile(fd: number, offset: number, pages: number, out: Uint8Array): void {
  out.fill(0, 0, pages);
  const end = offset + pages * PAGE;
  let at = offset;
  while (at < end) {
    const data = lseek(fd, at, SEEK_DATA);
    if (data < 0 || data >= end) return; // ENXIO: no data past `at`
    let hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    out.fill(1, (data - offset) / PAGE, Math.ceil((hole - offset) / PAGE));
    at = hole;
  }
}

/**
 * Seizes thread `tid`; while another process traces it (another
 * pager in the middle of a drop, say) ptrace says EPERM: wait a while for it.
 */
async function beginWhenUntraced(
  tid: number,
  syscallAddr: number,
  pump: Pump,
  stopped: boolean,
  tgid: number,
  keeper: RegisterKeeper | null,
): Promise<ThreadInjection> {
  for (let attempt = 0;; attempt++) {
    try {
      return await ThreadInjection.begin(tid, syscallAddr, pump, stopped, tgid, keeper);
    } catch (e) {
      const tracer = readStatus(tid)?.tracerPid ?? 0;
      const busy = e instanceof SyscallError && e.errno === Errno.EPERM && tracer !== 0 &&
        tracer !== getpid();
      if (!busy || attempt >= 200) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Whether process `pid` still runs (not gone, not a zombie). */
export function processAlive(pid: number): boolean {
  const st = readStatus(pid);
  return st !== null && st.state !== "Z" && st.state !== "X";
}

/**
 * A live thread of `pid` to inject into: the main thread unless it is a
 * zombie. (Not the lowest tid: after the pid space wraps, a newer thread may
 * have a lower id than the main thread.)
 */
function pickThread(pid: number): number {
  for (const tid of [pid, ...listThreads(pid).filter((t) => t !== pid)]) {
    const st = readStatus(tid);
    if (st !== null && st.state !== "Z" && st.state !== "X") return tid;
  }
  return pid;
}

/** Logs `what()` every 10 s until `work` settles; resolves as it does. */
async function whileSaying<T>(what: () => string, work: Promise<T>): Promise<T> {
  const timer = setInterval(() => log.warn(what()), 10_000);
  try {
    return await work;
  } finally {
    clearInterval(timer);
  }
}
