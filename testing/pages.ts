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

import { PAGE_SIZE, type PageStore } from "../transport/store.ts";

/** A deterministic page for `key` and `version`, so reads can be verified without keeping copies. */
export function pageFor(key: number, version = 0): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE);
  const v = new DataView(page.buffer);
  let x = (key * 2654435761 + version * 40503 + 1) >>> 0;
  for (let i = 0; i < PAGE_SIZE; i += 4) {
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
  const out = new Uint8Array(keys.length * PAGE_SIZE);
  keys.forEach((k, i) => out.set(pageFor(k, version), i * PAGE_SIZE));
  return out;
}

/** `count` keys from `from`, `stride` apart (default: consecutive). */
export function keyRange(from: number, count: number, stride = 1): Uint32Array {
  return Uint32Array.from({ length: count }, (_, i) => from + i * stride);
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

/**
 * The pages {@linkcode fillPage} writes for each key in turn.
 *
 * @example
 * ```ts
 * const keys = keyRange(0, 4);
 * checkPages(filledPages(keys, 1), keys, 1); // passes
 * ```
 */
export function filledPages(keys: Uint32Array, gen = 0): Uint8Array {
  const buf = new Uint8Array(keys.length * PAGE_SIZE);
  keys.forEach((k, i) => fillPage(buf, i, k, gen));
  return buf;
}

/** Checks that `buf` holds {@linkcode filledPages}`(keys, gen)`; throws naming the first wrong page. */
export function checkPages(buf: Uint8Array, keys: Uint32Array, gen = 0): void {
  keys.forEach((key, i) => checkPage(buf, i, key, gen));
}

/** `keys` cut into consecutive batches of at most `batch`. */
function batches(keys: Uint32Array, batch: number): Uint32Array[] {
  return Array.from(
    { length: Math.ceil(keys.length / batch) },
    (_, b) => keys.subarray(b * batch, (b + 1) * batch),
  );
}

/**
 * Stores {@linkcode filledPages} for `keys` in batches of `batch`, all in flight at once.
 *
 * @example
 * ```ts
 * await putFilled(store, keyRange(0, 1000), 64);
 * await checkFilled(store, keyRange(0, 1000), 64);
 * ```
 */
export async function putFilled(
  store: Pick<PageStore, "put">,
  keys: Uint32Array,
  batch: number,
  gen = 0,
): Promise<void> {
  await Promise.all(batches(keys, batch).map((k) => store.put(k, filledPages(k, gen))));
}

/** Reads `keys` back in batches of `batch`, all in flight at once, and checks every page. */
export async function checkFilled(
  store: Pick<PageStore, "get">,
  keys: Uint32Array,
  batch: number,
  gen = 0,
): Promise<void> {
  await Promise.all(
    batches(keys, batch).map(async (k) => {
      const into = new Uint8Array(k.length * PAGE_SIZE);
      await store.get(k, into);
      checkPages(into, k, gen);
    }),
  );
}

/**
 * Reads `keys` back from `store` and throws, naming the first key, unless
 * every page is exactly `pageFor(key, version)`.
 *
 * @example
 * ```ts
 * await store.put(keys, pagesFor(keys, 2));
 * await verifyStored(store, keys, 2);
 * ```
 */
export async function verifyStored(
  store: PageStore,
  keys: Uint32Array,
  version = 0,
): Promise<void> {
  const into = new Uint8Array(keys.length * PAGE_SIZE);
  await store.get(keys, into);
  const expected = pagesFor(keys, version);
  for (let i = 0; i < keys.length; i++) {
    const at = i * PAGE_SIZE;
    for (let j = 0; j < PAGE_SIZE; j++) {
      if (into[at + j] !== expected[at + j]) {
        throw new Error(`page of key ${keys[i]} differs from version ${version} at byte ${j}`);
      }
    }
  }
}
