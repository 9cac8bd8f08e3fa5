/**
 * Store keys ("slots") and their reference counts. A key is shared by a
 * parent and its forked children until one of them writes its page again:
 * copy-on-write at the level of the store.
 *
 * @module
 */

import { NO_SLOT } from "./page_table.ts";

/** Allocates 32-bit store keys densely from 0 and counts references to each. */
export class SlotTable {
  #refs = new Uint16Array(1024);
  #free = new Uint32Array(1024);
  #freeCount = 0;
  #next = 0;
  #live = 0;
  /** Keys whose last reference went away; the pager deletes them from the store in batches. */
  readonly released: number[] = [];

  /** A fresh key with one reference. */
  allocate(): number {
    let key: number;
    if (this.#freeCount > 0) {
      key = this.#free[--this.#freeCount];
    } else {
      key = this.#next++;
      if (key === NO_SLOT) throw new Error("store key space exhausted");
      if (key >= this.#refs.length) {
        const grown = new Uint16Array(this.#refs.length * 2);
        grown.set(this.#refs);
        this.#refs = grown;
      }
    }
    this.#refs[key] = 1;
    this.#live++;
    return key;
  }

  /** Adds a reference (a forked child sharing the page, or a request in flight). */
  retain(key: number): void {
    if (this.#refs[key] === 0xffff) throw new Error("too many references to one store key");
    this.#refs[key]++;
  }

  /** Drops a reference; at zero the key is queued in {@linkcode released}. */
  release(key: number): void {
    if (key === NO_SLOT) return;
    if (--this.#refs[key] === 0) {
      this.#live--;
      this.released.push(key);
    }
  }

  /** References held on `key`. */
  refs(key: number): number {
    return this.#refs[key];
  }

  /** Makes released keys available again, once the store has deleted them. */
  recycle(keys: ArrayLike<number>): void {
    for (let i = 0; i < keys.length; i++) {
      if (this.#freeCount === this.#free.length) {
        const grown = new Uint32Array(this.#free.length * 2);
        grown.set(this.#free);
        this.#free = grown;
      }
      this.#free[this.#freeCount++] = keys[i];
    }
  }

  /**
   * Recovery: takes `key` (found in a killed pager's record) with one
   * reference; keys below it that nobody claims must be claimed and released
   * too, or they would never be reused.
   */
  claim(key: number): void {
    while (key >= this.#refs.length) {
      const grown = new Uint16Array(this.#refs.length * 2);
      grown.set(this.#refs);
      this.#refs = grown;
    }
    if (this.#refs[key]++ === 0) this.#live++;
    if (key >= this.#next) this.#next = key + 1;
  }

  /** Keys with at least one reference. */
  get live(): number {
    return this.#live;
  }

  /** Bytes of metadata held. */
  get bytes(): number {
    return this.#refs.byteLength + this.#free.byteLength;
  }
}
