/**
 * userfaultfd ioctls and message layout (include/uapi/linux/userfaultfd.h).
 *
 * Each ioctl argument lives in one preallocated buffer, so the fault path
 * allocates nothing.
 *
 * @module
 */

import { addressOf, Errno, ioctl, read, readLink } from "./libc.ts";

/** `_IOWR(0xAA, 0x3F, struct uffdio_api)`. */
const UFFDIO_API = 0xc018aa3f;
const UFFDIO_REGISTER = 0xc020aa00;
const UFFDIO_UNREGISTER = 0x8010aa01;
const UFFDIO_WAKE = 0x8010aa02;
const UFFDIO_COPY = 0xc028aa03;
const UFFDIO_ZEROPAGE = 0xc020aa04;
const UFFDIO_WRITEPROTECT = 0xc018aa06;

/** The userfaultfd API version. */
const UFFD_API = 0xaa;

/** Event codes in `uffd_msg.event`. */
export const UffdEvent = {
  PAGEFAULT: 0x12,
  FORK: 0x13,
  REMAP: 0x14,
  REMOVE: 0x15,
  UNMAP: 0x16,
} as const;

/** Bits of `uffd_msg.arg.pagefault.flags`. */
export const PAGEFAULT_FLAG_WRITE = 1;
/** The fault is a write to a write-protected page. */
export const PAGEFAULT_FLAG_WP = 2;

/** Feature bits negotiated with UFFDIO_API. */
export const UffdFeature = {
  PAGEFAULT_FLAG_WP: 1 << 0,
  EVENT_FORK: 1 << 1,
  EVENT_REMAP: 1 << 2,
  EVENT_REMOVE: 1 << 3,
  MISSING_SHMEM: 1 << 5,
  EVENT_UNMAP: 1 << 6,
  THREAD_ID: 1 << 8,
  WP_HUGETLBFS_SHMEM: 1 << 12,
} as const;

/** What remora asks for: every non-cooperative event, shmem, and thread ids. */
export const REMORA_FEATURES = UffdFeature.PAGEFAULT_FLAG_WP | UffdFeature.EVENT_FORK |
  UffdFeature.EVENT_REMAP | UffdFeature.EVENT_REMOVE | UffdFeature.MISSING_SHMEM |
  UffdFeature.EVENT_UNMAP | UffdFeature.THREAD_ID | UffdFeature.WP_HUGETLBFS_SHMEM;

/** Registration modes. */
export const REGISTER_MODE_MISSING = 1;
/** Write-protect tracking. */
export const REGISTER_MODE_WP = 2;

/** Size of one `struct uffd_msg`. */
export const UFFD_MSG_SIZE = 32;

const PAGE = 4096;

/** Decoded view over a buffer of `uffd_msg` records. */
export class UffdMessages {
  /** Raw bytes; holds up to `capacity` messages. */
  readonly bytes: Uint8Array;
  /** Little-endian view for field reads. */
  readonly view: DataView;
  /** Maximum messages per read. */
  readonly capacity: number;

  /** Allocates room for `capacity` messages. */
  constructor(capacity: number) {
    this.capacity = capacity;
    this.bytes = new Uint8Array(capacity * UFFD_MSG_SIZE);
    this.view = new DataView(this.bytes.buffer);
  }

  /** Event code of message `i`. */
  event(i: number): number {
    return this.bytes[i * UFFD_MSG_SIZE];
  }
  /** pagefault.flags / fork.ufd / remap.from / remove.start (first u64 of the union). */
  arg0(i: number): number {
    return Number(this.view.getBigUint64(i * UFFD_MSG_SIZE + 8, true));
  }
  /** pagefault.address / remap.to / remove.end. */
  arg1(i: number): number {
    return Number(this.view.getBigUint64(i * UFFD_MSG_SIZE + 16, true));
  }
  /** remap.len, or pagefault.feat.ptid in the low 32 bits. */
  arg2(i: number): number {
    return Number(this.view.getBigUint64(i * UFFD_MSG_SIZE + 24, true));
  }
  /** fork.ufd: the child's new userfaultfd, already installed in our fd table. */
  forkFd(i: number): number {
    return this.view.getUint32(i * UFFD_MSG_SIZE + 8, true);
  }
}

/**
 * Reads as many pending messages as fit. Returns the count (0 when none is
 * pending: the fd is non-blocking) or `-errno`.
 */
export function readMessages(uffd: number, msgs: UffdMessages): number {
  const n = read(uffd, msgs.bytes, msgs.bytes.byteLength);
  if (n < 0) return n === -Errno.EAGAIN ? 0 : n;
  return (n / UFFD_MSG_SIZE) | 0;
}

const arg = new Uint8Array(64);
const argView = new DataView(arg.buffer);

function set64(off: number, v: number): void {
  argView.setBigUint64(off, BigInt(v), true);
}
function get64(off: number): number {
  return Number(argView.getBigInt64(off, true));
}

/** Negotiates the API and features; returns the features granted or `-errno`. */
export function uffdApi(uffd: number, features: number): number {
  arg.fill(0);
  set64(0, UFFD_API);
  set64(8, features);
  const r = ioctl(uffd, UFFDIO_API, arg);
  return r < 0 ? r : get64(8);
}

/** Registers `[start, start+len)` with `mode`: 0 or `-errno` (EBUSY: another uffd owns it). */
export function uffdRegister(uffd: number, start: number, len: number, mode: number): number {
  arg.fill(0);
  set64(0, start);
  set64(8, len);
  set64(16, mode);
  return ioctl(uffd, UFFDIO_REGISTER, arg);
}

/** Unregisters a range (wakes any thread blocked in it). */
export function uffdUnregister(uffd: number, start: number, len: number): number {
  set64(0, start);
  set64(8, len);
  return ioctl(uffd, UFFDIO_UNREGISTER, arg);
}

/** Wakes threads blocked on faults in a range, to retry the access. */
export function uffdWake(uffd: number, start: number, len: number): number {
  set64(0, start);
  set64(8, len);
  return ioctl(uffd, UFFDIO_WAKE, arg);
}

/** `UFFDIO_COPY` modes. */
export const COPY_MODE_WP = 2;
/** `UFFDIO_COPY` mode: do not wake the threads waiting on the range. */
export const COPY_MODE_DONTWAKE = 1;

/**
 * Atomically places `len` bytes from our address `src` at `dst` in the
 * target and wakes the waiters. Returns bytes copied or `-errno`.
 */
export function uffdCopy(
  uffd: number,
  dst: number,
  src: number,
  len: number,
  mode: number,
): number {
  set64(0, dst);
  set64(8, src);
  set64(16, len);
  set64(24, mode);
  set64(32, 0);
  const r = ioctl(uffd, UFFDIO_COPY, arg);
  if (r < 0) {
    // A partial copy reports progress in `copy`; the caller retries the rest.
    const done = get64(32);
    return done > 0 ? done : r;
  }
  return len;
}

/** `UFFDIO_ZEROPAGE` mode: map without waking threads that wait on the range (none do). */
export const ZEROPAGE_MODE_DONTWAKE = 1;

/** Maps the zero page over `[dst, dst+len)`. Returns bytes done or `-errno`. */
export function uffdZeropage(uffd: number, dst: number, len: number, mode = 0): number {
  set64(0, dst);
  set64(8, len);
  set64(16, mode);
  set64(24, 0);
  const r = ioctl(uffd, UFFDIO_ZEROPAGE, arg);
  if (r < 0) {
    const done = get64(24);
    return done > 0 ? done : r;
  }
  return len;
}

/** Write-protects (`protect`) or unprotects a range; unprotect wakes waiters. */
export function uffdWriteProtect(
  uffd: number,
  start: number,
  len: number,
  protect: boolean,
): number {
  set64(0, start);
  set64(8, len);
  set64(16, protect ? 1 : 0);
  return ioctl(uffd, UFFDIO_WRITEPROTECT, arg);
}

let zeros: Uint8Array | null = null;
let zerosAddr = 0;

/**
 * Address of `pages` pages of zeros in the pager's memory, the source of
 * `UFFDIO_COPY` for writes to fresh pages: a write fault, or a run of pages a
 * writing stream is about to reach (placed writable, they take no second
 * fault). Made on first use, grown when asked for more, and kept for the
 * pager's life; an address handed out stays valid only until a larger
 * request, so use it at once.
 *
 * @example
 * ```ts
 * uffdCopy(uffd, addr, zeroPageAddress(), PAGE, 0);
 * uffdCopy(uffd, run, zeroPageAddress(16), 16 * PAGE, COPY_MODE_DONTWAKE);
 * ```
 */
export function zeroPageAddress(pages = 1): number {
  if (zeros === null || zeros.length < pages * PAGE) {
    zeros = new Uint8Array(Math.max(pages, 16) * PAGE);
    zerosAddr = addressOf(zeros);
  }
  return zerosAddr;
}

/**
 * Whether our fd `fd` is a userfaultfd (its link reads `anon_inode:[userfaultfd]`):
 * an fd taken from another process by number must be checked before use.
 *
 * @example
 * ```ts
 * declare const fd: number;
 * if (!isUserfaultfd(fd)) throw new Error("not a userfaultfd");
 * ```
 */
export function isUserfaultfd(fd: number): boolean {
  return readLink(`/proc/self/fd/${fd}`) === "anon_inode:[userfaultfd]";
}
