/**
 * Test helpers: build the C targets, start them and the pager as real
 * processes, follow their output line by line, read their memory use.
 *
 * @module
 */

import { killTree, PATIENCE_MS, track } from "./harness.ts";

/** The repository root. */
export const ROOT: string = new URL("../..", import.meta.url).pathname;
const BUILD = `${ROOT}build/test`;

/** Compiles `test/targets/NAME.c` (once per run) and returns the binary's path. */
export async function buildTarget(name: string): Promise<string> {
  const out = `${BUILD}/${name}`;
  await Deno.mkdir(BUILD, { recursive: true });
  const cc = await new Deno.Command("gcc", {
    args: ["-O2", "-Wall", "-pthread", "-o", out, `${ROOT}test/targets/${name}.c`],
  }).output();
  if (!cc.success) throw new Error(`gcc ${name}.c failed:\n${new TextDecoder().decode(cc.stderr)}`);
  return out;
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

  /** Starts `cmd` with `args`. */
  constructor(cmd: string, args: string[], env?: Record<string, string>) {
    this.child = new Deno.Command(cmd, {
      args,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      cwd: ROOT,
    }).spawn();
    const pumps = [
      this.#collect(this.child.stdout, this.out),
      this.#collect(this.child.stderr, this.err),
    ];
    this.#done = Promise.all(pumps).then(() => this.child.status);
    track(cmd.split("/").pop()!, this.child, () => this.text(), this.#done);
  }

  /** Process id. */
  get pid(): number {
    return this.child.pid;
  }

  async #collect(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
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
   * Waits until a line of stdout or stderr matches. Fails after `ms`, or
   * at once when the process has ended without printing it.
   */
  async waitFor(pattern: RegExp, ms = PATIENCE_MS): Promise<string> {
    const deadline = Date.now() + ms;
    let ended = false;
    this.#done.then(() => ended = true, () => ended = true);
    for (;;) {
      const all = [...this.out, ...this.err];
      const hit = all.find((l) => pattern.test(l));
      if (hit !== undefined) return hit;
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

  /** Everything it printed, for failure messages. */
  text(): string {
    return [...this.out, ...this.err].join("\n");
  }
}

/** Starts the pager CLI with `args` (with only the permissions a user gives it). */
export function startPager(args: string[], perms = ["--allow-ffi"]): Proc {
  return new Proc("deno", ["run", ...perms, `${ROOT}pager.ts`, ...args]);
}

/** RssAnon of a process in KiB (0 if it is gone). */
export function rssAnonKiB(pid: number): number {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/status`);
    return parseInt(/RssAnon:\s+(\d+)/.exec(text)?.[1] ?? "0", 10);
  } catch {
    return 0;
  }
}

/** Sleeps. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
