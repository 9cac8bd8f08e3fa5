/**
 * The peer daemon's listening socket, plain TCP or TLS, handing out sockets
 * that `close()` really closes.
 *
 * TLS is terminated with `node:tls` over a TCP connection this module owns,
 * not with `Deno.listenTls`: a `Deno.TlsConn` closed before its handshake
 * finished keeps the socket open until the client sends a ClientHello, which
 * a hostile client never does (one held 120 sockets on a peer bounded to 30).
 *
 * @module
 */

import { Duplex } from "node:stream";
import tls from "node:tls";
import { ffiAllowed, sockaddrOf } from "../../ffi/socket.ts";
import { FdListener } from "../fd_socket.ts";

/** A connection the peer serves: the parts of `Deno.Conn` it uses. */
export interface PeerSocket {
  /** The client's address. */
  readonly remoteAddr: Deno.NetAddr;
  /** Reads into `p`; null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes `p` (all of it for TLS); resolves with the bytes written. */
  write(p: Uint8Array): Promise<number>;
  /** Closes at once, whatever state a TLS handshake is in; pending reads and writes end. */
  close(): void;
}

/** Where and how a {@linkcode PeerListener} listens. */
export interface ListenOptions {
  /** Address to bind. */
  hostname: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** PEM certificate chain and key: serve TLS. */
  tls?: { cert: string; key: string };
}

/**
 * A bound listening socket. Plain TCP on an IP address is served from
 * sockets of our own when FFI is allowed (`--allow-ffi`): they are waited on
 * in a synchronous poll while requests stream in (see `transport/reactor.ts`),
 * where a Deno socket wakes the event loop per request (a one-page READ round
 * trip 110-165 us through it, 25 us without it). TLS and host names use Deno's.
 */
export class PeerListener {
  readonly #listener: Deno.TcpListener | FdListener;
  readonly #tls: tls.SecureContext | null;

  private constructor(listener: Deno.TcpListener | FdListener, context: tls.SecureContext | null) {
    this.#listener = listener;
    this.#tls = context;
  }

  /** Binds; throws if the address or the certificate cannot be used. */
  static listen(opts: ListenOptions): PeerListener {
    const context = opts.tls ? tls.createSecureContext(opts.tls) : null;
    const sa = context === null && ffiAllowed() ? sockaddrOf(opts.hostname, opts.port) : null;
    const listener = sa !== null
      ? FdListener.listen(sa)
      : Deno.listen({ hostname: opts.hostname, port: opts.port });
    return new PeerListener(listener, context);
  }

  /** Whether connections are served from sockets of our own (FFI), not Deno's. */
  get ownSockets(): boolean {
    return this.#listener instanceof FdListener;
  }

  /** The address actually bound. */
  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /** Accepts one connection; throws what `accept(2)` failed with (e.g. EMFILE). */
  async accept(): Promise<PeerSocket> {
    if (this.#listener instanceof FdListener) return await this.#listener.accept();
    const tcp = await this.#listener.accept();
    // Replies end in a partial segment; Nagle would hold it for an ACK.
    try {
      tcp.setNoDelay(true);
    } catch { /* not fatal: only latency suffers */ }
    return this.#tls ? new TlsServerSocket(tcp, this.#tls) : plainSocket(tcp);
  }

  /** Stops listening. */
  close(): void {
    try {
      this.#listener.close();
    } catch { /* already closed */ }
  }
}

/** A plain TCP connection whose `close` may be called more than once. */
function plainSocket(tcp: Deno.TcpConn): PeerSocket {
  return {
    remoteAddr: tcp.remoteAddr,
    read: (p) => tcp.read(p),
    write: (p) => tcp.write(p),
    close() {
      try {
        tcp.close();
      } catch { /* already closed */ }
    },
  };
}

/** Most decrypted bytes buffered before the socket stops reading from the network. */
const TLS_READ_AHEAD = 64 * 1024;
/** One TLS record and its overhead. */
const TCP_READ_BYTES = 17 * 1024;

/** The server side of a TLS connection over a TCP connection it owns. */
class TlsServerSocket implements PeerSocket {
  readonly remoteAddr: Deno.NetAddr;
  readonly #tcp: Deno.TcpConn;
  readonly #tls: tls.TLSSocket;
  readonly #chunks: Uint8Array[] = [];
  readonly #writes = new Set<(e: Error) => void>();
  #buffered = 0;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;

  constructor(tcp: Deno.TcpConn, context: tls.SecureContext) {
    this.#tcp = tcp;
    this.remoteAddr = tcp.remoteAddr;
    const raw = tcpDuplex(tcp);
    raw.on("error", (e) => this.#fail(e));
    this.#tls = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    this.#tls.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      if (this.#buffered >= TLS_READ_AHEAD) this.#tls.pause();
      this.#notify();
    });
    this.#tls.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    this.#tls.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
    this.#tls.on("error", (e: Error) => this.#fail(e));
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => this.#wake = r);
    }
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const take = Math.min(c.length, p.length - n);
      p.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(take);
    }
    this.#buffered -= n;
    if (this.#buffered < TLS_READ_AHEAD && this.#tls.isPaused()) this.#tls.resume();
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.reject(new Error("connection closed"));
    return new Promise((resolve, reject) => {
      this.#writes.add(reject);
      this.#tls.write(p, (e?: Error | null) => {
        this.#writes.delete(reject);
        if (e) reject(e);
        else resolve(p.length);
      });
    });
  }

  close(): void {
    this.#fail(new Error("connection closed"));
  }

  #fail(e: Error): void {
    if (this.#error) return;
    this.#error = e;
    this.#ended = true;
    this.#tls.destroy();
    try {
      this.#tcp.close();
    } catch { /* already closed */ }
    for (const reject of this.#writes) reject(e);
    this.#writes.clear();
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }
}

/** A node stream over a Deno TCP connection, for `tls.TLSSocket` to encrypt. */
function tcpDuplex(tcp: Deno.TcpConn): Duplex {
  return new Duplex({
    read() {
      const buf = new Uint8Array(TCP_READ_BYTES);
      tcp.read(buf).then(
        (n) => this.push(n === null ? null : buf.subarray(0, n)),
        (e) => this.destroy(e),
      );
    },
    write(chunk: Uint8Array, _encoding, callback) {
      (async () => {
        let at = 0;
        while (at < chunk.length) at += await tcp.write(chunk.subarray(at));
      })().then(() => callback(), (e) => callback(e));
    },
    destroy(error, callback) {
      try {
        tcp.close();
      } catch { /* already closed */ }
      callback(error);
    },
  });
}
