/**
 * Test utilities: real peer daemon processes on loopback, with the port read
 * from their "listening" line.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import {
  clientProof,
  encodeFrame,
  type Frame,
  FrameReader,
  MAX_FRAME_BODY,
  MsgType,
} from "../../transport/tcp/protocol.ts";

import { PATIENCE_MS, track } from "./harness.ts";

const ROOT = new URL("../../", import.meta.url);
const MAIN = new URL("transport/peer/main.ts", ROOT).pathname;

/** A running peer daemon process. */
export interface PeerProcess {
  /** `tcp://127.0.0.1:PORT` (or `tcps://` with TLS). */
  url: string;
  /** `127.0.0.1:PORT`. */
  hostPort: string;
  /** The port it listens on. */
  port: number;
  /** The child process. */
  child: Deno.ChildProcess;
  /** Everything the daemon logged so far (stdout and stderr). */
  output(): string;
  /** Sends a signal. */
  signal(sig: Deno.Signal): void;
  /** Kills the process (SIGKILL by default) and waits for it; safe to call twice. */
  stop(sig?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Options for {@linkcode startPeer}. */
export interface StartPeerOptions {
  /** Token file path; omit to run with `--insecure-no-auth`. */
  tokenFile?: string;
  /** `--capacity` (default 256M). */
  capacity?: string;
  /** Port to listen on (default 0: ephemeral). */
  port?: number;
  /** Extra command-line flags. */
  args?: string[];
  /** URL scheme of the returned `url` (default tcp). */
  scheme?: "tcp" | "tcps";
}

/** Starts a peer daemon and resolves once it printed its listening line. */
export async function startPeer(opts: StartPeerOptions = {}): Promise<PeerProcess> {
  const args = [
    "run",
    "--allow-net",
    "--allow-read",
    MAIN,
    "--listen",
    `127.0.0.1:${opts.port ?? 0}`,
    "--capacity",
    opts.capacity ?? "256M",
    ...(opts.tokenFile ? ["--token-file", opts.tokenFile] : ["--insecure-no-auth"]),
    ...(opts.args ?? []),
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    cwd: ROOT.pathname,
  }).spawn();
  let text = "";
  const listening = Promise.withResolvers<number>();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      const m = /remora peer listening on [^\s]+:(\d+)/.exec(text);
      if (m) listening.resolve(Number(m[1]));
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  track(`peer ${args.slice(4).join(" ")}`, child, () => text, pumps);
  let status: Promise<Deno.CommandStatus> | null = null;
  const stop = (sig: Deno.Signal = "SIGKILL") => {
    if (!status) {
      try {
        child.kill(sig);
      } catch { /* already exited */ }
      status = child.status.then(async (s) => {
        await pumps;
        return s;
      });
    }
    return status;
  };
  const exited = child.status.then((s) => {
    listening.reject(new Error(`peer exited with ${s.code} before listening:\n${text}`));
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`peer did not print its listening line in time:\n${text}`)),
      PATIENCE_MS,
    );
  });
  try {
    const port = await Promise.race([listening.promise, timeout]);
    void exited;
    const hostPort = `127.0.0.1:${port}`;
    return {
      url: `${opts.scheme ?? "tcp"}://${hostPort}`,
      hostPort,
      port,
      child,
      output: () => text,
      signal: (sig) => child.kill(sig),
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `peer ARGS` (e.g. `drain ...`) to completion and returns its code and output. */
export async function runPeerCommand(args: string[]): Promise<{ code: number; output: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    cwd: ROOT.pathname,
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, output: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}

/** Writes a fresh random token to a temporary file and returns its path. */
export async function makeTokenFile(token?: string): Promise<string> {
  const path = await Deno.makeTempFile({ prefix: "remora-token-" });
  await Deno.writeTextFile(path, (token ?? crypto.randomUUID()) + "\n");
  return path;
}

/** A deterministic page for `key` and `version`, so reads can be verified without keeping copies. */
export function pageFor(key: number, version = 0): Uint8Array {
  const page = new Uint8Array(4096);
  const v = new DataView(page.buffer);
  let x = (key * 2654435761 + version * 40503 + 1) >>> 0;
  for (let i = 0; i < 4096; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v.setUint32(i, x >>> 0, true);
  }
  v.setUint32(0, key, true);
  v.setUint32(4, version, true);
  return page;
}

/** Concatenates `pageFor(k, version)` for each key. */
export function pagesFor(keys: Uint32Array, version = 0): Uint8Array {
  const out = new Uint8Array(keys.length * 4096);
  keys.forEach((k, i) => out.set(pageFor(k, version), i * 4096));
  return out;
}

/** Keys `from` .. `from + count - 1`. */
export function keyRange(from: number, count: number): Uint32Array {
  return Uint32Array.from({ length: count }, (_, i) => from + i);
}

/** A raw protocol connection for tests that speak frames by hand. */
export interface RawPeerConnection {
  /** The socket. */
  conn: Deno.TcpConn;
  /** The next frame (payload copied), or null once the peer closed the connection. */
  nextFrame: () => Promise<Frame | null>;
  /** The HELLO frame the peer sent. */
  hello: Frame;
  /** The namespace authenticated as (empty without a token). */
  namespace: string;
}

/**
 * Connects and reads HELLO; with a token, also authenticates (as `namespace`,
 * random by default) and asserts the peer accepted.
 */
export async function rawPeerConnection(
  port: number,
  token: Uint8Array | null,
  namespace = `raw:${crypto.randomUUID()}`,
): Promise<RawPeerConnection> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new FrameReader(MAX_FRAME_BODY);
  const nextFrame = async () => {
    for (;;) {
      const f = reader.next();
      if (f) return { ...f, payload: f.payload.slice() };
      if (!(await reader.fill(conn).catch(() => false))) return null;
    }
  };
  const hello = await nextFrame();
  if (hello?.type !== MsgType.HELLO) throw new Error("no HELLO from the peer");
  if (!token) return { conn, nextFrame, hello, namespace: "" };
  const serverNonce = hello.payload.slice(18, 50);
  const clientNonce = new Uint8Array(randomBytes(32));
  const nsBytes = new TextEncoder().encode(namespace);
  await conn.write(encodeFrame(
    MsgType.AUTH,
    1,
    clientNonce,
    clientProof(token, serverNonce, clientNonce, namespace),
    new Uint8Array([nsBytes.length & 0xff, nsBytes.length >> 8]),
    nsBytes,
  ));
  const ok = await nextFrame();
  if (ok?.type !== MsgType.OK) {
    throw new Error(`the peer refused authentication (type ${ok?.type})`);
  }
  return { conn, nextFrame, hello, namespace };
}

/** A process whose stdout and stderr are collected, with a way to wait for a line. */
export interface Collected {
  /** The child process. */
  child: Deno.ChildProcess;
  /** Everything printed so far (stdout and stderr interleaved as they came). */
  output(): string;
  /** Resolves with the first match of `pattern` in the output; rejects after `ms` or once it ended. */
  waitFor(pattern: RegExp, ms?: number): Promise<RegExpExecArray>;
  /** Resolves with the exit status of the process itself. */
  status: Promise<Deno.CommandStatus>;
  /** Sends a signal, ignoring a process that is gone. */
  kill(sig?: Deno.Signal): void;
}

/** Runs `deno ARGS` from the repository root, collecting its output. */
export function spawnDeno(args: string[]): Collected {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    cwd: ROOT.pathname,
  }).spawn();
  let text = "";
  const wake: (() => void)[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      wake.splice(0).forEach((w) => w());
    }
  };
  const status = child.status;
  let exited = false;
  // The output ends when every writer is gone: the pager's target inherits its stdout.
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const script = args.find((a) => a.endsWith(".ts"))?.split("/").pop() ?? "deno";
  track(`deno ${script}`, child, () => text, pumps);
  pumps.then(() => {
    exited = true;
    wake.splice(0).forEach((w) => w());
  });
  return {
    child,
    output: () => text,
    status,
    kill: (sig: Deno.Signal = "SIGKILL") => {
      try {
        child.kill(sig);
      } catch { /* already exited */ }
    },
    async waitFor(pattern: RegExp, ms = PATIENCE_MS): Promise<RegExpExecArray> {
      const deadline = Date.now() + ms;
      for (;;) {
        const m = pattern.exec(text);
        if (m) return m;
        if (exited || Date.now() > deadline) {
          throw new Error(
            `${exited ? "exited" : `${ms} ms passed`} before ${pattern}; output:\n${
              text.split("\n").slice(-40).join("\n")
            }`,
          );
        }
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((r) => {
          wake.push(r);
          timer = setTimeout(r, 200);
        });
        clearTimeout(timer);
      }
    },
  };
}

/**
 * Compiles test/targets/memcheck.c (the verifying workload: it prints
 * "MISMATCH" and exits 1 on any wrong byte) into build/peer-test/.
 */
export async function buildMemcheck(): Promise<string> {
  const dir = new URL("build/peer-test/", ROOT).pathname;
  await Deno.mkdir(dir, { recursive: true });
  const out = `${dir}memcheck`;
  const tmp = `${out}.${Deno.pid}`;
  const cc = await new Deno.Command("gcc", {
    args: [
      "-O2",
      "-Wall",
      "-pthread",
      "-o",
      tmp,
      new URL("test/targets/memcheck.c", ROOT).pathname,
    ],
  }).output();
  if (!cc.success) {
    throw new Error(`gcc memcheck.c failed:\n${new TextDecoder().decode(cc.stderr)}`);
  }
  await Deno.rename(tmp, out);
  return out;
}

/** Starts `pager.ts` (as a user would, with the permissions a remote backend needs) on `program`. */
export function startPager(args: string[], program: string[]): Collected {
  return spawnDeno([
    "run",
    "--allow-ffi",
    "--allow-net",
    "--allow-read",
    new URL("pager.ts", ROOT).pathname,
    ...args,
    "--",
    ...program,
  ]);
}

/** The state letter of a process from /proc/PID/stat (`T` when stopped), or null if it is gone. */
export function processState(pid: number): string | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return null;
  }
}

/** Kills a process by pid (SIGKILL), ignoring one that is gone. */
export function killPid(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
}

/** Peers whose log shows a slab reserved (start them with `--log-level debug`). */
export function slabHolders(peers: PeerProcess[]): PeerProcess[] {
  return peers.filter((p) => /slab \d+ of \d+ pages reserved/.test(p.output()));
}
