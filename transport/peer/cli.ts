/**
 * `pager.ts peer`: runs a peer daemon that lends memory to remora clients, or
 * (`pager.ts peer drain`) asks a running one to hand its slabs back.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import { configure, getConsoleSink, getLogger } from "@logtape/logtape";
import { PeerServer, type RdmaServer } from "./server.ts";
import { parseBytes, parseDaemonLimits, parseSeconds, UsageError } from "./options.ts";
import { Reactor } from "../reactor.ts";
import { ffiAllowed } from "../../ffi/socket.ts";
import { quietRuntimeHelpers } from "../../ffi/proc.ts";
import { HostReserve } from "./reserve.ts";
import { decodeStat, decodeStatUsage, PeerConnection } from "../tcp/connection.ts";
import { MsgType } from "../tcp/protocol.ts";
import { readSecretFile } from "../token.ts";
import { parsePeerUrl } from "../tcp.ts";

const log = getLogger(["remora", "peer"]);

const HELP = `remora peer: lend this machine's memory to remora pagers on other machines.

Usage:
  pager.ts peer [options]                  run a peer daemon
  pager.ts peer drain --peer HOST:PORT ... ask a running peer to give its memory back

Options (daemon):
  --listen HOST:PORT       address to listen on (default 0.0.0.0:7070; port 0 picks a free
                           port). Prints "remora peer listening on HOST:PORT" once ready.
  --capacity SIZE          most memory lent to all clients together (default 1G; e.g. 512M, 8G)
  --slab-size SIZE         largest slab a client may reserve (default 64M); memory is reserved
                           per slab and allocated on the first write into it
  --token-file FILE        shared secret; clients must prove they hold it (HMAC-SHA256
                           challenge-response, the token never crosses the network)
  --insecure-no-auth       run without a token (anyone who can connect may use memory here);
                           without this flag the daemon refuses to start with no --token-file
  --tls-cert FILE          PEM certificate chain: serve TLS (clients use tcps://HOST:PORT)
  --tls-key FILE           PEM private key for --tls-cert
  --max-session-memory SIZE  most memory one client session may hold (default: --capacity)
  --max-session-connections N  most connections of one session (default 16)
  --max-connections N      most authenticated connections (default 1024)
  --max-unauthenticated N  most connections still authenticating (default 256); when full, a
                           new one closes the oldest of the client host holding the most
  --max-unauthenticated-per-host N  the same bound for one client host (default 32)
  --auth-timeout SECONDS   a connection must authenticate within this (default 5)
  --max-queued SIZE        replies queued for one connection before it stops being read
                           (default 2M)
  --reserve SIZE           keep this much of the host's memory for the host: lend only what
                           is available beyond it, and when available memory falls under it
                           ask clients to move the least active slabs of the shortfall away
  --meminfo FILE           where --reserve reads the host's MemAvailable (default /proc/meminfo)
  --grace SECONDS          the lease of a disconnected session's slabs: how long they outlive its
                           last connection, so that a client that reconnects, or a new pager
                           taking over from a killed one, loses nothing (default 300; at most
                           2147483; --lease is the same option)
  --rdma DEVICE|auto       also lend memory to rdma:// clients by one-sided RDMA from slabs
                           registered on DEVICE (e.g. mlx5_0, rxe0; auto: the first with an
                           active port). Needs --allow-ffi and a memlock limit (ulimit -l) of
                           at least --capacity. With auto and no usable device the daemon serves
                           TCP only and tells rdma:// clients why.
  --busy-poll-us N         after each request look for the next one this long before sleeping
                           (default 300; 0: never). Waking a sleeping thread costs more than a
                           request on a VM; a busy client keeps one CPU busy, an idle one none.
                           Needs --allow-ffi (plain TCP on an IP address)
  --log-level LEVEL        debug, info, warning or error (default info), on stderr
  -h, --help               this help

Options (drain):
  --peer HOST:PORT         the peer to drain (tcps://HOST:PORT for TLS)
  --token-file FILE        the peer's token
  --tls-ca FILE            CA or self-signed certificate to trust for tcps://
  --timeout SECONDS        give up after this long (default 120)
  --bytes SIZE             a partial drain: lend SIZE less from now on, and ask the owners of
                           the least active of a random sample of slabs, about SIZE of them,
                           to move them to other peers; the other slabs stay

Draining: "peer drain", or SIGUSR1 sent to the daemon, stops new slabs and tells
every connected client to move its slabs elsewhere; each client copies a slab to
another peer before it frees it here, so no page is lost. "peer drain" exits 0
once nothing is lent any more. Slabs of clients that are gone are freed when
their grace time ends.

Security: without TLS, page contents travel in clear and unauthenticated after
the handshake (the token itself never does); use --tls-cert/--tls-key on
untrusted networks. All holders of the token are trusted alike: sessions are
kept apart by their namespace, which each pager draws at random.

Exit status: 0 after SIGINT/SIGTERM or a completed drain; 1 when the daemon
cannot start or a drain times out; 2 on bad usage.

Examples:
  head -c 32 /dev/urandom | base64 > /etc/remora/token
  deno run --allow-net --allow-read --allow-ffi pager.ts peer --listen 0.0.0.0:7070 --capacity 8G \\
      --token-file /etc/remora/token
  deno run --allow-net --allow-read pager.ts peer --listen 0.0.0.0:7443 --capacity 8G \\
      --token-file /etc/remora/token --tls-cert peer.pem --tls-key peer.key
  deno run --allow-net --allow-read pager.ts peer drain --peer 10.0.0.2:7070 \\
      --token-file /etc/remora/token
`;

function parseHostPort(text: string, what: string): { hostname: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) > 65535) throw new Error(`bad ${what} "${text}": use HOST:PORT`);
  return { hostname: m[1].replace(/^\[|\]$/g, ""), port: Number(m[2]) };
}

/** The peer daemon's options, as `parseArgs` reads them. */
function parsePeerOptions(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      listen: { type: "string", default: "0.0.0.0:7070" },
      capacity: { type: "string", default: "1G" },
      "slab-size": { type: "string", default: "64M" },
      "token-file": { type: "string" },
      "insecure-no-auth": { type: "boolean", default: false },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "max-session-memory": { type: "string" },
      "max-session-connections": { type: "string", default: "16" },
      "max-connections": { type: "string", default: "1024" },
      "max-unauthenticated": { type: "string", default: "256" },
      "max-unauthenticated-per-host": { type: "string", default: "32" },
      "auth-timeout": { type: "string", default: "5" },
      "max-queued": { type: "string", default: "2M" },
      grace: { type: "string" },
      lease: { type: "string" },
      reserve: { type: "string" },
      meminfo: { type: "string", default: "/proc/meminfo" },
      rdma: { type: "string" },
      "busy-poll-us": { type: "string", default: "300" },
      "log-level": { type: "string", default: "info" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
}

type PeerOptionValues = ReturnType<typeof parsePeerOptions>;

/** Runs `pager.ts peer ARGS`; returns the exit code. */
export async function peerCommand(argv: string[]): Promise<number> {
  if (argv[0] === "drain") return await drainCommand(argv.slice(1));
  let values;
  try {
    values = parsePeerOptions(argv);
  } catch (e) {
    console.error(`remora peer: ${(e as Error).message}\n(see pager.ts peer --help)`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const level = values["log-level"];
  if (!["debug", "info", "warning", "error"].includes(level)) {
    console.error(`remora peer: --log-level must be debug, info, warning or error, not "${level}"`);
    return 2;
  }
  let limits;
  let listen;
  try {
    listen = parseHostPort(values.listen, "--listen");
    limits = parseDaemonLimits(values);
    Reactor.shared().spinMs = parseBusyPoll(values["busy-poll-us"]) / 1000;
  } catch (e) {
    console.error(`remora peer: ${(e as Error).message}`);
    return 2;
  }
  await configureLogging(level as "info");
  // Its garbage collector's helpers must not take a CPU from the pagers and
  // targets it serves (on this machine kind they share two).
  if (ffiAllowed()) quietRuntimeHelpers();
  if (!values["token-file"] && !values["insecure-no-auth"]) {
    console.error(
      "remora peer: no --token-file: refusing to lend memory to anyone who connects " +
        "(pass --token-file FILE, or --insecure-no-auth on a trusted network)",
    );
    return 2;
  }
  const started = await startServer(values, listen, limits);
  if (started === null) return 1;
  if (!values["token-file"]) {
    log.warn("running with --insecure-no-auth: anyone who can connect may use this memory");
  }
  if (!started.server.ownSockets && !values["tls-cert"]) {
    log.info(
      "serving through Deno's sockets (an event-loop wake per request): run with --allow-ffi " +
        "and --listen on an IP address to serve from sockets of its own",
    );
  }
  const addr = started.server.addr;
  console.log(
    `remora peer listening on ${addr.hostname}:${addr.port}${values["tls-cert"] ? " (TLS)" : ""}`,
  );
  await serveUntilStopped(started.server, started.rdma);
  started.reserve?.stop();
  return 0;
}

/** `--busy-poll-us`: a whole number of microseconds, at most 100000. */
function parseBusyPoll(text: string): number {
  const us = Number(text);
  if (!/^\d+$/.test(text) || us > 100_000) {
    throw new UsageError(`--busy-poll-us must be a whole number from 0 to 100000 (got "${text}")`);
  }
  return us;
}

/** Starts the server (TLS and RDMA as asked); null after saying why it could not. */
async function startServer(
  values: PeerOptionValues,
  listen: { hostname: string; port: number },
  limits: ReturnType<typeof parseDaemonLimits>,
): Promise<
  {
    server: PeerServer;
    rdma: Awaited<ReturnType<typeof openRdma>>;
    reserve: HostReserve | null;
  } | null
> {
  let rdma: Awaited<ReturnType<typeof openRdma>> | undefined;
  try {
    if (Boolean(values["tls-cert"]) !== Boolean(values["tls-key"])) {
      throw new Error("--tls-cert and --tls-key go together");
    }
    const token = values["token-file"] ? await readSecretFile(values["token-file"]) : null;
    const tls = values["tls-cert"]
      ? {
        cert: await Deno.readTextFile(values["tls-cert"]),
        key: await Deno.readTextFile(values["tls-key"]!),
      }
      : undefined;
    const reserve = values.reserve === undefined
      ? null
      : new HostReserve(parseBytes(values.reserve, "--reserve", 0, 2 ** 50), values.meminfo);
    rdma = await openRdma(values.rdma, limits);
    const server = PeerServer.start({
      ...listen,
      ...limits,
      token,
      tls,
      rdma: rdma.server,
      hostHeadroom: reserve ? () => reserve.headroom() : undefined,
    });
    reserve?.watch(server);
    return { server, rdma, reserve };
  } catch (e) {
    console.error(`remora peer: ${(e as Error).message}`);
    await rdma?.close();
    return null;
  }
}

/** Serves until SIGINT or SIGTERM (SIGUSR1 drains), then prints the counters and closes. */
async function serveUntilStopped(
  server: PeerServer,
  rdma: Awaited<ReturnType<typeof openRdma>>,
): Promise<void> {
  const stopped = Promise.withResolvers<void>();
  const onStop = () => stopped.resolve();
  const onDrain = () => server.drain();
  Deno.addSignalListener("SIGINT", onStop);
  Deno.addSignalListener("SIGTERM", onStop);
  Deno.addSignalListener("SIGUSR1", onDrain);
  await stopped.promise;
  Deno.removeSignalListener("SIGINT", onStop);
  Deno.removeSignalListener("SIGTERM", onStop);
  Deno.removeSignalListener("SIGUSR1", onDrain);
  const c = server.counters;
  // One line a test or an operator can read: RDMA pages never show up in
  // "requests", which counts everything this CPU answered over TCP.
  console.log(
    `remora peer counters: requests ${c.requests} rdma-messages ${c.rdmaMessages} ` +
      `rdma-sessions ${c.rdmaSessions} rdma-slab-bytes-granted ${rdma.grantedBytes()} ` +
      `reclaimed-slabs ${c.reclaimedSlabs} reclaimed-bytes ${c.reclaimedBytes}`,
  );
  log.info("stopping: {bytes} byte(s) were lent", { bytes: server.usedBytes });
  await server.close();
  await rdma.close();
}

/**
 * Opens the RDMA service for `--rdma` (imported only then: without it the
 * daemon needs no FFI). With `auto` and no usable device, RDMA clients are
 * told why instead; a named device that cannot be used stops the start.
 */
async function openRdma(
  device: string | undefined,
  limits: { capacityBytes: number; slabBytes: number },
): Promise<{ server?: RdmaServer | string; grantedBytes(): number; close(): Promise<void> }> {
  const none = { grantedBytes: () => 0, close: () => Promise.resolve() };
  if (device === undefined) return none;
  const { RdmaPeerService } = await import("../rdma/peer.ts");
  const { RdmaUnavailable } = await import("../rdma/device.ts");
  try {
    const service = RdmaPeerService.open({ device, ...limits });
    log.info("RDMA: lending registered slabs on {dev}", { dev: service.deviceName });
    return {
      server: service,
      grantedBytes: () => service.grantedBytes,
      close: () => service.close(),
    };
  } catch (e) {
    if (!(e instanceof RdmaUnavailable) || device !== "auto") throw e;
    log.warn("RDMA unavailable: {why}; serving TCP only", { why: e.message });
    return { ...none, server: `RDMA unavailable on this peer: ${e.message}` };
  }
}

/** Logs to stderr; `reset` because a host command may have configured logging already. */
async function configureLogging(level: "debug" | "info" | "warning" | "error"): Promise<void> {
  await configure({
    reset: true,
    sinks: { stderr: getConsoleSink() },
    loggers: [
      { category: ["remora"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: ["stderr"] },
    ],
  });
}

async function drainCommand(argv: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: argv,
      options: {
        peer: { type: "string" },
        "token-file": { type: "string" },
        "tls-ca": { type: "string" },
        timeout: { type: "string", default: "120" },
        bytes: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    console.error(`remora peer drain: ${(e as Error).message}\n(see pager.ts peer --help)`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values.peer) {
    console.error("remora peer drain: --peer HOST:PORT is required");
    return 2;
  }
  let timeoutMs: number;
  let bytes: number | null = null;
  try {
    timeoutMs = parseSeconds(values.timeout, "--timeout", 1);
    if (values.bytes !== undefined) bytes = parseBytes(values.bytes, "--bytes", 4096, 2 ** 50);
  } catch (e) {
    console.error(`remora peer drain: ${(e as Error).message}`);
    return 2;
  }
  let conn: PeerConnection;
  try {
    const url = values.peer.includes("://") ? values.peer : `tcp://${values.peer}`;
    const target = {
      ...parsePeerUrl(url),
      caCerts: values["tls-ca"] ? [await Deno.readTextFile(values["tls-ca"])] : undefined,
    };
    const token = values["token-file"] ? await readSecretFile(values["token-file"]) : null;
    const namespace = `remora-drain:${Buffer.from(randomBytes(8)).toString("hex")}`;
    conn = await PeerConnection.open(target, token, namespace);
  } catch (e) {
    console.error(`remora peer drain: ${(e as Error).message}`);
    return 1;
  }
  try {
    if (bytes !== null) return await partialDrain(conn, values.peer, bytes, timeoutMs);
    await conn.request(MsgType.DRAIN);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const reply = await conn.request(MsgType.STAT);
      const used = decodeStatUsage(reply).usedBytes;
      const stat = decodeStat(reply);
      if (used === 0) {
        console.log(
          `peer ${values.peer} drained (capacity ${stat.capacityBytes} bytes, nothing lent)`,
        );
        return 0;
      }
      if (Date.now() > deadline) {
        console.error(`remora peer drain: ${used} byte(s) still lent after ${values.timeout} s`);
        return 1;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (e) {
    console.error(`remora peer drain: ${(e as Error).message}`);
    return 1;
  } finally {
    await conn.close();
  }
}

/**
 * Asks a peer to lend `bytes` less and resolves once the owners moved every
 * slab it asked back (true), or false when some are still lent at `deadline`
 * (a `Date.now()` time).
 *
 * @example
 * ```ts ignore
 * const moved = await askBack(conn, 64 << 20, Date.now() + 60_000);
 * ```
 */
export async function askBack(
  conn: PeerConnection,
  bytes: number,
  deadline: number,
  pollMs = 200,
): Promise<boolean> {
  const size = new Uint8Array(8);
  new DataView(size.buffer).setFloat64(0, bytes, true);
  await conn.request(MsgType.DRAIN, size);
  for (;;) {
    const reply = await conn.request(MsgType.STAT);
    if (decodeStatUsage(reply).reclaimPendingBytes === 0) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/** `drain --bytes`: the peer lends `bytes` less and waits until the owners moved the slabs it asked back. */
async function partialDrain(
  conn: PeerConnection,
  peer: string,
  bytes: number,
  timeoutMs: number,
): Promise<number> {
  if (await askBack(conn, bytes, Date.now() + timeoutMs)) {
    const reply = await conn.request(MsgType.STAT);
    console.log(
      `peer ${peer} gave back ${bytes} bytes (capacity now ${
        decodeStat(reply).capacityBytes
      } bytes, ` +
        `${decodeStatUsage(reply).usedBytes} lent)`,
    );
    return 0;
  }
  const pending = decodeStatUsage(await conn.request(MsgType.STAT)).reclaimPendingBytes;
  console.error(
    `remora peer drain: ${pending} byte(s) asked back are still lent after ${timeoutMs / 1000} s ` +
      `(their owners found no other peer with room)`,
  );
  return 1;
}
