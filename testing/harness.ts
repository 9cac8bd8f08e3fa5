/**
 * The test harness every process-starting test goes through.
 *
 * - {@linkcode test} wraps `Deno.test`: when a test fails, its error carries
 *   the last lines of every process the test started (target, pager, peers,
 *   servers, QEMU), so the cause can be read from a CI log alone; processes
 *   a test leaves running are killed with their descendants afterwards.
 * - {@linkcode waitUntil} waits for a condition with a patient bound that
 *   only a real hang reaches: tests count events, never time them.
 *
 * @example
 * ```ts
 * import { test, track, waitUntil } from "./harness.ts";
 * test("a server answers", async () => {
 *   const child = new Deno.Command("sleep", { args: ["60"] }).spawn();
 *   track("sleeper", child, () => "");
 *   await waitUntil("the sleeper to run", () => child.pid > 0);
 * });
 * ```
 *
 * @module
 */

/**
 * How long a test waits for an event before it calls it a hang: minutes, so
 * that a slow or busy machine is never mistaken for a broken pager.
 */
export const PATIENCE_MS = 180_000;

/**
 * The most one test may take before it is failed as hung (with the report of
 * its processes), so that a hang ends the run with an explanation instead of
 * running into CI's own limit.
 */
export const TEST_LIMIT_MS = 900_000;

/** A process a test started, as the failure report and the cleanup see it. */
interface Tracked {
  label: string;
  pid: number;
  output: () => string;
  code: number | null;
  signal: string | null;
  done: Promise<unknown>;
  child: Deno.ChildProcess;
}

/** Processes started by the test that is running now (null between tests). */
let current: Tracked[] | null = null;
/** Processes started outside any test (shared by a file's tests). */
const shared: Tracked[] = [];

/**
 * Registers a process so that a failing test reports its last output lines
 * and a finished test does not leave it running.
 *
 * @param label what it is, e.g. "pager" or "memcached 127.0.0.1:11211"
 * @param child the process
 * @param output everything it printed so far (stdout and stderr)
 * @param done settles once its output is fully read (defaults to its status)
 * @example
 * ```ts
 * const child = new Deno.Command("true").spawn();
 * track("true", child, () => "");
 * ```
 */
export function track(
  label: string,
  child: Deno.ChildProcess,
  output: () => string,
  done: Promise<unknown> = child.status,
): void {
  const t: Tracked = { label, pid: child.pid, output, code: null, signal: null, done, child };
  child.status.then((s) => {
    t.code = s.code;
    t.signal = s.signal;
  }, () => {});
  (current ?? shared).push(t);
}

/** The last `lines` lines of every process the running test started. */
export function processReport(lines = 25): string {
  const all = [...(current ?? []), ...shared];
  if (all.length === 0) return "";
  return all.map((t) => {
    const state = t.code === null
      ? "still running"
      : `exited with code ${t.code}${t.signal ? ` (${t.signal})` : ""}`;
    const text = t.output().trimEnd().split("\n").slice(-lines).join("\n");
    return `--- ${t.label} (pid ${t.pid}, ${state}), last lines ---\n${text || "(no output)"}`;
  }).join("\n");
}

/**
 * Waits until `cond` holds, polling; fails after `ms` with what it waited for
 * (`what` may be a function, to describe the last state seen).
 *
 * @example
 * ```ts
 * let n = 0;
 * setTimeout(() => n = 1, 10);
 * await waitUntil("n to become 1", () => n === 1);
 * ```
 */
export async function waitUntil(
  what: string | (() => string),
  cond: () => boolean | Promise<boolean>,
  ms = PATIENCE_MS,
): Promise<void> {
  const start = Date.now();
  let pause = 10;
  while (!(await cond())) {
    if (Date.now() - start > ms) {
      const said = typeof what === "string" ? what : what();
      throw new Error(`waited ${Math.round(ms / 1000)} s for ${said}; it never happened`);
    }
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 250);
  }
}

/**
 * Awaits `promise`, failing with `what` if it has not settled after `ms`:
 * for operations that must end (fail or succeed) rather than hang.
 *
 * @example
 * ```ts
 * await withPatience("a quick answer", Promise.resolve(1));
 * ```
 */
export async function withPatience<T>(
  what: string,
  promise: Promise<T>,
  ms = PATIENCE_MS,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`waited ${Math.round(ms / 1000)} s for ${what}; it never came`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** Pids of every descendant of `pid`, from /proc/PID/task/TID/children. */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop()!;
    let tasks: string[] = [];
    try {
      tasks = [...Deno.readDirSync(`/proc/${p}/task`)].map((e) => e.name);
    } catch { /* gone */ }
    for (const tid of tasks) {
      try {
        const kids = Deno.readTextFileSync(`/proc/${p}/task/${tid}/children`).trim();
        for (const k of kids.split(/\s+/).filter(Boolean).map(Number)) {
          out.push(k);
          todo.push(k);
        }
      } catch { /* gone */ }
    }
  }
  return out;
}

/**
 * SIGKILLs `pid` and its descendants. A program started under a pager that
 * was killed outright stays blocked by design and would hold the test's pipes
 * open forever.
 */
export function killTree(pid: number): void {
  for (const p of [...descendants(pid), pid]) {
    try {
      Deno.kill(p, "SIGKILL");
    } catch { /* gone */ }
  }
}

async function stopLeftovers(mine: Tracked[]): Promise<void> {
  const running = mine.filter((t) => t.code === null);
  for (const t of running) killTree(t.pid);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const bound = new Promise((r) => timer = setTimeout(r, 30_000));
  await Promise.race([Promise.allSettled(running.map((t) => t.done)), bound]);
  clearTimeout(timer);
}

function withReport(e: unknown): unknown {
  const report = processReport();
  if (report === "" || !(e instanceof Error)) return e;
  e.message += `\n\nProcesses this test started:\n${report}`;
  return e;
}

type TestFn = (t: Deno.TestContext) => void | Promise<void>;

/**
 * `Deno.test` with process reports on failure and cleanup of leftovers.
 *
 * @example
 * ```ts
 * test("nothing to do", () => {});
 * test({ name: "skipped", ignore: true, fn: () => {} });
 * ```
 */
export function test(name: string, fn: TestFn): void;
export function test(def: Deno.TestDefinition): void;
export function test(nameOrDef: string | Deno.TestDefinition, maybeFn?: TestFn): void {
  const def: Deno.TestDefinition = typeof nameOrDef === "string"
    ? { name: nameOrDef, fn: maybeFn! }
    : nameOrDef;
  const inner = def.fn;
  Deno.test({
    ...def,
    fn: async (t) => {
      const mine: Tracked[] = [];
      current = mine;
      try {
        await withPatience(`the test to finish`, Promise.resolve(inner(t)), TEST_LIMIT_MS);
      } catch (e) {
        throw withReport(e);
      } finally {
        current = null;
        await stopLeftovers(mine);
      }
    },
  });
}
