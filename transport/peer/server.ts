/**
 * The peer daemon: lends part of this machine's memory to remora clients as
 * fixed-size slabs, owned by the authenticated session that allocated them.
 *
 * A session's slabs outlive a broken connection for `graceMs`, so a client
 * that reconnects at once loses nothing; after that they are freed.
 *
 * What one client can make the daemon hold is bounded: an unauthenticated
 * connection costs about 1 KiB and lives at most `handshakeTimeoutMs` in a
 * small pool of its own (see limits.ts); an authenticated one buffers at
 * most one frame (1 MiB) and stops being read while more than
 * `maxQueuedBytes` of its replies wait to be sent.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { getLogger } from "@logtape/logtape";
import {
  clientProof,
  encodeFrame,
  ErrCode,
  type Frame,
  FrameReader,
  FrameWriter,
  INSTANCE_ID_BYTES,
  MAX_FRAME_BODY,
  MAX_NAMESPACE_BYTES,
  MAX_PREAUTH_BODY,
  MsgType,
  NONCE_BYTES,
  proofsEqual,
  PROTOCOL_VERSION,
  ProtocolError,
  serverProof,
  u32sFrom,
} from "../tcp/protocol.ts";
import {
  decode as decodeRdma,
  RDMA_ERROR,
  type RdmaControlChannel,
  type RdmaMessage,
  type TunnelChannel,
  tunnelChannel,
} from "../rdma/handshake.ts";
import { Admission, Backoff, RateLimitedLog } from "./limits.ts";
import { PeerListener, type PeerSocket } from "./listener.ts";
import { errFrame, forLog, type Session, SlabStore } from "./slabs.ts";

const log = getLogger(["remora", "peer"]);

/** Slab ids per EVICT frame: 256 KiB, well below the largest frame a client accepts. */
const EVICT_IDS_PER_FRAME = 65536;

/** How a peer daemon is configured. */
export interface PeerServerOptions {
  /** Address to listen on. */
  hostname: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Most bytes lent to all clients together. */
  capacityBytes: number;
  /** Bytes the host can spare beyond `--reserve` (see `SlabLimits.hostHeadroom`). */
  hostHeadroom?: () => number;
  /** Largest slab a client may allocate, in bytes (a multiple of 4 KiB). */
  slabBytes: number;
  /** Shared secret; null only with an explicit `--insecure-no-auth`. */
  token: Uint8Array | null;
  /** Most bytes one session may hold (defaults to capacity). */
  maxSessionBytes?: number;
  /** Most simultaneous connections of one session. */
  maxSessionConnections?: number;
  /** Most simultaneous authenticated connections. */
  maxConnections?: number;
  /** Most connections still authenticating (default 256). */
  maxUnauthenticated?: number;
  /** Most connections still authenticating from one client host (default 32). */
  maxUnauthenticatedPerHost?: number;
  /** Most reply bytes queued on one connection before it stops being read (default 2 MiB). */
  maxQueuedBytes?: number;
  /** How long a session's slabs survive once its last connection closed. */
  graceMs?: number;
  /** How long a new connection may take to authenticate. */
  handshakeTimeoutMs?: number;
  /** PEM certificate chain and key: serve TLS instead of plain TCP. */
  tls?: { cert: string; key: string };
  /**
   * Who serves `rdma://` clients (an `RdmaPeerService`, opened by the CLI
   * only with `--rdma`, so that this module needs no FFI), or the one-line
   * reason RDMA hellos are refused with (the client then names it, or falls
   * back to TCP with `--rdma auto`).
   */
  rdma?: RdmaServer | string;
}

/** The part of `RdmaPeerService` the daemon calls. */
export interface RdmaServer {
  /** Serves one client's RDMA session after its hello, until the channel closes. */
  serve(
    channel: RdmaControlChannel,
    hello: Extract<RdmaMessage, { type: "hello" }>,
  ): Promise<void>;
}

/** What went through this daemon's CPU: proof that RDMA pages did not. */
export interface PeerCounters {
  /**
   * Data and control requests answered over TCP after authentication (READ,
   * WRITE, ALLOC...), not counting STAT, which idle clients send as a heartbeat.
   */
  requests: number;
  /** RDMA control messages received (hello, slab requests and releases). */
  rdmaMessages: number;
  /** RDMA sessions started. */
  rdmaSessions: number;
  /** Slabs partial drains got back (their owners moved them away). */
  reclaimedSlabs: number;
  /** Bytes of those slabs. */
  reclaimedBytes: number;
}

interface PeerSession extends Session {
  connections: Set<PeerConnection>;
  graceTimer: ReturnType<typeof setTimeout> | null;
}

interface PeerConnection {
  conn: PeerSocket;
  writer: FrameWriter;
  session: PeerSession | null;
  remote: string;
  host: string;
  /** An EVICT list is queued and not yet written: one is enough (lists only shrink). */
  evictQueued: boolean;
  /** Set once the client said hello to RDMA: its RDMA frames go here. */
  rdma: TunnelChannel | null;
}

/** A running peer daemon. */
export class PeerServer {
  readonly #opts:
    & Required<Omit<PeerServerOptions, "tls" | "rdma" | "hostHeadroom">>
    & Pick<PeerServerOptions, "tls" | "rdma" | "hostHeadroom">;
  readonly #counters = { requests: 0, rdmaMessages: 0, rdmaSessions: 0 };
  readonly #listener: PeerListener;
  readonly #instanceId = new Uint8Array(randomBytes(INSTANCE_ID_BYTES));
  readonly #sessions = new Map<string, PeerSession>();
  readonly #connections = new Set<PeerConnection>();
  readonly #store: SlabStore;
  readonly #admission: Admission<PeerConnection>;
  readonly #quiet = new RateLimitedLog(log);
  #closed = false;
  #acceptLoop: Promise<void>;
  readonly #handlers = new Set<Promise<void>>();

  private constructor(opts: PeerServerOptions, listener: PeerListener) {
    this.#opts = {
      maxSessionBytes: opts.capacityBytes,
      maxSessionConnections: 16,
      maxConnections: 1024,
      maxUnauthenticated: 256,
      maxUnauthenticatedPerHost: 32,
      maxQueuedBytes: 2 * 1024 * 1024,
      graceMs: 300_000,
      handshakeTimeoutMs: 5_000,
      ...opts,
    };
    this.#store = new SlabStore(this.#opts);
    this.#admission = new Admission({
      maxAuthenticated: this.#opts.maxConnections,
      maxUnauthenticated: this.#opts.maxUnauthenticated,
      maxUnauthenticatedPerHost: this.#opts.maxUnauthenticatedPerHost,
    });
    this.#listener = listener;
    this.#acceptLoop = this.#accept();
  }

  /** Starts listening; throws if the address cannot be bound. */
  static start(opts: PeerServerOptions): PeerServer {
    return new PeerServer(opts, PeerListener.listen(opts));
  }

  /** The address actually bound (useful with port 0). */
  get addr(): Deno.NetAddr {
    return this.#listener.addr;
  }

  /** Whether plain TCP clients are served from sockets of our own (see `PeerListener`). */
  get ownSockets(): boolean {
    return this.#listener.ownSockets;
  }

  /** Bytes reserved by all sessions. */
  get usedBytes(): number {
    return this.#store.usedBytes;
  }

  /** Requests served so far, by kind (a copy). */
  get counters(): PeerCounters {
    const { slabs, bytes } = this.#store.reclaimed;
    return { ...this.#counters, reclaimedSlabs: slabs, reclaimedBytes: bytes };
  }

  /** Whether a drain was requested. */
  get draining(): boolean {
    return this.#store.draining;
  }

  /** Bytes still available for new slabs (0 while draining). */
  get freeBytes(): number {
    return this.#store.freeBytes;
  }

  /**
   * Starts a drain: no new slabs, and every client holding slabs here is told
   * to move them away. Clients free the slabs once their copy elsewhere is
   * complete, so no page is lost; `usedBytes` reaches 0 when they are done.
   */
  drain(): void {
    if (!this.#store.draining) {
      log.info("draining: asking {n} session(s) to move their slabs", { n: this.#sessions.size });
    }
    this.#store.draining = true;
    for (const session of this.#sessions.values()) this.#notifyEvict(session);
  }

  /**
   * A partial drain (Infiniswap's decentralised slab eviction): lend `bytes`
   * less from now on when `shrink`, and ask the owners of the least active
   * of a random sample of slabs, about `bytes` of them, to move those away.
   * Faults on every other slab go on untouched.
   */
  reclaim(bytes: number, shrink = true): void {
    const chosen = this.#store.reclaim(this.#sessions.values(), bytes, shrink);
    let slabs = 0;
    for (const [session, ids] of chosen) {
      slabs += ids.length;
      this.#push(session as PeerSession, MsgType.RECLAIM, ids, false);
    }
    log.info("giving back {bytes} bytes: asked {sessions} session(s) to move {slabs} slab(s)", {
      bytes,
      sessions: chosen.size,
      slabs,
    });
  }

  /** Bytes of slabs asked back and not yet moved away by their owners. */
  get reclaimPendingBytes(): number {
    return this.#store.reclaimPendingBytes;
  }

  /** Stops accepting, closes every connection and frees all slabs. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listener.close();
    for (const c of this.#connections) c.conn.close();
    await this.#acceptLoop;
    await Promise.allSettled([...this.#handlers]);
    for (const s of this.#sessions.values()) {
      if (s.graceTimer !== null) clearTimeout(s.graceTimer);
      this.#store.freeAll(s);
    }
    this.#sessions.clear();
    this.#quiet.close();
  }

  async #accept(): Promise<void> {
    const backoff = new Backoff(10, 1000);
    while (!this.#closed) {
      let conn: PeerSocket;
      try {
        conn = await this.#listener.accept();
        backoff.reset();
      } catch (e) {
        if (this.#closed) return;
        // EMFILE and the like fail again at once: wait, or the loop spins.
        const ms = backoff.next();
        this.#quiet.warn(
          "accept",
          "accept failures",
          "accept failed: {error}; retrying in {ms} ms",
          {
            error: (e as Error).message,
            ms,
          },
        );
        await new Promise((r) => setTimeout(r, ms));
        continue;
      }
      this.#admit(conn);
    }
  }

  #admit(conn: PeerSocket): void {
    const pc: PeerConnection = {
      conn,
      writer: new FrameWriter(conn),
      session: null,
      remote: `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`,
      host: conn.remoteAddr.hostname,
      evictQueued: false,
      rdma: null,
    };
    const victim = this.#admission.admit(pc);
    if (victim) {
      this.#quiet.warn(
        "evict",
        "unauthenticated connection(s) closed to make room",
        "closing unauthenticated {victim}: {n} connections are authenticating, {remote} came in",
        { victim: victim.remote, n: this.#admission.unauthenticated, remote: pc.remote },
      );
      victim.conn.close();
    }
    this.#connections.add(pc);
    const handler = this.#serve(pc).finally(() => {
      this.#handlers.delete(handler);
    });
    this.#handlers.add(handler);
  }

  async #serve(pc: PeerConnection): Promise<void> {
    const reader = new FrameReader(MAX_PREAUTH_BODY);
    const serverNonce = new Uint8Array(randomBytes(NONCE_BYTES));
    const timer = setTimeout(() => {
      if (pc.session !== null) return;
      this.#quiet.warn(
        "deadline",
        "connection(s) closed for not authenticating in time",
        "closing {remote}: no authentication within {ms} ms",
        { remote: pc.remote, ms: this.#opts.handshakeTimeoutMs },
      );
      pc.conn.close();
    }, this.#opts.handshakeTimeoutMs);
    try {
      pc.writer.enqueue(encodeFrame(MsgType.HELLO, 0, this.#hello(serverNonce)));
      await this.#serveFrames(pc, reader, serverNonce, timer);
      if (reader.pending > 0) {
        this.#quiet.warn(
          pc.session ? `truncated:${pc.remote}` : "truncated",
          "connection(s) ended inside a frame",
          "closing {remote}: stream ended inside a frame ({n} bytes)",
          { remote: pc.remote, n: reader.pending },
        );
      }
    } catch (e) {
      await this.#ended(pc, e);
    } finally {
      clearTimeout(timer);
      pc.conn.close();
      this.#connections.delete(pc);
      this.#admission.release(pc, pc.session !== null);
      pc.rdma?.deliver(null);
      if (pc.session) this.#detach(pc);
    }
  }

  /**
   * Reads and answers frames until the stream ends. A client that does not
   * read its replies stops being read once `maxQueuedBytes` are queued for it:
   * what it can make this daemon hold is bounded by that plus one reply.
   */
  async #serveFrames(
    pc: PeerConnection,
    reader: FrameReader,
    serverNonce: Uint8Array,
    timer: ReturnType<typeof setTimeout>,
  ): Promise<void> {
    const limit = this.#opts.maxQueuedBytes;
    while (await reader.fill(pc.conn)) {
      let frame: Frame | null;
      while ((frame = reader.next()) !== null) {
        if (pc.session === null) {
          pc.writer.enqueue(this.#authenticate(pc, frame, serverNonce));
          clearTimeout(timer);
          reader.maxBody = MAX_FRAME_BODY;
        } else if (frame.type === MsgType.RDMA) {
          this.#rdmaFrame(pc, frame.payload.slice());
        } else {
          // STAT is an idle connection's heartbeat: it carries no page.
          if (frame.type !== MsgType.STAT) this.#counters.requests++;
          pc.writer.enqueue(this.#handle(pc, pc.session, frame));
        }
        // The frame's bytes stay valid while we wait: no read happens meanwhile.
        if (pc.writer.queued >= limit) await pc.writer.drained(limit);
      }
    }
  }

  async #ended(pc: PeerConnection, e: unknown): Promise<void> {
    if (!(e instanceof ProtocolError)) {
      if (!this.#closed) {
        log.debug("connection {remote} ended: {error}", {
          remote: pc.remote,
          error: (e as Error).message,
        });
      }
      return;
    }
    if (pc.session) {
      log.warn("closing {remote}: {reason}", { remote: pc.remote, reason: e.message });
    } else {
      // One kind per reason with numbers taken out: each reason is seen, none floods.
      this.#quiet.warn(
        `preauth:${e.message.replace(/\d+/g, "N")}`,
        `unauthenticated connection(s) closed: ${e.message.replace(/\d+/g, "N")}`,
        "closing {remote}: {reason}",
        { remote: pc.remote, reason: e.message },
      );
    }
    if (!e.reply) return;
    // The client deserves to know why (e.g. a wrong token), but a client
    // that does not read must not hold the connection open.
    let farewellTimer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      pc.writer.send(e.reply).catch(() => {}),
      new Promise((r) => farewellTimer = setTimeout(r, 1000)),
    ]);
    clearTimeout(farewellTimer);
  }

  /**
   * An RDMA control frame: the first must be a hello, which turns this
   * connection into that client's RDMA control channel; later ones feed it.
   */
  #rdmaFrame(pc: PeerConnection, payload: Uint8Array): void {
    this.#counters.rdmaMessages++;
    if (pc.rdma) {
      pc.rdma.deliver(payload);
      return;
    }
    let hello: RdmaMessage;
    try {
      hello = decodeRdma(payload);
    } catch (e) {
      throw new ProtocolError((e as Error).message);
    }
    if (hello.type !== "hello") throw new ProtocolError(`RDMA ${hello.type} before hello`);
    const tunnel = tunnelChannel(
      (p) => pc.writer.send(encodeFrame(MsgType.RDMA, 0, p)),
      () => pc.conn.close(),
    );
    pc.rdma = tunnel;
    const rdma = this.#opts.rdma;
    let served: Promise<void>;
    if (typeof rdma === "object") {
      this.#counters.rdmaSessions++;
      served = rdma.serve(tunnel.channel, hello);
    } else {
      const message = rdma ?? "this peer was started without --rdma";
      served = tunnel.channel.send({ type: "error", code: RDMA_ERROR.NO_DEVICE, message })
        .catch(() => {});
    }
    const handler = served.finally(() => this.#handlers.delete(handler));
    this.#handlers.add(handler);
  }

  #hello(serverNonce: Uint8Array): Uint8Array {
    const hello = new Uint8Array(2 + INSTANCE_ID_BYTES + NONCE_BYTES);
    hello[0] = PROTOCOL_VERSION;
    hello[1] = this.#opts.token ? 1 : 0;
    hello.set(this.#instanceId, 2);
    hello.set(serverNonce, 2 + INSTANCE_ID_BYTES);
    return hello;
  }

  /** Checks AUTH; returns the OK reply carrying the peer's own proof. */
  #authenticate(pc: PeerConnection, frame: Frame, serverNonce: Uint8Array): Uint8Array {
    const { clientNonce, proof, namespace } = parseAuth(frame);
    const token = this.#opts.token;
    if (token) {
      const expected = clientProof(token, serverNonce, clientNonce, namespace);
      if (!proofsEqual(expected, proof)) {
        throw new ProtocolError(
          "token proof did not verify",
          errFrame(frame.id, ErrCode.AUTH, "token rejected"),
        );
      }
    }
    let session = this.#sessions.get(namespace);
    if (session && session.connections.size >= this.#opts.maxSessionConnections) {
      throw new ProtocolError(
        `session ${forLog(namespace)} is at its connection bound`,
        errFrame(frame.id, ErrCode.QUOTA, "too many connections for this session"),
      );
    }
    if (!this.#admission.promote(pc)) {
      throw new ProtocolError(
        `${this.#opts.maxConnections} authenticated connections already open`,
        errFrame(frame.id, ErrCode.QUOTA, "peer is at its connection bound (--max-connections)"),
      );
    }
    session ??= this.#newSession(namespace);
    this.#attach(pc, session);
    const proofBack = token
      ? serverProof(token, serverNonce, clientNonce, namespace)
      : new Uint8Array(32);
    log.debug("{remote} authenticated as {ns}", { remote: pc.remote, ns: forLog(namespace) });
    return encodeFrame(MsgType.OK, frame.id, proofBack, this.#store.statBody(session));
  }

  #newSession(namespace: string): PeerSession {
    const session: PeerSession = {
      namespace,
      slabs: new Map(),
      bytes: 0,
      connections: new Set(),
      graceTimer: null,
    };
    this.#sessions.set(namespace, session);
    return session;
  }

  #attach(pc: PeerConnection, session: PeerSession): void {
    if (session.graceTimer !== null) {
      clearTimeout(session.graceTimer);
      session.graceTimer = null;
      log.info("session {ns} reconnected with {n} slab(s)", {
        ns: forLog(session.namespace),
        n: session.slabs.size,
      });
    }
    session.connections.add(pc);
    pc.session = session;
  }

  #handle(pc: PeerConnection, session: PeerSession, frame: Frame): Uint8Array {
    if (frame.type !== MsgType.DRAIN) return this.#store.handle(session, frame);
    if (frame.payload.length >= 8) {
      const p = frame.payload;
      const bytes = new DataView(p.buffer, p.byteOffset, 8).getFloat64(0, true);
      if (!(bytes > 0) || !Number.isFinite(bytes)) {
        return errFrame(frame.id, ErrCode.BAD_REQUEST, "partial drain of a bad size");
      }
      log.info("partial drain of {bytes} bytes requested by {remote} ({ns})", {
        bytes,
        remote: pc.remote,
        ns: forLog(session.namespace),
      });
      this.reclaim(bytes);
      return encodeFrame(MsgType.OK, frame.id, this.#store.statBody(session));
    }
    if (!this.#store.draining) {
      log.info("drain requested by {remote} ({ns})", {
        remote: pc.remote,
        ns: forLog(session.namespace),
      });
    }
    this.drain();
    return encodeFrame(MsgType.OK, frame.id, this.#store.statBody(session));
  }

  /** Tells each connection of `session` to move all its slabs away. */
  #notifyEvict(session: PeerSession): void {
    if (session.slabs.size === 0) return;
    // A client that has not read the last list yet gets no second one:
    // repeated drains must not pile lists up on a connection that is not read.
    this.#push(session, MsgType.EVICT, [...session.slabs.keys()], true);
  }

  /** Pushes slab ids to each connection of `session`, in frames a client can take. */
  #push(session: PeerSession, type: number, ids: number[], once: boolean): void {
    if (ids.length === 0) return;
    const frames: Uint8Array[] = [];
    for (let at = 0; at < ids.length; at += EVICT_IDS_PER_FRAME) {
      frames.push(encodeFrame(type, 0, u32sFrom(ids.slice(at, at + EVICT_IDS_PER_FRAME))));
    }
    for (const c of session.connections) {
      if (once && c.evictQueued) continue;
      if (once) c.evictQueued = true;
      let last: Promise<void> = Promise.resolve();
      for (const f of frames) last = c.writer.send(f);
      if (once) last.then(() => c.evictQueued = false, () => {});
      else last.catch(() => {});
    }
  }

  #detach(pc: PeerConnection): void {
    const session = pc.session!;
    session.connections.delete(pc);
    if (session.connections.size > 0) return;
    if (session.slabs.size === 0) {
      this.#sessions.delete(session.namespace);
      return;
    }
    if (this.#closed) return;
    log.info("session {ns} disconnected; its {n} slab(s) are kept {ms} ms for a reconnect", {
      ns: forLog(session.namespace),
      n: session.slabs.size,
      ms: this.#opts.graceMs,
    });
    session.graceTimer = setTimeout(() => {
      session.graceTimer = null;
      if (session.connections.size > 0) return;
      log.info("session {ns} did not return: freeing {n} slab(s)", {
        ns: forLog(session.namespace),
        n: session.slabs.size,
      });
      this.#store.freeAll(session);
      this.#sessions.delete(session.namespace);
    }, this.#opts.graceMs);
  }
}

/** AUTH: `nonce[32], proof[32], u16 nsLen, namespace`. */
function parseAuth(
  frame: Frame,
): { clientNonce: Uint8Array; proof: Uint8Array; namespace: string } {
  const p = frame.payload;
  if (frame.type !== MsgType.AUTH || p.length < NONCE_BYTES + 32 + 2) {
    throw new ProtocolError(`expected AUTH, got type ${frame.type} of ${p.length} bytes`);
  }
  const nsLen = p[NONCE_BYTES + 32] | (p[NONCE_BYTES + 33] << 8);
  if (nsLen === 0 || nsLen > MAX_NAMESPACE_BYTES || p.length !== NONCE_BYTES + 34 + nsLen) {
    throw new ProtocolError(`bad namespace length ${nsLen}`);
  }
  try {
    return {
      clientNonce: p.slice(0, NONCE_BYTES),
      proof: p.slice(NONCE_BYTES, NONCE_BYTES + 32),
      namespace: new TextDecoder("utf-8", { fatal: true }).decode(p.subarray(NONCE_BYTES + 34)),
    };
  } catch {
    throw new ProtocolError("namespace is not UTF-8");
  }
}
