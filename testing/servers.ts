/**
 * Starts and stops real memcached and redis-server processes on free
 * loopback ports, for the backend tests and the benchmark. Every process is
 * a child of the test and is killed by `stop()` (call it in `finally`).
 *
 * @module
 */

import { PATIENCE_MS, track, waitUntil } from "./harness.ts";
import { buildTarget, Proc, startPager } from "./target.ts";

const PAGE_SIZE = 4096;

/** A server process the test started. */
export interface TestServer {
  /** Loopback port it listens on. */
  port: number;
  /** `127.0.0.1:<port>`. */
  hostPort: string;
  /** Sends `signal` (SIGKILL to simulate a crash) without waiting. */
  kill(signal?: Deno.Signal): void;
  /** Kills the process (if alive) and waits for it to exit. */
  stop(): Promise<void>;
}

/** A port that was free a moment ago (and, if `busToo`, so was port + 10000). */
export function freePort(busToo = false): number {
  for (let tries = 0; tries < 50; tries++) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (!busToo) return port;
    if (port + 10000 > 65535) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port: port + 10000 }).close();
      return port;
    } catch { /* bus port taken: try another */ }
  }
  throw new Error("no free loopback port");
}

async function waitForPort(port: number, child: Deno.ChildProcess, what: string): Promise<void> {
  let exited = false;
  child.status.then(() => exited = true);
  await waitUntil(`${what} to listen on port ${port}`, async () => {
    if (exited) throw new Error(`${what} on port ${port} exited at start`);
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return true;
    } catch {
      return false;
    }
  });
}

function spawn(
  cmd: string,
  args: string[],
  port: number,
  cwd?: string,
): { child: Deno.ChildProcess; server: TestServer } {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    cwd,
  })
    .spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text = (text + decoder.decode(chunk, { stream: true })).slice(-20_000);
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  track(`${cmd} port ${port}`, child, () => text, pumps);
  let done = false;
  const status = Promise.all([child.status, pumps]).then(() => done = true);
  const server: TestServer = {
    port,
    hostPort: `127.0.0.1:${port}`,
    kill(signal: Deno.Signal = "SIGKILL") {
      if (!done) {
        try {
          child.kill(signal);
        } catch { /* already gone */ }
      }
    },
    async stop() {
      server.kill("SIGKILL");
      await status;
    },
  };
  return { child, server };
}

/** Options for {@linkcode startMemcached}. */
export interface MemcachedServerOptions {
  /** Start with `-M` (refuse to evict). Default true. */
  noEvict?: boolean;
  /** Memory limit in MB (`-m`). Default 64. */
  memoryMb?: number;
  /** Extra arguments. */
  args?: string[];
}

/** Starts `memcached` on a free loopback port and waits until it accepts connections. */
export async function startMemcached(o: MemcachedServerOptions = {}): Promise<TestServer> {
  const port = freePort();
  const args = [
    "-l",
    "127.0.0.1",
    "-p",
    String(port),
    "-U",
    "0",
    "-m",
    String(o.memoryMb ?? 64),
    "-t",
    "1",
  ];
  if (o.noEvict ?? true) args.push("-M");
  if (Deno.uid() === 0) args.push("-u", "root"); // memcached refuses root without -u
  args.push(...(o.args ?? []));
  const { child, server } = spawn("memcached", args, port);
  try {
    await waitForPort(port, child, "memcached");
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}

/** Starts `redis-server` (no persistence) on a free loopback port with extra `--name value` args. */
export async function startRedis(
  extra: string[] = [],
  busToo = false,
): Promise<TestServer & { dir: string }> {
  const port = freePort(busToo);
  const dir = await Deno.makeTempDir({ prefix: "remora-redis-" });
  const args = [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
    ...extra,
  ];
  const { child, server } = spawn("redis-server", args, port, dir);
  const stop = server.stop;
  const s = {
    ...server,
    dir,
    async stop() {
      await stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
  try {
    await waitForPort(port, child, "redis-server");
  } catch (e) {
    await s.stop();
    throw e;
  }
  return s;
}

/** Runs `redis-cli` with `args`; returns stdout (throws with stderr on failure). */
export async function redisCli(args: string[]): Promise<string> {
  const out = await new Deno.Command("redis-cli", { args, stdin: "null" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`redis-cli ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

/** A Redis Cluster of `n` masters made by `redis-cli --cluster create`. */
export async function startRedisCluster(
  n = 3,
): Promise<{ nodes: (TestServer & { dir: string })[]; stop(): Promise<void> }> {
  const nodes: (TestServer & { dir: string })[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((s) => s.stop()));
  };
  try {
    for (let i = 0; i < n; i++) {
      nodes.push(
        await startRedis([
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          "nodes.conf",
          "--cluster-node-timeout",
          "2000",
          "--maxmemory-policy",
          "noeviction",
        ], true),
      );
    }
    await redisCli([
      "--cluster",
      "create",
      ...nodes.map((s) => s.hostPort),
      "--cluster-replicas",
      "0",
      "--cluster-yes",
    ]);
    const deadline = Date.now() + 15000;
    for (const s of nodes) {
      while (
        !(await redisCli(["-p", String(s.port), "cluster", "info"])).includes("cluster_state:ok")
      ) {
        if (Date.now() > deadline) throw new Error("cluster did not reach cluster_state:ok");
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return { nodes, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Sends one memcached text command and returns the reply up to `END`/one line. */
export async function memcachedCommand(port: number, cmd: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(cmd + "\r\n"));
    let text = "";
    const buf = new Uint8Array(65536);
    while (!/(END|OK|ERROR[^\r]*|VERSION [^\r]*)\r\n$/.test(text)) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return text;
  } finally {
    conn.close();
  }
}

/** memcached's `curr_items`. */
export async function memcachedItems(port: number): Promise<number> {
  const m = /STAT curr_items (\d+)/.exec(await memcachedCommand(port, "stats"));
  return m ? Number(m[1]) : NaN;
}

/** Fills page `i` of `buf` with bytes derived from `key` and `gen`, so a swapped page shows. */
export function fillPage(buf: Uint8Array, i: number, key: number, gen = 0): void {
  let x = (key * 2654435761 + gen * 40503 + 1) >>> 0;
  const v = new DataView(buf.buffer, buf.byteOffset + i * PAGE_SIZE, PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v.setUint32(o, x >>> 0);
  }
}

/** Checks page `i` of `buf` holds what {@linkcode fillPage} wrote for `key`/`gen`. */
export function checkPage(buf: Uint8Array, i: number, key: number, gen = 0): void {
  const want = new Uint8Array(PAGE_SIZE);
  fillPage(want, 0, key, gen);
  const got = buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o++) {
    if (got[o] !== want[o]) throw new Error(`page ${key} differs at byte ${o}`);
  }
}

/** A verifying target (`test/targets/memcheck.c`) running under the pager CLI, attached by pid. */
export interface PagedRun {
  /** The target: it checks every word of its memory each round and prints MISMATCH if one is wrong. */
  target: Proc;
  /** The pager CLI. */
  pager: Proc;
  /** The file the pager writes its final statistics to (`--stats-json`). */
  statsFile: string;
  /** Kills both (if alive) and removes the statistics file. */
  cleanup(): Promise<void>;
}

let memcheckBinary: Promise<string> | undefined;

/**
 * Starts memcheck (`mib` MiB, `rounds` rounds, 0 = forever, `sleepMs` between
 * rounds, default 20), lets it fill its memory (round 0), then attaches the pager to it with `--local 4M` and the
 * given backend URLs and extra arguments. Resolves once the pager attached.
 */
export async function startPaged(
  backend: string[],
  o: { mib?: number; rounds?: number; sleepMs?: number; extra?: string[] } = {},
): Promise<PagedRun> {
  memcheckBinary ??= buildTarget("memcheck");
  const bin = await memcheckBinary;
  const target = new Proc(bin, [
    String(o.mib ?? 12),
    String(o.rounds ?? 0),
    "1",
    "0",
    String(o.sleepMs ?? 20),
  ]);
  const statsFile = await Deno.makeTempFile({ suffix: ".json" });
  let pager: Proc | undefined;
  const cleanup = async () => {
    pager?.kill("SIGKILL");
    target.kill("SIGKILL");
    await Promise.allSettled([pager?.exit(), target.exit()]);
    await Deno.remove(statsFile).catch(() => {});
  };
  try {
    await target.waitFor(/round 0 ok/);
    pager = startPager(
      [
        "--pid",
        String(target.pid),
        "--local",
        "4M",
        "--stats-json",
        statsFile,
        "--backend",
        backend.join(","),
        ...(o.extra ?? []),
      ],
      ["--allow-ffi", "--allow-net", "--allow-read", "--allow-write"],
    );
    await pager.waitFor(/attached to pid|^remora: /);
    if (!/attached to pid/.test(pager.text())) throw new Error(`pager failed:\n${pager.text()}`);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { target, pager, statsFile, cleanup };
}

/** Waits until the target has verified `n` more rounds than it had when called. */
export async function moreRounds(target: Proc, n: number, ms = PATIENCE_MS): Promise<void> {
  const now = target.count(/round \d+ ok/);
  await target.waitFor(new RegExp(`round ${now + n - 1} ok`), ms);
}

/** Fails if the target read a wrong byte (memcheck printed MISMATCH). */
export function assertVerified(p: Proc): void {
  if (/MISMATCH/.test(p.text())) throw new Error(`the target read wrong data:\n${p.text()}`);
}

/** The process state letter from /proc (`T`/`t` stopped, `S` sleeping...), or "" if gone. */
export function procState(pid: number): string {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return "";
  }
}

/**
 * Waits for `pid` to show as stopped (`T`/`t`): a SIGSTOP takes effect when
 * a thread blocked in a fault returns towards user space, which on a busy
 * machine can take a while. Fails, saying so, if it never does.
 */
export async function waitStopped(pid: number, ms = PATIENCE_MS): Promise<string> {
  let st = procState(pid);
  await waitUntil(() => `pid ${pid} to be stopped (state T; last seen "${st}")`, () => {
    st = procState(pid);
    return /^[Tt]$/.test(st) || st === "";
  }, ms);
  return st;
}

/** Polls `probe` until it returns at least `min` (or `ms` pass); returns the last value. */
export async function waitAtLeast(
  probe: () => Promise<number>,
  min: number,
  ms = PATIENCE_MS,
): Promise<number> {
  let v = await probe();
  await waitUntil(`a value of at least ${min}`, async () => (v = await probe()) >= min, ms)
    .catch(() => {});
  return v;
}

/** Runs the pager CLI with `args` to completion; returns its exit code and process. */
export async function runPager(args: string[]): Promise<{ code: number; p: Proc }> {
  const p = startPager(args, ["--allow-ffi", "--allow-net", "--allow-read", "--allow-write"]);
  return { code: await p.exit(), p };
}

/** The pager's error lines on stderr (those starting `remora:` that are not the summary). */
export function stderrLines(p: Proc): string[] {
  return p.err.filter((l) => l.trim() !== "");
}
