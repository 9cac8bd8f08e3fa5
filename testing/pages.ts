/**
 * Deterministic page contents for checking stores without keeping copies:
 * the bytes of a page follow from its key (and a version), so a page read
 * back can be compared with what must have been written.
 *
 * @example
 * ```ts
 * import { keyRange, pagesFor } from "./pages.ts";
 * const keys = keyRange(0, 64);
 * const data = pagesFor(keys, 1); // 64 pages, version 1
 * ```
 *
 * @module
 */

const PAGE_SIZE = 4096;

/** A deterministic page for `key` and `version`, so reads can be verified without keeping copies. */
export function pageFor(key: number, version = 0): Uint8Array {
  const page = new Uint8Array(4096);
  const v = new DataView(page.buffer);
  let x = (key * 2654435761 + version * 40503 + 1) >>> 0;
  for (let i = 0; i < 4096; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v.setUint32(i, x >>> 0, true);
  }
  v.setUint32(0, key, true);
  v.setUint32(4, version, true);
  return page;
}

/** Concatenates `pageFor(k, version)` for each key. */
export function pagesFor(keys: Uint32Array, version = 0): Uint8Array {
  const out = new Uint8Array(keys.length * 4096);
  keys.forEach((k, i) => out.set(pageFor(k, version), i * 4096));
  return out;
}

/** Keys `from` .. `from + count - 1`. */
export function keyRange(from: number, count: number): Uint32Array {
  return Uint32Array.from({ length: count }, (_, i) => from + i);
}

/** Fills page `i` of `buf` with bytes derived from `key` and `gen`, so a swapped page shows. */
export function fillPage(buf: Uint8Array, i: number, key: number, gen = 0): void {
  let x = (key * 2654435761 + gen * 40503 + 1) >>> 0;
  const v = new DataView(buf.buffer, buf.byteOffset + i * PAGE_SIZE, PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    v.setUint32(o, x >>> 0);
  }
}

/** Checks page `i` of `buf` holds what {@linkcode fillPage} wrote for `key`/`gen`. */
export function checkPage(buf: Uint8Array, i: number, key: number, gen = 0): void {
  const want = new Uint8Array(PAGE_SIZE);
  fillPage(want, 0, key, gen);
  const got = buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  for (let o = 0; o < PAGE_SIZE; o++) {
    if (got[o] !== want[o]) throw new Error(`page ${key} differs at byte ${o}`);
  }
}
