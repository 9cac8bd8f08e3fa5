/**
 * The embedded default store: pages kept in the pager's own memory, in large
 * slabs allocated on demand. No network, no configuration.
 *
 * @module
 */

import { PAGE_SIZE, type PageStore, type StoreHealth } from "./store.ts";

const SLAB_PAGES = 4096; // 16 MiB slabs: few allocations, little waste.

/** Pages in slabs of the pager's own memory. */
export class EmbeddedStore implements PageStore {
  /** Always `embedded`. */
  readonly name = "embedded";
  /** Operations complete in memory, without I/O. */
  readonly local = true;
  #slabs: (Uint8Array | undefined)[] = [];
  #present = new Uint8Array(SLAB_PAGES);
  #pages = 0;

  /** Copies pages in; confirmed as soon as the promise resolves. */
  put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    this.putNow(keys, pages);
    return Promise.resolve();
  }

  /** Synchronous put, for callers that can skip a promise. */
  putNow(keys: Uint32Array, pages: Uint8Array): void {
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      const s = (key / SLAB_PAGES) | 0;
      let slab = this.#slabs[s];
      if (slab === undefined) slab = this.#slabs[s] = new Uint8Array(SLAB_PAGES * PAGE_SIZE);
      slab.set(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), (key % SLAB_PAGES) * PAGE_SIZE);
      if (key >= this.#present.length) this.#growPresent(key);
      if (this.#present[key] === 0) {
        this.#present[key] = 1;
        this.#pages++;
      }
    }
  }

  /** Copies pages out; a key never stored is a lost page, never zeros. */
  get(keys: Uint32Array, into: Uint8Array): Promise<void> {
    const lost = this.getNow(keys, into);
    return lost === null ? Promise.resolve() : Promise.reject(lost);
  }

  /** Synchronous get; returns an error for missing keys instead of throwing. */
  getNow(keys: Uint32Array, into: Uint8Array): Error | null {
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      if (key >= this.#present.length || this.#present[key] === 0) {
        return new Error(`embedded store has no page for key ${key}`);
      }
      const slab = this.#slabs[(key / SLAB_PAGES) | 0]!;
      const off = (key % SLAB_PAGES) * PAGE_SIZE;
      into.set(slab.subarray(off, off + PAGE_SIZE), i * PAGE_SIZE);
    }
    return null;
  }

  /** Forgets keys; slabs that become empty are not returned (they are reused). */
  delete(keys: Uint32Array): Promise<void> {
    for (const key of keys) {
      if (key < this.#present.length && this.#present[key] === 1) {
        this.#present[key] = 0;
        this.#pages--;
      }
    }
    return Promise.resolve();
  }

  /** Frees every slab. */
  close(): Promise<void> {
    this.#slabs = [];
    this.#present = new Uint8Array(SLAB_PAGES);
    this.#pages = 0;
    return Promise.resolve();
  }

  /** Pages held; no endpoints. */
  health(): StoreHealth {
    return { pages: this.#pages, replicationDeficit: 0, endpoints: [] };
  }

  #growPresent(key: number): void {
    let len = this.#present.length;
    while (len <= key) len *= 2;
    const grown = new Uint8Array(len);
    grown.set(this.#present);
    this.#present = grown;
  }
}
