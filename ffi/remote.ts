/**
 * The system calls remora runs inside a target process, each one typed
 * function over a {@linkcode ThreadInjection} (ptrace, see `ptrace.ts`).
 *
 * Every function returns what the kernel returned in the target: a value, or
 * `-errno` on failure. None throws for a failed call; each throws only when
 * the thread itself goes away (`TargetGoneError`, from `ThreadInjection.call`).
 *
 * @example
 * ```ts
 * import { ThreadInjection } from "./ptrace.ts";
 * import { remoteClose, remoteUserfaultfd } from "./remote.ts";
 * declare const inj: ThreadInjection;
 * const fd = await remoteUserfaultfd(inj);
 * if (fd >= 0) await remoteClose(inj, fd);
 * ```
 *
 * @module
 */

import {
  addressOf,
  MADV_DONTNEED,
  MADV_GUARD_INSTALL,
  MADV_GUARD_REMOVE,
  MAP_ANONYMOUS,
  MAP_POPULATE,
  MAP_SHARED,
  O_CLOEXEC,
  O_NONBLOCK,
  PIDFD_SELF_THREAD,
  processVmWritev,
  PROT_READ_EXEC,
  PROT_READ_WRITE,
  SYS,
} from "./libc.ts";
import type { ThreadInjection } from "./ptrace.ts";

/**
 * `userfaultfd(O_CLOEXEC | O_NONBLOCK)` in the target: a userfaultfd of the
 * target's own address space, in its fd table.
 *
 * @returns its fd number in the target, or `-errno` (EPERM: not root)
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * const remoteFd = await remoteUserfaultfd(inj);
 * ```
 */
export function remoteUserfaultfd(inj: ThreadInjection): Promise<number> {
  return inj.call(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

/**
 * Maps `bytes` of shared anonymous memory in the target, read-write and
 * populated: a scratch area the pager fills with `process_vm_writev`. Shared,
 * so that the kernel never merges it into a private mapping the pager
 * registers (the pager must never fault on its own scratch).
 *
 * @returns its address in the target, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * const scratch = await remoteMapScratch(inj, 16384);
 * ```
 */
export function remoteMapScratch(inj: ThreadInjection, bytes: number): Promise<number> {
  const flags = MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE;
  return inj.call(SYS.mmap, 0, bytes, PROT_READ_WRITE, flags, -1, 0);
}

/** Bytes of the page {@linkcode remoteMapTrampoline} maps. */
export const TRAMPOLINE_BYTES = 4096;

/**
 * x86-64 code of the trampoline: `syscall` (the injected call, single-stepped
 * by the pager, which stops right after it and puts the thread's registers
 * back), then `pause()` in a loop. A pager that dies between its register
 * swap and their restore leaves the thread here, blocked in `pause` and using
 * no CPU, instead of running on from a borrowed `syscall` with borrowed
 * registers (which crashed the target).
 */
const TRAMPOLINE_CODE = Uint8Array.of(
  0x0f,
  0x05, // +0 syscall
  0xb8,
  SYS.pause,
  0x00,
  0x00,
  0x00, // +2 mov eax, SYS_pause
  0x0f,
  0x05, // +7 syscall
  0xeb,
  0xf7, // +9 jmp +2
);

/**
 * Maps the trampoline page in the target (shared anonymous, so that it never
 * merges with memory the pager registers; read-execute once written), for
 * every later injected call to run from.
 *
 * @returns its address in the target (the injected `syscall` is at +0), or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * const at = await remoteMapTrampoline(inj, 1234);
 * ```
 */
export async function remoteMapTrampoline(inj: ThreadInjection, pid: number): Promise<number> {
  const flags = MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE;
  const at = await inj.call(SYS.mmap, 0, TRAMPOLINE_BYTES, PROT_READ_WRITE, flags, -1, 0);
  if (at < 0) return at;
  const code = TRAMPOLINE_CODE;
  const local = new BigUint64Array([BigInt(addressOf(code)), BigInt(code.length)]);
  const remote = new BigUint64Array([BigInt(at), BigInt(code.length)]);
  const wrote = processVmWritev(
    pid,
    new Uint8Array(local.buffer),
    1,
    new Uint8Array(remote.buffer),
    1,
  );
  const r = wrote === code.length
    ? await inj.call(SYS.mprotect, at, TRAMPOLINE_BYTES, PROT_READ_EXEC)
    : (wrote < 0 ? wrote : -5 /* EIO */);
  if (r < 0) {
    await inj.call(SYS.munmap, at, TRAMPOLINE_BYTES);
    return r;
  }
  return at;
}

/**
 * `munmap(address, bytes)` in the target.
 *
 * @returns 0, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * await remoteMunmap(inj, 0x7f0000000000, 16384);
 * ```
 */
export function remoteMunmap(
  inj: ThreadInjection,
  address: number,
  bytes: number,
): Promise<number> {
  return inj.call(SYS.munmap, address, bytes);
}

/**
 * `close(fd)` in the target.
 *
 * @returns 0, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * await remoteClose(inj, 7);
 * ```
 */
export function remoteClose(inj: ThreadInjection, fd: number): Promise<number> {
  return inj.call(SYS.close, fd);
}

/**
 * `process_madvise(PIDFD_SELF_THREAD, iov, count, MADV_DONTNEED, 0)` in the
 * target: drops `count` runs whose iovecs (16 bytes each: start, length) the
 * pager wrote at `iovAddress` in the target. The kernel refuses DONTNEED
 * from another process, so it must run inside; one call drops many runs.
 *
 * @returns bytes dropped (whole runs, in order), or `-errno` (EINVAL, EBADF
 *   or ENOSYS: a kernel without `PIDFD_SELF`; use {@linkcode remoteMadviseDontneed})
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * declare const scratch: number;
 * const bytes = await remoteDropRuns(inj, scratch, 512);
 * ```
 */
export function remoteDropRuns(
  inj: ThreadInjection,
  iovAddress: number,
  count: number,
): Promise<number> {
  return inj.call(SYS.processMadvise, PIDFD_SELF_THREAD, iovAddress, count, MADV_DONTNEED, 0);
}

/**
 * `process_madvise(PIDFD_SELF_THREAD, iov, count, MADV_GUARD_INSTALL or
 * MADV_GUARD_REMOVE, 0)` in the target, over the same iovecs as
 * {@linkcode remoteDropRuns}. Installing zaps the pages with no REMOVE event
 * (one per run with DONTNEED, each a round trip through the pager); removing
 * right after leaves them missing. In between a touch is a SIGSEGV: only for
 * a target whose one thread is the stopped injection thread.
 *
 * @returns bytes advised (whole runs, in order), or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * declare const scratch: number;
 * const zapped = await remoteGuardRuns(inj, scratch, 512, true);
 * await remoteGuardRuns(inj, scratch, 512, false); // always, whatever the first did
 * ```
 */
export function remoteGuardRuns(
  inj: ThreadInjection,
  iovAddress: number,
  count: number,
  install: boolean,
): Promise<number> {
  const advice = install ? MADV_GUARD_INSTALL : MADV_GUARD_REMOVE;
  return inj.call(SYS.processMadvise, PIDFD_SELF_THREAD, iovAddress, count, advice, 0);
}

/**
 * `madvise(start, bytes, MADV_DONTNEED)` in the target: drops one run; the
 * fallback of {@linkcode remoteDropRuns} on older kernels.
 *
 * @returns 0, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * await remoteMadviseDontneed(inj, 0x7f0000000000, 4096);
 * ```
 */
export function remoteMadviseDontneed(
  inj: ThreadInjection,
  start: number,
  bytes: number,
): Promise<number> {
  return inj.call(SYS.madvise, start, bytes, MADV_DONTNEED);
}

/**
 * `pidfd_open(pid, 0)` in the target.
 *
 * @returns a pidfd in the target's fd table, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * const pagerFd = await remotePidfdOpen(inj, Deno.pid);
 * ```
 */
export function remotePidfdOpen(inj: ThreadInjection, pid: number): Promise<number> {
  return inj.call(SYS.pidfdOpen, pid, 0);
}

/**
 * `pidfd_getfd(pidfd, fd, 0)` in the target: copies fd `fd` of the process
 * behind `pidfd` (a pidfd in the target's table) into the target's table.
 *
 * @returns the new fd in the target, or `-errno`
 * @example
 * ```ts
 * declare const inj: ThreadInjection;
 * declare const pagerFd: number;
 * const copy = await remotePidfdGetfd(inj, pagerFd, 12);
 * ```
 */
export function remotePidfdGetfd(
  inj: ThreadInjection,
  pidfd: number,
  fd: number,
): Promise<number> {
  return inj.call(SYS.pidfdGetfd, pidfd, fd, 0);
}
