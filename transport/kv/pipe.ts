/**
 * Shared plumbing for the key-value backends (memcached, Redis): a pipelined
 * TCP connection with a strict reply parser, key names, and a compact set of
 * 32-bit keys. Errors and the latency window come from `../kit.ts`.
 *
 * @module
 */

import { PAGE_SIZE, StoreUnavailableError } from "../store.ts";
import { readSecretFile, SecretFileError } from "../token.ts";
import { concat, ConnectionError, ProtocolError } from "../kit.ts";
import { type ByteConn, openTcp } from "../fd_socket.ts";

/**
 * Parses one reply starting at `start` in `buf[start, end)`. Returns the
 * reply and the offset just after it, or `undefined` if the reply is not
 * complete yet. Throws {@linkcode ProtocolError} on malformed input. The
 * returned value may view `buf`: it is valid only until the parser's caller
 * returns, which is why replies go to a synchronous sink.
 */
export type ReplyParser<T> = (
  buf: Uint8Array,
  start: number,
  end: number,
) => { value: T; next: number } | undefined;

/** Receives reply `i` of a request synchronously, while its bytes are still valid. */
export type ReplySink<T> = (i: number, reply: T) => void;

interface Pending<T> {
  left: number;
  index: number;
  sink: ReplySink<T>;
  resolve: () => void;
  reject: (e: Error) => void;
  sentAt: number;
  error?: Error;
}

/** Options for {@linkcode connectTcp}. */
export interface ConnectOptions {
  /** Host name or address. */
  hostname: string;
  /** TCP port. */
  port: number;
  /** Wrap the connection in TLS (Redis `rediss://`). */
  tls?: boolean;
  /** PEM CA certificates to trust for TLS, besides the system's. */
  caCerts?: string[];
  /** Give up connecting after this many milliseconds (default 3000). */
  timeoutMs?: number;
  /** What the server is, for messages: `memcached`, `Redis`. */
  what: string;
}

/**
 * Connects with one clear line on failure ("cannot reach memcached at
 * 127.0.0.1:11311: connection refused; is it running?"), in TLS for Redis
 * `rediss://`.
 */
export async function connectTcp(o: ConnectOptions): Promise<ByteConn> {
  const where = `${o.what} at ${o.hostname}:${o.port}`;
  const timeoutMs = o.timeoutMs ?? 3000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new ConnectionError("unreachable", `cannot reach ${where}: no answer in ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
  });
  const attempt: Promise<ByteConn | Deno.TlsConn> = o.tls
    ? Deno.connectTls({ hostname: o.hostname, port: o.port, caCerts: o.caCerts })
    : openTcp(o.hostname, o.port);
  try {
    const conn = await Promise.race([attempt, timeout]);
    // Handshake now, so a certificate problem is one clear line at open
    // rather than a failed first request. On failure the catch below
    // closes the connection.
    if ("handshake" in conn) await Promise.race([conn.handshake(), timeout]);
    return conn;
  } catch (e) {
    // A late success after the timeout must not leak a socket.
    attempt.then((c) => {
      try {
        c.close();
      } catch { /* already closed */ }
    }, () => {});
    if (e instanceof ConnectionError) throw e;
    const reason = e instanceof Deno.errors.ConnectionRefused
      ? "connection refused; is it running?"
      : o.tls && (e instanceof Deno.errors.InvalidData || e instanceof Deno.errors.UnexpectedEof)
      ? `TLS failed (${
        (e as Error).message.split("\n")[0]
      }); is its CA in ?ca-file=, DENO_CERT or the system store?`
      : e instanceof Deno.errors.NotFound
      ? "unknown host"
      : (e as Error).message;
    throw new ConnectionError("unreachable", `cannot reach ${where}: ${reason}`);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * One pipelined connection: requests are written in order and their replies
 * matched in order (both protocols answer strictly in order), so many
 * requests are in flight at once without per-request ids.
 */
export class PipeConn<T> {
  /** `host:port`, for messages. */
  readonly label: string;
  #conn: ByteConn;
  #parse: ReplyParser<T>;
  #queue: Pending<T>[] = [];
  #qhead = 0;
  #buf = new Uint8Array(1 << 18);
  #start = 0;
  #end = 0;
  #failed: Error | undefined;
  #wq: Uint8Array[] = [];
  #writingNow = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  #timeoutMs: number;
  /** Called once when the connection fails, with the reason. */
  onFail: ((e: Error) => void) | undefined;

  /**
   * Wraps `conn`; a request whose reply has not started within `timeoutMs`
   * fails the connection, since a silent server would otherwise hang faults.
   */
  constructor(conn: ByteConn, parse: ReplyParser<T>, label: string, timeoutMs = 5000) {
    this.#conn = conn;
    this.#parse = parse;
    this.label = label;
    this.#timeoutMs = timeoutMs;
    this.#readLoop();
  }

  /** The error that broke this connection, if any. */
  get failed(): Error | undefined {
    return this.#failed;
  }

  /** Requests sent whose replies have not all arrived. */
  get inFlight(): number {
    return this.#queue.length - this.#qhead;
  }

  /**
   * Writes `bytes` (one or more complete commands) and expects `replies`
   * replies, each handed to `sink` in order. Resolves after the last one.
   */
  send(bytes: Uint8Array, replies: number, sink: ReplySink<T>): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({
        left: replies,
        index: 0,
        sink,
        resolve,
        reject,
        sentAt: performance.now(),
      });
      this.#armTimer();
      // The queue order above is the write order, which is the reply order:
      // writes never interleave because one writer drains #wq at a time.
      this.#wq.push(bytes);
      if (!this.#writingNow) this.#flush();
    });
  }

  async #flush(): Promise<void> {
    this.#writingNow = true;
    try {
      while (this.#wq.length > 0 && !this.#failed) {
        // Batches queued while a write was in progress go out in one syscall.
        const bytes = this.#wq.length === 1 ? this.#wq[0] : concat(...this.#wq);
        this.#wq.length = 0;
        let off = 0;
        while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
      }
    } catch (e) {
      const why = `${this.label}: write failed: ${(e as Error).message}`;
      this.fail(new ConnectionError("broken", why));
    } finally {
      this.#writingNow = false;
    }
  }

  #armTimer(): void {
    // One long-lived, unref'd watchdog per connection: creating a timer per
    // request would cost more than the request on loopback.
    if (this.#timer !== undefined) return;
    const timer = setInterval(() => {
      if (this.#qhead >= this.#queue.length) return;
      const head = this.#queue[this.#qhead];
      if (performance.now() - head.sentAt > this.#timeoutMs) {
        const why = `${this.label}: no reply in ${this.#timeoutMs} ms`;
        this.fail(new ConnectionError("timeout", why));
      }
    }, Math.max(50, this.#timeoutMs / 4));
    this.#timer = timer;
    Deno.unrefTimer(timer);
  }

  async #readLoop(): Promise<void> {
    try {
      while (!this.#failed) {
        if (this.#end === this.#buf.length) {
          if (this.#start > 0) {
            this.#buf.copyWithin(0, this.#start, this.#end);
            this.#end -= this.#start;
            this.#start = 0;
          } else {
            const bigger = new Uint8Array(this.#buf.length * 2);
            bigger.set(this.#buf.subarray(0, this.#end));
            this.#buf = bigger;
          }
        }
        const n = await this.#conn.read(this.#buf.subarray(this.#end));
        if (n === null) {
          throw new ConnectionError("closed", `${this.label}: connection closed by the server`);
        }
        this.#end += n;
        this.#drain();
        if (this.#start === this.#end) this.#start = this.#end = 0;
      }
    } catch (e) {
      // Parsers do not know which server they read: name it, so the one
      // line the user sees says who answered.
      const err = e instanceof ConnectionError
        ? e
        : e instanceof ProtocolError
        ? (e.message.startsWith(this.label) ? e : new ProtocolError(`${this.label}: ${e.message}`))
        : new ConnectionError("broken", `${this.label}: ${(e as Error).message}`);
      this.fail(err);
    }
  }

  #drain(): void {
    while (this.#start < this.#end) {
      const r = this.#parse(this.#buf, this.#start, this.#end);
      if (r === undefined) return;
      this.#start = r.next;
      const head = this.#queue[this.#qhead];
      if (head === undefined) throw new ProtocolError(`${this.label}: reply nobody asked for`);
      try {
        head.sink(head.index++, r.value);
      } catch (e) {
        // A sink's own failure (e.g. a caller's buffer too small) fails
        // that request only; the stream itself is still in step.
        head.error ??= e as Error;
      }
      if (--head.left === 0) {
        this.#qhead++;
        if (this.#qhead > 1024 && this.#qhead * 2 > this.#queue.length) {
          this.#queue = this.#queue.slice(this.#qhead);
          this.#qhead = 0;
        }
        if (this.#qhead < this.#queue.length) this.#queue[this.#qhead].sentAt = performance.now();
        if (head.error) head.reject(head.error);
        else head.resolve();
      }
    }
  }

  /** Breaks the connection: every pending request rejects with `e`. */
  fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    const pending = this.#queue.slice(this.#qhead);
    this.#queue = [];
    this.#qhead = 0;
    for (const p of pending) p.reject(e);
    this.onFail?.(e);
  }

  /** Closes the connection; pending requests reject. */
  close(): void {
    this.fail(new ConnectionError("closed", `${this.label}: closed`));
  }
}

/** Finds `\r\n` from `from`; returns the index of `\r` or -1. */
export function findCrlf(buf: Uint8Array, from: number, end: number): number {
  for (let i = from; i + 1 < end; i++) {
    if (buf[i] === 13) {
      if (buf[i + 1] === 10) return i;
      throw new ProtocolError("bare CR in a reply line");
    }
  }
  return -1;
}

/** Parses a non-negative decimal integer in `buf[a, b)`, strictly. */
export function parseUint(buf: Uint8Array, a: number, b: number): number {
  if (a >= b || b - a > 15) throw new ProtocolError("bad length field");
  let n = 0;
  for (let i = a; i < b; i++) {
    const d = buf[i] - 48;
    if (d < 0 || d > 9) throw new ProtocolError("bad length field");
    n = n * 10 + d;
  }
  return n;
}

/**
 * Writes the name of page `key` (`prefix` then the key in lowercase hex, no
 * leading zeros) into `out` at `off`, without a string allocation; returns
 * the offset after it. The memcached and Redis stores name pages this way.
 *
 * @example
 * ```ts
 * const out = new Uint8Array(16);
 * const end = writeKeyName(new TextEncoder().encode("ns:"), 0x1f, out, 0);
 * new TextDecoder().decode(out.subarray(0, end)); // "ns:1f"
 * ```
 */
export function writeKeyName(
  prefix: Uint8Array,
  key: number,
  out: Uint8Array,
  off: number,
): number {
  out.set(prefix, off);
  off += prefix.length;
  let started = false;
  for (let shift = 28; shift >= 0; shift -= 4) {
    const d = (key >>> shift) & 15;
    if (d === 0 && !started && shift > 0) continue;
    started = true;
    out[off++] = d < 10 ? 48 + d : 87 + d;
  }
  return off;
}

const CHUNK_BITS = 16; // 65536 keys (8 KiB of bits) per chunk

/**
 * The set of keys this session stored, as a sparse bitmap: 8 KiB per 65536
 * keys touched, never one JS object per page. Lets `close()` delete exactly
 * what we stored and tells a lost page from one never written.
 */
export class KeySet {
  #chunks = new Map<number, Uint32Array>();
  #size = 0;

  /** Number of keys held. */
  get size(): number {
    return this.#size;
  }

  /** Adds `key`; returns true if it was not there. */
  add(key: number): boolean {
    const c = key >>> CHUNK_BITS;
    let bits = this.#chunks.get(c);
    if (bits === undefined) {
      bits = new Uint32Array(1 << (CHUNK_BITS - 5));
      this.#chunks.set(c, bits);
    }
    const w = (key & 0xffff) >>> 5, m = 1 << (key & 31);
    if (bits[w] & m) return false;
    bits[w] |= m;
    this.#size++;
    return true;
  }

  /** True if `key` is held. */
  has(key: number): boolean {
    const bits = this.#chunks.get(key >>> CHUNK_BITS);
    return bits !== undefined && (bits[(key & 0xffff) >>> 5] & (1 << (key & 31))) !== 0;
  }

  /** Removes `key`; returns true if it was there. */
  delete(key: number): boolean {
    const bits = this.#chunks.get(key >>> CHUNK_BITS);
    if (bits === undefined) return false;
    const w = (key & 0xffff) >>> 5, m = 1 << (key & 31);
    if (!(bits[w] & m)) return false;
    bits[w] &= ~m;
    this.#size--;
    return true;
  }

  /** All keys, in batches of at most `batch`, as typed arrays. */
  *batches(batch: number): Generator<Uint32Array> {
    let out = new Uint32Array(batch), n = 0;
    for (const [c, bits] of this.#chunks) {
      for (let w = 0; w < bits.length; w++) {
        let v = bits[w];
        while (v !== 0) {
          const b = 31 - Math.clz32(v & -v);
          v &= v - 1;
          out[n++] = ((c << CHUNK_BITS) | (w << 5) | b) >>> 0;
          if (n === batch) {
            yield out;
            out = new Uint32Array(batch);
            n = 0;
          }
        }
      }
    }
    if (n > 0) yield out.subarray(0, n);
  }
}

/**
 * Reads a memcached or Redis password file with the rules of every
 * `--token-file` (see `transport/token.ts`), except the minimum length: the
 * server's own password policy applies, not ours.
 *
 * @throws {StoreUnavailableError} With one line naming the file and the fix.
 */
export async function readSecret(path: string): Promise<string> {
  try {
    const bytes = await readSecretFile(path, { minBytes: 1, what: "password file (--token-file)" });
    return new TextDecoder().decode(bytes);
  } catch (e) {
    if (e instanceof SecretFileError) throw new StoreUnavailableError(e.message);
    throw e;
  }
}

/** Throws if `pages` cannot hold one page per key: a caller bug, never a lost page. */
export function checkSize(keys: Uint32Array, pages: Uint8Array): void {
  if (pages.length < keys.length * PAGE_SIZE) {
    throw new RangeError(
      `${keys.length} keys need ${keys.length * PAGE_SIZE} bytes of pages, got ${pages.length}`,
    );
  }
}
