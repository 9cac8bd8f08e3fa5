/**
 * `poll(2)` over a set of fds, each with its own events: on this thread (a
 * synchronous FFI call that wakes within microseconds, while nothing else of
 * the isolate runs) or on a worker thread (an idle wait that lets the event
 * loop run and uses no CPU, at the cost of an event-loop round to wake).
 *
 * @module
 */

import { Errno, errno } from "./libc.ts";

/** `poll(2)` event bits. */
export const POLL = { IN: 0x1, OUT: 0x4, ERR: 0x8, HUP: 0x10, NVAL: 0x20 } as const;
/** Bytes of one `struct pollfd` (`int fd; short events; short revents`). */
const POLLFD_BYTES = 8;

interface Symbols {
  poll(fds: Uint8Array, n: number, timeout: number): number;
  poll_async(fds: Uint8Array, n: number, timeout: number): Promise<number>;
}
let loaded: Symbols | null = null;

function sym(): Symbols {
  return loaded ??= Deno.dlopen("libc.so.6", {
    poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
    poll_async: {
      name: "poll",
      parameters: ["buffer", "u64", "i32"],
      result: "i32",
      nonblocking: true,
    },
  }).symbols as unknown as Symbols;
}

/**
 * An array of `struct pollfd`, filled anew before each wait.
 *
 * @example
 * ```ts
 * const set = new PollSet();
 * const k = set.add(0, POLL.IN);
 * if (set.waitNow(10) > 0 && set.revents(k) !== 0) console.log("stdin is readable");
 * ```
 */
export class PollSet {
  #bytes = new Uint8Array(64 * POLLFD_BYTES);
  #view = new DataView(this.#bytes.buffer);
  /** How many fds are in the set. */
  size = 0;

  /** Empties the set. */
  clear(): void {
    this.size = 0;
  }

  /** Adds `fd` polled for `events`; returns its index. */
  add(fd: number, events: number): number {
    if ((this.size + 1) * POLLFD_BYTES > this.#bytes.length) {
      const bigger = new Uint8Array(this.#bytes.length * 2);
      bigger.set(this.#bytes);
      this.#bytes = bigger;
      this.#view = new DataView(bigger.buffer);
    }
    const at = this.size * POLLFD_BYTES;
    this.#view.setInt32(at, fd, true);
    this.#view.setInt16(at + 4, events, true);
    this.#view.setInt16(at + 6, 0, true);
    return this.size++;
  }

  /** What the last wait reported for the fd at `index` (0: nothing). */
  revents(index: number): number {
    return this.#view.getInt16(index * POLLFD_BYTES + 6, true);
  }

  /** Waits on this thread: ready count, 0 on timeout or EINTR, or `-errno`. */
  waitNow(timeoutMs: number): number {
    const r = sym().poll(this.#bytes, this.size, timeoutMs);
    if (r !== -1) return r;
    const e = errno();
    return e === Errno.EINTR ? 0 : -e;
  }

  /** Waits on a worker thread (the set must not change until it resolves). */
  async waitLater(timeoutMs: number): Promise<number> {
    const r = await sym().poll_async(this.#bytes, this.size, timeoutMs);
    // errno lives on the worker thread: a failure (EINTR) reads as "nothing ready".
    return r < 0 ? 0 : r;
  }
}
