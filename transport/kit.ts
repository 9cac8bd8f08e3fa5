/**
 * The transport toolkit: the few helpers every backend shares, one home
 * each. A latency window for {@linkcode EndpointHealth}, `concat`, and the
 * two errors a connection can end with: {@linkcode ProtocolError} (the other
 * side broke the protocol) and {@linkcode ConnectionError} (the connection
 * itself failed, with a {@linkcode ConnectionErrorKind}). Callers classify
 * failures by these types and kinds, never by message text.
 *
 * @example
 * ```ts
 * import { ConnectionError, LatencyWindow } from "./kit.ts";
 *
 * const latency = new LatencyWindow();
 * latency.record(120);
 * const e: Error = new ConnectionError("timeout", "no reply in 5000 ms");
 * if (e instanceof ConnectionError && e.kind === "timeout") latency.median(); // 120
 * ```
 *
 * @module
 */

import { type EndpointHealth, StoreUnavailableError } from "./store.ts";

/**
 * Joins byte arrays into one new array, in order.
 *
 * @example
 * ```ts
 * concat(Uint8Array.of(1, 2), Uint8Array.of(3)); // Uint8Array [1, 2, 3]
 * ```
 */
export function concat(...parts: Uint8Array[]): Uint8Array {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A frame or reply did not follow the protocol: the connection that carried
 * it cannot be trusted any more and must be closed.
 *
 * @example
 * ```ts
 * throw new ProtocolError("frame length 2 below header size");
 * ```
 */
export class ProtocolError extends Error {
  /** A last frame to send before closing (e.g. why authentication failed), if any. */
  readonly reply: Uint8Array | undefined;
  /** Builds the error; `message` names what was malformed, `reply` is an optional farewell. */
  constructor(message: string, reply?: Uint8Array) {
    super(message);
    this.name = "ProtocolError";
    this.reply = reply;
  }
}

/**
 * How a connection failed:
 * - `unreachable`: it could not be opened (refused, unknown host, TLS, no answer);
 * - `timeout`: a request got no reply in time;
 * - `closed`: the other side closed it, or this side did;
 * - `broken`: reading or writing failed (reset, broken pipe).
 */
export type ConnectionErrorKind = "unreachable" | "timeout" | "closed" | "broken";

/**
 * A connection to a server or peer failed; every request pending on it fails
 * with this error. Any kind is transient from the store's point of view: the
 * endpoint may come back, unlike a {@linkcode ProtocolError} or an error reply.
 *
 * @example
 * ```ts
 * const e = new ConnectionError("closed", "Redis at 127.0.0.1:6379: connection closed by the server");
 * e.kind; // "closed"
 * ```
 */
export class ConnectionError extends Error {
  /** What failed; see {@linkcode ConnectionErrorKind}. */
  readonly kind: ConnectionErrorKind;
  /** Builds the error; `message` is one line naming the endpoint and the cause. */
  constructor(kind: ConnectionErrorKind, message: string) {
    super(message);
    this.name = "ConnectionError";
    this.kind = kind;
  }
}

/**
 * Turns a connection or protocol failure met while opening a store into the
 * one-line {@linkcode StoreUnavailableError} the user sees; other errors are
 * returned as they are.
 *
 * @example
 * ```ts
 * try {
 *   await Promise.reject(new ConnectionError("unreachable", "cannot reach Redis at h:1"));
 * } catch (e) {
 *   throw asUnavailable(e); // StoreUnavailableError("cannot reach Redis at h:1")
 * }
 * ```
 */
export function asUnavailable(e: unknown): unknown {
  if (e instanceof ConnectionError || e instanceof ProtocolError) {
    return new StoreUnavailableError(e.message);
  }
  return e;
}

/** Samples a {@linkcode LatencyWindow} keeps. */
const WINDOW = 256;

/**
 * The latencies of the last 256 requests to one endpoint, for the health
 * median: a fixed ring of doubles, so recording allocates nothing.
 *
 * @example
 * ```ts
 * const w = new LatencyWindow();
 * for (const us of [30, 10, 20]) w.record(us);
 * w.median(); // 20
 * w.requests; // 3
 * ```
 */
export class LatencyWindow {
  #samples = new Float64Array(WINDOW);
  #n = 0;
  #sorted: Float64Array | null = null;
  #sortedAt = 0;
  /** Requests completed since start. */
  requests = 0;

  /** Records one request that took `us` microseconds. */
  record(us: number): void {
    this.#samples[this.#n++ % WINDOW] = us;
    this.requests++;
  }

  /** Median of the window in whole microseconds (0 before any request). */
  median(): number {
    const n = Math.min(this.#n, WINDOW);
    if (n === 0) return 0;
    const sorted = this.#samples.slice(0, n).sort();
    return Math.round(sorted[n >> 1]);
  }

  /**
   * The `q` quantile of the window in microseconds (0 before any request).
   * Once 64 requests are in, the sorted copy is refreshed every 32, so a
   * caller on the fault path does not sort 256 numbers per request.
   *
   * @example
   * ```ts
   * const w = new LatencyWindow();
   * for (let us = 1; us <= 100; us++) w.record(us);
   * w.quantile(0.99); // 100
   * ```
   */
  quantile(q: number): number {
    const n = Math.min(this.#n, WINDOW);
    if (n === 0) return 0;
    const stale = this.#n - this.#sortedAt;
    if (this.#sorted === null || stale >= 32 || (stale > 0 && this.#n < 64)) {
      this.#sorted = this.#samples.slice(0, n).sort();
      this.#sortedAt = this.#n;
    }
    const sorted = this.#sorted;
    return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  }

  /**
   * The {@linkcode EndpointHealth} of the endpoint this window measures.
   *
   * @example
   * ```ts
   * new LatencyWindow().health("redis://h:6379", "up", 0);
   * // { address: "redis://h:6379", state: "up", requests: 0, medianLatencyUs: 0, pages: 0 }
   * ```
   */
  health(address: string, state: EndpointHealth["state"], pages: number): EndpointHealth {
    return { address, state, requests: this.requests, medianLatencyUs: this.median(), pages };
  }
}
