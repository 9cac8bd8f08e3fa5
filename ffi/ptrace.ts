/**
 * Runs system calls inside another process with ptrace, without its help.
 *
 * The thread is seized and interrupted, its registers are saved, and it is
 * single-stepped over a `syscall` instruction that already exists in its own
 * code (the vDSO has one). No text is ever written into the target: other
 * threads may be executing the same code at that moment.
 *
 * @module
 */

import {
  __WALL,
  addressOf,
  close,
  Errno,
  errnoName,
  O_RDONLY,
  open,
  processVmReadv,
  PTRACE,
  readSmallFile,
  schedYield,
  Signal,
  SYS,
  syscall,
  SyscallError,
  wait4Async,
  WNOHANG,
} from "./libc.ts";
import { parseMaps } from "./proc.ts";

/**
 * How long to look for a ptrace stop, serving the target meanwhile, before
 * waiting on a worker thread. An injected drop of 512 pages in runs takes
 * about a millisecond, most of it the thread waiting for its REMOVE events
 * to be read: served at once here, each costs a wake-up of the thread; left
 * to the event loop, a turn of it (seq sweep, 64 MiB in 16 MiB: time in
 * drops 325 ms with a 0.05 ms look, 157 ms with this one).
 */
const STOP_SPIN_MS = 1;

/** Indices into `struct user_regs_struct` (x86_64), in u64 words. */
const R = {
  r10: 7,
  r9: 8,
  r8: 9,
  rax: 10,
  rdx: 12,
  rsi: 13,
  rdi: 14,
  orig_rax: 15,
  rip: 16,
} as const;
const REGS_WORDS = 27;

function ptrace(req: number, tid: number, addr: number, data: number): number {
  return syscall(SYS.ptrace, req, tid, addr, data);
}

/**
 * What the pager does while it waits for the target: it must keep serving
 * the faults and reading the events (a drop's REMOVE) that the target raises
 * on its way to a stop, or both would wait for each other.
 */
export interface Pump {
  /** Reads and handles what is pending now; never waits (called between looks for a stop). */
  now(): void;
  /** Lets the event loop turn once (store replies, sockets), serving meanwhile. */
  turn(): Promise<void>;
}

/**
 * Keeps a thread's own registers while an injection borrows the thread,
 * somewhere that outlives the pager: a pager killed mid-call leaves the
 * thread in the trampoline, and the next pager puts them back.
 */
export interface RegisterKeeper {
  /** Thread `tid`'s own registers, before they are changed. */
  keep(tid: number, regs: BigInt64Array): void;
  /** The thread has its own registers back. */
  done(): void;
}

/** The target thread went away (exited or was killed) while we worked on it. */
export class TargetGoneError extends Error {
  /** Builds the error for thread `tid`. */
  constructor(tid: number, detail = "") {
    super(`thread ${tid} exited${detail ? ` (${detail})` : ""}`);
    this.name = "TargetGoneError";
  }
}

/**
 * One ptrace session on one thread: seized and stopped on creation,
 * registers restored and detached by {@linkcode end}.
 */
export class ThreadInjection {
  readonly #tid: number;
  readonly #syscallAddr: number;
  readonly #pump: Pump;
  readonly #saved = new BigInt64Array(REGS_WORDS);
  readonly #regs = new BigInt64Array(REGS_WORDS);
  readonly #status = new Int32Array(1);
  readonly #pendingSignals: number[] = [];
  #attached = false;
  #tgid: number;
  #keeper: RegisterKeeper | null = null;

  private constructor(tid: number, syscallAddr: number, pump: Pump) {
    this.#tid = tid;
    this.#tgid = tid;
    this.#syscallAddr = syscallAddr;
    this.#pump = pump;
  }

  /**
   * Seizes and stops thread `tid`. If the thread is already a stopped tracee
   * of ours (`alreadyStopped`, e.g. at an exec event), it is used as it is.
   * `keeper` is given the thread's registers before any call changes them.
   */
  static async begin(
    tid: number,
    syscallAddr: number,
    pump: Pump,
    alreadyStopped = false,
    tgid = tid,
    keeper: RegisterKeeper | null = null,
  ): Promise<ThreadInjection> {
    const inj = new ThreadInjection(tid, syscallAddr, pump);
    inj.#tgid = tgid;
    inj.#keeper = keeper;
    if (!alreadyStopped) {
      const r = ptrace(PTRACE.SEIZE, tid, 0, PTRACE.O_TRACESYSGOOD);
      if (r < 0) throw new SyscallError(`ptrace(SEIZE, ${tid})`, -r);
      inj.#attached = true;
      const i = ptrace(PTRACE.INTERRUPT, tid, 0, 0);
      if (i < 0) {
        ptrace(PTRACE.DETACH, tid, 0, 0);
        throw new SyscallError(`ptrace(INTERRUPT, ${tid})`, -i);
      }
      await inj.#waitStop();
    } else {
      // Stopped at an exec event: execve has not stored its return value in
      // rax yet and would overwrite ours. Let it finish into an interrupt stop.
      inj.#attached = true;
      ptrace(PTRACE.SETOPTIONS, tid, 0, PTRACE.O_TRACEEXEC | PTRACE.O_TRACESYSGOOD);
      ptrace(PTRACE.INTERRUPT, tid, 0, 0);
      ptrace(PTRACE.CONT, tid, 0, 0);
      while (((await inj.#waitStop()) >> 16) !== PTRACE.EVENT_STOP) {
        ptrace(PTRACE.CONT, tid, 0, 0);
      }
    }
    inj.#attached = true;
    inj.#getRegs(inj.#saved);
    keeper?.keep(tid, inj.#saved);
    return inj;
  }

  /**
   * Makes `regs` the registers {@linkcode end} puts back: a killed pager's
   * record of what the thread had before it was borrowed.
   */
  restoreOnEnd(regs: BigInt64Array): void {
    this.#saved.set(regs);
  }

  /** The instruction pointer the thread was stopped at. */
  get stoppedAt(): number {
    return Number(this.#saved[R.rip]);
  }

  /**
   * Address of the thread's rseq area (the kernel writes it on the thread's
   * way back to user space), or 0 if it registered none or the kernel is
   * older than 5.13.
   */
  rseqArea(): number {
    // struct ptrace_rseq_configuration: u64 rseq_abi_pointer, u32 size,
    // u32 signature, u32 flags, u32 pad.
    const conf = new BigUint64Array(3);
    const r = ptrace(PTRACE.GET_RSEQ_CONFIGURATION, this.#tid, conf.byteLength, addressOf(conf));
    return r > 0 ? Number(conf[0]) : 0;
  }

  /** Runs syscall `nr` in the thread; returns its result (negative errno on failure). */
  call(nr: number, ...args: number[]): Promise<number> {
    return this.callAt(this.#syscallAddr, nr, ...args);
  }

  /**
   * Runs syscall `nr` from the `syscall` instruction at `syscallAddr` (e.g.
   * the vDSO's, to unmap the trampoline the thread otherwise runs from).
   */
  async callAt(syscallAddr: number, nr: number, ...args: number[]): Promise<number> {
    const regs = this.#regs;
    regs.set(this.#saved);
    regs[R.rax] = BigInt(nr);
    const argRegs = [R.rdi, R.rsi, R.rdx, R.r10, R.r8, R.r9];
    args.forEach((a, i) => regs[argRegs[i]] = BigInt(a));
    regs[R.rip] = BigInt(syscallAddr);
    // orig_rax = -1 keeps the kernel's syscall-restart logic away from our
    // registers if the thread was stopped inside an interrupted syscall.
    regs[R.orig_rax] = -1n;
    this.#setRegs(regs);
    // Syscall stops, not single steps: a pager killed meanwhile leaves no
    // trap flag behind (the kernel clears syscall tracing on the tracer's
    // death, but not the trap flag, whose SIGTRAP then killed the target).
    let entered = false;
    for (;;) {
      const r = ptrace(PTRACE.SYSCALL, this.#tid, 0, 0);
      if (r < 0) {
        throw r === -Errno.ESRCH
          ? new TargetGoneError(this.#tid)
          : new SyscallError("ptrace(SYSCALL)", -r);
      }
      const status = await this.#waitStop();
      const sig = (status >> 8) & 0xff;
      if (sig === (Signal.SIGTRAP | 0x80)) {
        if (entered) {
          this.#getRegs(regs);
          return Number(regs[R.rax]);
        }
        entered = true;
        continue;
      }
      // A signal arrived before the call ran (or a group stop): keep it for detach.
      if ((status >> 16) === 0 && sig !== Signal.SIGTRAP) this.#pendingSignals.push(sig);
    }
  }

  /** Restores the registers and detaches, delivering any signal that arrived meanwhile. */
  end(): void {
    if (!this.#attached) return;
    this.#attached = false;
    // Detach even if the registers cannot be put back (the thread is gone):
    // a thread left seized would refuse every later attach with EPERM.
    ptrace(PTRACE.SETREGS, this.#tid, 0, addressOf(this.#saved));
    const first = this.#pendingSignals.shift() ?? 0;
    ptrace(PTRACE.DETACH, this.#tid, 0, first);
    this.#keeper?.done();
    for (const sig of this.#pendingSignals) syscall(SYS.tgkill, this.#tgid, this.#tid, sig);
  }

  /**
   * Waits for the thread's next stop on a worker thread. The event loop stays
   * free meanwhile, so the pager keeps serving the faults and reading the
   * events (a drop's REMOVE) that the thread raises on its way to the stop.
   */
  async #waitStop(): Promise<number> {
    const status = this.#status;
    for (;;) {
      // Most stops come within a millisecond: look for one, serving the
      // target between looks, before paying a worker-thread round trip.
      let r = 0;
      const until = performance.now() + STOP_SPIN_MS;
      for (;;) {
        r = syscall(SYS.wait4, this.#tid, addressOf(status), WNOHANG | __WALL, 0);
        if (r !== 0 || performance.now() >= until) break;
        this.#pump.now();
        schedYield(); // the thread may share this CPU (co-location): let it run
      }
      if (r === 0) r = await wait4Async(this.#tid, __WALL, status);
      if (r === this.#tid) {
        const s = status[0];
        if ((s & 0xff) === 0x7f) return s; // stopped
        this.#attached = false;
        throw new TargetGoneError(this.#tid, `status 0x${s.toString(16)}`); // exited or killed
      }
      // -1: interrupted (look again) or the thread is gone.
      if (readSmallFile(`/proc/${this.#tgid}/task/${this.#tid}/stat`) === null) {
        this.#attached = false;
        throw new TargetGoneError(this.#tid, "gone");
      }
      await this.#pump.turn();
    }
  }

  #getRegs(into: BigInt64Array): void {
    const r = ptrace(PTRACE.GETREGS, this.#tid, 0, addressOf(into));
    if (r < 0) throw new SyscallError("ptrace(GETREGS)", -r);
  }

  #setRegs(from: BigInt64Array): void {
    const r = ptrace(PTRACE.SETREGS, this.#tid, 0, addressOf(from));
    if (r < 0) throw new SyscallError("ptrace(SETREGS)", -r);
  }
}

/**
 * Finds the address of a `syscall` instruction (0f 05) in the target. The vDSO
 * is the same image in every process on this kernel, so the offset is found in
 * our own copy; an executable mapping of the target is searched otherwise.
 */
export function findSyscallInstruction(pid: number): number {
  const theirs = parseMaps(readTargetMaps(pid));
  const theirVdso = theirs.find((m) => m.path === "[vdso]");
  const ours = parseMaps(readSmallFile("/proc/self/maps") ?? "").find((m) => m.path === "[vdso]");
  if (theirVdso && ours) {
    const len = ours.end - ours.start;
    const view = new Deno.UnsafePointerView(Deno.UnsafePointer.create(BigInt(ours.start))!);
    const bytes = new Uint8Array(view.getArrayBuffer(len));
    const off = findSyscallBytes(bytes);
    if (off >= 0 && off + 2 <= theirVdso.end - theirVdso.start) return theirVdso.start + off;
  }
  for (const m of theirs) {
    if (!m.perms.includes("x") || m.path === "[vsyscall]") continue;
    const len = Math.min(m.end - m.start, 1 << 20);
    const buf = new Uint8Array(len);
    const local = new BigUint64Array([BigInt(addressOf(buf)), BigInt(len)]);
    const remote = new BigUint64Array([BigInt(m.start), BigInt(len)]);
    const n = processVmReadv(
      pid,
      new Uint8Array(local.buffer),
      1,
      new Uint8Array(remote.buffer),
      1,
    );
    if (n <= 0) continue;
    const off = findSyscallBytes(buf.subarray(0, n));
    if (off >= 0) return m.start + off;
  }
  if (!processExists(pid)) throw new Error(`pid ${pid} exited while attaching`);
  throw new Error(`no syscall instruction found in process ${pid}`);
}

/**
 * The text of /proc/PID/maps, or an error that says why it cannot be read:
 * the process is gone, or we may not inspect it (e.g. it lives in another
 * user namespace), rather than the empty map a failed read would look like.
 */
function readTargetMaps(pid: number): string {
  const path = `/proc/${pid}/maps`;
  const fd = open(path, O_RDONLY);
  if (fd < 0) {
    if (-fd === Errno.ENOENT || -fd === Errno.ESRCH) {
      throw new Error(`pid ${pid} exited while attaching`);
    }
    throw new Error(
      `cannot read ${path} (${errnoName(-fd)}): this pager may not inspect pid ${pid} ` +
        `(another user namespace, or a protected process); nothing was changed in it`,
    );
  }
  close(fd);
  const text = readSmallFile(path);
  if (text === null) throw new Error(`pid ${pid} exited while attaching`);
  return text;
}

/** Whether `pid` still exists and is not a zombie. */
function processExists(pid: number): boolean {
  const stat = readSmallFile(`/proc/${pid}/stat`);
  if (stat === null) return false;
  return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
}

function findSyscallBytes(bytes: Uint8Array): number {
  for (let i = 0; i + 1 < bytes.length; i++) {
    if (bytes[i] === 0x0f && bytes[i + 1] === 0x05) return i;
  }
  return -1;
}
