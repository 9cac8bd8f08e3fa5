/**
 * Parsers for /proc files (read through FFI so the pager needs only
 * `--allow-ffi`).
 *
 * @module
 */

import {
  addressOf,
  KCMP_VM,
  listDirectory,
  readSmallFile,
  SCHED_IDLE,
  SYS,
  syscall,
} from "./libc.ts";

/** One line of /proc/PID/maps. */
export interface Mapping {
  /** First address. */
  start: number;
  /** One past the last address. */
  end: number;
  /** `rwxp` / `rw-s` etc. */
  perms: string;
  /** Offset into the backing file. */
  offset: number;
  /** Device of the backing file, `MAJOR:MINOR` in hex as maps prints it. */
  dev: string;
  /** Inode of the backing file (0 for anonymous). */
  inode: number;
  /** Path or pseudo-name (`[heap]`, `[stack]`, `/memfd:...`), `""` for anonymous. */
  path: string;
}

/** Parses the text of /proc/PID/maps. */
export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      start: parseInt(m[1], 16),
      end: parseInt(m[2], 16),
      perms: m[3],
      offset: parseInt(m[4], 16),
      dev: m[5],
      inode: parseInt(m[6], 10),
      path: m[7],
    });
  }
  return out;
}

/** Reads and parses /proc/PID/maps; `null` if the process is gone. */
export function readMaps(pid: number): Mapping[] | null {
  const text = readSmallFile(`/proc/${pid}/maps`);
  return text === null ? null : parseMaps(text);
}

/**
 * Other processes (not `exceptPid`, nor its threads) that map the file
 * `dev`/`inode`: a file the pager punches holes in must be mapped by its
 * target alone, or the others would read zeros where pages were evicted.
 */
export function otherProcessesMapping(dev: string, inode: number, exceptPid: number): number[] {
  const needle = ` ${dev} ${inode} `;
  const out: number[] = [];
  for (const name of listDirectory("/proc")) {
    const pid = Number(name);
    if (!(pid > 0) || pid === exceptPid) continue;
    const text = readSmallFile(`/proc/${pid}/maps`);
    if (text !== null && text.includes(needle)) out.push(pid);
  }
  return out;
}

/**
 * Start addresses of mappings whose VmFlags in /proc/PID/smaps include `dc`
 * (MADV_DONTFORK: a child does not inherit them; QEMU marks guest RAM so).
 */
export function dontForkMappings(pid: number): Set<number> {
  const text = readSmallFile(`/proc/${pid}/smaps`) ?? "";
  const out = new Set<number>();
  let current = -1;
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (head) {
      current = parseInt(head[1], 16);
    } else if (line.startsWith("VmFlags:") && / dc( |$)/.test(line)) {
      out.add(current);
    }
  }
  return out;
}

/** Start addresses of mappings whose VmFlags in /proc/PID/smaps include `lo` (mlocked). */
export function lockedMappings(pid: number): Set<number> {
  const text = readSmallFile(`/proc/${pid}/smaps`) ?? "";
  const locked = new Set<number>();
  let current = -1;
  for (const line of text.split("\n")) {
    const head = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (head) {
      current = parseInt(head[1], 16);
    } else if (line.startsWith("VmFlags:") && / lo( |$)/.test(line)) {
      locked.add(current);
    }
  }
  return locked;
}

/** Fields of /proc/PID/status we use. */
export interface ProcStatus {
  /** Process name. */
  name: string;
  /** State letter (R, S, D, T, Z, ...). */
  state: string;
  /** Thread group id. */
  tgid: number;
  /** Resident anonymous memory, in KiB. */
  rssAnonKiB: number;
  /** Number of threads. */
  threads: number;
  /** Pid of the process tracing it, 0 if none. */
  tracerPid: number;
  /** Kernel threads have no memory map and no VmSize line. */
  isKernelThread: boolean;
}

/** Reads /proc/PID/status; `null` if the process does not exist. */
export function readStatus(pid: number): ProcStatus | null {
  const text = readSmallFile(`/proc/${pid}/status`);
  if (text === null) return null;
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, "m").exec(text)?.[1] ?? "";
  return {
    name: field("Name"),
    state: field("State").charAt(0),
    tgid: parseInt(field("Tgid"), 10),
    rssAnonKiB: parseInt(field("RssAnon"), 10) || 0,
    threads: parseInt(field("Threads"), 10) || 1,
    tracerPid: parseInt(field("TracerPid"), 10) || 0,
    isKernelThread: field("VmSize") === "" && field("Kthread") !== "0",
  };
}

/**
 * Whether a child of process `pid` shares its address space without being
 * one of its threads (`clone(CLONE_VM)` without `CLONE_THREAD`), by `kcmp`.
 * A vfork child does only while its parent cannot be stopped.
 *
 * @example
 * ```ts
 * if (!sharesMemoryWithChild(4242)) console.log("only its own threads use its memory");
 * ```
 */
export function sharesMemoryWithChild(pid: number): boolean {
  return childProcesses(pid).some((c) => syscall(SYS.kcmp, pid, c, KCMP_VM, 0, 0) === 0);
}

/**
 * The pids of the children of process `pid` (of all its threads), from
 * /proc/PID/task/TID/children; empty if it is gone.
 *
 * @example
 * ```ts
 * for (const child of childProcesses(4242)) console.log(child);
 * ```
 */
export function childProcesses(pid: number): number[] {
  const out: number[] = [];
  for (const tid of listThreads(pid)) {
    const text = readSmallFile(`/proc/${pid}/task/${tid}/children`) ?? "";
    for (const child of text.split(" ")) {
      const c = Number(child);
      if (c > 0) out.push(c);
    }
  }
  return out;
}

/** Thread ids of a process, from /proc/PID/task (listed with getdents64 through FFI). */
export function listThreads(pid: number): number[] {
  return listDirectory(`/proc/${pid}/task`).map(Number).filter((n) => n > 0).sort((a, b) => a - b);
}

/**
 * The state letter of each thread of a process (from /proc/PID/task/TID/stat;
 * the letter follows the last ")", as the command name may hold one). Empty if
 * the process is gone.
 *
 * @example
 * ```ts
 * const stopped = threadStates(4242).every((c) => c === "T" || c === "t");
 * ```
 */
export function threadStates(pid: number): string[] {
  const out: string[] = [];
  for (const tid of listThreads(pid)) {
    const stat = readSmallFile(`/proc/${pid}/task/${tid}/stat`);
    const at = stat === null ? -1 : stat.lastIndexOf(")");
    if (at >= 0) out.push(stat!.charAt(at + 2));
  }
  return out;
}

/**
 * A thread's state letter and the kernel function it waits in (`wchan`), for
 * a message about a thread that does not stop.
 *
 * @example
 * ```ts
 * console.log(threadWaitChannel(1234, 1234)); // "state D, waiting in userfaultfd_event_wait_completion"
 * ```
 */
export function threadWaitChannel(pid: number, tid: number): string {
  const dir = `/proc/${pid}/task/${tid}`;
  const stat = readSmallFile(`${dir}/stat`) ?? "";
  const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  return `state ${state || "?"}, waiting in ${readSmallFile(`${dir}/wchan`)?.trim() || "?"}`;
}

/**
 * Puts V8's helper threads of this process (background garbage collection
 * and compilation, named "V8 DefaultWorker") at `SCHED_IDLE`: they then run
 * only on a CPU that nothing else wants. A pager shares few CPUs with its
 * target; at normal priority these threads took the target's CPU for
 * milliseconds at a time. The main thread, and the threads that wake it,
 * keep their priority. Returns how many threads it changed.
 *
 * @example
 * ```ts
 * quietRuntimeHelpers(); // 2 on a machine with 2 CPUs
 * ```
 */
export function quietRuntimeHelpers(): number {
  const self = Deno.pid;
  const param = new Int32Array(1); // struct sched_param { int sched_priority = 0 }
  let changed = 0;
  for (const tid of listThreads(self)) {
    const comm = readSmallFile(`/proc/${self}/task/${tid}/comm`) ?? "";
    if (!comm.startsWith("V8 ")) continue;
    if (syscall(SYS.schedSetscheduler, tid, SCHED_IDLE, addressOf(param)) === 0) changed++;
  }
  return changed;
}

/**
 * The CPU a thread last ran on and its process's thread count, from
 * /proc/PID/task/TID/stat (fields 39 and 20); null if it is gone.
 *
 * @example
 * ```ts
 * const where = threadPlacement(4242, 4242); // { cpu: 1, threads: 1 }
 * ```
 */
export function threadPlacement(pid: number, tid: number): { cpu: number; threads: number } | null {
  const stat = readSmallFile(`/proc/${pid}/task/${tid}/stat`);
  if (stat === null) return null;
  // Fields after the command name (which may hold spaces and parentheses) start at field 3.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpu = Number(fields[39 - 3]), threads = Number(fields[20 - 3]);
  return Number.isInteger(cpu) && Number.isInteger(threads) ? { cpu, threads } : null;
}
