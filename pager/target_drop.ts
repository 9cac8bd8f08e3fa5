/**
 * Dropping a target's pages from inside it: the kernel refuses DONTNEED from
 * another process, so the runs are staged in the scratch page and dropped by
 * a call injected into a stopped thread of the target (`Target.dropPages`
 * stops it and keeps the bookkeeping). A target with one thread is dropped by
 * installing guard markers and removing them again, which raises no REMOVE
 * event per run; others with one `process_madvise(MADV_DONTNEED)`; a kernel
 * without `PIDFD_SELF` with one `madvise` per run.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { Errno, errnoName, SyscallError } from "../ffi/libc.ts";
import { listThreads, sharesMemoryWithChild } from "../ffi/proc.ts";
import type { ThreadInjection } from "../ffi/ptrace.ts";
import { remoteDropRuns, remoteGuardRuns, remoteMadviseDontneed } from "../ffi/remote.ts";
import { crashPoint } from "./crash.ts";
import type { SessionRecord } from "./record.ts";

const log = getLogger(["remora", "pager"]);

/** Most runs one injected call drops (the scratch page holds their iovecs). */
export const MAX_IOV = 1024;
/** Errnos of a kernel that lacks a call, a pidfd form or an advice (not of a refused range). */
const UNKNOWN_CALL: readonly number[] = [Errno.EINVAL, Errno.EBADF, Errno.ENOSYS];

/** What an {@linkcode InsideDrop} needs of its target. */
export interface DropHost {
  /** The take-over record, if any: it notes the runs staged (see record.ts). */
  record(): SessionRecord | null;
  /** Writes `bytes` to the start of the scratch area inside the target. */
  writeScratch(bytes: Uint8Array): void;
}

/**
 * Drops runs of one target's pages from inside it, remembering which way its
 * kernel and its shape allow.
 *
 * @example
 * ```ts
 * import type { ThreadInjection } from "../ffi/ptrace.ts";
 * declare const inj: ThreadInjection, host: DropHost;
 * const drop = new InsideDrop(4242, 0x7f0000000000, host);
 * const dropped = await drop.runs(inj, [0x7f0000100000], [8192], 0, 1); // runs dropped, in order
 * ```
 */
export class InsideDrop {
  readonly #pid: number;
  readonly #scratch: number;
  readonly #host: DropHost;
  #perRunMadvise = false;
  /** Drops by guard markers while the target has one thread (until the kernel refuses them). */
  #guardDrops = true;
  /** Runs of pages dropped by guard markers so far. */
  guardedRuns = 0;

  /** Drops for process `pid`, whose scratch area is at `scratch`. */
  constructor(pid: number, scratch: number, host: DropHost) {
    this.#pid = pid;
    this.#scratch = scratch;
    this.#host = host;
  }

  /**
   * Drops runs `from..from+n` of `starts`/`lengths` (at most {@linkcode
   * MAX_IOV}) through `inj`, a stopped thread of the target; returns how many
   * of them, in order, were dropped.
   */
  async runs(
    inj: ThreadInjection,
    starts: number[],
    lengths: number[],
    from: number,
    n: number,
  ): Promise<number> {
    if (!this.#perRunMadvise) {
      const iov = new BigUint64Array(n * 2);
      for (let k = 0; k < n; k++) {
        iov[2 * k] = BigInt(starts[from + k]);
        iov[2 * k + 1] = BigInt(lengths[from + k]);
      }
      this.#host.writeScratch(new Uint8Array(iov.buffer));
      const record = this.#host.record();
      if (record !== null) record.dropRuns = n;
      let bytes = 0;
      for (let k = from; k < from + n; k++) bytes += lengths[k];
      // Short of every run (a refusal, a locked mapping): DONTNEED over all
      // of them, which is a no-op where the guards did zap.
      if (this.#guardDrops && this.#alone() && await this.#guardDrop(inj, n, bytes)) {
        this.guardedRuns += n;
        return n;
      }
      const r = await remoteDropRuns(inj, this.#scratch, n);
      if (r >= 0) return countRuns(lengths, from, n, r);
      if (!UNKNOWN_CALL.includes(-r)) return 0;
      // A kernel without PIDFD_SELF: one madvise per run.
      this.#perRunMadvise = true;
    }
    let k = 0;
    for (; k < n; k++) {
      const r = await remoteMadviseDontneed(inj, starts[from + k], lengths[from + k]);
      if (r < 0) break;
    }
    return k;
  }

  /**
   * Drops the `n` runs staged in the scratch page by installing guard markers
   * and removing them again: no REMOVE event per run, so a scattered batch
   * costs two injected calls instead of a round trip per run. True if all
   * `bytes` were dropped; if not, DONTNEED is used from now on. Every marker
   * is gone again when this returns.
   */
  async #guardDrop(inj: ThreadInjection, n: number, bytes: number): Promise<boolean> {
    const zapped = await remoteGuardRuns(inj, this.#scratch, n, true);
    crashPoint("guarded");
    // Whatever the install did, remove every marker before the thread runs
    // on: until then a touch of these pages is a SIGSEGV, not a fault.
    let removed = await remoteGuardRuns(inj, this.#scratch, n, false);
    for (let attempt = 0; removed < 0 && attempt < 3; attempt++) {
      removed = await remoteGuardRuns(inj, this.#scratch, n, false);
    }
    // A kernel without PIDFD_SELF or guard advice (6.1 says EBADF) refuses
    // both alike and installed nothing; a locked range refuses only the
    // install (perhaps after some markers), which the removal undid.
    const unsupported = removed === zapped && UNKNOWN_CALL.includes(-removed);
    if (removed < 0 && !unsupported) {
      throw new SyscallError("removing guard markers in the target", -removed);
    }
    // A locked or special mapping: not for this target.
    if (zapped !== bytes) this.#refuseGuards(zapped);
    return zapped === bytes;
  }

  /** Drops by DONTNEED from now on, after guard markers did not zap a batch. */
  #refuseGuards(zapped: number): void {
    this.#guardDrops = false;
    log.debug("pid {pid}: guard markers refused ({err}); dropping with DONTNEED", {
      pid: this.#pid,
      err: zapped < 0 ? errnoName(-zapped) : "partly",
    });
  }

  /**
   * Nothing but the stopped injection thread can touch the target's memory:
   * it has one thread, and no child shares its address space.
   */
  #alone(): boolean {
    return listThreads(this.#pid).length === 1 && !sharesMemoryWithChild(this.#pid);
  }
}

/** How many whole runs `bytes` covers, counting from run `from`. */
function countRuns(lengths: number[], from: number, n: number, bytes: number): number {
  let k = 0;
  while (k < n && bytes >= lengths[from + k]) bytes -= lengths[from + k++];
  return k;
}
