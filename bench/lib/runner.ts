/**
 * Runs one workload once under one configuration and turns what came back
 * (the program's JSON line, runstat's accounting, cgroup or pager stats) into
 * a {@linkcode RunRecord}.
 *
 * @module
 */

import type { BenchConfig, BenchContext, RunExtra } from "./configs.ts";
import { sh, shOk } from "./sys.ts";
import { freePort, redisServerArgs } from "../../testing/servers.ts";
import { type LogHist, logHistQuantile, slowTouches, type SwapCounters } from "./stats.ts";
import { PAGE_SIZE } from "../../transport/store.ts";

/** Accounting from bench/workloads/runstat.c. */
export interface RunStat {
  /** Exit status (128+signal when killed). */
  exit: number;
  /** Wall time including process (and pager) start-up, ms. */
  wallMs: number;
  /** CPU of the whole reaped tree (the child and what it reaped), ms. */
  treeUtimeMs: number;
  /** See treeUtimeMs. */
  treeStimeMs: number;
  /** Largest RSS of the tree, KiB. */
  treeMaxrssKb: number;
  /** Major faults of the tree. */
  treeMajflt: number;
  /** The direct child's own CPU (sampled every 10 ms), ms. */
  selfCpuMs: number;
  /** The direct child's own VmHWM (sampled every 10 ms), KiB. */
  selfHwmKb: number;
}

/** The JSON line a synthetic workload prints. */
export interface WorkloadOut {
  workload: string;
  ok: boolean;
  pages: number;
  passes: number;
  writePct: number;
  initMs: number;
  passesMs: number;
  verifyMs: number;
  totalMs: number;
  passMs: number[];
  utimeMs: number;
  stimeMs: number;
  majflt: number;
  minflt: number;
  maxrssKb: number;
  touchHist: LogHist;
}

/** Everything measured in one run. */
export interface RunRecord {
  /** Workload name. */
  workload: string;
  /** Configuration name. */
  config: string;
  /** Configuration kind. */
  kind: BenchConfig["kind"];
  /** Local memory as a fraction of the working set. */
  fraction: number;
  /** Local memory in bytes (the cgroup limit or the pager's --local). */
  localBytes: number;
  /** Working-set size in bytes. */
  wsBytes: number;
  /** Repetition number (0-based). */
  rep: number;
  /** True when the program exited 0 and verified its data. */
  ok: boolean;
  /** Why the run failed, when it did. */
  error?: string;
  /** Completion time as the program measured it (no start-up), ms. */
  timeMs: number;
  /** Operations per second (application workloads). */
  opsPerSec?: number;
  /** Wall time with start-up (pager included), ms. */
  wallMs: number;
  /** Faults that had to be served: pager faults for remora, major faults otherwise. */
  faults: number;
  /** Application-side latency of touches slower than the fault threshold, µs. */
  slowTouchP50Us?: number;
  /** See slowTouchP50Us. */
  slowTouchP99Us?: number;
  /** Number of slow touches. */
  slowTouches?: number;
  /** The pager's own fault service latency, µs (remora rows). */
  pagerP50Us?: number;
  /** See pagerP50Us. */
  pagerP99Us?: number;
  /** Kernel rows: (time − baseline time) / major faults, µs; filled in later. */
  kernelEstUs?: number;
  /** CPU of the pager process itself (remora rows), ms. */
  pagerCpuMs?: number;
  /** Peak RSS of the pager process itself (remora rows), KiB. */
  pagerHwmKb?: number;
  /** CPU of the program (user+sys; kernel reclaim done in its context lands here), ms. */
  appCpuMs?: number;
  /** Kernel rows: swap-ins and swap readahead over the run (/proc/vmstat, whole machine). */
  kernelSwap?: SwapCounters;
  /** Raw material for re-analysis. */
  raw: { out?: WorkloadOut | Record<string, unknown>; runstat?: RunStat; extra?: RunExtra };
}

/** Longest an application load may take before it is abandoned, ms. */
const DURING_TIMEOUT_MS = 300_000;

/** Currently running runstat processes, so that a signal handler can stop them. */
export const live: Set<Deno.ChildProcess> = new Set();

/** Compiles the workloads and runstat into `outDir` (only when sources changed). */
export async function buildWorkloads(srcDir: string, outDir: string): Promise<void> {
  Deno.mkdirSync(outDir, { recursive: true });
  const header = Deno.statSync(`${srcDir}/common.h`).mtime?.getTime() ?? 0;
  for (const e of Deno.readDirSync(srcDir)) {
    if (!e.name.endsWith(".c")) continue;
    const name = e.name.slice(0, -2);
    const src = `${srcDir}/${e.name}`;
    const bin = `${outDir}/${name}`;
    const srcTime = Math.max(Deno.statSync(src).mtime?.getTime() ?? 0, header);
    const binTime = await Deno.stat(bin).then((s) => s.mtime?.getTime() ?? 0, () => 0);
    if (binTime >= srcTime) continue;
    await shOk(["cc", "-O2", "-Wall", "-Wextra", "-o", bin, src, "-lm"]);
  }
}

/** Runs `argv` under `cfg` via runstat; `during` runs while the program is up (app loads). */
async function runUnder<T>(
  cfg: BenchConfig,
  ctx: BenchContext,
  localBytes: number,
  argv: string[],
  during?: (signal: AbortSignal) => Promise<T>,
): Promise<{ stdout: string; stderr: string; runstat?: RunStat; extra: RunExtra; during?: T }> {
  const prep = await cfg.prepare(localBytes, argv, ctx);
  const statFile = `${ctx.buildDir}/runstat-${Deno.pid}.json`;
  let proc: Deno.ChildProcess | null = null;
  try {
    proc = new Deno.Command(`${ctx.buildDir}/runstat`, {
      args: [
        "--out",
        statFile,
        ...(prep.cgroup ? ["--cgroup", prep.cgroup] : []),
        "--",
        ...prep.argv,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    live.add(proc);
    const outP = new Response(proc.stdout).text();
    const errP = new Response(proc.stderr).text();
    // A hung run (e.g. a pager that stopped serving faults) must not hang the
    // whole benchmark: runstat turns SIGTERM into SIGKILL of its process group.
    let timedOut = false;
    const running = proc;
    const killer = setTimeout(() => {
      timedOut = true;
      try {
        running.kill("SIGTERM");
      } catch { /* exited */ }
    }, ctx.runTimeoutMs);
    let duringResult: T | undefined;
    let duringError: unknown = null;
    if (during) {
      // The load stops (its tools are killed) when the program dies under it
      // (e.g. the OOM killer) or after DURING_TIMEOUT_MS.
      const ac = new AbortController();
      const timer = setTimeout(
        () => ac.abort(new Error(`load did not finish in ${DURING_TIMEOUT_MS / 1000} s`)),
        DURING_TIMEOUT_MS,
      );
      proc.status.then((st) =>
        ac.abort(new Error(`program exited during the load (status ${st.code})`))
      );
      try {
        duringResult = await during(ac.signal);
      } catch (e) {
        duringError = e;
        try {
          proc.kill("SIGTERM"); // runstat turns this into SIGKILL of the whole group
        } catch { /* already exited */ }
      } finally {
        clearTimeout(timer);
      }
    }
    await proc.status;
    clearTimeout(killer);
    live.delete(proc);
    const [stdout, stderr] = await Promise.all([outP, errP]);
    let runstat: RunStat | undefined;
    try {
      runstat = JSON.parse(await Deno.readTextFile(statFile));
    } catch { /* runstat itself failed: reported as an error below */ }
    await Deno.remove(statFile).catch(() => {});
    const extra = await prep.finish();
    if (extra.cgroupOomKills) {
      throw new Error(
        `killed by the kernel's cgroup OOM killer under the ${localBytes >> 20} MiB limit ` +
          `(reclaim to swap could not keep up)`,
      );
    }
    if (timedOut) throw new Error(`timed out after ${ctx.runTimeoutMs / 1000} s (killed)`);
    if (duringError) throw duringError;
    return { stdout, stderr, runstat, extra, during: duringResult };
  } catch (e) {
    if (proc) {
      try {
        proc.kill("SIGTERM");
      } catch { /* gone */ }
      await proc.status;
      live.delete(proc);
    }
    throw e;
  }
}

/** A workload the runner knows how to start and measure. */
export interface Workload {
  /** Name used in tables. */
  name: string;
  /** One-line description for the report. */
  describe: string;
  /** Runs once under `cfg` with `fraction` of the working set as local memory. */
  run(cfg: BenchConfig, ctx: BenchContext, fraction: number, rep: number): Promise<RunRecord>;
}

/** Fills the fields every record shares from runstat, pager stats and cgroup stats. */
function common(
  rec: RunRecord,
  cfg: BenchConfig,
  runstat: RunStat | undefined,
  extra: RunExtra,
  programCpuMs: number | undefined,
): void {
  rec.raw.runstat = runstat;
  rec.raw.extra = extra;
  rec.wallMs = runstat?.wallMs ?? 0;
  const ps = extra.pagerStats;
  if (cfg.kind === "remora" && ps) {
    rec.faults = ps.counters.faults;
    rec.pagerP50Us = ps.faultLatency.p50Us;
    rec.pagerP99Us = ps.faultLatency.p99Us;
  }
  if (cfg.kind === "remora" && runstat) {
    // runstat's tree CPU holds the pager and the program it reaped; the
    // program's own share is known when it reports getrusage(SELF).
    rec.pagerCpuMs = programCpuMs !== undefined
      ? Math.max(0, runstat.treeUtimeMs + runstat.treeStimeMs - programCpuMs)
      : runstat.selfCpuMs;
    rec.pagerHwmKb = runstat.selfHwmKb;
  }
  rec.appCpuMs = programCpuMs ??
    (runstat && cfg.kind !== "remora" ? runstat.treeUtimeMs + runstat.treeStimeMs : undefined);
}

function blank(w: string, cfg: BenchConfig, fraction: number, ws: number, rep: number): RunRecord {
  return {
    workload: w,
    config: cfg.name,
    kind: cfg.kind,
    fraction,
    localBytes: Math.round(ws * fraction),
    wsBytes: ws,
    rep,
    ok: false,
    timeMs: NaN,
    wallMs: NaN,
    faults: 0,
    raw: {},
  };
}

/** Last non-empty line of a text, trimmed to one line for notes. */
function lastLine(s: string): string {
  return s.trim().split("\n").filter(Boolean).pop()?.slice(0, 200) ?? "";
}

/** A synthetic C workload from bench/workloads/. */
export function syntheticWorkload(
  name: string,
  describe: string,
  wsBytes: number,
  passes: number,
): Workload {
  return {
    name,
    describe,
    async run(cfg, ctx, fraction, rep) {
      const rec = blank(name, cfg, fraction, wsBytes, rep);
      const argv = [`${ctx.buildDir}/${name}`, String(wsBytes / 1048576), String(passes)];
      const r = await runUnder(cfg, ctx, rec.localBytes, argv);
      const line = r.stdout.trim().split("\n").filter((l) => l.startsWith("{")).pop();
      let out: WorkloadOut | undefined;
      try {
        out = line ? JSON.parse(line) : undefined;
      } catch { /* reported below */ }
      rec.raw.out = out;
      common(rec, cfg, r.runstat, r.extra, out ? out.utimeMs + out.stimeMs : undefined);
      if (!out || !out.ok || r.runstat?.exit !== 0) {
        rec.error = out && !out.ok
          ? `DATA MISMATCH: ${line}`
          : `exit ${r.runstat?.exit ?? "?"}: ${lastLine(r.stderr) || lastLine(r.stdout)}`;
        return rec;
      }
      rec.ok = true;
      rec.timeMs = out.totalMs;
      if (cfg.kind !== "remora") rec.faults = out.majflt;
      const slow = slowTouches(out.touchHist);
      rec.slowTouches = slow.count;
      if (slow.count > 0) {
        rec.slowTouchP50Us = logHistQuantile(slow.hist, 0.5) / 1000;
        rec.slowTouchP99Us = logHistQuantile(slow.hist, 0.99) / 1000;
      }
      return rec;
    },
  };
}

/**
 * redis-server loaded by redis-benchmark: SET then GET of `valueBytes` values
 * over a key space sized so the values fill the working set, then a server-side
 * Lua check that every stored value is intact.
 */
export function redisWorkload(wsBytes: number, requestsPerKey: number): Workload {
  const valueBytes = 4000; // with its header the value lands in jemalloc's 4 KiB class
  const keys = Math.max(256, Math.floor(wsBytes / PAGE_SIZE));
  const n = keys * requestsPerKey;
  return {
    name: "redis",
    describe:
      `redis-server (no persistence) under redis-benchmark: SET, then a Lua pass stamping every value ` +
      `with content derived from its key, then GET; ${valueBytes}-byte values, ${keys} random keys, ` +
      `${requestsPerKey} requests per key per phase, 8 clients, pipeline 8; then a Lua check of every value`,
    async run(cfg, ctx, fraction, rep) {
      const rec = blank("redis", cfg, fraction, wsBytes, rep);
      const port = freePort();
      const argv = [
        "redis-server",
        ...redisServerArgs(port),
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
      ];
      const load = async (signal: AbortSignal) => {
        const cli = (...a: string[]) => sh(["redis-cli", "-p", String(port), ...a], signal);
        const t0 = performance.now();
        for (let i = 0;; i++) {
          if ((await cli("ping")).stdout.trim() === "PONG") break;
          if (signal.aborted) throw signal.reason;
          if (i > 300) throw new Error("redis-server did not answer within 30 s");
          await new Promise((r) => setTimeout(r, 100));
        }
        const ready = performance.now() - t0;
        const bench = async (test: string) => {
          const o = await shOk([
            "redis-benchmark",
            "-p",
            String(port),
            "-t",
            test,
            "-n",
            String(n),
            "-r",
            String(keys),
            "-d",
            String(valueBytes),
            "-c",
            "8",
            "-P",
            "8",
            "--csv",
            "-q",
          ], signal);
          const row = o.trim().split("\n").find((l) => l.startsWith(`"${test.toUpperCase()}"`));
          if (!row) throw new Error(`redis-benchmark printed no ${test} row: ${lastLine(o)}`);
          return Number(JSON.parse(`[${row}]`)[1]);
        };
        // redis-benchmark's payload is random, so the check needs content we
        // know: a Lua pass rewrites every key with a value derived from its
        // name (a write pass over the whole set), the GET load then runs, and a
        // last Lua pass compares every value (a read pass).
        const val = `string.sub(string.rep(k .. '/', ${
          Math.ceil(valueBytes / 10)
        }), 1, ${valueBytes})`;
        const stamp = `local n=0 for _,k in ipairs(redis.call('keys','key:*')) do ` +
          `redis.call('set', k, ${val}) n=n+1 end return n`;
        const verify = `local n=0 for _,k in ipairs(redis.call('keys','key:*')) do ` +
          `if redis.call('get',k) ~= ${val} then return -1 end n=n+1 end return n`;
        const t1 = performance.now();
        const setRps = await bench("set");
        const stamped = Number((await cli("eval", stamp, "0")).stdout.trim());
        const getRps = await bench("get");
        const t2 = performance.now();
        const chk = await cli("eval", verify, "0");
        const t3 = performance.now();
        await sh(["redis-cli", "-p", String(port), "shutdown", "nosave"]);
        return {
          setRps,
          getRps,
          loadMs: t2 - t1,
          verifyMs: t3 - t2,
          readyMs: ready,
          stamped,
          checked: Number(chk.stdout.trim()),
        };
      };
      const r = await runUnder(cfg, ctx, rec.localBytes, argv, load);
      common(rec, cfg, r.runstat, r.extra, undefined);
      const d = r.during!;
      rec.raw.out = { ...d, keys, valueBytes, requests: n };
      if (!(d.checked > 0) || d.checked !== d.stamped) {
        rec.error = `DATA CHECK FAILED: ${d.checked} of ${d.stamped} values intact`;
        return rec;
      }
      if (r.runstat && r.runstat.exit !== 0) {
        rec.error = `exit ${r.runstat.exit}: ${lastLine(r.stderr)}`;
        return rec;
      }
      rec.ok = true;
      rec.timeMs = d.loadMs + d.verifyMs;
      // Request throughput of the two redis-benchmark phases together (harmonic mean).
      rec.opsPerSec = 2 / (1 / d.setRps + 1 / d.getRps);
      if (cfg.kind !== "remora") {
        rec.faults = r.extra.cgroupStat?.total_pgmajfault ?? r.extra.cgroupStat?.pgmajfault ??
          r.runstat?.treeMajflt ?? 0;
      }
      return rec;
    },
  };
}
