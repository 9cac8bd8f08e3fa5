/**
 * Large reply frames kept for reuse. A peer answers every batched READ with a
 * frame of up to a MiB that is written once and then not needed: freed and
 * allocated anew, each of its pages is fresh memory, and on this project's
 * machines a first touch costs a fault per page (about 4 ms a MiB, against
 * 25 us for memory already mapped). A sequential sweep served by a loopback
 * peer took 856-885 ms of passes with fresh reply frames and 522-535 ms with
 * reused ones. The pool is bounded, so a peer's memory stays bounded too.
 *
 * @module
 */

/** Smallest frame worth pooling (smaller ones come from the heap cheaply). */
export const POOLED_FROM = 64 * 1024;
/** Largest frame pooled: a reply of 1,024 pages and its header fit. */
const POOLED_UP_TO = 8 * 1024 * 1024;
/** Most bytes the pool keeps while they wait for reuse. */
const POOL_BYTES = 16 * 1024 * 1024;

/**
 * Buffers in power-of-two size classes; {@linkcode FramePool.take} hands out
 * a view of one, {@linkcode FramePool.give} takes it back once written.
 *
 * @example
 * ```ts
 * const pool = new FramePool();
 * const frame = pool.take(300_000); // a view of a 512 KiB buffer
 * // ... fill it, write it once ...
 * pool.give(frame); // the next take of that class reuses its memory
 * ```
 */
export class FramePool {
  readonly #free = new Map<number, ArrayBuffer[]>();
  readonly #mine = new WeakSet<ArrayBuffer>();
  #bytes = 0;

  /** Bytes waiting for reuse. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A view of `bytes` bytes; its contents are whatever its last user left: fill every byte. */
  take(bytes: number): Uint8Array {
    if (bytes < POOLED_FROM || bytes > POOLED_UP_TO) return new Uint8Array(bytes);
    const size = sizeClass(bytes);
    const buffer = this.#free.get(size)?.pop();
    if (buffer !== undefined) {
      this.#bytes -= size;
      return new Uint8Array(buffer, 0, bytes);
    }
    const fresh = new ArrayBuffer(size);
    this.#mine.add(fresh);
    return new Uint8Array(fresh, 0, bytes);
  }

  /** Takes back a view from {@linkcode take} that nobody uses any more; others are ignored. */
  give(frame: Uint8Array): void {
    const buffer = frame.buffer;
    if (!(buffer instanceof ArrayBuffer) || !this.#mine.has(buffer)) return;
    if (this.#bytes + buffer.byteLength > POOL_BYTES) return; // left to the collector
    let list = this.#free.get(buffer.byteLength);
    if (list === undefined) this.#free.set(buffer.byteLength, list = []);
    if (list.includes(buffer)) return; // given twice: keep one entry
    list.push(buffer);
    this.#bytes += buffer.byteLength;
  }
}

/** The power of two at or above `bytes`. */
function sizeClass(bytes: number): number {
  return 2 ** Math.ceil(Math.log2(bytes));
}
