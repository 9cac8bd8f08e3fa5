/**
 * System resources the benchmark creates for the kernel-swap rows — a
 * swapfile, a zram device, cgroup v1 memory groups — and the undo list that
 * removes every one of them again on success, failure and Ctrl-C.
 *
 * Only things this process created are ever removed: each helper records
 * exactly what it made (a path, a zram id) and undoes that.
 *
 * @module
 */

/** Root of the cgroup v1 memory hierarchy. */
export const MEMCG_ROOT = "/sys/fs/cgroup/memory";

/** Runs a command, returns its exit code and output (never throws on a bad exit). */
export async function sh(
  argv: string[],
  signal?: AbortSignal,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    signal,
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Like {@linkcode sh} but throws with the command's stderr on a non-zero exit. */
export async function shOk(argv: string[], signal?: AbortSignal): Promise<string> {
  const r = await sh(argv, signal);
  if (signal?.aborted) throw signal.reason;
  if (r.code !== 0) throw new Error(`${argv.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Active swap areas, as the paths /proc/swaps lists. */
export function activeSwaps(): string[] {
  const lines = Deno.readTextFileSync("/proc/swaps").trim().split("\n").slice(1);
  return lines.filter((l) => l.trim() !== "").map((l) => l.split(/\s+/)[0]);
}

/**
 * LIFO list of undo actions. Each runs once; failures are reported on stderr
 * and do not stop the remaining undos (a half-cleaned machine is worse).
 */
export class Cleanup {
  #undo: { what: string; fn: () => Promise<void> }[] = [];
  #running: Promise<void> | null = null;

  /** Registers an undo action; returns a function that runs it early (once). */
  add(what: string, fn: () => Promise<void>): () => Promise<void> {
    const entry = { what, fn };
    this.#undo.push(entry);
    return async () => {
      const i = this.#undo.indexOf(entry);
      if (i < 0) return;
      this.#undo.splice(i, 1);
      await fn();
    };
  }

  /** Runs every pending undo, newest first. Safe to call more than once. */
  run(): Promise<void> {
    if (this.#running) return this.#running;
    this.#running = (async () => {
      while (this.#undo.length > 0) {
        const { what, fn } = this.#undo.pop()!;
        try {
          await fn();
        } catch (e) {
          console.error(`bench: cleanup of ${what} failed: ${e instanceof Error ? e.message : e}`);
        }
      }
      this.#running = null;
    })();
    return this.#running;
  }
}

/** One swap area the benchmark made; only one is switched on at a time. */
export interface SwapArea {
  /** Path given to swapon/swapoff. */
  path: string;
  /** Human label for notes. */
  label: string;
}

/** Turns `area` on; registers its swapoff; returns the early-off function. */
export async function swapOn(area: SwapArea, cleanup: Cleanup): Promise<() => Promise<void>> {
  await shOk(["swapon", area.path]);
  return cleanup.add(`swapoff ${area.path}`, async () => {
    if (activeSwaps().includes(area.path)) await shOk(["swapoff", area.path]);
  });
}

/** Creates a swapfile of `bytes` at `path` (not yet on); registers its removal. */
export async function makeSwapfile(
  path: string,
  bytes: number,
  cleanup: Cleanup,
): Promise<SwapArea> {
  await Deno.remove(path).catch(() => {});
  cleanup.add(`swapfile ${path}`, async () => {
    if (activeSwaps().includes(path)) await shOk(["swapoff", path]);
    await Deno.remove(path).catch(() => {});
  });
  // fallocate gives real blocks at once (swapon refuses holes); ext4 supports it.
  await shOk(["fallocate", "-l", String(bytes), path]);
  await Deno.chmod(path, 0o600);
  await shOk(["mkswap", path]);
  return { path, label: "swapfile" };
}

/**
 * Creates a zram device of `bytes` with `algo` (falls back to the kernel
 * default when missing); registers its removal by the id the kernel gave us.
 */
export async function makeZram(
  bytes: number,
  algo: string,
  cleanup: Cleanup,
): Promise<SwapArea & { algo: string }> {
  const id = Number(Deno.readTextFileSync("/sys/class/zram-control/hot_add").trim());
  if (!Number.isInteger(id)) throw new Error("zram hot_add returned no device id");
  const dev = `/dev/zram${id}`;
  const sys = `/sys/block/zram${id}`;
  cleanup.add(`zram${id}`, async () => {
    if (activeSwaps().includes(dev)) await shOk(["swapoff", dev]);
    // Right after swapoff the device may still be open (udev probing it):
    // reset and hot_remove then fail with EBUSY for a moment, so retry.
    for (let i = 0;; i++) {
      try {
        await Deno.writeTextFile(`${sys}/reset`, "1").catch(() => {});
        await Deno.writeTextFile("/sys/class/zram-control/hot_remove", String(id));
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        if (i >= 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });
  const algos = Deno.readTextFileSync(`${sys}/comp_algorithm`);
  let used = (algos.match(/\[([^\]]+)\]/) ?? ["", "default"])[1];
  if (algos.split(/\s+/).some((a) => a.replace(/[[\]]/g, "") === algo)) {
    Deno.writeTextFileSync(`${sys}/comp_algorithm`, algo);
    used = algo;
  }
  Deno.writeTextFileSync(`${sys}/disksize`, String(bytes));
  // devtmpfs creates the node asynchronously; wait a little for it.
  for (let i = 0; i < 50; i++) {
    try {
      Deno.statSync(dev);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  await shOk(["mkswap", dev]);
  return { path: dev, label: `zram ${used}`, algo: used };
}

/** A cgroup v1 memory group made for one run. */
export interface MemCgroup {
  /** Directory of the group. */
  dir: string;
  /** Reads memory.stat as numbers. */
  stat(): Record<string, number>;
  /** Peak usage (memory.max_usage_in_bytes). */
  maxUsage(): number;
  /** Tasks the OOM killer killed in this group (memory.oom_control `oom_kill`). */
  oomKills(): number;
  /** Removes the group (its tasks must have exited). */
  remove(): Promise<void>;
}

let cgSeq = 0;

/** Creates a memory cgroup limited to `limitBytes`; registers its removal. */
export function makeMemCgroup(limitBytes: number, cleanup: Cleanup): MemCgroup {
  const dir = `${MEMCG_ROOT}/remora-bench-${Deno.pid}-${cgSeq++}`;
  Deno.mkdirSync(dir);
  const remove = cleanup.add(`cgroup ${dir}`, async () => {
    // Anything still inside is ours (a run being aborted): kill it, then rmdir.
    for (let i = 0; i < 100; i++) {
      const pids = Deno.readTextFileSync(`${dir}/cgroup.procs`).trim().split("\n").filter(Boolean);
      if (pids.length === 0) break;
      for (const p of pids) {
        try {
          Deno.kill(Number(p), "SIGKILL");
        } catch { /* already gone */ }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    // rmdir may race the last task's exit for a moment.
    for (let i = 0;; i++) {
      try {
        Deno.removeSync(dir);
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        if (i >= 50) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  });
  Deno.writeTextFileSync(`${dir}/memory.limit_in_bytes`, String(limitBytes));
  return {
    dir,
    stat() {
      const out: Record<string, number> = {};
      for (const line of Deno.readTextFileSync(`${dir}/memory.stat`).trim().split("\n")) {
        const [k, v] = line.split(" ");
        out[k] = Number(v);
      }
      return out;
    },
    maxUsage: () => Number(Deno.readTextFileSync(`${dir}/memory.max_usage_in_bytes`).trim()),
    oomKills: () => {
      const m = /^oom_kill (\d+)/m.exec(Deno.readTextFileSync(`${dir}/memory.oom_control`));
      return m ? Number(m[1]) : 0;
    },
    remove,
  };
}
