/**
 * The embedded default store: pages kept in the pager's own memory, in large
 * slabs allocated on demand. No network, no configuration. Once told to
 * persist ({@linkcode EmbeddedStore.persistAt}), the slabs are chunks of a
 * file on tmpfs mapped by the pager: its pages outlive a pager that is killed,
 * for the next one to recover.
 *
 * @module
 */

import { MappedFile } from "../ffi/mapped_file.ts";
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
  #file: MappedFile | null = null;

  /**
   * Keeps every page from now on in the file at `path` (mode 0600), which
   * outlives the pager. With `existing`, the file is a dead pager's and holds
   * those keys; else it is made new (and must not exist). Called before any
   * put. The file is deleted by {@linkcode close}.
   *
   * @example
   * ```ts
   * const store = new EmbeddedStore();
   * store.persistAt("/dev/shm/remora-1234-5678.pages");
   * ```
   */
  persistAt(path: string, existing?: Uint32Array): void {
    if (existing === undefined) {
      this.#file = MappedFile.create(path, SLAB_PAGES * PAGE_SIZE);
      return;
    }
    const file = MappedFile.open(path, SLAB_PAGES * PAGE_SIZE);
    if (file === null) throw new Error(`the pages file ${path} is missing`);
    this.#file = file;
    const whole = file.chunks * SLAB_PAGES;
    for (const key of existing) {
      if (key >= whole) throw new Error(`the pages file ${path} is short of key ${key}`);
      if (key >= this.#present.length) this.#growPresent(key);
      if (this.#present[key] === 0) this.#pages++;
      this.#present[key] = 1;
    }
  }

  /** Copies pages in; confirmed as soon as the promise resolves. */
  put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    try {
      this.putNow(keys, pages);
    } catch (e) {
      return Promise.reject(e); // no room for a slab: the pages stay in the target
    }
    return Promise.resolve();
  }

  /** Synchronous put, for callers that can skip a promise. */
  putNow(keys: Uint32Array, pages: Uint8Array): void {
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      const s = (key / SLAB_PAGES) | 0;
      const slab = this.#slabs[s] ?? this.#newSlab(s);
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
      const s = (key / SLAB_PAGES) | 0;
      const slab = this.#slabs[s] ?? this.#newSlab(s);
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

  /** Frees every slab (and deletes the file they were in). */
  close(): Promise<void> {
    this.#file?.remove();
    this.#file = null;
    this.#slabs = [];
    this.#present = new Uint8Array(SLAB_PAGES);
    this.#pages = 0;
    return Promise.resolve();
  }

  /** Pages held; no endpoints. */
  health(): StoreHealth {
    return { pages: this.#pages, replicationDeficit: 0, endpoints: [] };
  }

  /**
   * Slab `s`: a chunk of the file if there is one (its pages touched on
   * another CPU meanwhile: a first touch costs 10-15 us a page on a VM, a
   * sixth of the first fill's time here), else the pager's heap.
   */
  #newSlab(s: number): Uint8Array {
    const slab = this.#file?.chunk(s, true) ?? new Uint8Array(SLAB_PAGES * PAGE_SIZE);
    return this.#slabs[s] = slab;
  }

  #growPresent(key: number): void {
    let len = this.#present.length;
    while (len <= key) len *= 2;
    const grown = new Uint8Array(len);
    grown.set(this.#present);
    this.#present = grown;
  }
}
