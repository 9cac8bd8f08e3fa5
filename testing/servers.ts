/**
 * Starts and stops real memcached and redis-server processes on free
 * loopback ports, for the backend tests and the benchmark. Every process is
 * a child of the test and is killed by `stop()` (call it in `finally`).
 *
 * @example
 * ```ts
 * import { startRedis } from "./servers.ts";
 * const redis = await startRedis();
 * try {
 *   console.log(`redis://${redis.hostPort}`);
 * } finally {
 *   await redis.stop();
 * }
 * ```
 *
 * @module
 */

import { waitUntil } from "./harness.ts";
import { Proc } from "./procs.ts";

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

/**
 * A loopback port that was free a moment ago (and, if `busToo`, so was
 * port + 10000, a Redis Cluster node's bus port).
 *
 * @example
 * ```ts
 * const port = freePort();
 * ```
 */
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
  const proc = new Proc(cmd, args, { cwd, label: `${cmd} port ${port}` });
  const server: TestServer = {
    port,
    hostPort: `127.0.0.1:${port}`,
    kill(signal: Deno.Signal = "SIGKILL") {
      proc.kill(signal);
    },
    async stop() {
      proc.kill("SIGKILL");
      await proc.exit();
    },
  };
  return { child: proc.child, server };
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

/**
 * The arguments of a `memcached` on 127.0.0.1:`port` (TCP only), refusing
 * to evict unless `noEvict` is false.
 *
 * @example
 * ```ts
 * const argv = ["memcached", ...memcachedServerArgs(11211, { memoryMb: 256 })];
 * ```
 */
export function memcachedServerArgs(
  port: number,
  o: Pick<MemcachedServerOptions, "memoryMb" | "noEvict"> = {},
): string[] {
  const args = ["-l", "127.0.0.1", "-p", String(port), "-U", "0", "-m", String(o.memoryMb ?? 64)];
  if (o.noEvict ?? true) args.push("-M");
  if (Deno.uid() === 0) args.push("-u", "root"); // memcached refuses root without -u
  return args;
}

/** Starts `memcached` on a free loopback port and waits until it accepts connections. */
export async function startMemcached(o: MemcachedServerOptions = {}): Promise<TestServer> {
  const port = freePort();
  const args = [...memcachedServerArgs(port, o), "-t", "1", ...(o.args ?? [])];
  const { child, server } = spawn("memcached", args, port);
  try {
    await waitForPort(port, child, "memcached");
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}

/**
 * The arguments of a `redis-server` on 127.0.0.1:`port` that keeps nothing
 * on disk (no RDB snapshots, no append-only file).
 *
 * @example
 * ```ts
 * const argv = ["redis-server", ...redisServerArgs(6379), "--loglevel", "warning"];
 * ```
 */
export function redisServerArgs(port: number): string[] {
  return ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
}

/**
 * Starts `redis-server` (no persistence) on a free loopback port with extra
 * `--name value` args, in a temporary directory removed by `stop()`.
 *
 * @example
 * ```ts
 * const redis = await startRedis(["--maxmemory-policy", "noeviction"]);
 * await redis.stop();
 * ```
 */
export async function startRedis(
  extra: string[] = [],
  busToo = false,
): Promise<TestServer & { dir: string }> {
  const port = freePort(busToo);
  const dir = await Deno.makeTempDir({ prefix: "remora-redis-" });
  const args = [...redisServerArgs(port), "--dir", dir, ...extra];
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

/** An in-process TCP server a test started with {@linkcode serveLoopback}. */
export interface LoopbackServer {
  /** Its loopback port. */
  port: number;
  /** Stops listening, closes every connection and waits for every handler to end. */
  close(): Promise<void>;
}

/**
 * Listens on a free loopback port and runs `serve` on each connection (its
 * errors ignored): the base of the tests' fake servers (a fake peer, a
 * memcached or Redis that misbehaves).
 *
 * @example
 * ```ts
 * const echo = serveLoopback(async (conn) => {
 *   const buf = new Uint8Array(64);
 *   for (let n; (n = await conn.read(buf)) !== null;) await conn.write(buf.subarray(0, n));
 * });
 * await echo.close();
 * ```
 */
export function serveLoopback(serve: (conn: Deno.Conn) => Promise<void>): LoopbackServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const serving: Promise<void>[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        serving.push(serve(conn).catch(() => {}).finally(() => conns.delete(conn)));
      }
    } catch { /* listener closed */ }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await accepting;
      await Promise.allSettled(serving);
    },
  };
}
