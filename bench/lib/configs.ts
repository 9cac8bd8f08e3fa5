/**
 * The configurations (rows) the benchmark compares. Each one says whether it
 * can run here, and how to start a program under it with a given amount of
 * local memory. To add a row, append a {@linkcode BenchConfig} to the list
 * {@linkcode defaultConfigs} returns (or pass your own list to the runner).
 *
 * @module
 */

import {
  activeSwaps,
  type Cleanup,
  makeMemCgroup,
  makeSwapfile,
  makeZram,
  sh,
  type SwapArea,
  swapOn,
} from "./sys.ts";
import type { PagerStats } from "../../pager/stats.ts";
import { freePort, memcachedServerArgs, redisServerArgs } from "../../testing/servers.ts";

/** Shared facts every configuration may use. */
export interface BenchContext {
  /** Repository root (holds pager.ts). */
  root: string;
  /** Build directory for binaries, swapfile and scratch files. */
  buildDir: string;
  /** Undo list for everything the benchmark creates. */
  cleanup: Cleanup;
  /** Largest amount of memory any run may push out (sizes swap areas). */
  maxSwapBytes: number;
  /** A run still going after this long is killed and recorded as failed, ms. */
  runTimeoutMs: number;
}

/** What a configuration measured about one run besides the program's own output. */
export interface RunExtra {
  /** cgroup v1 memory.stat at the end of the run (kernel rows). */
  cgroupStat?: Record<string, number>;
  /** cgroup peak usage, bytes (kernel rows). */
  cgroupMaxUsage?: number;
  /** Tasks the cgroup OOM killer killed (kernel rows). */
  cgroupOomKills?: number;
  /** The pager's final statistics (remora rows). */
  pagerStats?: PagerStats;
}

/** A program prepared to start under a configuration. */
export interface Prepared {
  /** Command line to start (the program, possibly wrapped by the pager). */
  argv: string[];
  /** cgroup v1 directory the program must join before exec, if any. */
  cgroup?: string;
  /** Collects measurements and undoes per-run setup; call once the program exited. */
  finish(): Promise<RunExtra>;
}

/** One row of the comparison. */
export interface BenchConfig {
  /** Short name used in tables and file names, e.g. `swapfile`. */
  name: string;
  /** What kind of mechanism pages memory: decides which metrics apply. */
  kind: "baseline" | "kernel" | "remora";
  /** One-line description for the report. */
  describe: string;
  /** Sets up shared resources once; returns null when usable, or why not (the row is skipped). */
  init(ctx: BenchContext): Promise<string | null>;
  /**
   * Prepares one run of `argv` with `localBytes` of local memory. (A cgroup
   * limit counts anonymous pages plus page cache charged to the group; the
   * programs' text was read long before, so in practice only anonymous pages,
   * which is what remora's `--local` counts too.)
   */
  prepare(localBytes: number, argv: string[], ctx: BenchContext): Promise<Prepared>;
}

/** No limit at all: the program keeps everything resident. */
export function baselineConfig(): BenchConfig {
  return {
    name: "baseline",
    kind: "baseline",
    describe: "no memory limit, no paging (the floor)",
    init: () => Promise.resolve(null),
    prepare: (_local, argv) => Promise.resolve({ argv, finish: () => Promise.resolve({}) }),
  };
}

/** Kernel swap on `make()`'s area under a cgroup v1 memory limit of the local size. */
function kernelConfig(
  name: string,
  describe: string,
  make: (ctx: BenchContext) => Promise<SwapArea>,
): BenchConfig {
  let area: SwapArea | null = null;
  return {
    name,
    kind: "kernel",
    describe,
    async init(ctx) {
      try {
        area = await make(ctx);
        return null;
      } catch (e) {
        return `cannot set up ${name}: ${e instanceof Error ? e.message : e}`;
      }
    },
    async prepare(localBytes, argv, ctx) {
      if (!area) throw new Error(`${name} was not initialised`);
      // Exactly one swap area on at a time, so each row measures its own device.
      const off = await swapOn(area, ctx.cleanup);
      const cg = makeMemCgroup(localBytes, ctx.cleanup);
      return {
        argv,
        cgroup: cg.dir,
        async finish() {
          const extra: RunExtra = {
            cgroupStat: cg.stat(),
            cgroupMaxUsage: cg.maxUsage(),
            cgroupOomKills: cg.oomKills(),
          };
          await cg.remove();
          await off();
          return extra;
        },
      };
    },
  };
}

/** Kernel swap to a swapfile on the root filesystem. */
export function swapfileConfig(): BenchConfig {
  return kernelConfig(
    "swapfile",
    "kernel swap to a swapfile on ext4 (virtio disk), cgroup v1 memory limit",
    (ctx) => makeSwapfile(`${ctx.buildDir}/remora-bench.swap`, ctx.maxSwapBytes, ctx.cleanup),
  );
}

/** Kernel swap to compressed RAM (zram, lz4). */
export function zramConfig(): BenchConfig {
  return kernelConfig(
    "zram",
    "kernel swap to zram (lz4, compressed RAM), cgroup v1 memory limit",
    (ctx) => makeZram(ctx.maxSwapBytes, "lz4", ctx.cleanup),
  );
}

/**
 * A daemon a remora row needs (a peer, memcached, Redis): started once in
 * `init`, killed by the cleanup list.
 */
export interface BackendDaemon {
  /** Starts the daemon; returns the `--backend` URL list to use. */
  start(ctx: BenchContext): Promise<string>;
}

/**
 * remora with `backend` (a URL list or `embedded`). Usable when `pager.ts
 * --help` exits 0, the shim is built, and a tiny program runs to completion
 * under the pager with that backend.
 */
export function remoraConfig(
  name: string,
  describe: string,
  backend: string | BackendDaemon,
): BenchConfig {
  let url = "embedded";
  let seq = 0;
  const pagerArgv = (ctx: BenchContext, local: number, stats: string, argv: string[]) => [
    Deno.execPath(),
    "run",
    "--allow-all",
    `${ctx.root}/pager.ts`,
    "--local",
    // Whole pages: the pager refuses a budget that is not (10% of 16 MiB is not).
    `${Math.max(1, Math.round(local / 4096)) * 4}K`,
    "--stats-json",
    stats,
    "--quiet",
    ...(url === "embedded" ? [] : ["--backend", url]),
    "--",
    ...argv,
  ];
  return {
    name,
    kind: "remora",
    describe,
    async init(ctx) {
      const help = await sh([
        Deno.execPath(),
        "run",
        "--allow-all",
        `${ctx.root}/pager.ts`,
        "--help",
      ]);
      if (help.code !== 0) return "pager.ts --help fails (the pager is not usable yet)";
      try {
        Deno.statSync(`${ctx.root}/build/libremora_shim.so`);
      } catch {
        return "build/libremora_shim.so is missing (run `deno task build`)";
      }
      try {
        url = typeof backend === "string" ? backend : await backend.start(ctx);
      } catch (e) {
        return `backend did not start: ${e instanceof Error ? e.message : e}`;
      }
      // The probe program must outlive the attach (a program that exits at
      // once can race the pager's pidfd_getfd and fail with ESRCH).
      const probe = await sh(
        pagerArgv(ctx, 4 << 20, "/dev/null", [`${ctx.buildDir}/seq`, "2", "1"]),
      );
      if (probe.code !== 0) {
        const why = probe.stderr.trim().split("\n").filter(Boolean).pop() ?? `exit ${probe.code}`;
        return `a trial run under the pager failed: ${why}`;
      }
      return null;
    },
    prepare(localBytes, argv, ctx) {
      const stats = `${ctx.buildDir}/pager-stats-${Deno.pid}-${seq++}.json`;
      return Promise.resolve({
        argv: pagerArgv(ctx, localBytes, stats, argv),
        async finish() {
          const extra: RunExtra = {};
          try {
            extra.pagerStats = JSON.parse(await Deno.readTextFile(stats));
            await Deno.remove(stats);
          } catch { /* the pager failed before writing: the run record says so */ }
          return extra;
        },
      });
    },
  };
}

/** Starts `argv` as a daemon listening on `port`; waits until it accepts connections. */
export async function startDaemon(
  argv: string[],
  port: number,
  ctx: BenchContext,
  what: string,
): Promise<void> {
  const proc = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  ctx.cleanup.add(what, async () => {
    try {
      proc.kill("SIGKILL");
    } catch { /* exited */ }
    await proc.status;
  });
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port} within 5 s`);
}

/** A remora peer daemon on loopback (no authentication: it only listens on 127.0.0.1). */
export const loopbackPeer: BackendDaemon = {
  async start(ctx) {
    const port = freePort();
    await startDaemon(
      [
        Deno.execPath(),
        "run",
        "--allow-all",
        `${ctx.root}/pager.ts`,
        "peer",
        "--listen",
        `127.0.0.1:${port}`,
        "--capacity",
        `${Math.ceil(ctx.maxSwapBytes / 1048576) * 2 + 64}M`,
        "--insecure-no-auth",
      ],
      port,
      ctx,
      "remora peer",
    );
    return `tcp://127.0.0.1:${port}`;
  },
};

/** memcached on loopback as the page store. */
export const memcachedBackend: BackendDaemon = {
  async start(ctx) {
    const port = freePort();
    const mb = Math.ceil(ctx.maxSwapBytes / 1048576) * 2 + 64;
    await startDaemon(
      ["memcached", ...memcachedServerArgs(port, { memoryMb: mb })],
      port,
      ctx,
      "memcached backend",
    );
    return `memcached://127.0.0.1:${port}`;
  },
};

/** redis-server on loopback as the page store. */
export const redisBackend: BackendDaemon = {
  async start(ctx) {
    const port = freePort();
    await startDaemon(
      ["redis-server", ...redisServerArgs(port)],
      port,
      ctx,
      "redis backend",
    );
    return `redis://127.0.0.1:${port}`;
  },
};

/** The standard rows, in table order. */
export function defaultConfigs(): BenchConfig[] {
  return [
    baselineConfig(),
    swapfileConfig(),
    zramConfig(),
    remoraConfig("remora-embedded", "remora, pages kept in the pager's own memory", "embedded"),
    remoraConfig("remora-peer", "remora, pages on a peer daemon over TCP loopback", loopbackPeer),
    remoraConfig("remora-memcached", "remora, pages in memcached on loopback", memcachedBackend),
    remoraConfig("remora-redis", "remora, pages in Redis on loopback", redisBackend),
  ];
}

/** Swap areas active now that this process did not create (the harness refuses to run then). */
export function foreignSwaps(own: string[] = []): string[] {
  return activeSwaps().filter((p) => !own.includes(p));
}
