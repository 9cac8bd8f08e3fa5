/**
 * Real peer daemon processes on loopback (the port read from their
 * "listening" line), token files for them, and raw protocol connections for
 * tests that speak frames by hand.
 *
 * @example
 * ```ts
 * import { makeTokenFile, startPeer } from "./peers.ts";
 * const peer = await startPeer({ tokenFile: await makeTokenFile() });
 * try {
 *   console.log(peer.url);
 * } finally {
 *   await peer.stop();
 * }
 * ```
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
} from "../transport/tcp/protocol.ts";

import { decodeStatUsage, PeerConnection } from "../transport/tcp/connection.ts";
import { readSecretFile } from "../transport/token.ts";
import { PATIENCE_MS, track } from "./harness.ts";
import { ROOT } from "./procs.ts";

const MAIN = `${ROOT}transport/peer/main.ts`;

/** A running peer daemon process. */
export interface PeerProcess {
  /** `tcp://ADDRESS:PORT` (or `tcps://` with TLS); the address is 127.0.0.1 unless on a test host. */
  url: string;
  /** `ADDRESS:PORT`. */
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
  /** Run inside this test host (see `netns.ts`), listening on its address. */
  host?: { netns: string; address: string };
  /** URL scheme of the returned `url` (default tcp). */
  scheme?: "tcp" | "tcps";
  /** Serve from sockets of its own (`--allow-ffi`, the default); false: Deno's sockets. */
  ownSockets?: boolean;
}

/** Starts a peer daemon and resolves once it printed its listening line. */
export async function startPeer(opts: StartPeerOptions = {}): Promise<PeerProcess> {
  const address = opts.host?.address ?? "127.0.0.1";
  const args = [
    "run",
    "--allow-net",
    ...(opts.ownSockets === false ? [] : ["--allow-ffi"]),
    "--allow-read",
    MAIN,
    "--listen",
    `${address}:${opts.port ?? 0}`,
    "--capacity",
    opts.capacity ?? "256M",
    ...(opts.tokenFile ? ["--token-file", opts.tokenFile] : ["--insecure-no-auth"]),
    ...(opts.args ?? []),
  ];
  // `ip netns exec` execs the daemon: the child's pid is the daemon's, for signals.
  const argv = opts.host
    ? ["ip", "netns", "exec", opts.host.netns, Deno.execPath(), ...args]
    : [Deno.execPath(), ...args];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    cwd: ROOT,
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
    const hostPort = `${address}:${port}`;
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

/**
 * Runs `peer drain` against `peer` with its token (and `extra` options, e.g.
 * `--bytes`), waiting up to 10 minutes; returns its code and output.
 *
 * @example
 * ```ts
 * const out = await drainPeer(peer, tokenFile, ["--bytes", "1M"]);
 * ```
 */
export function drainPeer(
  peer: PeerProcess,
  tokenFile: string,
  extra: string[] = [],
): Promise<{ code: number; output: string }> {
  const args = ["drain", "--peer", peer.hostPort, "--token-file", tokenFile, "--timeout", "600"];
  return runPeerCommand([...args, ...extra]);
}

/** Runs `peer ARGS` (e.g. `drain ...`) to completion and returns its code and output. */
export async function runPeerCommand(args: string[]): Promise<{ code: number; output: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
    cwd: ROOT,
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

/**
 * A connection to `peer` (plain TCP) in a session of its own, which holds
 * nothing: for STAT, DRAIN and the like.
 *
 * @example
 * ```ts
 * const conn = await observerConnection(peer, tokenFile);
 * await conn.close();
 * ```
 */
export async function observerConnection(
  peer: PeerProcess,
  tokenFile: string,
): Promise<PeerConnection> {
  const [hostname, port] = peer.hostPort.split(":");
  return await PeerConnection.open(
    { address: peer.url, hostname, port: Number(port), tls: false },
    await readSecretFile(tokenFile),
    `test:observer:${crypto.randomUUID()}`,
  );
}

/**
 * Bytes `peer` lends to all sessions together, asked over a session of our
 * own (which holds nothing).
 *
 * @example
 * ```ts
 * await lentBytes(peer, tokenFile); // e.g. 8388608
 * ```
 */
export async function lentBytes(peer: PeerProcess, tokenFile: string): Promise<number> {
  const conn = await observerConnection(peer, tokenFile);
  try {
    return decodeStatUsage(await conn.request(MsgType.STAT)).usedBytes;
  } finally {
    await conn.close();
  }
}

/** Peers whose log shows a slab reserved (start them with `--log-level debug`). */
export function slabHolders(peers: PeerProcess[]): PeerProcess[] {
  return peers.filter((p) => /slab \d+ of \d+ pages reserved/.test(p.output()));
}

/**
 * Writes a tiny CA (`ca.pem`, `ca.key`) and a leaf for 127.0.0.1 (`cert.pem`,
 * `key.pem`) into `dir`, for a peer's `--tls-cert/--tls-key` and a client's
 * `--tls-ca` (rustls refuses a self-signed leaf).
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * await makeTestCertificates(dir);
 * const peer = await startPeer({ scheme: "tcps", args: ["--tls-cert", `${dir}/cert.pem`, "--tls-key", `${dir}/key.pem`] });
 * ```
 */
export async function makeTestCertificates(dir: string): Promise<void> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"];
  const ca = ["-subj", "/CN=remora-test-ca", "-keyout", `${dir}/ca.key`, "-out", `${dir}/ca.pem`];
  const leaf = [
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-CA",
    `${dir}/ca.pem`,
    "-CAkey",
    `${dir}/ca.key`,
    "-keyout",
    `${dir}/key.pem`,
    "-out",
    `${dir}/cert.pem`,
  ];
  for (const args of [ca, leaf]) {
    const gen = await new Deno.Command("openssl", {
      args: ["req", "-x509", ...ec, ...args],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (gen.code !== 0) {
      throw new Error(`openssl req failed: ${new TextDecoder().decode(gen.stderr)}`);
    }
  }
}
