/**
 * Core-pager figures (issue "Core pager" targets) and peer-daemon fault rows:
 *
 * - a single-threaded sequential sweep (bench/workloads/seq.c) paged by an
 *   in-process {@linkcode Pager} with the embedded store: per-fault latency
 *   (median, p99, from the pager's own histogram), faults/s, eviction pages/s,
 *   the pager's RSS and its metadata bytes per managed page
 *   (`Pager.metadataBytesPerPage()`, sampled while the target runs);
 * - the same sweep with one and with three peer daemons on loopback;
 * - idle CPU and RSS of a `pager.ts --pid` attached to an idle target.
 *
 * ```
 * deno run --allow-all bench/core_bench.ts [--ws 64M] [--passes 2] [--local-fraction 0.25]
 *     [--build DIR] [--json FILE] [--no-peers] [--idle-seconds 2]
 * ```
 *
 * Needs root and a built shim (`deno task build`); bench/run.ts runs it as a
 * child process and puts its figures in the report. The workload's own JSON
 * line also goes to stdout; this program's result is the line starting
 * `{"core":`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { Pager } from "../pager/pager.ts";
import { openStore } from "../transport/open.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";
import { loadShim } from "../ffi/shim.ts";
import { reapChild, spawnStoppedAtExec } from "../ffi/spawn.ts";
import { parseSize } from "../pager/size.ts";
import type { PagerStats } from "../pager/stats.ts";

/** Targets the issue sets for the core pager. */
export const CORE_TARGETS = {
  medianUs: 15,
  faultsPerSec: 80_000,
  evictPagesPerSec: 100_000,
  metadataBytesPerPage: 16,
};

/** One paged sequential sweep. */
export interface SweepFigures {
  /** `embedded`, `1 peer`, `3 peers`. */
  setup: string;
  wsBytes: number;
  localBytes: number;
  ok: boolean;
  error?: string;
  /** Program-measured completion time (first touch, passes, verify), ms. */
  totalMs: number;
  /** Faults read from userfaultfd. */
  faults: number;
  /** Faults per second of program time. */
  faultsPerSec: number;
  /** Pager fault-service latency, µs. */
  p50Us: number;
  p99Us: number;
  /** Pages evicted. */
  pagesEvicted: number;
  /** Pages evicted per second spent inside eviction batches. */
  evictPagesPerSecBusy: number;
  /** Pages evicted per second of program time (the sustained rate). */
  evictPagesPerSecWall: number;
  /** Median eviction batch latency, µs. */
  evictBatchP50Us: number;
  /** Largest metadata bytes per managed page seen while the target ran. */
  metadataBytesPerPage: number;
  /** Managed pages when metadata was sampled. */
  managedPages: number;
  /** This process's VmHWM after the sweep (pager + runtime + stored pages), KiB. */
  pagerHwmKb: number;
  /** Pages the store held at the peak (embedded store: part of the RSS), approx. */
  storedPagesPeak: number;
  stats?: PagerStats;
}

/** Idle attached pager. */
export interface IdleFigures {
  ok: boolean;
  error?: string;
  /** CPU of the pager process while its target sleeps, % of one core. */
  cpuPercent: number;
  /** Over how many seconds. */
  seconds: number;
  /** Pager RSS while idle, KiB (embedded store holds the evicted pages). */
  rssKb: number;
  /** Target memory and budget. */
  targetBytes: number;
  localBytes: number;
}

/** Everything this program prints. */
export interface CoreFigures {
  core: SweepFigures[];
  idle?: IdleFigures;
  /** The bare Deno runtime's RSS with the pager modules loaded (before any sweep), KiB. */
  baseRssKb: number;
}

function statusKb(field: string, pid: number | "self" = "self"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(
    Deno.readTextFileSync(`/proc/${pid}/status`),
  );
  return m ? Number(m[1]) : NaN;
}

/** CPU time of every thread of `pid`, ns (schedstat: exact, not tick-rounded). */
function cpuNs(pid: number): number {
  let sum = 0;
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      sum += Number(Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/schedstat`).split(" ")[0]);
    } catch { /* thread gone */ }
  }
  return sum;
}

function histP50(h: { boundsUs: number[]; counts: number[] }): number {
  const total = h.counts.reduce((s, c) => s + c, 0);
  let seen = 0;
  for (let i = 0; i < h.counts.length; i++) {
    const c = h.counts[i];
    if (c > 0 && seen + c >= total / 2) {
      const lo = i === 0 ? 0 : h.boundsUs[i - 1];
      const hi = i < h.boundsUs.length ? h.boundsUs[i] : lo * 2;
      return lo + (hi - lo) * ((total / 2 - seen) / c);
    }
    seen += c;
  }
  return NaN;
}

/** Runs the sequential sweep under an in-process pager with `store`. */
async function sweep(
  setup: string,
  store: PageStore,
  seqBin: string,
  wsBytes: number,
  passes: number,
  localBytes: number,
): Promise<SweepFigures> {
  const fig: SweepFigures = {
    setup,
    wsBytes,
    localBytes,
    ok: false,
    totalMs: NaN,
    faults: 0,
    faultsPerSec: NaN,
    p50Us: NaN,
    p99Us: NaN,
    pagesEvicted: 0,
    evictPagesPerSecBusy: NaN,
    evictPagesPerSecWall: NaN,
    evictBatchP50Us: NaN,
    metadataBytesPerPage: NaN,
    managedPages: 0,
    pagerHwmKb: NaN,
    storedPagesPeak: 0,
  };
  const child = spawnStoppedAtExec([seqBin, String(wsBytes / 1048576), String(passes)]);
  const pager = await Pager.attachAtExec(child, { budgetBytes: localBytes, store });
  let meta = 0, managed = 0, stored = 0;
  const sample = () => {
    const m = pager.metadataBytesPerPage();
    const st = pager.stats();
    if (m > 0 && st.managedBytes / PAGE_SIZE >= managed) {
      meta = m;
      managed = st.managedBytes / PAGE_SIZE;
    }
    stored = Math.max(stored, st.remotePages);
  };
  const timer = setInterval(sample, 20);
  const end = await pager.done();
  clearInterval(timer);
  const code = reapChild(child);
  const st = pager.stats();
  const c = pager.counters;
  fig.stats = st;
  fig.faults = st.counters.faults;
  fig.p50Us = st.faultLatency.p50Us;
  fig.p99Us = st.faultLatency.p99Us;
  fig.pagesEvicted = st.counters.pagesEvicted;
  const evictSec = c.evictLatency.sumUs / 1e6;
  fig.evictPagesPerSecBusy = evictSec > 0 ? st.counters.pagesEvicted / evictSec : NaN;
  fig.evictBatchP50Us = histP50(c.evictLatency.snapshot());
  fig.metadataBytesPerPage = meta;
  fig.managedPages = managed;
  fig.storedPagesPeak = stored;
  fig.pagerHwmKb = statusKb("VmHWM");
  if (end.kind !== "exited" || code !== 0) {
    fig.error = `pager ended ${end.kind}${
      "message" in end ? `: ${end.message}` : ""
    }, exit ${code}`;
  }
  return fig;
}

/** Parses the workload's JSON line out of captured stdout (it shares ours). */
function attachProgramOutput(fig: SweepFigures, line: string | undefined): void {
  if (!line) {
    fig.error ??= "the workload printed no result";
    return;
  }
  const out = JSON.parse(line);
  if (!out.ok) {
    fig.error = `DATA MISMATCH: ${line}`;
    return;
  }
  fig.totalMs = out.totalMs;
  fig.faultsPerSec = fig.faults / (out.totalMs / 1000);
  fig.evictPagesPerSecWall = fig.pagesEvicted / (out.totalMs / 1000);
  fig.ok = !fig.error;
}

async function startPeers(
  root: string,
  n: number,
): Promise<{ urls: string[]; stop(): Promise<void> }> {
  const procs: Deno.ChildProcess[] = [];
  const urls: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const p = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-all",
          `${root}/pager.ts`,
          "peer",
          "--listen",
          "127.0.0.1:0",
          "--capacity",
          "1G",
          "--insecure-no-auth",
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      procs.push(p);
      // The daemon prints "remora peer listening on HOST:PORT" on one of its streams.
      const port = await new Promise<number>((resolve, reject) => {
        let text = "";
        const timer = setTimeout(() => reject(new Error(`peer did not start: ${text}`)), 20_000);
        const pump = async (s: ReadableStream<Uint8Array>) => {
          const dec = new TextDecoder();
          for await (const chunk of s) {
            text += dec.decode(chunk, { stream: true });
            const m = /listening on [^\s]+:(\d+)/.exec(text);
            if (m) {
              clearTimeout(timer);
              resolve(Number(m[1]));
            }
          }
        };
        pump(p.stdout).catch(() => {});
        pump(p.stderr).catch(() => {});
        p.status.then((s) => reject(new Error(`peer exited ${s.code}: ${text}`)));
      });
      urls.push(`tcp://127.0.0.1:${port}`);
    }
  } catch (e) {
    for (const p of procs) {
      try {
        p.kill("SIGKILL");
      } catch { /* gone */ }
    }
    throw e;
  }
  return {
    urls,
    async stop() {
      for (const p of procs) {
        try {
          p.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await Promise.all(procs.map((p) => p.status));
    },
  };
}

/** Attaches `pager.ts --pid` to an idle target and measures the pager's CPU while nothing happens. */
async function idle(root: string, idleBin: string, seconds: number): Promise<IdleFigures> {
  const targetBytes = 32 << 20, localBytes = 8 << 20;
  const fig: IdleFigures = {
    ok: false,
    cpuPercent: NaN,
    seconds,
    rssKb: NaN,
    targetBytes,
    localBytes,
  };
  const target = new Deno.Command(idleBin, {
    args: ["32", String(Math.ceil(seconds + 20))],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  let pager: Deno.ChildProcess | null = null;
  try {
    const reader = target.stdout.getReader();
    const first = await reader.read();
    reader.releaseLock();
    if (!new TextDecoder().decode(first.value ?? new Uint8Array()).includes("ready")) {
      throw new Error("idle target did not start");
    }
    pager = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        `${root}/pager.ts`,
        "--pid",
        String(target.pid),
        "--local",
        "8M",
        "--quiet",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const errText = new Response(pager.stderr).text();
    // Let it attach and evict down to the budget, then measure.
    await new Promise((r) => setTimeout(r, 1500));
    const c0 = cpuNs(pager.pid), t0 = performance.now();
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const c1 = cpuNs(pager.pid), t1 = performance.now();
    fig.cpuPercent = (c1 - c0) / 1e6 / (t1 - t0) * 100;
    fig.rssKb = statusKb("VmRSS", pager.pid);
    pager.kill("SIGTERM"); // detach: every page goes back to the target
    const st = await pager.status;
    if (st.code !== 0) {
      throw new Error(`pager exited ${st.code}: ${(await errText).trim().split("\n").pop()}`);
    }
    fig.ok = true;
  } catch (e) {
    fig.error = e instanceof Error ? e.message : String(e);
    if (pager) {
      try {
        pager.kill("SIGKILL");
      } catch { /* gone */ }
      await pager.status;
    }
  } finally {
    try {
      target.kill("SIGKILL");
    } catch { /* gone */ }
    await target.status;
    await target.stdout.cancel().catch(() => {});
  }
  return fig;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      ws: { type: "string", default: "64M" },
      passes: { type: "string", default: "2" },
      "local-fraction": { type: "string", default: "0.25" },
      build: { type: "string" },
      json: { type: "string" },
      "no-peers": { type: "boolean", default: false },
      "idle-seconds": { type: "string", default: "2" },
    },
  });
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const build = values.build ?? `${root}/build/bench`;
  const ws = parseSize(values.ws);
  const passes = Number(values.passes);
  const local = Math.round(ws * Number(values["local-fraction"]) / PAGE_SIZE) * PAGE_SIZE;
  loadShim();
  const result: CoreFigures = { core: [], baseRssKb: statusKb("VmRSS") };
  // stdout is shared with the workloads: each prints its JSON line there, and
  // parseCoreOutput() matches those lines to the sweeps in order.
  const setups: { name: string; urls: string[] }[] = [{ name: "embedded", urls: [] }];
  let peers: { urls: string[]; stop(): Promise<void> } | null = null;
  try {
    if (!values["no-peers"]) {
      peers = await startPeers(root, 3);
      setups.push({ name: "1 peer", urls: peers.urls.slice(0, 1) });
      setups.push({ name: "3 peers", urls: peers.urls });
    }
    for (const s of setups) {
      let store: PageStore | null = null;
      try {
        store = await openStore(s.urls, { namespace: `bench:${crypto.randomUUID()}`, replicas: 1 });
        result.core.push(await sweep(s.name, store, `${build}/seq`, ws, passes, local));
      } catch (e) {
        result.core.push({
          setup: s.name,
          ok: false,
          error: e instanceof Error ? e.message : String(e),
        } as SweepFigures);
      } finally {
        await store?.close();
      }
    }
  } finally {
    await peers?.stop();
  }
  result.idle = await idle(root, `${build}/idle`, Number(values["idle-seconds"]));
  const line = JSON.stringify({ ...result, core: result.core.map(({ stats: _s, ...f }) => f) });
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(result, null, 1) + "\n");
  console.log(line);
}

/** Matches the workload lines printed on stdout to the sweeps, in order. */
export function parseCoreOutput(stdout: string): CoreFigures {
  const lines = stdout.split("\n").filter((l) => l.startsWith("{"));
  const coreLine = lines.findLast((l) => l.startsWith('{"core":'));
  if (!coreLine) throw new Error("core_bench printed no result");
  const res: CoreFigures = JSON.parse(coreLine);
  const outs = lines.filter((l) => l.startsWith('{"workload":'));
  let k = 0;
  for (const f of res.core) {
    if (f.error && !Number.isFinite(f.faults)) continue;
    attachProgramOutput(f, outs[k++]);
  }
  return res;
}

if (import.meta.main) {
  await main();
  // An in-process pager whose target exited may still hold timers or FFI waits.
  Deno.exit(0);
}
