/**
 * libc and raw system calls through Deno FFI: the only door to the kernel.
 *
 * Hot calls (`ioctl`, `read`) have their own typed symbols so that V8 takes
 * the fast FFI path; the rest go through `syscall(2)` by number.
 *
 * @module
 */

/** x86_64 system call numbers used by remora. */
export const SYS = {
  read: 0,
  write: 1,
  close: 3,
  mmap: 9,
  munmap: 11,
  mprotect: 10,
  pause: 34,
  schedYield: 24,
  schedSetscheduler: 144,
  schedSetaffinity: 203,
  schedGetaffinity: 204,
  ioctl: 16,
  madvise: 28,
  getpid: 39,
  wait4: 61,
  fstatfs: 138,
  fstat: 5,
  kill: 62,
  ptrace: 101,
  getuid: 102,
  getdents64: 217,
  geteuid: 107,
  gettid: 186,
  tgkill: 234,
  fallocate: 285,
  eventfd2: 290,
  processVmReadv: 310,
  processVmWritev: 311,
  userfaultfd: 323,
  pidfdOpen: 434,
  pidfdGetfd: 438,
  processMadvise: 440,
  kcmp: 312,
  open: 2,
  flock: 73,
  rename: 82,
  unlink: 87,
  readlink: 89,
} as const;

/** sched_setscheduler(2) policy: run only when a CPU would otherwise idle. */
export const SCHED_IDLE = 5;

/** ptrace(2) requests, options and event numbers used by remora (x86_64). */
export const PTRACE = {
  CONT: 7,
  SINGLESTEP: 9,
  SYSCALL: 24,
  SETOPTIONS: 0x4200,
  GETREGS: 12,
  SETREGS: 13,
  DETACH: 17,
  SEIZE: 0x4206,
  INTERRUPT: 0x4207,
  /** Linux 5.13+: the stopped tracee's rseq area (`struct ptrace_rseq_configuration`). */
  GET_RSEQ_CONFIGURATION: 0x420f,
  /** `PTRACE_SEIZE` option: stop at every exec. */
  O_TRACEEXEC: 0x10,
  /** Option: syscall stops report SIGTRAP | 0x80, told apart from a real SIGTRAP. */
  O_TRACESYSGOOD: 0x1,
  /** Event number (status >> 16) of a stop at exec. */
  EVENT_EXEC: 4,
  /** Event number (status >> 16) of a group-stop or `PTRACE_INTERRUPT` stop. */
  EVENT_STOP: 128,
} as const;

/** errno values the pager handles by name. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  EINVAL: 22,
  ENOSPC: 28,
  ENOSYS: 38,
  EPIPE: 32,
  EADDRINUSE: 98,
  ECONNRESET: 104,
  ENOTCONN: 107,
  ECONNREFUSED: 111,
  EINPROGRESS: 115,
} as const;

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

/** The symbolic name of an errno value, e.g. `EAGAIN`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** A failed system call, carrying its errno. */
export class SyscallError extends Error {
  /** The errno the call failed with. */
  readonly errno: number;
  /** Builds the error for `what` failing with `errno`. */
  constructor(what: string, errno: number) {
    super(`${what} failed: ${errnoName(errno)}`);
    this.name = "SyscallError";
    this.errno = errno;
  }
}

/** The libc symbols remora calls, opened on first use (importing this module opens nothing). */
const LIBC_SYMBOLS = {
  syscall: {
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
  },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  open: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  process_vm_readv: {
    parameters: ["i32", "buffer", "u64", "buffer", "u64", "u64"],
    result: "isize",
  },
  // Runs on a worker thread: a read of a page that is not present makes the
  // kernel raise a userfault that only our own event loop can serve.
  process_vm_readv_async: {
    name: "process_vm_readv",
    parameters: ["i32", "buffer", "u64", "buffer", "u64", "u64"],
    result: "isize",
    nonblocking: true,
  },
  process_vm_writev: {
    parameters: ["i32", "buffer", "u64", "buffer", "u64", "u64"],
    result: "isize",
  },
  // Runs on a worker thread: waiting for a ptrace stop must not block the
  // event loop, which serves the faults and events the tracee raises meanwhile.
  wait4_async: {
    name: "wait4",
    parameters: ["i32", "buffer", "i32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
  posix_spawnp: {
    parameters: ["buffer", "buffer", "pointer", "pointer", "buffer", "pointer"],
    result: "i32",
  },
  environ: { type: "pointer" },
} as const;

/**
 * Deno types 64-bit FFI parameters as `bigint`, but accepts numbers at run
 * time and takes its fast path with them; every value we pass is below 2^53.
 */
type Int = number;
interface Symbols {
  wait4_async(pid: number, status: Uint8Array, options: number, rusage: null): Promise<number>;
  syscall(nr: Int, a: Int, b: Int, c: Int, d: Int, e: Int, f: Int): bigint;
  ioctl(fd: number, req: Int, arg: Uint8Array): number;
  read(fd: number, buf: Uint8Array, len: Int): bigint;
  pread(fd: number, buf: Uint8Array, len: Int, off: Int): bigint;
  open(path: Uint8Array, flags: number, mode: number): number;
  close(fd: number): number;
  fallocate(fd: number, mode: number, off: Int, len: Int): number;
  lseek(fd: number, off: Int, whence: number): bigint;
  process_vm_readv(pid: number, l: Uint8Array, ln: Int, r: Uint8Array, rn: Int, f: Int): bigint;
  process_vm_readv_async(
    pid: number,
    l: Uint8Array,
    ln: Int,
    r: Uint8Array,
    rn: Int,
    f: Int,
  ): Promise<bigint>;
  process_vm_writev(pid: number, l: Uint8Array, ln: Int, r: Uint8Array, rn: Int, f: Int): bigint;
  __errno_location(): Deno.PointerValue;
  posix_spawnp(
    pid: Uint8Array,
    file: Uint8Array,
    actions: null,
    attr: null,
    argv: Uint8Array,
    envp: Deno.PointerValue,
  ): number;
  environ: Deno.PointerValue;
}
let loaded: Symbols | null = null;

/** libc's symbols, opening the library on the first call. */
function libc(): Symbols {
  return loaded ??= Deno.dlopen("libc.so.6", LIBC_SYMBOLS).symbols as unknown as Symbols;
}

/** The calling thread's errno (read right after the failing call). */
export function errno(): number {
  const p = libc().__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** Address of a buffer's first byte, as a number, for kernel structs that hold pointers. */
export function addressOf(buf: ArrayBufferView): number {
  const p = Deno.UnsafePointer.of(buf as Uint8Array<ArrayBuffer>);
  return Number(Deno.UnsafePointer.value(p));
}

/** Raw `syscall(2)`: returns the result, or `-errno` on failure. */
export function syscall(
  nr: number,
  a = 0,
  b = 0,
  c = 0,
  d = 0,
  e = 0,
  f = 0,
): number {
  const r = Number(libc().syscall(nr, a, b, c, d, e, f));
  return r === -1 ? -errno() : r;
}

/** Like {@linkcode syscall} but throws a {@linkcode SyscallError} on failure. */
export function syscallOrThrow(what: string, nr: number, ...args: number[]): number {
  const r = syscall(nr, ...args);
  if (r < 0) throw new SyscallError(what, -r);
  return r;
}

/** `ioctl(fd, request, arg)`: 0 or more on success, `-errno` on failure. */
export function ioctl(fd: number, request: number, arg: Uint8Array): number {
  const r = libc().ioctl(fd, request, arg);
  return r === -1 ? -errno() : r;
}

/** `read(fd, buf, len)`: bytes read or `-errno`. */
export function read(fd: number, buf: Uint8Array, len = buf.byteLength): number {
  const r = Number(libc().read(fd, buf, len));
  return r === -1 ? -errno() : r;
}

/** `pread(fd, buf, len, offset)`: bytes read or `-errno`. */
export function pread(fd: number, buf: Uint8Array, len: number, offset: number): number {
  const r = Number(libc().pread(fd, buf, len, offset));
  return r === -1 ? -errno() : r;
}

/** `fallocate(fd, mode, offset, len)`: 0 or `-errno`. */
export function fallocate(fd: number, mode: number, offset: number, len: number): number {
  const r = libc().fallocate(fd, mode, offset, len);
  return r === -1 ? -errno() : r;
}

/** `lseek(fd, offset, whence)`: the new offset or `-errno` (ENXIO: no data/hole past it). */
export function lseek(fd: number, offset: number, whence: number): number {
  const r = Number(libc().lseek(fd, offset, whence));
  return r === -1 ? -errno() : r;
}

/** `lseek` whence: next data at or after the offset. */
export const SEEK_DATA = 3;
/** `lseek` whence: next hole at or after the offset. */
export const SEEK_HOLE = 4;

/** `statfs.f_type` of tmpfs and shmem (memfd) files. */
export const TMPFS_MAGIC = 0x01021994;
/** `statfs.f_type` of hugetlbfs (and memfd with MFD_HUGETLB). */
export const HUGETLBFS_MAGIC = 0x958458f6;

/** The file system type (`statfs.f_type`) of an open file, or `-errno`. */
export function fstatfsType(fd: number): number {
  const buf = new BigInt64Array(16); // struct statfs is 120 bytes; f_type comes first
  const r = syscall(SYS.fstatfs, fd, addressOf(buf));
  return r < 0 ? r : Number(buf[0]);
}

/** `fallocate` mode bits. */
export const FALLOC_FL_KEEP_SIZE = 1;
/** Deallocates the range (with KEEP_SIZE): a hole reads as zeros. */
export const FALLOC_FL_PUNCH_HOLE = 2;

/** `O_RDONLY`. */
export const O_RDONLY = 0;
/** `O_RDWR`. */
export const O_RDWR = 2;
/** `O_CLOEXEC`. */
export const O_CLOEXEC = 0o2000000;
/** `O_NONBLOCK`. */
export const O_NONBLOCK = 0o4000;
/** `O_WRONLY`. */
export const O_WRONLY = 0o1;
/** `O_CREAT`. */
export const O_CREAT = 0o100;
/** `O_EXCL`: with `O_CREAT`, fail if the path exists (a planted link included). */
export const O_EXCL = 0o200;
/** `O_NOFOLLOW`: refuse a symbolic link as the last component (ELOOP). */
export const O_NOFOLLOW = 0o400000;

/** `mmap` protection: readable and writable (`PROT_READ | PROT_WRITE`). */
export const PROT_READ_WRITE = 0x1 | 0x2;
/** `mmap` protection: readable and executable (`PROT_READ | PROT_EXEC`). */
export const PROT_READ_EXEC = 0x1 | 0x4;
/** `mmap` flag: changes are shared (with a child, and never merged into a private mapping). */
export const MAP_SHARED = 0x01;
/** `mmap` flag: private copy-on-write mapping. */
export const MAP_PRIVATE = 0x02;
/** `mmap` flag: memory not backed by a file. */
export const MAP_ANONYMOUS = 0x20;
/** `mmap` flag: fault every page in at once. */
export const MAP_POPULATE = 0x8000;
/** `madvise` advice: drop the pages (anonymous memory reads as zeros, or faults, next time). */
export const MADV_DONTNEED = 4;
/**
 * `madvise` advice (Linux 6.13+): zap the pages and leave guard markers, so
 * that a touch is a SIGSEGV; {@linkcode MADV_GUARD_REMOVE} takes them away.
 * Unlike DONTNEED it raises no userfaultfd REMOVE event.
 */
export const MADV_GUARD_INSTALL = 102;
/** `madvise` advice: remove guard markers; the pages are then missing (a fault next time). */
export const MADV_GUARD_REMOVE = 103;
/** `kcmp` type: do two processes share one address space? (0 when they do) */
export const KCMP_VM = 1;
/**
 * The pidfd that names the calling thread itself (Linux 6.9+), for
 * `process_madvise` run inside a target: DONTNEED is refused from outside.
 */
export const PIDFD_SELF_THREAD = -10000;

const encoder = new TextEncoder();

/** `open(path, flags, mode)` (always `O_CLOEXEC`): fd or `-errno`. */
export function open(path: string, flags: number, mode = 0): number {
  const r = libc().open(cPath(path), flags | O_CLOEXEC, mode);
  return r === -1 ? -errno() : r;
}

/** `unlink(path)`: 0 or `-errno`. */
export function unlink(path: string): number {
  return syscall(SYS.unlink, addressOf(cPath(path)));
}

/** `path` as a NUL-terminated C string. */
export function cPath(path: string): Uint8Array {
  return encoder.encode(path + "\0");
}

/** `close(fd)`, ignoring errors (the fd is gone either way). */
export function close(fd: number): void {
  libc().close(fd);
}

/**
 * The arguments of the `process_vm_*` wrappers: the target's pid, then the
 * local and remote iovec arrays (16 bytes each: base, len) with their counts.
 */
export type IovecArgs = [
  pid: number,
  local: Uint8Array,
  localCount: number,
  remote: Uint8Array,
  remoteCount: number,
];

/**
 * `process_vm_readv` with prepared iovec arrays (16 bytes each: base, len).
 * Only for ranges known to be present: a missing page would block this thread
 * on a userfault. Use {@linkcode processVmReadvAsync} otherwise.
 */
export function processVmReadv(...args: IovecArgs): number {
  const r = Number(libc().process_vm_readv(...args, 0));
  return r === -1 ? -errno() : r;
}

/**
 * `process_vm_readv` on a worker thread, so that the pager's event loop keeps
 * serving faults the read itself may raise. Returns bytes read or `-errno`
 * (errno is read on the worker thread through the result convention below).
 */
export async function processVmReadvAsync(...args: IovecArgs): Promise<number> {
  const r = Number(await libc().process_vm_readv_async(...args, 0));
  // errno lives on the worker thread; a short count is the only reliable signal.
  return r === -1 ? -Errno.EFAULT : r;
}

/** `process_vm_writev` with prepared iovec arrays. */
export function processVmWritev(...args: IovecArgs): number {
  const r = Number(libc().process_vm_writev(...args, 0));
  return r === -1 ? -errno() : r;
}

/**
 * Maps `length` bytes of private anonymous memory, readable and writable, in
 * this process: page-aligned and never moved by the JavaScript heap.
 *
 * @returns the address, or `-errno`
 * @example
 * ```ts
 * const a = mmapAnonymous(65536);
 * if (a >= 0) munmap(a, 65536);
 * ```
 */
export function mmapAnonymous(length: number): number {
  return syscall(SYS.mmap, 0, length, PROT_READ_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/**
 * Unmaps `[address, address + length)` in this process.
 *
 * @returns 0, or `-errno`
 * @example
 * ```ts
 * munmap(mmapAnonymous(4096), 4096);
 * ```
 */
export function munmap(address: number, length: number): number {
  return syscall(SYS.munmap, address, length);
}

/** Sends `signal` to `pid`: 0 or `-errno`. */
export function kill(pid: number, signal: number): number {
  return syscall(SYS.kill, pid, signal);
}

/** Sends `signal` to thread `tid` of process `tgid`: 0 or `-errno`. */
export function tgkill(tgid: number, tid: number, signal: number): number {
  return syscall(SYS.tgkill, tgid, tid, signal);
}

/** Signal numbers used by remora. */
export const Signal = {
  SIGKILL: 9,
  SIGTRAP: 5,
  SIGSTOP: 19,
  SIGCONT: 18,
  SIGTERM: 15,
  SIGCHLD: 17,
} as const;

/** Our own pid. */
export function getpid(): number {
  return syscall(SYS.getpid);
}

/** Our effective uid. */
export function geteuid(): number {
  return syscall(SYS.geteuid);
}

/** `pidfd_open(pid)`: a pidfd or `-errno`. */
export function pidfdOpen(pid: number): number {
  return syscall(SYS.pidfdOpen, pid, 0);
}

/** `pidfd_getfd(pidfd, targetfd)`: a duplicate of the target's fd in our table, or `-errno`. */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  return syscall(SYS.pidfdGetfd, pidfd, targetFd, 0);
}

/** Bytes of the CPU masks remora reads and sets (1,024 CPUs, as glibc's `cpu_set_t`). */
const CPU_MASK_BYTES = 128;

/**
 * The CPUs thread `tid` may run on (0: the calling thread), as a bit mask,
 * or null if it cannot be read (the thread is gone).
 *
 * @example
 * ```ts
 * const mask = cpuAffinity(0);
 * console.log(mask !== null && (mask[0] & 1n) !== 0n); // may run on CPU 0
 * ```
 */
export function cpuAffinity(tid: number): BigUint64Array | null {
  const mask = new BigUint64Array(CPU_MASK_BYTES / 8);
  return syscall(SYS.schedGetaffinity, tid, CPU_MASK_BYTES, addressOf(mask)) < 0 ? null : mask;
}

/**
 * Lets thread `tid` (0: the calling thread) run only on the CPUs of `mask`.
 * Returns 0 or `-errno`.
 *
 * @example
 * ```ts
 * setCpuAffinity(0, onlyCpu(1)); // this thread runs on CPU 1 from now on
 * ```
 */
export function setCpuAffinity(tid: number, mask: BigUint64Array): number {
  return syscall(SYS.schedSetaffinity, tid, mask.byteLength, addressOf(mask));
}

/**
 * A mask of CPU `cpu` alone, for {@linkcode setCpuAffinity}.
 *
 * @example
 * ```ts
 * onlyCpu(65)[1]; // 2n
 * ```
 */
export function onlyCpu(cpu: number): BigUint64Array {
  const mask = new BigUint64Array(CPU_MASK_BYTES / 8);
  mask[cpu >> 6] = 1n << BigInt(cpu & 63);
  return mask;
}

/**
 * Whether CPU `cpu` is in `mask`.
 *
 * @example
 * ```ts
 * maskHasCpu(onlyCpu(3), 3); // true
 * ```
 */
export function maskHasCpu(mask: BigUint64Array, cpu: number): boolean {
  return cpu >= 0 && cpu < mask.length * 64 && (mask[cpu >> 6] & (1n << BigInt(cpu & 63))) !== 0n;
}

/**
 * `sched_yield()`: lets another runnable thread have this CPU now, if one
 * waits (a busy-poll that steps aside for the program it serves).
 */
export function schedYield(): void {
  syscall(SYS.schedYield);
}

/** `eventfd2(0, EFD_CLOEXEC|EFD_NONBLOCK)`: wakes the fault-wait thread from TypeScript. */
export function eventfd(): number {
  // EFD_CLOEXEC and EFD_NONBLOCK have the values of their O_ namesakes.
  return syscallOrThrow("eventfd2", SYS.eventfd2, 0, O_CLOEXEC | O_NONBLOCK);
}

const eventfdValue = new BigUint64Array([1n]);

/** Makes an eventfd readable (wakes a poll on it). */
export function eventfdSignal(fd: number): void {
  syscall(SYS.write, fd, addressOf(eventfdValue), 8);
}

/** Clears an eventfd's counter. */
export function eventfdDrain(fd: number): void {
  read(fd, new Uint8Array(eventfdValue.buffer));
}

/** `wait4(pid, &status, options)`: returns `[pid or -errno, status]`. */
export function wait4(pid: number, options: number, status: Int32Array): number {
  return syscall(SYS.wait4, pid, addressOf(status), options, 0);
}

/**
 * Blocking `wait4(pid, &status, options)` on a worker thread (any thread of
 * the tracer may wait for its tracees). Returns the pid, or -1 (errno is the
 * worker's and cannot be read here).
 */
export async function wait4Async(
  pid: number,
  options: number,
  status: Int32Array,
): Promise<number> {
  const bytes = new Uint8Array(status.buffer, status.byteOffset, status.byteLength);
  return await libc().wait4_async(pid, bytes, options, null);
}

/** `wait4` options. */
export const WNOHANG = 1;
/** Report stopped children. */
export const WUNTRACED = 2;
/** Wait for threads as well as processes (needed for non-leader tids). */
export const __WALL = 0x40000000;

/**
 * Spawns `argv` with `posix_spawnp`, inheriting our environment and stdio.
 * Returns the child pid. Used instead of Deno.Command so that the pager needs
 * only `--allow-ffi`.
 */
export function spawn(argv: string[]): number {
  const strings = argv.map((a) => encoder.encode(a + "\0"));
  const ptrs = new BigUint64Array(argv.length + 1);
  strings.forEach((s, i) => ptrs[i] = BigInt(addressOf(s)));
  const pidOut = new Int32Array(1);
  const env = new Deno.UnsafePointerView(libc().environ!).getPointer();
  const r = libc().posix_spawnp(
    new Uint8Array(pidOut.buffer),
    strings[0],
    null,
    null,
    new Uint8Array(ptrs.buffer),
    env,
  );
  if (r !== 0) throw new SyscallError(`starting ${argv[0]}`, r);
  return pidOut[0];
}

/** Reads a whole small file (e.g. under /proc) through FFI; `null` if it cannot be opened. */
export function readSmallFile(path: string): string | null {
  const fd = open(path, O_RDONLY);
  if (fd < 0) return null;
  try {
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const buf = new Uint8Array(65536);
      const n = read(fd, buf);
      if (n <= 0) break;
      chunks.push(buf.subarray(0, n));
      total += n;
    }
    const all = new Uint8Array(total);
    let off = 0;
    for (const c of chunks) {
      all.set(c, off);
      off += c.length;
    }
    return new TextDecoder().decode(all);
  } finally {
    close(fd);
  }
}

const O_DIRECTORY = 0o200000;

/** Names in a directory (without `.` and `..`), via getdents64; `[]` if it cannot be opened. */
export function listDirectory(path: string): string[] {
  const fd = open(path, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return [];
  const names: string[] = [];
  const buf = new Uint8Array(32768);
  const view = new DataView(buf.buffer);
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const n = syscall(SYS.getdents64, fd, addressOf(buf), buf.length);
      if (n <= 0) break;
      for (let off = 0; off < n;) {
        const reclen = view.getUint16(off + 16, true);
        let end = off + 19;
        while (buf[end] !== 0) end++;
        const name = decoder.decode(buf.subarray(off + 19, end));
        if (name !== "." && name !== "..") names.push(name);
        off += reclen;
      }
    }
  } finally {
    close(fd);
  }
  return names;
}

/**
 * The target of the symbolic link at `path` (e.g. `/proc/self/fd/5`), or
 * null if it is not one or cannot be read. Through the kernel, so it needs
 * no `--allow-read`.
 *
 * @example
 * ```ts
 * console.log(readLink("/proc/self/exe"));
 * ```
 */
export function readLink(path: string): string | null {
  const buf = new Uint8Array(4096);
  const n = syscall(
    SYS.readlink,
    addressOf(cPath(path)),
    addressOf(buf),
    buf.length,
  );
  return n < 0 ? null : new TextDecoder().decode(buf.subarray(0, n));
}
