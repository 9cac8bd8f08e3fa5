/**
 * One authenticated client connection to a peer daemon, with pipelined
 * requests matched to responses by id and a bound on requests in flight.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { type ByteConn, openTcp } from "../fd_socket.ts";
import { ConnectionError, type ConnectionErrorKind } from "../kit.ts";
import {
  clientProof,
  encodeFrame,
  ErrCode,
  FrameReader,
  FrameWriter,
  INSTANCE_ID_BYTES,
  MAX_FRAME_BODY,
  MAX_PREAUTH_BODY,
  MsgType,
  NONCE_BYTES,
  proofsEqual,
  PROTOCOL_VERSION,
  serverProof,
} from "./protocol.ts";

/** Where a peer listens and how to reach it. */
export interface PeerTarget {
  /** The address as the user wrote it, e.g. `tcp://127.0.0.1:7070`. */
  address: string;
  /** Host name or IP. */
  hostname: string;
  /** TCP port. */
  port: number;
  /** Whether to speak TLS (`tcps://`). */
  tls: boolean;
  /** Extra PEM CA certificates trusted for TLS (e.g. a self-signed peer certificate). */
  caCerts?: string[];
}

/** Capacity figures a peer reports in handshakes and replies. */
export interface PeerStat {
  /** Total bytes the peer lends. */
  capacityBytes: number;
  /** Bytes still free for new slabs (0 while draining). */
  freeBytes: number;
  /** Bytes this session holds there. */
  sessionBytes: number;
  /** Slabs this session holds there. */
  sessionSlabs: number;
  /** Whether the peer is draining. */
  draining: boolean;
}

/** The peer answered a request with an error code. */
export class PeerRequestError extends Error {
  /** One of the protocol's error codes. */
  readonly code: number;
  /** Builds the error from the peer's code and message. */
  constructor(code: number, message: string) {
    super(message);
    this.name = "PeerRequestError";
    this.code = code;
  }
}

/**
 * The connection is gone (reset, closed, timed out): every pending request
 * fails with the toolkit's {@linkcode ConnectionError}, whose `kind` says how.
 */
export { ConnectionError };

/** Tunables of a connection. */
export interface ConnectionOptions {
  /** Most requests in flight; more wait their turn (client-side backpressure). */
  maxInFlight?: number;
  /** A request unanswered this long means the peer is dead. */
  requestTimeoutMs?: number;
  /** Limit for connecting and authenticating. */
  connectTimeoutMs?: number;
  /**
   * A connection with no request for this long asks the peer for its stat, so
   * that a peer which froze or vanished while unused is noticed within about
   * this plus the request timeout, not at the next fault that needs it.
   * Default: half the request timeout; 0 turns probing off.
   */
  idleProbeMs?: number;
}

interface Pending {
  resolve: (payload: Uint8Array) => void;
  reject: (e: Error) => void;
  deadline: number;
}

/** Bytes of the stat block in replies: 3 x f64, u32 slabs, u8 draining. */
const STAT_BYTES = 29;

/** Decodes the stat block every peer reply to ALLOC, FREE, RESET, STAT and AUTH carries. */
export function decodeStat(p: Uint8Array): PeerStat {
  if (p.length < STAT_BYTES) {
    throw new PeerRequestError(
      ErrCode.MALFORMED,
      `peer reply of ${p.length} bytes is too short for its stat block (${STAT_BYTES})`,
    );
  }
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  return {
    capacityBytes: v.getFloat64(0, true),
    freeBytes: v.getFloat64(8, true),
    sessionBytes: v.getFloat64(16, true),
    sessionSlabs: v.getUint32(24, true),
    draining: p[28] === 1,
  };
}

/**
 * The peer-wide figures a STAT reply adds after its stat block: bytes lent to
 * all sessions, and bytes a partial drain asked back and still lent.
 *
 * @example
 * ```ts
 * const { usedBytes } = decodeStatUsage(await conn.request(MsgType.STAT));
 * ```
 */
export function decodeStatUsage(p: Uint8Array): { usedBytes: number; reclaimPendingBytes: number } {
  if (p.length < STAT_BYTES + 16) {
    throw new PeerRequestError(ErrCode.MALFORMED, `STAT reply of ${p.length} bytes is too short`);
  }
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  return {
    usedBytes: v.getFloat64(STAT_BYTES, true),
    reclaimPendingBytes: v.getFloat64(STAT_BYTES + 8, true),
  };
}

/** An open, authenticated connection to one peer. */
export class PeerConnection {
  /** The peer's random id for its current run: a different id means it restarted empty. */
  readonly instanceId: Uint8Array;
  /** What the peer reported at the handshake. */
  readonly stat: PeerStat;
  /** Called with slab ids when the peer asks us to move them away (drain). */
  onEvict: (slabs: number[]) => void = () => {};
  /** Called with slab ids the peer wants back while it keeps lending the rest (partial drain). */
  onReclaim: (slabs: number[]) => void = () => {};
  /** Called once when the connection is lost (not after `close`). */
  onLost: (reason: string) => void = () => {};
  /** Called with the payload of each RDMA control frame (`rdma://` clients only). */
  onRdma: (payload: Uint8Array) => void = () => {};
  /** Called with the stat an idle probe brought back (the peer's free bytes move with other clients). */
  onProbe: (stat: PeerStat) => void = () => {};

  readonly #conn: ByteConn;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  readonly #pending = new Map<number, Pending>();
  readonly #waiting: (() => void)[] = [];
  readonly #maxInFlight: number;
  readonly #timeoutMs: number;
  readonly #idleProbeMs: number;
  #lastRequestAt = Date.now();
  readonly #sweep: ReturnType<typeof setInterval>;
  #nextId = 1;
  #lost: ConnectionError | null = null;
  #readLoop: Promise<void>;

  private constructor(
    conn: ByteConn,
    reader: FrameReader,
    instanceId: Uint8Array,
    stat: PeerStat,
    opts: ConnectionOptions,
  ) {
    this.#conn = conn;
    this.#reader = reader;
    this.#writer = new FrameWriter(conn);
    this.instanceId = instanceId;
    this.stat = stat;
    this.#maxInFlight = opts.maxInFlight ?? 128;
    this.#timeoutMs = opts.requestTimeoutMs ?? 5_000;
    this.#idleProbeMs = opts.idleProbeMs ?? this.#timeoutMs / 2;
    this.#sweep = setInterval(() => this.#checkTimeouts(), Math.min(500, this.#timeoutMs / 4));
    this.#readLoop = this.#read();
  }

  /**
   * Connects and authenticates. Throws an Error whose message is one line for
   * the user (unreachable, token rejected, token missing, wrong protocol).
   */
  static async open(
    target: PeerTarget,
    token: Uint8Array | null,
    namespace: string,
    opts: ConnectionOptions = {},
  ): Promise<PeerConnection> {
    const where = `${target.hostname}:${target.port}`;
    const limit = opts.connectTimeoutMs ?? 3_000;
    let conn: ByteConn | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        if (conn) closeQuietly(conn);
        reject(new Error(`peer ${where} did not answer within ${limit} ms`));
      }, limit);
    });
    try {
      const connecting = (async () => {
        try {
          conn = target.tls
            ? await Deno.connectTls({
              hostname: target.hostname,
              port: target.port,
              caCerts: target.caCerts,
            })
            : await openTcp(target.hostname, target.port);
        } catch (e) {
          throw new Error(`peer ${where} unreachable: ${(e as Error).message}`);
        }
        return await handshake(conn, target, token, namespace, opts);
      })();
      // A late connect after a timeout must not leak its socket.
      connecting.catch(() => {});
      return await Promise.race([connecting, timeout]);
    } catch (e) {
      if (conn) closeQuietly(conn);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** @internal Builds the connection once the handshake succeeded. */
  static fromHandshake(
    conn: ByteConn,
    reader: FrameReader,
    instanceId: Uint8Array,
    stat: PeerStat,
    opts: ConnectionOptions,
  ): PeerConnection {
    return new PeerConnection(conn, reader, instanceId, stat, opts);
  }

  /** Whether the connection is still usable. */
  get alive(): boolean {
    return this.#lost === null;
  }

  /**
   * Sends one request and resolves with the OK payload (a copy). Rejects with
   * {@linkcode PeerRequestError} on an ERR reply, {@linkcode ConnectionError}
   * if the connection dies first.
   */
  async request(type: number, ...parts: Uint8Array[]): Promise<Uint8Array> {
    if (this.#lost) throw this.#lost;
    // First come, first served: a request never overtakes one already waiting,
    // so requests reach the peer in the order they were made (a FREE is never
    // overtaken by a later ALLOC of the same slab).
    // Each completion wakes the next waiter, whose request then takes its place.
    if (this.#pending.size >= this.#maxInFlight || this.#waiting.length > 0) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
      if (this.#lost) throw this.#lost;
    }
    this.#lastRequestAt = Date.now();
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    const reply = new Promise<Uint8Array>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, deadline: Date.now() + this.#timeoutMs });
    });
    this.#writer.send(encodeFrame(type, id, ...parts)).catch((e) =>
      this.#fail("broken", `write failed: ${(e as Error).message}`)
    );
    try {
      return await reply;
    } finally {
      this.#waiting.shift()?.();
    }
  }

  /**
   * Sends one RDMA control message (already encoded) in an RDMA frame; it has
   * no reply of its own: the peer's messages arrive through `onRdma`.
   */
  async sendRdma(payload: Uint8Array): Promise<void> {
    if (this.#lost) throw this.#lost;
    await this.#writer.send(encodeFrame(MsgType.RDMA, 0, payload));
  }

  /** Closes the connection; pending requests fail. */
  async close(): Promise<void> {
    this.#fail("closed", "closed", false);
    await this.#readLoop;
  }

  async #read(): Promise<void> {
    try {
      while (await this.#reader.fill(this.#conn)) {
        let frame;
        while ((frame = this.#reader.next()) !== null) {
          if (frame.type === MsgType.EVICT || frame.type === MsgType.RECLAIM) {
            const slabs = slabIds(frame.payload);
            if (frame.type === MsgType.EVICT) this.onEvict(slabs);
            else this.onReclaim(slabs);
            continue;
          }
          if (frame.type === MsgType.RDMA) {
            this.onRdma(frame.payload.slice());
            continue;
          }
          const pending = this.#pending.get(frame.id);
          if (!pending) continue;
          this.#pending.delete(frame.id);
          if (frame.type === MsgType.OK) pending.resolve(frame.payload.slice());
          else if (frame.type === MsgType.ERR) {
            pending.reject(
              new PeerRequestError(
                frame.payload[0] ?? 0,
                new TextDecoder().decode(frame.payload.subarray(1)),
              ),
            );
          } else {pending.reject(
              new PeerRequestError(ErrCode.MALFORMED, `unexpected reply type ${frame.type}`),
            );}
        }
      }
      this.#fail("closed", "peer closed the connection");
    } catch (e) {
      this.#fail("broken", (e as Error).message);
    }
  }

  #checkTimeouts(): void {
    const now = Date.now();
    for (const p of this.#pending.values()) {
      if (p.deadline < now) {
        this.#fail("timeout", `no reply within ${this.#timeoutMs} ms`);
        return;
      }
    }
    if (this.#idleProbeMs > 0 && now - this.#lastRequestAt >= this.#idleProbeMs) this.#probe();
  }

  /** An idle connection's heartbeat: its deadline is any request's, so silence marks the peer lost. */
  #probe(): void {
    this.request(MsgType.STAT).then((reply) => this.onProbe(decodeStat(reply)))
      // A lost connection reports itself through onLost; a malformed stat is
      // met again, with its error, by the next real request.
      .catch(() => {});
  }

  #fail(kind: ConnectionErrorKind, reason: string, report = true): void {
    if (this.#lost) return;
    this.#lost = new ConnectionError(kind, reason);
    clearInterval(this.#sweep);
    closeQuietly(this.#conn);
    for (const p of this.#pending.values()) p.reject(this.#lost);
    this.#pending.clear();
    for (const w of this.#waiting.splice(0)) w();
    if (report) this.onLost(reason);
  }
}

async function handshake(
  conn: ByteConn,
  target: PeerTarget,
  token: Uint8Array | null,
  namespace: string,
  opts: ConnectionOptions,
): Promise<PeerConnection> {
  const where = `${target.hostname}:${target.port}`;
  const reader = new FrameReader(MAX_PREAUTH_BODY);
  const next = async () => {
    for (;;) {
      const f = reader.next();
      if (f) return f;
      if (!(await reader.fill(conn))) {
        throw new Error(`peer ${where} closed the connection during the handshake`);
      }
    }
  };
  const hello = await next();
  const hp = hello.payload;
  if (hello.type !== MsgType.HELLO || hp.length < 2 + INSTANCE_ID_BYTES + NONCE_BYTES) {
    throw new Error(`${where} is not a remora peer (unexpected greeting)`);
  }
  if (hp[0] !== PROTOCOL_VERSION) {
    throw new Error(`peer ${where} speaks protocol ${hp[0]}, this client ${PROTOCOL_VERSION}`);
  }
  const authRequired = hp[1] === 1;
  const instanceId = hp.slice(2, 2 + INSTANCE_ID_BYTES);
  const serverNonce = hp.slice(2 + INSTANCE_ID_BYTES, 2 + INSTANCE_ID_BYTES + NONCE_BYTES);
  if (authRequired && !token) {
    throw new Error(`peer ${where} requires a token: pass --token-file`);
  }
  const clientNonce = new Uint8Array(randomBytes(NONCE_BYTES));
  const ns = new TextEncoder().encode(namespace);
  const proof = token
    ? clientProof(token, serverNonce, clientNonce, namespace)
    : new Uint8Array(32);
  const writer = new FrameWriter(conn);
  await writer.send(
    encodeFrame(
      MsgType.AUTH,
      1,
      clientNonce,
      proof,
      new Uint8Array([ns.length & 0xff, ns.length >> 8]),
      ns,
    ),
  );
  let reply;
  try {
    reply = await next();
  } catch (e) {
    throw new Error(`peer ${where} closed the connection after AUTH (${(e as Error).message})`);
  }
  if (reply.type === MsgType.ERR) {
    if (reply.payload[0] === ErrCode.AUTH) {
      throw new Error(`peer ${where} rejected the token: check --token-file`);
    }
    throw new Error(
      `peer ${where} refused the session: ${new TextDecoder().decode(reply.payload.subarray(1))}`,
    );
  }
  if (reply.type !== MsgType.OK || reply.payload.length < 32 + STAT_BYTES) {
    throw new Error(`peer ${where} sent a malformed handshake reply`);
  }
  // Mutual authentication: a client holding a token trusts only a peer that
  // proves it holds the same token, whatever the peer said in HELLO. A peer
  // that claims "no auth" could otherwise be anyone on its address, and the
  // pages it returns would go straight into the target.
  if (token) checkServerProof(where, token, serverNonce, clientNonce, namespace, reply.payload);
  const stat = decodeStat(reply.payload.subarray(32));
  reader.maxBody = MAX_FRAME_BODY;
  return PeerConnection.fromHandshake(conn, reader, instanceId, stat, opts);
}

/** Throws one line unless the OK to AUTH carries the peer's proof of the token. */
function checkServerProof(
  where: string,
  token: Uint8Array,
  serverNonce: Uint8Array,
  clientNonce: Uint8Array,
  namespace: string,
  payload: Uint8Array,
): void {
  const expected = serverProof(token, serverNonce, clientNonce, namespace);
  if (!proofsEqual(expected, payload.subarray(0, 32))) {
    throw new Error(
      `peer ${where} did not prove it holds the token: refusing it ` +
        `(is it a remora peer started with the same --token-file?)`,
    );
  }
}

function closeQuietly(conn: ByteConn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** The `u32 slabs[]` of an EVICT or RECLAIM push. */
function slabIds(payload: Uint8Array): number[] {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const slabs: number[] = [];
  for (let i = 0; i + 4 <= payload.length; i += 4) slabs.push(v.getUint32(i, true));
  return slabs;
}
