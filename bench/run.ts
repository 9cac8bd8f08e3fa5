/**
 * remora vs kernel swap, side by side.
 *
 * ```
 * deno task bench            # full matrix (3 repetitions, all workloads, local-memory sweep)
 * deno task bench --quick    # smoke version (1 repetition, seq/uniform/strided/streams, no sweep)
 * (full runs also time SSH logins into a QEMU guest: bench/ssh_bench.ts)
 * deno run --allow-all bench/run.ts --help
 * ```
 *
 * Every workload runs under every configuration (no limit; kernel swap to a
 * swapfile and to zram under a cgroup v1 memory limit; remora with each
 * backend that is available) with the same local memory, configurations
 * interleaved within each repetition. Writes `bench/results/<date>/` with
 * `report.md`, `results.json` and SVG charts, and prints the summary table.
 *
 * Needs root, the cgroup v1 memory controller, and no swap already active. It
 * removes the swapfile, the zram device and the cgroups it made on success,
 * on failure and on Ctrl-C.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type BenchConfig,
  type BenchContext,
  defaultConfigs,
  foreignSwaps,
} from "./lib/configs.ts";
import {
  buildWorkloads,
  live,
  redisWorkload,
  type RunRecord,
  syntheticWorkload,
  type Workload,
} from "./lib/runner.ts";
import { CORE_TARGETS, type CoreFigures, parseCoreOutput } from "./core_bench.ts";
import { median, type SshRow } from "./ssh_bench.ts";
import {
  cells,
  crossCheckLines,
  estimateKernelLatency,
  goalLines,
  HEAD,
  mdTable,
  pct,
  PREFETCH_HEAD,
  prefetchRows,
  summaryText,
  sweepTable,
  tableRows,
  textTable,
  writeCharts,
} from "./lib/report.ts";
import { FAULT_THRESHOLD_NS, readSwapCounters, swapCountersSince } from "./lib/stats.ts";
import { activeSwaps, Cleanup, MEMCG_ROOT } from "./lib/sys.ts";
import { parseSize } from "../pager/size.ts";
import type { PeerFigures } from "./peer_bench.ts";
import type { HostsFigures } from "./hosts_bench.ts";

const HELP = `bench/run.ts: remora vs kernel swap (run as root).

  --quick              smoke run (under a minute): 16M working sets, 1 pass, 1 repetition,
                       workloads seq,uniform,strided,streams, no local-memory sweep, small
                       core/peer sections
  --ws SIZE            working-set size of each synthetic workload (default 16M; redis uses
                       at least 64M)
  --passes N           measured passes over the working set (default 1)
  --reps N             repetitions of every cell (default 3; quick 1)
  --fraction F         local memory as a fraction of the working set (default 0.25)
  --fractions LIST     local fractions for the sweep chart (default 1,0.5,0.25,0.1; quick 0.25)
  --sweep NAME         workload of the sweep (default uniform)
  --workloads LIST     subset of: seq,uniform,strided,streams,zipf,hotcold,readmostly,
                       writeheavy,redis (default all; quick seq,uniform,strided,streams)
  --configs LIST       subset of the configuration names (default: all)
  --no-core            skip the core-pager, peer-daemon and (full runs only) SSH-guest sections
  --run-timeout SEC    kill a run still going after SEC seconds (default 60; quick 20)
  --out DIR            output directory (default bench/results/<date>)
  -h, --help           this help
`;

/** Everything a run is asked to do. */
interface Plan {
  quick: boolean;
  wsBytes: number;
  passes: number;
  reps: number;
  fraction: number;
  fractions: number[];
  sweep: string;
  workloads: string[];
  configs: string[] | null;
  core: boolean;
  runTimeoutMs: number;
  out: string;
}

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

function parsePlan(argv: string[]): Plan | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      ws: { type: "string" },
      passes: { type: "string" },
      reps: { type: "string" },
      fraction: { type: "string", default: "0.25" },
      fractions: { type: "string" },
      sweep: { type: "string", default: "uniform" },
      workloads: { type: "string" },
      configs: { type: "string" },
      "no-core": { type: "boolean", default: false },
      "run-timeout": { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return null;
  }
  const quick = values.quick;
  const stamp = new Date().toISOString().replace(/:/g, "-").replace(/\..*/, "").replace("T", "_");
  const all = "seq,uniform,strided,streams,zipf,hotcold,readmostly,writeheavy,redis";
  const plan: Plan = {
    quick,
    wsBytes: parseSize(values.ws ?? "16M"),
    passes: Number(values.passes ?? 1),
    reps: Number(values.reps ?? (quick ? 1 : 3)),
    fraction: Number(values.fraction),
    fractions: (values.fractions ?? (quick ? values.fraction : "1,0.5,0.25,0.1")).split(",").map(
      Number,
    ),
    sweep: values.sweep,
    workloads: (values.workloads ?? (quick ? "seq,uniform,strided,streams" : all)).split(",")
      .filter(Boolean),
    configs: values.configs ? values.configs.split(",").filter(Boolean) : null,
    core: !values["no-core"],
    runTimeoutMs: Number(values["run-timeout"] ?? (quick ? 20 : 60)) * 1000,
    out: values.out ?? `${ROOT}/bench/results/${stamp}`,
  };
  const bad = [
    !(plan.wsBytes >= 1 << 20) && "--ws must be at least 1M",
    !(Number.isInteger(plan.passes) && plan.passes >= 1 && plan.passes <= 64) &&
    "--passes must be 1..64",
    !(Number.isInteger(plan.reps) && plan.reps >= 1) && "--reps must be a whole number >= 1",
    !(plan.fraction > 0 && plan.fraction <= 1) && "--fraction must be in (0, 1]",
    !plan.fractions.every((f) => f > 0 && f <= 1) && "--fractions must all be in (0, 1]",
    !(plan.runTimeoutMs > 0) && "--run-timeout must be positive",
  ].find(Boolean);
  if (bad) throw new Error(bad);
  return plan;
}

/** One-line refusals, checked before anything is created. */
function preflight(): string | null {
  if (Deno.uid() !== 0) {
    return "bench: must run as root (swapon, cgroups and userfaultfd need it): sudo deno task bench";
  }
  try {
    Deno.statSync(`${MEMCG_ROOT}/memory.limit_in_bytes`);
  } catch {
    return `bench: no cgroup v1 memory controller at ${MEMCG_ROOT} (needed to limit kernel-swap rows); ` +
      "mount it (mount -t cgroup -o memory none /sys/fs/cgroup/memory) or boot with cgroup v1";
  }
  try {
    Deno.statSync("/sys/class/zram-control/hot_add");
  } catch {
    return "bench: zram is not available (modprobe zram, or pass --configs without zram)";
  }
  const swaps = foreignSwaps();
  if (swaps.length > 0) {
    return `bench: swap is already active (${
      swaps.join(", ")
    }); kernel rows would page to it too: ` +
      `run \`swapoff ${swaps.join(" ")}\` first (and swapon again afterwards)`;
  }
  return null;
}

function workloadsFor(plan: Plan): Workload[] {
  const all: Workload[] = [
    syntheticWorkload(
      "seq",
      "sequential sweep, every page rewritten each pass",
      plan.wsBytes,
      plan.passes,
    ),
    syntheticWorkload("uniform", "uniform random pages, 50% writes", plan.wsBytes, plan.passes),
    syntheticWorkload(
      "strided",
      "every 3rd page, then the ones after them, then the rest (stride 3), every page rewritten",
      plan.wsBytes,
      plan.passes,
    ),
    syntheticWorkload(
      "streams",
      "4 threads, each sweeping its own quarter in order at the same time, every page rewritten",
      plan.wsBytes,
      plan.passes,
    ),
    syntheticWorkload(
      "zipf",
      "zipfian (theta 0.99) random pages, scattered ranks, 20% writes",
      plan.wsBytes,
      plan.passes,
    ),
    syntheticWorkload(
      "hotcold",
      "90% of touches to a hot 10%, 20% writes",
      plan.wsBytes,
      plan.passes,
    ),
    syntheticWorkload("readmostly", "uniform random pages, 5% writes", plan.wsBytes, plan.passes),
    syntheticWorkload("writeheavy", "uniform random pages, 90% writes", plan.wsBytes, plan.passes),
    // Redis needs a few MiB of its own besides the values: below 64 MiB a 25%
    // limit leaves it too little to run at all (the cgroup OOM-kills it).
    redisWorkload(Math.max(plan.wsBytes, 64 << 20), plan.quick ? 1 : plan.passes),
  ];
  const unknown = plan.workloads.filter((w) => !all.some((x) => x.name === w));
  if (unknown.length) throw new Error(`unknown workload(s): ${unknown.join(", ")}`);
  return all.filter((w) => plan.workloads.includes(w.name));
}

async function main(argv: string[]): Promise<number> {
  let plan: Plan | null;
  try {
    plan = parsePlan(argv);
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.message : e} (see --help)`);
    return 2;
  }
  if (!plan) return 0;
  const refusal = preflight();
  if (refusal) {
    console.error(refusal);
    return 1;
  }
  const started = performance.now();
  const cleanup = new Cleanup();
  let interrupted = false;
  const onSignal = async () => {
    if (interrupted) return;
    interrupted = true;
    console.error(
      "\nbench: interrupted; stopping the running program and removing swap and cgroups",
    );
    for (const p of live) {
      try {
        p.kill("SIGTERM"); // runstat SIGKILLs its whole process group
      } catch { /* gone */ }
    }
    await Promise.all([...live].map((p) => p.status.catch(() => {})));
    await cleanup.run();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    return await runPlan(plan, cleanup, started);
  } finally {
    await cleanup.run();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    const left = activeSwaps().filter((p) => p.includes("remora-bench") || /\/dev\/zram/.test(p));
    if (left.length) {
      console.error(`bench: WARNING swap still active after cleanup: ${left.join(", ")}`);
    }
  }
}

async function runPlan(plan: Plan, cleanup: Cleanup, started: number): Promise<number> {
  const buildDir = `${ROOT}/build/bench`;
  await buildWorkloads(`${ROOT}/bench/workloads`, buildDir);
  const workloads = workloadsFor(plan);
  // Redis keeps some memory of its own besides the values; size swap for the worst case.
  const ctx: BenchContext = {
    root: ROOT,
    buildDir,
    cleanup,
    maxSwapBytes: Math.ceil((Math.max(plan.wsBytes, 64 << 20) * 1.5 + (64 << 20)) / 1048576) *
      1048576,
    runTimeoutMs: plan.runTimeoutMs,
  };
  let configs: BenchConfig[] = defaultConfigs();
  if (plan.configs) {
    const unknown = plan.configs.filter((c) => !configs.some((x) => x.name === c));
    if (unknown.length) {
      console.error(`bench: unknown configuration(s): ${unknown.join(", ")}`);
      return 2;
    }
    configs = configs.filter((c) => plan.configs!.includes(c.name));
  }
  const order = configs.map((c) => c.name);
  const skipped = new Map<string, string>();
  const usable: BenchConfig[] = [];
  for (const c of configs) {
    const why = await c.init(ctx);
    if (why) {
      skipped.set(c.name, why);
      console.error(`bench: skipping ${c.name}: ${why}`);
    } else usable.push(c);
  }

  // Cells: every workload at the main fraction, plus the sweep workload at the
  // other fractions (baseline has no limit, so it runs once per workload).
  type Item = { w: Workload; fraction: number };
  const items: Item[] = workloads.map((w) => ({ w, fraction: plan.fraction }));
  const sweepW = workloads.find((w) => w.name === plan.sweep);
  if (sweepW) {
    for (const f of plan.fractions) if (f !== plan.fraction) items.push({ w: sweepW, fraction: f });
  }
  const jobs: { item: Item; cfg: BenchConfig; rep: number }[] = [];
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const item of items) {
      // Rotate the configuration order each repetition so no row always runs first (cold caches).
      const rot = usable.map((_, i) => usable[(i + rep) % usable.length]);
      for (const cfg of rot) {
        if (cfg.kind === "baseline" && item.fraction !== plan.fraction) continue;
        jobs.push({ item, cfg, rep });
      }
    }
  }
  console.error(
    `bench: ${plan.quick ? "quick" : "full"} run: ${jobs.length} runs, working set ${
      plan.wsBytes >> 20
    } MiB, ${plan.passes} passes, ${plan.reps} repetition(s), local ${pct(plan.fraction)}`,
  );
  const recs: RunRecord[] = [];
  let i = 0;
  for (const { item, cfg, rep } of jobs) {
    i++;
    const label = `[${i}/${jobs.length}] ${item.w.name} ${cfg.name} local ${
      pct(item.fraction)
    } rep ${rep + 1}`;
    let rec: RunRecord;
    const swapBefore = readSwapCounters();
    try {
      rec = await item.w.run(cfg, ctx, item.fraction, rep);
      if (cfg.kind === "kernel") rec.kernelSwap = swapCountersSince(swapBefore);
    } catch (e) {
      rec = {
        workload: item.w.name,
        config: cfg.name,
        kind: cfg.kind,
        fraction: item.fraction,
        localBytes: Math.round(plan.wsBytes * item.fraction),
        wsBytes: plan.wsBytes,
        rep,
        ok: false,
        error: e instanceof Error ? e.message : String(e),
        timeMs: NaN,
        wallMs: NaN,
        faults: 0,
        raw: {},
      };
    }
    recs.push(rec);
    console.error(
      `${label}: ${
        rec.ok ? `${rec.timeMs.toFixed(0)} ms, ${rec.faults} faults` : `FAILED ${rec.error}`
      }`,
    );
  }

  let core: CoreSection | null = null;
  if (plan.core) {
    console.error("bench: core-pager and peer-daemon sections");
    core = await runCore(plan, buildDir, cleanup);
  }

  estimateKernelLatency(recs);
  const cs = cells(recs);
  Deno.mkdirSync(plan.out, { recursive: true });
  const charts = writeCharts(plan.out, recs, order, plan.sweep, plan.fractions);
  const wallS = (performance.now() - started) / 1000;
  const summary = summaryText(cs, plan.fraction, order, skipped, recs) +
    (core ? `\n\n${coreText(core).join("\n")}` : "");
  const meta = {
    date: new Date().toISOString(),
    mode: plan.quick ? "quick" : "full",
    plan,
    wallSeconds: wallS,
    host: {
      kernel: Deno.osRelease(),
      cpus: navigator.hardwareConcurrency,
      memTotal: Deno.readTextFileSync("/proc/meminfo").split("\n")[0],
      deno: Deno.version.deno,
    },
    configs: configs.map((c) => ({
      name: c.name,
      kind: c.kind,
      describe: c.describe,
      skipped: skipped.get(c.name),
    })),
    workloads: workloads.map((w) => ({ name: w.name, describe: w.describe })),
    faultThresholdNs: FAULT_THRESHOLD_NS,
  };
  Deno.writeTextFileSync(
    `${plan.out}/results.json`,
    JSON.stringify({ meta, runs: recs, core }, null, 1) + "\n",
  );
  Deno.writeTextFileSync(
    `${plan.out}/report.md`,
    markdown(plan, meta, cs, order, skipped, configs, workloads, charts, recs, core),
  );
  console.log(summary);
  console.log(
    `\nbench: ${recs.filter((r) => r.ok).length}/${recs.length} runs ok in ${
      wallS.toFixed(0)
    } s; report in ${plan.out}/report.md`,
  );
  return recs.every((r) => r.ok) ? 0 : 1;
}

function markdown(
  plan: Plan,
  meta: { date: string; wallSeconds: number; host: Record<string, unknown> },
  cs: ReturnType<typeof cells>,
  order: string[],
  skipped: Map<string, string>,
  configs: BenchConfig[],
  workloads: Workload[],
  charts: { file: string; caption: string }[],
  recs: RunRecord[],
  core: CoreSection | null,
): string {
  const o: string[] = [];
  o.push(`# remora vs kernel swap — ${meta.date}`, "");
  o.push(
    `Mode **${plan.quick ? "quick" : "full"}**: working set ${
      plan.wsBytes >> 20
    } MiB, ${plan.passes} ` +
      `measured passes, ${plan.reps} repetition(s) per cell (median shown, min-max in brackets), ` +
      `local memory ${pct(plan.fraction)} of the working set; configurations interleaved. ` +
      `Wall time ${meta.wallSeconds.toFixed(0)} s. Host: ${JSON.stringify(meta.host)}.`,
    "",
  );
  o.push("## Configurations", "");
  for (const c of configs) {
    o.push(
      `- **${c.name}** — ${c.describe}${
        skipped.has(c.name) ? ` — *skipped: ${skipped.get(c.name)}*` : ""
      }`,
    );
  }
  o.push("", "## Workloads", "");
  for (const w of workloads) o.push(`- **${w.name}** — ${w.describe}`);
  o.push("", `## Results at ${pct(plan.fraction)} local memory`, "");
  o.push(mdTable(HEAD, tableRows(cs, plan.fraction, order)), "");
  const prefetch = prefetchRows(recs, plan.fraction, order);
  if (prefetch.length) {
    o.push("### Prefetch (remora) and swap readahead (kernel)", "");
    o.push(mdTable(PREFETCH_HEAD, prefetch), "");
  }
  o.push("### Goal ratios (completion time, remora / kernel; geometric mean over workloads)", "");
  for (const l of goalLines(cs, plan.fraction, skipped)) o.push(`- ${l}`);
  const cross = crossCheckLines(recs, plan.fraction);
  if (cross.length) {
    o.push(
      "",
      "Cross-check: the same ratios by the program's own clock and by runstat's wall clock " +
        "(fork to exit, outside the program; remora rows include the pager's start-up):",
      "",
    );
    for (const l of cross) o.push(`- ${l}`);
  }
  if (plan.fractions.length > 1) {
    o.push("", `## Completion time vs local memory (${plan.sweep}, ms)`, "");
    o.push(sweepTable(cs, plan.sweep, plan.fractions, order), "");
  }
  if (core) o.push("", ...coreMarkdown(core), "");
  o.push("## Charts", "");
  for (const c of charts) o.push(`![${c.file}](${c.file})`, "", `*${c.caption}*`, "");
  const failed = recs.filter((r) => !r.ok);
  if (failed.length) {
    o.push("## Failed runs", "");
    for (const r of failed) {
      o.push(`- ${r.workload} / ${r.config} / ${pct(r.fraction)} / rep ${r.rep + 1}: ${r.error}`);
    }
    o.push("");
  }
  o.push(HOW_TO_READ);
  return o.join("\n") + "\n";
}

/** The "how to read" section, also meant for the README. */
export const HOW_TO_READ = `## How to read this report

- **time ms**: completion time measured by the program itself (first touch of the
  working set, the measured passes, a final full verification); process and pager
  start-up are not included (see \`wallMs\` in results.json). For redis it is the
  redis-benchmark SET+GET load plus a server-side check of every value; **kops/s**
  is its request throughput. **x base** divides by the unlimited baseline.
- **faults**: faults that had to be served from the backing store — remora's own
  fault counter, or the kernel's major faults (getrusage of the program, or the
  cgroup's pgmajfault for redis). Kernel swap-ins satisfied by readahead count as
  minor faults and do not appear here.
- **prefetch table**: remora rows: faults that fetched (missing faults less
  zero fills), pages brought in (\`pagesFetched\`), pages prefetched with a fault, of those touched
  before eviction (hits) and evicted untouched (wasted), from the pager's
  counters ("-" when its stats carry none). Kernel rows: major faults, pages
  swapped in (\`pswpin\`), pages its swap readahead read (\`swap_ra\`) and of
  those found by a later fault (\`swap_ra_hit\`), from /proc/vmstat over the run
  (the whole machine; zram swaps in synchronously, without readahead). hit % is
  hits over pages prefetched.
- **app p50/p99 us**: latency the program itself saw on touches slower than
  ${FAULT_THRESHOLD_NS / 1000} µs (i.e. touches that waited for a fault); the same measure for
  every configuration. Each workload times the first access to each page it
  touches with CLOCK_MONOTONIC.
- **pager p50/p99 us**: remora's own fault-service histogram (message read to
  UFFDIO_COPY done), from \`--stats-json\`; the kernel has no equivalent.
- **kern est us**: kernel rows only: (time − baseline time) / major faults, i.e.
  the mean extra cost per major fault including reclaim; a rough estimate.
- **pager CPU ms / pager RSS MiB**: the remora pager process's own CPU time
  (the process tree's CPU minus the program's own getrusage) and peak RSS
  (VmHWM); with the embedded backend the RSS includes every page it holds. For
  kernel rows, reclaim work runs in the program's context (counted in
  **app CPU ms**) and in kswapd (not counted anywhere here).
- Every synthetic workload verifies every page it reads against a pattern
  derived from the page index and the pass that last wrote it, and exits
  non-zero on a mismatch: a run shown with a time returned correct data.
`;

/** Figures of the core-pager and peer-daemon sections. */
interface CoreSection {
  /** core_bench.ts output, or why it failed. */
  core?: CoreFigures;
  coreError?: string;
  /** peer_bench.ts figures, or why it failed. */
  peer?: PeerFigures[];
  peerError?: string;
  /** hosts_bench.ts figures (peers in network namespaces behind a delayed link), or why it failed. */
  hosts?: HostsFigures;
  hostsError?: string;
  /** ssh_bench.ts rows (full runs only), or why it failed. */
  ssh?: SshRow[];
  sshError?: string;
}

/**
 * Runs bench/core_bench.ts and bench/peer_bench.ts as children under runstat
 * (their own process group, killed whole on Ctrl-C or time-out, so no peer
 * daemon they started can outlive them).
 */
async function runCore(plan: Plan, buildDir: string, cleanup: Cleanup): Promise<CoreSection> {
  const out: CoreSection = {};
  const child = async (args: string[], timeoutMs: number) => {
    const p = new Deno.Command(`${buildDir}/runstat`, {
      args: ["--out", "/dev/null", "--", Deno.execPath(), "run", "--allow-all", ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    live.add(p);
    const undo = cleanup.add("benchmark child", async () => {
      try {
        p.kill("SIGTERM");
      } catch { /* gone */ }
      await p.status;
    });
    const timer = setTimeout(() => {
      try {
        p.kill("SIGTERM");
      } catch { /* gone */ }
    }, timeoutMs);
    const [stdout, stderr, st] = await Promise.all([
      new Response(p.stdout).text(),
      new Response(p.stderr).text(),
      p.status,
    ]);
    clearTimeout(timer);
    live.delete(p);
    await undo();
    return { stdout, stderr, code: st.code };
  };
  const coreArgs = plan.quick
    ? ["--ws", "16M", "--passes", "1", "--idle-seconds", "1"]
    : ["--ws", "32M", "--passes", "1", "--idle-seconds", "3"];
  const c = await child([`${ROOT}/bench/core_bench.ts`, "--build", buildDir, ...coreArgs], 180_000);
  try {
    out.core = parseCoreOutput(c.stdout);
  } catch (e) {
    const last = c.stderr.trim().split("\n").filter(Boolean).pop() ?? "";
    out.coreError = `core_bench exit ${c.code}: ${e instanceof Error ? e.message : e}; ${last}`;
  }
  const json = `${buildDir}/peer-bench-${Deno.pid}.json`;
  const peerArgs = plan.quick ? ["--pages", "4096", "--singles", "2000"] : ["--pages", "16384"];
  const p = await child([`${ROOT}/bench/peer_bench.ts`, "--json", json, ...peerArgs], 180_000);
  try {
    out.peer = JSON.parse(await Deno.readTextFile(json));
    await Deno.remove(json);
  } catch {
    const last = p.stderr.trim().split("\n").filter(Boolean).pop() ?? "";
    out.peerError = `peer_bench exit ${p.code}: ${last}`;
  }
  const hostsJson = `${buildDir}/hosts-bench-${Deno.pid}.json`;
  const hostsArgs = ["--build", buildDir, "--json", hostsJson, "--ws", plan.quick ? "16M" : "32M"];
  const h = await child([`${ROOT}/bench/hosts_bench.ts`, ...hostsArgs], 300_000);
  try {
    out.hosts = JSON.parse(await Deno.readTextFile(hostsJson));
    await Deno.remove(hostsJson);
    if (out.hosts?.error) out.hostsError = out.hosts.error;
  } catch {
    const last = h.stderr.trim().split("\n").filter(Boolean).pop() ?? "";
    out.hostsError = `hosts_bench exit ${h.code}: ${last}`;
  }
  // The SSH guest under TCG takes a minute or more: full runs only.
  if (!plan.quick) {
    const sshJson = `${buildDir}/ssh-bench-${Deno.pid}.json`;
    const q = await child([`${ROOT}/bench/ssh_bench.ts`, "--json", sshJson], 900_000);
    try {
      out.ssh = JSON.parse(await Deno.readTextFile(sshJson));
      await Deno.remove(sshJson);
    } catch {
      const last = q.stderr.trim().split("\n").filter(Boolean).pop() ?? "";
      out.sshError = `ssh_bench exit ${q.code}: ${last}`;
    }
  }
  return out;
}

const f0 = (v: number | undefined | null, d = 0) =>
  typeof v === "number" && Number.isFinite(v) ? v.toFixed(d) : "-";

/** Verdict on `v` against a target, with the miss in percent. */
function verdict(v: number, target: number, atMost: boolean): string {
  if (!Number.isFinite(v)) return "n/a";
  const ok = atMost ? v <= target : v >= target;
  if (ok) return "MET";
  const miss = atMost ? v / target - 1 : 1 - v / target;
  return `NOT MET (${atMost ? "over" : "under"} by ${(miss * 100).toFixed(0)}%)`;
}

/** Rows of the core-pager table: [metric, value, target, verdict]. */
function coreRows(s: CoreSection): string[][] {
  const rows: string[][] = [];
  const emb = s.core?.core.find((f) => f.setup === "embedded");
  if (emb) {
    const T = CORE_TARGETS;
    rows.push(
      [
        "fault latency median (us)",
        f0(emb.p50Us, 1),
        `<= ${T.medianUs}`,
        verdict(emb.p50Us, T.medianUs, true),
      ],
      ["fault latency p99 (us)", f0(emb.p99Us, 1), "-", "-"],
      [
        "faults/s (faults / program time)",
        f0(emb.faultsPerSec),
        `>= ${T.faultsPerSec}`,
        verdict(emb.faultsPerSec, T.faultsPerSec, false),
      ],
      [
        "eviction pages/s (inside eviction batches)",
        f0(emb.evictPagesPerSecBusy),
        `>= ${T.evictPagesPerSec}`,
        verdict(emb.evictPagesPerSecBusy, T.evictPagesPerSec, false),
      ],
      ["eviction pages/s (sustained, over program time)", f0(emb.evictPagesPerSecWall), "-", "-"],
      [
        "metadata bytes per managed page",
        f0(emb.metadataBytesPerPage, 1),
        `<= ${T.metadataBytesPerPage}`,
        verdict(emb.metadataBytesPerPage, T.metadataBytesPerPage, true),
      ],
      [
        "pager peak RSS (MiB; includes the embedded store's pages)",
        f0(emb.pagerHwmKb / 1024, 1),
        "-",
        `store held up to ${f0(emb.storedPagesPeak * 4 / 1024, 1)} MiB; bare runtime ${
          f0((s.core?.baseRssKb ?? NaN) / 1024, 1)
        } MiB`,
      ],
    );
    if (!emb.ok) rows.push(["(embedded sweep failed)", emb.error ?? "", "", ""]);
  }
  const idle = s.core?.idle;
  if (idle) {
    rows.push([
      `idle CPU of an attached pager (% of a core, ${idle.seconds} s)`,
      idle.ok ? f0(idle.cpuPercent, 2) : `failed: ${idle.error}`,
      "near 0",
      idle.ok ? (idle.cpuPercent < 1 ? "MET" : "NOT MET") : "n/a",
    ]);
    rows.push([
      "idle pager RSS (MiB; 24 MiB evicted to its embedded store)",
      f0(idle.rssKb / 1024, 1),
      "-",
      "-",
    ]);
  }
  return rows;
}

/** Issue #17: a frozen replica adds at most 5 ms to p99 over the freeze. */
const FROZEN_ADDED_P99_US = 5000;

/** Rows of the peer-daemon table. */
function peerRows(s: CoreSection): string[][] {
  const rows: string[][] = [];
  for (const f of s.core?.core ?? []) {
    if (f.setup === "embedded") continue;
    rows.push([
      `faults, seq sweep, ${f.setup} on loopback`,
      f.ok
        ? `p50 ${f0(f.p50Us, 1)} us, p99 ${f0(f.p99Us, 1)} us, ${f0(f.faultsPerSec)} faults/s`
        : `failed: ${f.error}`,
    ]);
  }
  for (const f of s.peer ?? []) {
    rows.push([
      `raw store, ${f.setup}`,
      `write ${f.writePagesPerSec} pages/s, read ${f.readPagesPerSec} pages/s (batches of 64, 16 in flight); ` +
      `single-page get ${f.singleGetPipelinedPerSec}/s (64 in flight), one at a time p50 ${f.singleGetMedianUs} us, ` +
      `p99 ${f.singleGetP99Us} us`,
    ]);
  }
  for (const f of s.peer ?? []) {
    if (!f.frozen) continue;
    const added = Math.max(f.frozen.getP99Us, f.frozen.putP99Us - f.frozen.putBaseP99Us);
    rows.push([
      `a frozen replica (SIGSTOP ${f.frozen.seconds} s), ${f.setup}: added p99, target <= ${FROZEN_ADDED_P99_US} us`,
      `get +${f.frozen.getP99Us} us, put ${f.frozen.putP99Us} us (before ${f.frozen.putBaseP99Us} us): ` +
      verdict(added, FROZEN_ADDED_P99_US, true),
    ]);
  }
  if (s.peerError) rows.push(["raw store", `failed: ${s.peerError}`]);
  rows.push(...hostsRows(s));
  return rows;
}

/** Issue #17: with peers as hosts, a fault's p50 within 2.5x of the link's round trip. */
const HOST_FAULT_RTT_RATIO = 2.5;
/** Issue #17: draining 25% of one peer's slabs costs the paged program < 20% of its progress. */
const DRAIN_PROGRESS_COST = 0.2;

/** Rows of the peers-as-hosts figures (bench/hosts_bench.ts). */
function hostsRows(s: CoreSection): string[][] {
  const h = s.hosts;
  const rows: string[][] = [];
  if (h && Number.isFinite(h.faultP50Us)) {
    const limit = HOST_FAULT_RTT_RATIO * h.linkRttP50Us;
    rows.push([
      `3 peers as hosts (netns), link ${h.delayUs} us each way: app fault p50, uniform, target <= ` +
      `${HOST_FAULT_RTT_RATIO}x the link's round trip`,
      `p50 ${f0(h.faultP50Us)} us, p99 ${
        f0(h.faultP99Us)
      } us (${h.faults} faults); link round trip ` +
      `(C, one byte, through the delay relay) p50 ${f0(h.linkRttP50Us)} us, p99 ${
        f0(h.linkRttP99Us)
      } us, ` +
      `without the relay ${f0(h.bareRttP50Us)} us; ${f0(h.faultP50Us / h.linkRttP50Us, 2)}x: ` +
      verdict(h.faultP50Us, limit, true),
    ]);
  }
  if (h?.drains?.length) {
    const costs = h.drains.map((d) => d.progressCost);
    const med = [...costs].sort((a, b) => a - b)[costs.length >> 1];
    rows.push([
      `draining 25% of one peer's slabs while the program runs (each of 3 in turn, replicas 2): ` +
      `progress lost while it runs, target < ${DRAIN_PROGRESS_COST * 100}%`,
      `median ${f0(med * 100)}% (` +
      h.drains.map((d) =>
        `${f0(d.bytes / 1048576)} MiB in ${f0(d.seconds, 2)} s: ${f0(d.rateDuring)} vs ${
          f0(d.rateBefore)
        } faults/s`
      ).join("; ") + `): ${verdict(med, DRAIN_PROGRESS_COST, true)}`,
    ]);
  }
  if (h?.frozen) {
    const added = Math.max(h.frozen.getP99Us, h.frozen.putP99Us - h.frozen.putBaseP99Us);
    rows.push([
      `a frozen replica (SIGSTOP ${h.frozen.seconds} s), 3 peers as hosts, link ${h.delayUs} us ` +
      `each way, replicas 2: added p99, target <= ${FROZEN_ADDED_P99_US} us`,
      `get +${h.frozen.getP99Us} us, put ${h.frozen.putP99Us} us (before ${h.frozen.putBaseP99Us} us): ` +
      verdict(added, FROZEN_ADDED_P99_US, true),
    ]);
  }
  if (s.hostsError) rows.push(["peers as hosts", `failed: ${s.hostsError}`]);
  return rows;
}

const SSH_HEAD = ["guest RAM budget", "login median (s)", "each login (s)", "max resident pages"];

/**
 * Rows of the SSH-guest table: logins into a 128 MiB TCG guest (memfd RAM)
 * without a pager, at 1 MiB and at 512 KiB (issue #18; FluidMem: 180 pages).
 */
function sshRows(s: CoreSection): string[][] {
  const rows = (s.ssh ?? []).map((r) => [
    r.pages ? `${r.budget} (${r.pages} pages)` : "unlimited (no pager)",
    f0(median(r.loginMs) / 1000, 1),
    r.loginMs.map((t) => (t / 1000).toFixed(1)).join(", ") +
    (r.errors.length ? `; ${r.errors.length} failed` : ""),
    String(r.maxResident),
  ]);
  if (s.sshError) rows.push(["(failed)", s.sshError, "", ""]);
  return rows;
}

function coreWhat(s: CoreSection): string {
  const emb = s.core?.core.find((f) => f.setup === "embedded");
  return emb
    ? `single-threaded sequential sweep (seq, every page rewritten), ${
      emb.wsBytes >> 20
    } MiB, local ${emb.localBytes >> 20} MiB, in-process Pager`
    : "";
}

/** The core-pager and peer sections as text (the terminal summary). */
function coreText(s: CoreSection): string[] {
  const o = [`Core pager: ${coreWhat(s)}`];
  if (s.coreError) o.push(`  failed: ${s.coreError}`);
  o.push(textTable(["metric", "value", "target", "verdict"], coreRows(s)));
  o.push("", "Peer daemons:", textTable(["what", "figures"], peerRows(s)));
  if (s.ssh || s.sshError) {
    o.push("", "SSH login into a QEMU guest (TCG, 128 MiB, memfd RAM):");
    o.push(textTable(SSH_HEAD, sshRows(s)));
  }
  return o;
}

/** The core-pager and peer sections as Markdown. */
function coreMarkdown(s: CoreSection): string[] {
  const o = ['## Core pager (issue "Core pager" targets)', ""];
  o.push(
    `${coreWhat(s)}. Fault latency is the pager's own histogram (message read to ` +
      "UFFDIO_COPY done); eviction pages/s divides pages evicted by the time spent inside eviction " +
      "batches (write-protect, read, store, drop); metadata is `Pager.metadataBytesPerPage()` sampled " +
      "while the target runs. Idle CPU: `pager.ts --pid` attached to a program that wrote 32 MiB " +
      "and sleeps, local 8M, measured after it settled (schedstat of all its threads).",
    "",
  );
  if (s.coreError) o.push(`**failed:** ${s.coreError}`, "");
  o.push(mdTable(["metric", "value", "target", "verdict"], coreRows(s)), "");
  o.push("## Peer daemons on loopback", "");
  o.push(mdTable(["what", "figures"], peerRows(s)));
  if (s.ssh || s.sshError) {
    o.push("", "## SSH login into a QEMU guest (issue #18)", "");
    o.push(
      "`bench/ssh_bench.ts`: a 128 MiB guest under TCG, RAM in a shared memfd, dropbear; each " +
        "login is `ssh root@127.0.0.1 'uname -r; cat /proc/meminfo | head -n 2; echo ok'` " +
        "(key-only). Resident pages: the memfd's allocated blocks, sampled every 50 ms. " +
        "FluidMem reports SSH logins at 180 pages.",
      "",
    );
    o.push(mdTable(SSH_HEAD, sshRows(s)));
  }
  return o;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
