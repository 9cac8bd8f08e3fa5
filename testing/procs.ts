/**
 * Processes for tests and benchmarks: the C targets (built once), any program
 * started as a {@linkcode Proc} whose output is followed line by line, and the
 * pager CLI started as a user would start it.
 *
 * Every process started here is registered with the harness's `track()`, so a
 * failing test prints its last lines.
 *
 * @example
 * ```ts
 * import { buildTarget, Proc, startPager } from "./procs.ts";
 * const target = new Proc(await buildTarget("memcheck"), ["16", "0", "1", "0", "20"]);
 * await target.waitFor(/round 0 ok/);
 * const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
 * await pager.waitFor(/attached to pid/);
 * ```
 *
 * @module
 */

import { killTree, PATIENCE_MS, track, waitUntil } from "./harness.ts";

/** The repository root, ending in `/`. */
export const ROOT: string = new URL("..", import.meta.url).pathname;
const BUILD = `${ROOT}build/test`;

/**
 * Compiles `testing/targets/NAME.c` into `build/test/NAME` and returns the
 * binary's path. The binary is renamed into place, so that two test files
 * building at once never run a half-written one.
 *
 * @example
 * ```ts
 * const memcheck = await buildTarget("memcheck");
 * ```
 */
export async function buildTarget(name: string): Promise<string> {
  const out = `${BUILD}/${name}`;
  const tmp = `${out}.${Deno.pid}`;
  await Deno.mkdir(BUILD, { recursive: true });
  const cc = await new Deno.Command("gcc", {
    args: ["-O2", "-Wall", "-pthread", "-o", tmp, `${ROOT}testing/targets/${name}.c`],
  }).output();
  if (!cc.success) throw new Error(`gcc ${name}.c failed:\n${new TextDecoder().decode(cc.stderr)}`);
  await Deno.rename(tmp, out);
  return out;
}

/** How to start a {@linkcode Proc}. */
export interface ProcOptions {
  /** Environment variables added to ours. */
  env?: Record<string, string>;
  /** Working directory (default: the repository root). */
  cwd?: string;
  /** What the failure report calls it (default: the program's file name). */
  label?: string;
}

/** A running process whose stdout and stderr are collected as lines. */
export class Proc {
  /** The child process. */
  readonly child: Deno.ChildProcess;
  /** Lines of stdout so far. */
  readonly out: string[] = [];
  /** Lines of stderr so far. */
  readonly err: string[] = [];
  readonly #waiters: Array<() => void> = [];
  readonly #done: Promise<Deno.CommandStatus>;
  #interleaved = "";

  /**
   * Starts `cmd` with `args`, stdin closed, stdout and stderr collected.
   *
   * @example
   * ```ts
   * const p = new Proc("sh", ["-c", "echo hi"], { label: "greeter" });
   * await p.waitFor(/hi/);
   * ```
   */
  constructor(cmd: string, args: string[], opts: ProcOptions = {}) {
    this.child = new Deno.Command(cmd, {
      args,
      env: opts.env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      cwd: opts.cwd ?? ROOT,
    }).spawn();
    const pumps = [
      this.#collect(this.child.stdout, this.out),
      this.#collect(this.child.stderr, this.err),
    ];
    this.#done = Promise.all(pumps).then(() => this.child.status);
    track(opts.label ?? cmd.split("/").pop()!, this.child, () => this.text(), this.#done);
  }

  /** Process id. */
  get pid(): number {
    return this.child.pid;
  }

  /** The exit status of the process itself (its output may still be arriving). */
  get status(): Promise<Deno.CommandStatus> {
    return this.child.status;
  }

  async #collect(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      this.#interleaved += chunk;
      rest += chunk;
      const parts = rest.split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
      this.#waiters.splice(0).forEach((w) => w());
    }
    if (rest !== "") lines.push(rest);
    this.#waiters.splice(0).forEach((w) => w());
  }

  /**
   * Waits until a line of stdout or stderr matches; returns the match in that
   * line. Fails after `ms`, or at once when the process has ended without
   * printing it.
   *
   * @example
   * ```ts
   * const pid = Number((await pager.waitFor(/ready pid (\d+)/))[1]);
   * ```
   */
  async waitFor(pattern: RegExp, ms = PATIENCE_MS): Promise<RegExpExecArray> {
    const deadline = Date.now() + ms;
    let ended = false;
    this.#done.then(() => ended = true, () => ended = true);
    for (;;) {
      const all = [...this.out, ...this.err];
      for (const line of all) {
        const hit = pattern.exec(line);
        if (hit !== null) return hit;
      }
      if (ended || Date.now() > deadline) {
        const why = ended ? "it exited first" : `${Math.round(ms / 1000)} s passed`;
        throw new Error(
          `waited for ${pattern} from ${this.child.pid}, but ${why}; output:\n${
            all.slice(-30).join("\n")
          }`,
        );
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        new Promise<void>((r) => this.#waiters.push(r)),
        this.#done,
        new Promise<void>((r) => timer = setTimeout(r, 100)),
      ]);
      clearTimeout(timer);
    }
  }

  /** Counts stdout lines matching `pattern`. */
  count(pattern: RegExp): number {
    return this.out.filter((l) => pattern.test(l)).length;
  }

  /** Waits for exit (killing it after `ms`); returns the exit code. */
  async exit(ms = PATIENCE_MS): Promise<number> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<null>((r) => timer = setTimeout(() => r(null), ms));
    const st = await Promise.race([this.#done, timeout]);
    clearTimeout(timer);
    if (st === null) {
      // A program started under a pager that is killed outright stays blocked
      // (by design) and would outlive the test: take its descendants too.
      killTree(this.pid);
      const s = await this.#done;
      throw new Error(`process did not exit in ${ms} ms (killed; code ${s.code}):\n${this.text()}`);
    }
    return st.code;
  }

  /** Sends a signal, ignoring a process that is already gone. */
  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.child.kill(signal);
    } catch {
      // already exited
    }
  }

  /** Everything it printed, stdout lines then stderr lines, for failure messages. */
  text(): string {
    return [...this.out, ...this.err].join("\n");
  }

  /** Everything it printed so far, stdout and stderr interleaved as they came. */
  output(): string {
    return this.#interleaved;
  }
}

/** The permissions a pager with a remote backend needs (a user gives no more). */
export const REMOTE_PAGER_PERMS: readonly string[] = ["--allow-ffi", "--allow-net", "--allow-read"];

/** How to start the pager CLI with {@linkcode startPager}. */
export interface PagerStart {
  /** Deno permissions (default `--allow-ffi` only, as for the embedded backend). */
  perms?: readonly string[];
  /** A program to start under the pager (after `--`); omit to attach with `--pid`. */
  program?: string[];
  /** Environment added for the pager (and so for a program it starts). */
  env?: Record<string, string>;
}

/**
 * Starts the pager CLI (`pager.ts ARGS [-- PROGRAM...]`) with only the
 * permissions a user gives it.
 *
 * @example
 * ```ts
 * const attached = startPager(["--pid", "4242", "--local", "4M"]);
 * const started = startPager(["--local", "8M", "--backend", "tcp://127.0.0.1:7070"], {
 *   perms: REMOTE_PAGER_PERMS,
 *   program: ["./build/test/memcheck", "16"],
 * });
 * ```
 */
export function startPager(args: string[], opts: PagerStart = {}): Proc {
  const perms = opts.perms ?? ["--allow-ffi"];
  const program = opts.program ? ["--", ...opts.program] : [];
  return new Proc(Deno.execPath(), ["run", ...perms, `${ROOT}pager.ts`, ...args, ...program], {
    label: "pager",
    env: opts.env,
  });
}

/**
 * Runs the pager CLI with `args` to completion (with the permissions a remote
 * backend and `--stats-json` need); returns its exit code and process.
 *
 * @example
 * ```ts
 * const { code, p } = await runPager(["--pid", "1"]);
 * ```
 */
export async function runPager(args: string[]): Promise<{ code: number; p: Proc }> {
  const p = startPager(args, { perms: [...REMOTE_PAGER_PERMS, "--allow-write"] });
  return { code: await p.exit(), p };
}

/**
 * The CPUs thread `tid` of `pid` may run on, as /proc shows them ("0-1", "1").
 *
 * @example
 * ```ts
 * cpusAllowed(Deno.pid); // "0-1" on a machine with two CPUs
 * ```
 */
export function cpusAllowed(pid: number, tid = pid): string {
  const status = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`);
  return /^Cpus_allowed_list:\s*(\S+)$/m.exec(status)?.[1] ?? "?";
}

/**
 * RssAnon of a process in KiB (0 if it is gone).
 *
 * @example
 * ```ts
 * const kib = rssAnonKiB(Deno.pid);
 * ```
 */
export function rssAnonKiB(pid: number): number {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/status`);
    return parseInt(/RssAnon:\s+(\d+)/.exec(text)?.[1] ?? "0", 10);
  } catch {
    return 0;
  }
}

/**
 * Sleeps.
 *
 * @example
 * ```ts
 * await sleep(10);
 * ```
 */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * The state letter of a process from /proc/PID/stat (`T`/`t` stopped, `S`
 * sleeping, `Z` zombie...), or null once it is gone.
 *
 * @example
 * ```ts
 * const stopped = /^[Tt]$/.test(processState(4242) ?? "");
 * ```
 */
export function processState(pid: number): string | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return null;
  }
}

/** Each thread of `pid`: its id, state letter and user time in ticks (empty if gone). */
function threadTimes(pid: number): { tid: string; state: string; utime: number }[] {
  const out: { tid: string; state: string; utime: number }[] = [];
  let tids: string[] = [];
  try {
    tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      out.push({ tid, state: f[0], utime: Number(f[11]) });
    } catch { /* the thread exited */ }
  }
  return out;
}

/**
 * Waits until process `pid` has halted after the pager lost pages and sent it
 * SIGSTOP: stopped (state T), or, when a thread is blocked inside the kernel
 * on a page that cannot come back (its rseq area, say: it can then neither run
 * nor stop), doing nothing: no thread gains user time and `output()` does not
 * change over 5 s. Returns how it halted; fails after `ms` if it keeps running.
 *
 * @example
 * ```ts
 * const how = await waitHalted(target.pid, () => target.text());
 * ```
 */
export async function waitHalted(
  pid: number,
  output: () => string,
  ms = PATIENCE_MS,
): Promise<string> {
  let how = "";
  await waitUntil(() => `pid ${pid} to stop or halt (last seen: ${how})`, async () => {
    if (processState(pid) === "T" || processState(pid) === null) return true;
    const before = threadTimes(pid), said = output();
    await new Promise((r) => setTimeout(r, 5000));
    const after = threadTimes(pid);
    const busy = after.some((t) => t.utime !== before.find((b) => b.tid === t.tid)?.utime);
    how = `threads ${after.map((t) => t.state).join(" ")}${busy ? ", still running" : ""}`;
    if (processState(pid) === "T" || processState(pid) === null) return true;
    return !busy && after.length === before.length && output() === said;
  }, ms);
  return processState(pid) === "T" ? "stopped" : `blocked in the kernel (${how})`;
}

/**
 * SIGKILLs a process by pid, ignoring one that is gone.
 *
 * @example
 * ```ts
 * killPid(4242);
 * ```
 */
export function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
}
