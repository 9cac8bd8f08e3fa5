/**
 * TCP sockets and `poll(2)` through FFI: sockets whose file descriptor is
 * ours, so that a loop can wait on them in a synchronous `poll` beside other
 * fds. Deno's own sockets wake its event loop for every read (tens of
 * microseconds each here, see README "Performance").
 *
 * Every call is non-blocking and returns a count or `-errno`.
 *
 * @module
 */

import { close, Errno, errno } from "./libc.ts";

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_ERROR = 4;
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const SHUT_RDWR = 2;
const SOCKADDR_BYTES = 28;

type Int = number;
interface Symbols {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Uint8Array, len: number): number;
  listen(fd: number, backlog: number): number;
  accept4(fd: number, addr: Uint8Array, len: Uint8Array, flags: number): number;
  connect(fd: number, addr: Uint8Array, len: number): number;
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Uint8Array, len: Uint8Array): number;
  getsockname(fd: number, addr: Uint8Array, len: Uint8Array): number;
  send(fd: number, buf: Uint8Array, len: Int, flags: number): bigint;
  recv(fd: number, buf: Uint8Array, len: Int, flags: number): bigint;
  shutdown(fd: number, how: number): number;
}

let loaded: Symbols | null = null;

function sym(): Symbols {
  return loaded ??= Deno.dlopen("libc.so.6", {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    listen: { parameters: ["i32", "i32"], result: "i32" },
    accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
    connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
    getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
    getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
    recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
    shutdown: { parameters: ["i32", "i32"], result: "i32" },
  }).symbols as unknown as Symbols;
}

function check(r: number): number {
  return r === -1 ? -errno() : r;
}

/**
 * Whether FFI may be used (`--allow-ffi`): callers fall back to Deno's own
 * sockets without it.
 *
 * @example
 * ```ts
 * if (ffiAllowed()) console.log("sockets of our own");
 * ```
 */
export function ffiAllowed(): boolean {
  return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
}

/** An IPv4 or IPv6 literal (or `localhost`) as a `sockaddr`, or null for a name to resolve. */
export function sockaddrOf(hostname: string, port: number): Uint8Array | null {
  const host = hostname === "localhost" ? "127.0.0.1" : hostname.replace(/^\[|\]$/g, "");
  const sa = new Uint8Array(SOCKADDR_BYTES);
  const view = new DataView(sa.buffer);
  view.setUint16(2, port, false);
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (v4) {
    const octets = v4.slice(1).map(Number);
    if (octets.some((o) => o > 255)) return null;
    view.setUint16(0, AF_INET, true);
    sa.set(octets, 4);
    return sa.subarray(0, 16);
  }
  const v6 = ipv6Bytes(host);
  if (v6 === null) return null;
  view.setUint16(0, AF_INET6, true);
  sa.set(v6, 8);
  return sa;
}

function ipv6Bytes(host: string): Uint8Array | null {
  if (!/^[0-9a-fA-F:]+$/.test(host) || !host.includes(":")) return null;
  const halves = host.split("::");
  if (halves.length > 2) return null;
  const groups = (s: string) => (s === "" ? [] : s.split(":").map((g) => parseInt(g, 16)));
  const head = groups(halves[0]), tail = halves.length === 2 ? groups(halves[1]) : [];
  const fill = 8 - head.length - tail.length;
  if (fill < 0 || (halves.length === 1 && fill !== 0)) return null;
  const all = [...head, ...new Array(fill).fill(0), ...tail];
  if (all.some((g) => !(g >= 0 && g <= 0xffff))) return null;
  const out = new Uint8Array(16);
  all.forEach((g, i) => new DataView(out.buffer).setUint16(2 * i, g, false));
  return out;
}

/** The address in a `sockaddr_in` / `sockaddr_in6`. */
export function netAddrOf(sa: Uint8Array): Deno.NetAddr {
  const view = new DataView(sa.buffer, sa.byteOffset, sa.byteLength);
  const port = view.getUint16(2, false);
  if (view.getUint16(0, true) === AF_INET) {
    return { transport: "tcp", hostname: [...sa.subarray(4, 8)].join("."), port };
  }
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(view.getUint16(8 + 2 * i, false).toString(16));
  const mapped = groups.slice(0, 6).join(":") === "0:0:0:0:0:ffff";
  const hostname = mapped ? [...sa.subarray(20, 24)].join(".") : groups.join(":");
  return { transport: "tcp", hostname, port };
}

function setInt(fd: number, level: number, name: number, value: number): number {
  return check(
    sym().setsockopt(fd, level, name, new Uint8Array(new Int32Array([value]).buffer), 4),
  );
}

/**
 * A non-blocking listening TCP socket bound to `sa` (from {@linkcode sockaddrOf}):
 * its fd, or `-errno`.
 */
export function tcpListen(sa: Uint8Array, backlog = 1024): number {
  const family = new DataView(sa.buffer, sa.byteOffset).getUint16(0, true);
  const fd = check(sym().socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd < 0) return fd;
  setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
  let r = check(sym().bind(fd, sa, sa.length));
  if (r === 0) r = check(sym().listen(fd, backlog));
  if (r < 0) close(fd);
  return r < 0 ? r : fd;
}

/** The address a socket is bound to. */
export function localAddr(fd: number): Deno.NetAddr {
  const sa = new Uint8Array(SOCKADDR_BYTES);
  const len = new Uint32Array([SOCKADDR_BYTES]);
  sym().getsockname(fd, sa, new Uint8Array(len.buffer));
  return netAddrOf(sa);
}

/** Accepts one connection (non-blocking, `TCP_NODELAY`): its fd and address, or `-errno`. */
export function acceptNow(fd: number): { fd: number; remote: Deno.NetAddr } | number {
  const sa = new Uint8Array(SOCKADDR_BYTES);
  const len = new Uint32Array([SOCKADDR_BYTES]);
  const c = check(
    sym().accept4(fd, sa, new Uint8Array(len.buffer), SOCK_NONBLOCK | SOCK_CLOEXEC),
  );
  if (c < 0) return c;
  // Replies end in a partial segment; Nagle would hold it for an ACK.
  setInt(c, IPPROTO_TCP, TCP_NODELAY, 1);
  return { fd: c, remote: netAddrOf(sa) };
}

/**
 * Starts a non-blocking connect to `sa`: the fd (connected, or connecting:
 * wait for {@linkcode POLL.OUT} then read {@linkcode socketError}), or `-errno`.
 */
export function tcpConnectStart(sa: Uint8Array): number {
  const family = new DataView(sa.buffer, sa.byteOffset).getUint16(0, true);
  const fd = check(sym().socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (fd < 0) return fd;
  setInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  const r = check(sym().connect(fd, sa, sa.length));
  if (r < 0 && r !== -Errno.EINPROGRESS) {
    close(fd);
    return r;
  }
  return fd;
}

/** A socket's pending error (`SO_ERROR`): 0, or the errno a connect failed with. */
export function socketError(fd: number): number {
  const v = new Int32Array(1), len = new Uint32Array([4]);
  const r = check(
    sym().getsockopt(
      fd,
      SOL_SOCKET,
      SO_ERROR,
      new Uint8Array(v.buffer),
      new Uint8Array(len.buffer),
    ),
  );
  return r < 0 ? -r : v[0];
}

/** `recv` without blocking: bytes read, 0 at end of stream, or `-errno`. */
export function recvNow(fd: number, buf: Uint8Array): number {
  return check(Number(sym().recv(fd, buf, buf.byteLength, MSG_DONTWAIT)));
}

/** `send` without blocking and without SIGPIPE: bytes written or `-errno`. */
export function sendNow(fd: number, buf: Uint8Array): number {
  return check(Number(sym().send(fd, buf, buf.byteLength, MSG_DONTWAIT | MSG_NOSIGNAL)));
}

/** Shuts both directions: a `poll` on the fd elsewhere wakes with a hang-up. */
export function shutdownBoth(fd: number): void {
  sym().shutdown(fd, SHUT_RDWR);
}
