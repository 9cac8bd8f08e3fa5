/**
 * Peers as separate hosts (issue #17's targets): three peer daemons, each in
 * its own network namespace behind a link with a one-way delay (25 us each
 * way by default; testing/netns.ts), and a program paged to them by
 * `pager.ts`:
 *
 * - the link's round trip as a C program sees it (one byte to an echo server
 *   on the host through the same delay relay the peers sit behind);
 * - app-observed fault p50 and p99 of the uniform workload (every touch
 *   timed by the program) with its pages on those peers, against 2.5x that
 *   round trip;
 * - the cost of a partial drain: with `--replicas 2`, each peer in turn asked
 *   to give back 25% of what it lends while the program runs; the program's
 *   progress (faults served per second, read from the pager's /metrics)
 *   while the drain runs, against the 2 s before it;
 * - what one replica frozen for 3 s (SIGSTOP) adds to single-page get and
 *   put p99 of a store of its own on the same links (replicas 2).
 *
 * ```
 * deno run --allow-all bench/hosts_bench.ts [--ws 32M] [--delay-us 25] [--build DIR] [--json FILE]
 * ```
 *
 * Needs root, iproute2 and a built shim; bench/run.ts runs it as a child.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type TestHosts, withHosts } from "../testing/netns.ts";
import {
  makeTokenFile,
  observerConnection,
  type PeerProcess,
  startPeer,
} from "../testing/peers.ts";
import { decodeStatUsage } from "../transport/tcp/connection.ts";
import { MsgType } from "../transport/tcp/protocol.ts";
import { askBack } from "../transport/peer/cli.ts";
import { openPeerStore } from "../transport/tcp.ts";
import { keyRange, pagesFor } from "../testing/pages.ts";
import { type FrozenFigures, frozenReplica } from "./lib/frozen.ts";
import { freePort } from "../testing/servers.ts";
import { buildWorkloads } from "./lib/runner.ts";
import { logHistQuantile, slowTouches } from "./lib/stats.ts";

/** What this program measures; `--json` writes it. */
export interface HostsFigures {
  delayUs: number;
  /** One-byte round trip through the delayed link / with no relay, us. */
  linkRttP50Us: number;
  linkRttP99Us: number;
  bareRttP50Us: number;
  /** App-observed fault latency of the uniform workload, us (touches slower than a fault's floor). */
  faultP50Us: number;
  faultP99Us: number;
  faults: number;
  /** Each peer in turn drained by 25% of what it lent, replicas 2. */
  drains?: DrainFigures[];
  /** One of 3 replicas-2 peers frozen 3 s: single-page get and put p99 through the delayed links. */
  frozen?: FrozenFigures;
  error?: string;
}

/** One partial drain while the program ran. */
export interface DrainFigures {
  bytes: number;
  seconds: number;
  /** Faults served per second in the 2 s before the drain and while it ran. */
  rateBefore: number;
  rateDuring: number;
  /** 1 - during / before, as a fraction (negative: faster during). */
  progressCost: number;
}

const ROOT = new URL("..", import.meta.url).pathname;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ws: { type: "string", default: "32M" },
    "delay-us": { type: "string", default: "25" },
    build: { type: "string", default: `${ROOT}build/bench` },
    json: { type: "string" },
  },
});
const WS_MIB = Math.max(8, parseInt(values.ws!, 10));
const DELAY = { delayUs: Number(values["delay-us"]) };

interface PagedRun {
  child: Deno.ChildProcess;
  http: string;
  output: Promise<{ stdout: string; stderr: string; code: number }>;
}

/** Starts `uniform WS PASSES` under pager.ts with its pages on `urls`. */
function startPaged(urls: string[], tokenFile: string, replicas: number, passes: number): PagedRun {
  const http = `127.0.0.1:${freePort()}`;
  const args = [
    "run",
    "--allow-all",
    `${ROOT}pager.ts`,
    "--local",
    `${Math.max(1, WS_MIB >> 2)}M`,
    "--backend",
    urls.join(","),
    "--token-file",
    tokenFile,
    "--replicas",
    String(replicas),
    "--slab-size",
    "1M",
    "--http",
    http,
    "--quiet",
    "--",
    `${values.build}/uniform`,
    String(WS_MIB),
    String(passes),
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  })
    .spawn();
  const output = Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.status,
  ]).then(([stdout, stderr, s]) => ({ stdout, stderr, code: s.code }));
  return { child, http, output };
}

/** The workload's JSON line, or an error naming what the run printed last. */
async function workloadResult(run: PagedRun) {
  const { stdout, stderr, code } = await run.output;
  const line = stdout.split("\n").filter((l) => l.startsWith("{")).pop();
  const out = line ? JSON.parse(line) : null;
  if (code !== 0 || !out?.ok) {
    const last = (stderr.trim().split("\n").pop() ?? "") || line || `exit ${code}`;
    throw new Error(`the paged workload failed: ${last}`);
  }
  return out;
}

/** Faults the pager has served so far (its /metrics histogram count), or null before it listens. */
async function faultsServed(http: string): Promise<number | null> {
  try {
    const text = await (await fetch(`http://${http}/metrics`)).text();
    const m = /^remora_fault_latency_seconds_count (\d+)/m.exec(text);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

async function faultLatency(urls: string[], tokenFile: string, f: HostsFigures): Promise<void> {
  const run = startPaged(urls, tokenFile, 1, 2);
  const out = await workloadResult(run);
  const slow = slowTouches(out.touchHist);
  f.faults = slow.count;
  f.faultP50Us = Math.round(logHistQuantile(slow.hist, 0.5) / 100) / 10;
  f.faultP99Us = Math.round(logHistQuantile(slow.hist, 0.99) / 100) / 10;
}

/** Samples faults/s over `ms`. */
async function rateOver(http: string, ms: number): Promise<number> {
  const a = await faultsServed(http);
  const t = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  const b = await faultsServed(http);
  if (a === null || b === null) throw new Error("the pager's /metrics did not answer");
  return (b - a) / ((performance.now() - t) / 1000);
}

/** One peer asked for 25% of what it lends back while the program runs: its progress then against before. */
async function drainOnce(
  run: PagedRun,
  peer: PeerProcess,
  tokenFile: string,
): Promise<DrainFigures> {
  // Connected before the baseline: only the drain itself falls in the measured window.
  const conn = await observerConnection(peer, tokenFile);
  try {
    const rateBefore = await rateOver(run.http, 2000);
    const lent = decodeStatUsage(await conn.request(MsgType.STAT)).usedBytes;
    const bytes = Math.max(1 << 20, Math.floor(lent / 4 / (1 << 20)) * (1 << 20));
    const a = await faultsServed(run.http);
    const t = performance.now();
    if (!(await askBack(conn, bytes, Date.now() + 120_000, 10))) {
      throw new Error(`peer ${peer.hostPort} still lends what it asked back after 120 s`);
    }
    const seconds = (performance.now() - t) / 1000;
    const b = await faultsServed(run.http);
    const rateDuring = ((b ?? 0) - (a ?? 0)) / seconds;
    return { bytes, seconds, rateBefore, rateDuring, progressCost: 1 - rateDuring / rateBefore };
  } finally {
    await conn.close();
  }
}

/** Each peer drained by 25% in turn (replicas 2) while the program runs; the median cost is the figure. */
async function drainCost(
  urls: string[],
  peers: PeerProcess[],
  tokenFile: string,
  f: HostsFigures,
): Promise<void> {
  const run = startPaged(urls, tokenFile, 2, 64);
  try {
    // Wait until the program is past its first touch of every page and faulting steadily.
    const start = performance.now();
    while (((await faultsServed(run.http)) ?? 0) < 2 * (WS_MIB << 8)) {
      if (performance.now() - start > 120_000) {
        throw new Error("the paged program made no progress in 120 s");
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    f.drains = [];
    for (const peer of peers) f.drains.push(await drainOnce(run, peer, tokenFile));
  } finally {
    try {
      run.child.kill("SIGINT");
    } catch { /* finished */ }
    await run.output;
  }
}

/** Pages the frozen-replica phase stores first and then reads and rewrites one at a time. */
const FROZEN_PAGES = 4096;

/** A store of its own on the delayed links, replicas 2; one peer frozen 3 s while it reads and writes. */
async function frozenOnHosts(
  urls: string[],
  peers: PeerProcess[],
  tokenFile: string,
): Promise<FrozenFigures> {
  const store = await openPeerStore(urls, {
    replicas: 2,
    namespace: `bench:frozen:${crypto.randomUUID()}`,
    tokenFile,
    slabPages: 256,
  });
  try {
    for (let at = 0; at < FROZEN_PAGES; at += 256) {
      const keys = keyRange(at, 256);
      await store.put(keys, pagesFor(keys));
    }
    return await frozenReplica(store, peers[0], FROZEN_PAGES);
  } finally {
    await store.close();
  }
}

async function measure(hosts: TestHosts, tokenFile: string): Promise<HostsFigures> {
  const link = await hosts.linkRoundTrip(0, DELAY);
  const bare = await hosts.linkRoundTrip(0);
  const f: HostsFigures = {
    delayUs: DELAY.delayUs,
    linkRttP50Us: link.p50Us,
    linkRttP99Us: link.p99Us,
    bareRttP50Us: bare.p50Us,
    faultP50Us: NaN,
    faultP99Us: NaN,
    faults: 0,
  };
  const peers: PeerProcess[] = [];
  try {
    for (const host of hosts.hosts) {
      peers.push(await startPeer({ tokenFile, host, capacity: "1G" }));
    }
    const urls: string[] = [];
    for (let i = 0; i < peers.length; i++) {
      urls.push(
        `tcp://${hosts.hosts[i].address}:${await hosts.delayedPort(i, peers[i].port, DELAY)}`,
      );
    }
    await faultLatency(urls, tokenFile, f);
    await drainCost(urls, peers, tokenFile, f);
    f.frozen = await frozenOnHosts(urls, peers, tokenFile);
  } catch (e) {
    f.error = e instanceof Error ? e.message : String(e);
  } finally {
    await Promise.all(peers.map((p) => p.stop()));
  }
  return f;
}

if (import.meta.main) {
  await buildWorkloads(`${ROOT}bench/workloads`, values.build!);
  const tokenFile = await makeTokenFile();
  let figures: HostsFigures;
  try {
    figures = await withHosts(3, (hosts) => measure(hosts, tokenFile));
  } finally {
    await Deno.remove(tokenFile);
  }
  console.log(JSON.stringify(figures));
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(figures, null, 2) + "\n");
}
