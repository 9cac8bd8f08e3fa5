/**
 * TCP connections and listeners over file descriptors of our own, waited on
 * by the {@linkcode Reactor}: the same `read`/`write`/`close` shape as a
 * `Deno.Conn`, without an event-loop wake per message.
 *
 * A read or a write is tried at once (a non-blocking syscall); only when the
 * kernel has nothing to give (or no room) does it wait for the reactor.
 *
 * @module
 */

import { Errno, errnoName } from "../ffi/libc.ts";
import { POLL } from "../ffi/poll.ts";
import {
  acceptNow,
  ffiAllowed,
  localAddr,
  recvNow,
  sendNow,
  sockaddrOf,
  socketError,
  tcpConnectStart,
  tcpListen,
} from "../ffi/socket.ts";
import { Reactor, type Watcher } from "./reactor.ts";

const CLOSED = "connection closed";

interface Pending<T> {
  buf: Uint8Array;
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

/** The error a failed socket call stands for, shaped like Deno's own. */
function socketFailure(errno: number, what: string): Error {
  const message = `${what}: ${errnoName(errno)}`;
  if (errno === Errno.ECONNRESET) return new Deno.errors.ConnectionReset(message);
  if (errno === Errno.EPIPE) return new Deno.errors.BrokenPipe(message);
  if (errno === Errno.ECONNREFUSED) return new Deno.errors.ConnectionRefused(message);
  if (errno === Errno.ENOTCONN) return new Deno.errors.NotConnected(message);
  return new Error(message);
}

/**
 * A connected TCP socket.
 *
 * @example
 * ```ts
 * const conn = await FdSocket.connect("127.0.0.1", 7070);
 * await conn.write(new Uint8Array([1, 2, 3]));
 * conn.close();
 * ```
 */
export class FdSocket implements Watcher {
  readonly fd: number;
  readonly remoteAddr: Deno.NetAddr;
  readonly #reactor: Reactor;
  #read: Pending<number | null> | null = null;
  #write: Pending<number> | null = null;
  #closed = false;

  /** Wraps a connected non-blocking socket, which it owns from now on. */
  constructor(fd: number, remoteAddr: Deno.NetAddr, reactor = Reactor.shared()) {
    this.fd = fd;
    this.remoteAddr = remoteAddr;
    this.#reactor = reactor;
  }

  /**
   * Connects to an IP literal (see `sockaddrOf`); rejects like `Deno.connect`
   * (e.g. `Deno.errors.ConnectionRefused`).
   */
  static connect(sa: Uint8Array, remoteAddr: Deno.NetAddr): Promise<FdSocket> {
    const fd = tcpConnectStart(sa);
    if (fd < 0) return Promise.reject(socketFailure(-fd, `connect to ${show(remoteAddr)}`));
    const reactor = Reactor.shared();
    return new Promise((resolve, reject) => {
      const connecting: Watcher = {
        fd,
        ready: () => {
          reactor.want(connecting, 0);
          const e = socketError(fd);
          if (e === 0) return resolve(new FdSocket(fd, remoteAddr, reactor));
          reactor.close(fd);
          reject(socketFailure(e, `connect to ${show(remoteAddr)}`));
        },
      };
      reactor.want(connecting, POLL.OUT);
    });
  }

  /** Reads into `p`: the bytes read, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource(CLOSED));
    this.#reactor.activity++;
    const n = recvNow(this.fd, p);
    if (n !== -Errno.EAGAIN) return settled(n, (v) => v === 0 ? null : v, "read");
    return new Promise((resolve, reject) => {
      this.#read = { buf: p, resolve, reject };
      this.#want();
    });
  }

  /** Writes part of `p` (at least one byte): resolves with how many. */
  write(p: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource(CLOSED));
    if (this.#write !== null) return Promise.reject(new Error("a write is already pending"));
    this.#reactor.activity++;
    if (p.length === 0) return Promise.resolve(0);
    const n = sendNow(this.fd, p);
    if (n !== -Errno.EAGAIN) return settled(n, (v) => v, "write");
    return new Promise((resolve, reject) => {
      this.#write = { buf: p, resolve, reject };
      this.#want();
    });
  }

  /** Closes at once; a pending read or write rejects. May be called again. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#reactor.activity++;
    const e = new Deno.errors.BadResource(CLOSED);
    this.#read?.reject(e);
    this.#write?.reject(e);
    this.#read = this.#write = null;
    this.#reactor.close(this.fd);
  }

  /** See {@linkcode Watcher.ready}. */
  ready(revents: number): void {
    const failed = (revents & (POLL.ERR | POLL.HUP | POLL.NVAL)) !== 0;
    const r = this.#read;
    if (r !== null && (failed || (revents & POLL.IN) !== 0)) {
      const n = recvNow(this.fd, r.buf);
      if (n !== -Errno.EAGAIN) {
        this.#read = null;
        if (n >= 0) r.resolve(n === 0 ? null : n);
        else r.reject(socketFailure(-n, "read"));
      }
    }
    const w = this.#write;
    if (w !== null && (failed || (revents & POLL.OUT) !== 0)) {
      const n = sendNow(this.fd, w.buf);
      if (n !== -Errno.EAGAIN) {
        this.#write = null;
        if (n >= 0) w.resolve(n);
        else w.reject(socketFailure(-n, "write"));
      }
    }
    if (!this.#closed) this.#want();
  }

  #want(): void {
    const events = (this.#read ? POLL.IN : 0) | (this.#write ? POLL.OUT : 0);
    this.#reactor.want(this, events);
  }
}

function settled<T>(n: number, value: (n: number) => T, what: string): Promise<T> {
  return n >= 0 ? Promise.resolve(value(n)) : Promise.reject(socketFailure(-n, what));
}

function show(a: Deno.NetAddr): string {
  return a.hostname.includes(":") ? `[${a.hostname}]:${a.port}` : `${a.hostname}:${a.port}`;
}

/**
 * A listening TCP socket handing out {@linkcode FdSocket}s.
 *
 * @example
 * ```ts
 * const listener = FdListener.listen(sockaddrOf("127.0.0.1", 0)!);
 * const conn = await listener.accept();
 * ```
 */
export class FdListener implements Watcher {
  readonly fd: number;
  readonly addr: Deno.NetAddr;
  readonly #reactor = Reactor.shared();
  #accept: Omit<Pending<FdSocket>, "buf"> | null = null;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
    this.addr = localAddr(fd);
  }

  /** Binds and listens; throws (like `Deno.listen`) if the address cannot be used. */
  static listen(sa: Uint8Array): FdListener {
    const fd = tcpListen(sa);
    if (fd >= 0) return new FdListener(fd);
    if (-fd === Errno.EADDRINUSE) throw new Deno.errors.AddrInUse("listen: address in use");
    throw socketFailure(-fd, "listen");
  }

  /** The next connection; rejects with what `accept(2)` failed with (e.g. EMFILE). */
  accept(): Promise<FdSocket> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("listener closed"));
    const got = this.#take();
    if (got !== null) return got;
    return new Promise((resolve, reject) => {
      this.#accept = { resolve, reject };
      this.#reactor.want(this, POLL.IN);
    });
  }

  /** See {@linkcode Watcher.ready}. */
  ready(): void {
    const pending = this.#accept;
    if (pending === null) return;
    const got = this.#take();
    if (got === null) return;
    this.#accept = null;
    this.#reactor.want(this, 0);
    got.then(pending.resolve, pending.reject);
  }

  /** Stops listening; a pending accept rejects. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#accept?.reject(new Deno.errors.BadResource("listener closed"));
    this.#accept = null;
    this.#reactor.close(this.fd);
  }

  #take(): Promise<FdSocket> | null {
    const r = acceptNow(this.fd);
    if (r === -Errno.EAGAIN) return null;
    if (typeof r === "number") return Promise.reject(socketFailure(-r, "accept"));
    return Promise.resolve(new FdSocket(r.fd, r.remote, this.#reactor));
  }
}

/** A byte stream every client uses: a `Deno.Conn` (TCP, TLS) or an {@linkcode FdSocket}. */
export interface ByteConn {
  /** Reads into `p`; resolves to the byte count, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; resolves to the byte count written. */
  write(p: Uint8Array): Promise<number>;
  /** Closes; a pending read resolves (null) or rejects. */
  close(): void;
}

/**
 * Connects to `hostname:port` over a socket of our own when FFI is allowed
 * and the host is an IP address (its replies can then be awaited without the
 * event loop, see `reactor.ts`), else with `Deno.connect` (no delay either way).
 *
 * @example
 * ```ts
 * const conn = await openTcp("127.0.0.1", 6379);
 * conn.close();
 * ```
 */
export async function openTcp(hostname: string, port: number): Promise<ByteConn> {
  const sa = ffiAllowed() ? sockaddrOf(hostname, port) : null;
  if (sa !== null) return await FdSocket.connect(sa, { transport: "tcp", hostname, port });
  const conn = await Deno.connect({ hostname, port });
  try {
    conn.setNoDelay(true);
  } catch { /* not fatal: only latency suffers */ }
  return conn;
}
