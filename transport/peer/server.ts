/**
 * The peer daemon: lends part of this machine's memory to remora clients as
 * fixed-size slabs, owned by the authenticated session that allocated them.
 *
 * Slabs are reserved against `capacity` when allocated and backed by an
 * ArrayBuffer only on first write, so an idle reservation costs nothing.
 * A session's slabs outlive a broken connection for `graceMs`, so a client
 * that reconnects at once loses nothing; after that they are freed.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { getLogger } from "@logtape/logtape";
import { PAGE_SIZE } from "../store.ts";
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
  MAX_PAGES_PER_REQUEST,
  MAX_PREAUTH_BODY,
  MsgType,
  NONCE_BYTES,
  proofsEqual,
  PROTOCOL_VERSION,
  ProtocolError,
  serverProof,
  u32s,
} from "../tcp/protocol.ts";

const log = getLogger(["remora", "peer"]);

/** How a peer daemon is configured. */
export interface PeerServerOptions {
  /** Address to listen on. */
  hostname: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Most bytes lent to all clients together. */
  capacityBytes: number;
  /** Largest slab a client may allocate, in bytes (a multiple of 4 KiB). */
  slabBytes: number;
  /** Shared secret; null only with an explicit `--insecure-no-auth`. */
  token: Uint8Array | null;
  /** Most bytes one session may hold (defaults to capacity). */
  maxSessionBytes?: number;
  /** Most simultaneous connections of one session. */
  maxSessionConnections?: number;
  /** Most simultaneous connections overall, authenticated or not. */
  maxConnections?: number;
  /** How long a session's slabs survive once its last connection closed. */
  graceMs?: number;
  /** How long a new connection may take to authenticate. */
  handshakeTimeoutMs?: number;
  /** PEM certificate chain and key: serve TLS instead of plain TCP. */
  tls?: { cert: string; key: string };
}

interface Slab {
  pages: number;
  data: Uint8Array | null;
  present: Uint8Array;
}

interface Session {
  namespace: string;
  slabs: Map<number, Slab>;
  bytes: number;
  connections: Set<PeerConnection>;
  graceTimer: ReturnType<typeof setTimeout> | null;
}

interface PeerConnection {
  conn: Deno.Conn;
  writer: FrameWriter;
  session: Session | null;
  remote: string;
}

/** A running peer daemon. */
export class PeerServer {
  readonly #opts: Required<Omit<PeerServerOptions, "tls">> & Pick<PeerServerOptions, "tls">;
  readonly #listener: Deno.Listener;
  readonly #instanceId = new Uint8Array(randomBytes(INSTANCE_ID_BYTES));
  readonly #sessions = new Map<string, Session>();
  readonly #connections = new Set<PeerConnection>();
  #usedBytes = 0;
  #draining = false;
  #closed = false;
  #acceptLoop: Promise<void>;
  readonly #handlers = new Set<Promise<void>>();

  private constructor(opts: PeerServerOptions, listener: Deno.Listener) {
    this.#opts = {
      maxSessionBytes: opts.capacityBytes,
      maxSessionConnections: 16,
      maxConnections: 1024,
      graceMs: 30_000,
      handshakeTimeoutMs: 5_000,
      ...opts,
    };
    this.#listener = listener;
    this.#acceptLoop = this.#accept();
  }

  /** Starts listening; throws if the address cannot be bound. */
  static start(opts: PeerServerOptions): PeerServer {
    const listener = opts.tls
      ? Deno.listenTls({
        hostname: opts.hostname,
        port: opts.port,
        cert: opts.tls.cert,
        key: opts.tls.key,
      })
      : Deno.listen({ hostname: opts.hostname, port: opts.port });
    return new PeerServer(opts, listener);
  }

  /** The address actually bound (useful with port 0). */
  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /** Bytes reserved by all sessions. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Whether a drain was requested. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Bytes still available for new slabs (0 while draining). */
  get freeBytes(): number {
    return this.#draining ? 0 : Math.max(0, this.#opts.capacityBytes - this.#usedBytes);
  }

  /**
   * Starts a drain: no new slabs, and every client holding slabs here is told
   * to move them away. Clients free the slabs once their copy elsewhere is
   * complete, so no page is lost; `usedBytes` reaches 0 when they are done.
   */
  drain(): void {
    if (!this.#draining) {
      log.info("draining: asking {n} session(s) to move their slabs", { n: this.#sessions.size });
    }
    this.#draining = true;
    for (const session of this.#sessions.values()) this.#notifyEvict(session);
  }

  /** Stops accepting, closes every connection and frees all slabs. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const c of this.#connections) closeQuietly(c.conn);
    await this.#acceptLoop;
    await Promise.allSettled([...this.#handlers]);
    for (const s of this.#sessions.values()) {
      if (s.graceTimer !== null) clearTimeout(s.graceTimer);
    }
    this.#sessions.clear();
    this.#usedBytes = 0;
  }

  async #accept(): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (e) {
        if (this.#closed) return;
        log.warn("accept failed: {error}", { error: (e as Error).message });
        continue;
      }
      const remote = formatAddr(conn.remoteAddr);
      if (this.#connections.size >= this.#opts.maxConnections) {
        log.warn("refusing {remote}: {n} connections already open", {
          remote,
          n: this.#connections.size,
        });
        closeQuietly(conn);
        continue;
      }
      if (!this.#opts.tls) {
        // Replies end in a partial segment; Nagle would hold it for an ACK.
        try {
          (conn as Deno.TcpConn).setNoDelay(true);
        } catch { /* not fatal: only latency suffers */ }
      }
      const pc: PeerConnection = { conn, writer: new FrameWriter(conn), session: null, remote };
      this.#connections.add(pc);
      const handler = this.#serve(pc).finally(() => {
        this.#handlers.delete(handler);
      });
      this.#handlers.add(handler);
    }
  }

  async #serve(pc: PeerConnection): Promise<void> {
    const reader = new FrameReader(MAX_PREAUTH_BODY);
    const serverNonce = new Uint8Array(randomBytes(NONCE_BYTES));
    const timer = setTimeout(() => {
      if (pc.session === null) {
        log.warn("closing {remote}: no authentication within {ms} ms", {
          remote: pc.remote,
          ms: this.#opts.handshakeTimeoutMs,
        });
        closeQuietly(pc.conn);
      }
    }, this.#opts.handshakeTimeoutMs);
    try {
      const hello = new Uint8Array(2 + INSTANCE_ID_BYTES + NONCE_BYTES);
      hello[0] = PROTOCOL_VERSION;
      hello[1] = this.#opts.token ? 1 : 0;
      hello.set(this.#instanceId, 2);
      hello.set(serverNonce, 2 + INSTANCE_ID_BYTES);
      await pc.writer.send(encodeFrame(MsgType.HELLO, 0, hello));
      while (await reader.fill(pc.conn)) {
        const out: Uint8Array[] = [];
        let frame: Frame | null;
        while ((frame = reader.next()) !== null) {
          if (pc.session === null) {
            this.#authenticate(pc, frame, serverNonce, out);
            clearTimeout(timer);
            reader.maxBody = MAX_FRAME_BODY;
          } else {
            out.push(this.#handle(pc, pc.session, frame));
          }
        }
        // Awaiting our own writes before reading more is the backpressure: a
        // client that does not read its responses stops being read.
        if (out.length > 0) await pc.writer.send(out.length === 1 ? out[0] : concatFrames(out));
      }
      if (reader.pending > 0) {
        log.warn("closing {remote}: stream ended inside a frame ({n} bytes)", {
          remote: pc.remote,
          n: reader.pending,
        });
      }
    } catch (e) {
      if (e instanceof ProtocolError) {
        log.warn("closing {remote}: {reason}", { remote: pc.remote, reason: e.message });
        if (e.reply) {
          // The client deserves to know why (e.g. a wrong token), but a client
          // that does not read must not hold the connection open.
          let farewellTimer: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([
            pc.writer.send(e.reply).catch(() => {}),
            new Promise((r) => farewellTimer = setTimeout(r, 1000)),
          ]);
          clearTimeout(farewellTimer);
        }
      } else if (!this.#closed) {
        log.debug("connection {remote} ended: {error}", {
          remote: pc.remote,
          error: (e as Error).message,
        });
      }
    } finally {
      clearTimeout(timer);
      closeQuietly(pc.conn);
      this.#connections.delete(pc);
      if (pc.session) this.#detach(pc);
    }
  }

  #authenticate(
    pc: PeerConnection,
    frame: Frame,
    serverNonce: Uint8Array,
    out: Uint8Array[],
  ): void {
    const p = frame.payload;
    if (frame.type !== MsgType.AUTH || p.length < NONCE_BYTES + 32 + 2) {
      throw new ProtocolError(`expected AUTH, got type ${frame.type} of ${p.length} bytes`);
    }
    const clientNonce = p.slice(0, NONCE_BYTES);
    const proof = p.slice(NONCE_BYTES, NONCE_BYTES + 32);
    const nsLen = p[NONCE_BYTES + 32] | (p[NONCE_BYTES + 33] << 8);
    if (nsLen === 0 || nsLen > MAX_NAMESPACE_BYTES || p.length !== NONCE_BYTES + 34 + nsLen) {
      throw new ProtocolError(`bad namespace length ${nsLen}`);
    }
    let namespace: string;
    try {
      namespace = new TextDecoder("utf-8", { fatal: true }).decode(p.subarray(NONCE_BYTES + 34));
    } catch {
      throw new ProtocolError("namespace is not UTF-8");
    }
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
    if (!session) {
      session = { namespace, slabs: new Map(), bytes: 0, connections: new Set(), graceTimer: null };
      this.#sessions.set(namespace, session);
    }
    if (session.graceTimer !== null) {
      clearTimeout(session.graceTimer);
      session.graceTimer = null;
      log.info("session {ns} reconnected with {n} slab(s)", {
        ns: forLog(namespace),
        n: session.slabs.size,
      });
    }
    session.connections.add(pc);
    pc.session = session;
    const proofBack = token
      ? serverProof(token, serverNonce, clientNonce, namespace)
      : new Uint8Array(32);
    out.push(encodeFrame(MsgType.OK, frame.id, proofBack, this.#statBody(session)));
    log.debug("{remote} authenticated as {ns}", { remote: pc.remote, ns: forLog(namespace) });
  }

  /** `f64 capacity, f64 free, f64 sessionBytes, u32 sessionSlabs, u8 draining`. */
  #statBody(session: Session): Uint8Array {
    const out = new Uint8Array(29);
    const v = new DataView(out.buffer);
    v.setFloat64(0, this.#opts.capacityBytes, true);
    v.setFloat64(8, this.freeBytes, true);
    v.setFloat64(16, session.bytes, true);
    v.setUint32(24, session.slabs.size, true);
    out[28] = this.#draining ? 1 : 0;
    return out;
  }

  #handle(pc: PeerConnection, session: Session, frame: Frame): Uint8Array {
    const p = frame.payload;
    const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const need = (n: number) => {
      if (p.length < n) {
        throw new ProtocolError(`type ${frame.type} payload too short (${p.length})`);
      }
    };
    switch (frame.type) {
      case MsgType.ALLOC: {
        need(8);
        const slabId = view.getUint32(0, true);
        const pages = view.getUint32(4, true);
        const bytes = pages * PAGE_SIZE;
        if (pages === 0 || bytes > this.#opts.slabBytes) {
          return errFrame(
            frame.id,
            ErrCode.BAD_REQUEST,
            `slab of ${pages} pages exceeds --slab-size`,
          );
        }
        if (session.slabs.has(slabId)) {
          return encodeFrame(MsgType.OK, frame.id, this.#statBody(session));
        }
        if (this.#draining) return errFrame(frame.id, ErrCode.DRAINING, "peer is draining");
        if (this.#usedBytes + bytes > this.#opts.capacityBytes) {
          return errFrame(frame.id, ErrCode.NO_CAPACITY, "peer is full");
        }
        if (session.bytes + bytes > this.#opts.maxSessionBytes) {
          return errFrame(frame.id, ErrCode.QUOTA, "session memory bound reached");
        }
        session.slabs.set(slabId, { pages, data: null, present: new Uint8Array(pages) });
        session.bytes += bytes;
        this.#usedBytes += bytes;
        log.debug("slab {slab} of {pages} pages reserved for {ns}", {
          slab: slabId,
          pages,
          ns: forLog(session.namespace),
        });
        return encodeFrame(MsgType.OK, frame.id, this.#statBody(session));
      }
      case MsgType.FREE: {
        need(4);
        this.#freeSlab(session, view.getUint32(0, true));
        return encodeFrame(MsgType.OK, frame.id, this.#statBody(session));
      }
      case MsgType.RESET: {
        for (const id of [...session.slabs.keys()]) this.#freeSlab(session, id);
        return encodeFrame(MsgType.OK, frame.id, this.#statBody(session));
      }
      case MsgType.WRITE:
      case MsgType.READ: {
        need(8);
        const slabId = view.getUint32(0, true);
        const count = view.getUint32(4, true);
        if (count === 0 || count > MAX_PAGES_PER_REQUEST) {
          throw new ProtocolError(`page count ${count} out of range`);
        }
        const dataBytes = frame.type === MsgType.WRITE ? count * PAGE_SIZE : 0;
        if (p.length !== 8 + count * 4 + dataBytes) {
          throw new ProtocolError(
            `type ${frame.type} payload of ${p.length} bytes for ${count} pages`,
          );
        }
        const slab = session.slabs.get(slabId);
        if (!slab) return errFrame(frame.id, ErrCode.NO_SLAB, `no slab ${slabId}`);
        for (let i = 0; i < count; i++) {
          if (view.getUint32(8 + i * 4, true) >= slab.pages) {
            return errFrame(frame.id, ErrCode.BAD_REQUEST, "offset beyond slab");
          }
        }
        if (frame.type === MsgType.WRITE) {
          slab.data ??= new Uint8Array(slab.pages * PAGE_SIZE);
          const base = 8 + count * 4;
          for (let i = 0; i < count; i++) {
            const off = view.getUint32(8 + i * 4, true);
            slab.data.set(
              p.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE),
              off * PAGE_SIZE,
            );
            slab.present[off] = 1;
          }
          return encodeFrame(MsgType.OK, frame.id);
        }
        const out = new Uint8Array(count * PAGE_SIZE);
        for (let i = 0; i < count; i++) {
          const off = view.getUint32(8 + i * 4, true);
          if (!slab.present[off] || !slab.data) {
            return errFrame(
              frame.id,
              ErrCode.NOT_PRESENT,
              `page ${off} of slab ${slabId} never written`,
            );
          }
          out.set(slab.data.subarray(off * PAGE_SIZE, (off + 1) * PAGE_SIZE), i * PAGE_SIZE);
        }
        return encodeFrame(MsgType.OK, frame.id, out);
      }
      case MsgType.STAT:
        return encodeFrame(
          MsgType.OK,
          frame.id,
          this.#statBody(session),
          peerUsage(this.#usedBytes),
        );
      case MsgType.DRAIN:
        log.info("drain requested by {remote} ({ns})", {
          remote: pc.remote,
          ns: forLog(session.namespace),
        });
        this.drain();
        return encodeFrame(MsgType.OK, frame.id, this.#statBody(session));
      default:
        throw new ProtocolError(`unknown request type ${frame.type}`);
    }
  }

  #freeSlab(session: Session, slabId: number): void {
    const slab = session.slabs.get(slabId);
    if (!slab) return;
    session.slabs.delete(slabId);
    session.bytes -= slab.pages * PAGE_SIZE;
    this.#usedBytes -= slab.pages * PAGE_SIZE;
    log.debug("slab {slab} of {ns} freed", { slab: slabId, ns: forLog(session.namespace) });
    if (this.#draining && this.#usedBytes === 0) log.info("drain complete: no slab left");
  }

  #notifyEvict(session: Session): void {
    if (session.slabs.size === 0) return;
    const frame = encodeFrame(MsgType.EVICT, 0, u32s(...session.slabs.keys()));
    for (const c of session.connections) void c.writer.send(frame).catch(() => {});
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
      for (const id of [...session.slabs.keys()]) this.#freeSlab(session, id);
      this.#sessions.delete(session.namespace);
    }, this.#opts.graceMs);
  }
}

function concatFrames(frames: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const f of frames) n += f.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const f of frames) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

function peerUsage(used: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setFloat64(0, used, true);
  return out;
}

function errFrame(id: number, code: number, message: string): Uint8Array {
  return encodeFrame(MsgType.ERR, id, new Uint8Array([code]), new TextEncoder().encode(message));
}

function formatAddr(addr: Deno.Addr): string {
  return addr.transport === "tcp" ? `${addr.hostname}:${addr.port}` : addr.transport;
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** Session names end in the client's random tag: logs show only a prefix of it, since knowing it opens the session. */
function forLog(namespace: string): string {
  return namespace.replace(/\/([0-9a-f]{4})[0-9a-f]{28}$/, "/$1…");
}
