/**
 * The one interface every backend implements: an asynchronous, batched store
 * of 4 KiB pages addressed by 32-bit keys the pager chooses.
 *
 * The pager owns the key space of one session (it shares keys between a
 * target and its forked children, copy-on-write), so a store never invents or
 * reuses keys by itself; it only maps them to wherever remote bytes live.
 *
 * @module
 */

import type { PollSet } from "../ffi/poll.ts";

/** Size of one page, in bytes. Every value a store holds is exactly this long. */
export const PAGE_SIZE = 4096;

/**
 * A store whose replies arrive on file descriptors of its own: a caller that
 * waits itself (the pager's loop) polls them beside its own fds and
 * dispatches them, so that a reply never waits for Deno's event loop.
 *
 * @example
 * ```ts
 * declare const waiter: StoreWaiter, set: PollSet;
 * waiter.drive(() => console.log("wake up: there is more to wait for"));
 * const dispatch = waiter.addTo(set);
 * if (set.waitNow(1) > 0) dispatch();
 * ```
 */
export interface StoreWaiter {
  /** The caller waits for the store from now on; `wake` is called when it must look again while `asleep`. */
  drive(wake: () => void): void;
  /** The caller stops waiting for the store, which waits on its own again. */
  release(): void;
  /** Adds the store's fds to `set`; the function returned handles what the wait reported for them. */
  addTo(set: PollSet): () => boolean;
  /** Set by the caller around a wait on a worker thread, which a new fd must interrupt. */
  asleep: boolean;
  /** Moves with every read, write or close on the store's sockets (handlers still at work). */
  readonly activity: number;
}

/** A batched page store. Every backend (embedded, peers, memcached, Redis, RDMA) implements it. */
export interface PageStore {
  /** Short human name for logs and metrics, e.g. `embedded` or `tcp://10.0.0.2:7070`. */
  readonly name: string;
  /**
   * True when every operation completes without I/O (the embedded store):
   * the pager may then keep looking for faults between completions instead
   * of sleeping, which a store that waits on sockets must not be starved by.
   */
  readonly local?: boolean;
  /**
   * Set when the store's replies arrive on sockets of its own: the pager
   * waits for them in its own poll (see {@linkcode StoreWaiter}).
   */
  readonly waiter?: StoreWaiter;
  /**
   * Stores `keys.length` pages taken from `pages` (page i at `i * PAGE_SIZE`).
   * Resolves only once every page is confirmed by the backend (every live
   * replica); the caller may drop its local copy after that and not before.
   * The caller does not touch `pages` until the promise settles.
   */
  put(keys: Uint32Array, pages: Uint8Array): Promise<void>;
  /**
   * Reads `keys.length` pages into `into` (page i at `i * PAGE_SIZE`).
   * Rejects with {@linkcode PageLostError} if a key the pager stored is gone:
   * a store never fills a missing page with zeros.
   */
  get(keys: Uint32Array, into: Uint8Array): Promise<void>;
  /**
   * {@linkcode get} done at once, for a `local` store: returns null, or the
   * {@linkcode PageLostError} `get` would reject with. The pager places a
   * faulting page within the same call, not one microtask turn later.
   */
  getNow?(keys: Uint32Array, into: Uint8Array): Error | null;
  /**
   * Keeps the pages in a file at `path` that outlives the pager (the embedded
   * store), so that a new pager can recover them; with `existing`, reopens a
   * dead pager's file holding those keys. Called before any put. Stores that
   * keep their pages elsewhere have no such method.
   */
  persistAt?(path: string, existing?: Uint32Array): void;
  /**
   * The key namespace on servers that outlive the pager (memcached, Redis):
   * a new pager that opens the store with the same namespace finds the keys.
   */
  readonly namespace?: string;
  /**
   * Counts `keys` as this session's, stored by a pager that was killed (same
   * namespace): they are on the servers already. Throws with one line if this
   * store cannot vouch for them (replicas that may have missed a write).
   */
  resume?(keys: Uint32Array): void | Promise<void>;
  /**
   * How the store gives keys back to the pager when it must let them go and
   * has nowhere else to keep them (a peer wants its memory back and no other
   * has room): `pull` brings their pages home into the program and frees the
   * keys. Stores that never need it leave it out.
   */
  setPullHome?(pull: (keys: Uint32Array) => Promise<void>): void;
  /** Forgets the given keys. Deleting an unknown key is not an error. */
  delete(keys: Uint32Array): Promise<void>;
  /** Frees everything this session stored and releases connections. */
  close(): Promise<void>;
  /** A snapshot for metrics: per-peer or per-server health and latency. */
  health(): StoreHealth;
}

/** Health of one remote endpoint (a peer, a memcached or Redis server). */
export interface EndpointHealth {
  /** Endpoint address as the user gave it, e.g. `tcp://10.0.0.2:7070`. */
  address: string;
  /** `up`, `down`, or `draining`. */
  state: "up" | "down" | "draining";
  /** Requests completed since start. */
  requests: number;
  /** Median request latency over the recent window, in microseconds. */
  medianLatencyUs: number;
  /** Pages this session holds there. */
  pages: number;
}

/** What a store reports about itself for metrics and logs. */
export interface StoreHealth {
  /** Pages currently held (counting each key once, not per replica). */
  pages: number;
  /** Keys that currently have fewer live copies than requested replicas. */
  replicationDeficit: number;
  /** Per-endpoint state; empty for the embedded store. */
  endpoints: EndpointHealth[];
}

/** Options every store factory accepts. */
export interface StoreOptions {
  /** Copies of each page, on distinct endpoints (1 for the embedded store). */
  replicas: number;
  /**
   * A name unique to this pager session, used to name keys and slabs on
   * shared servers (e.g. `remora:<host>:<pid>:<random>`), so that tenants never
   * see each other's pages and a detach can delete exactly what it stored.
   */
  namespace: string;
  /**
   * `namespace` is a killed pager's, as its record kept it (for peers, the
   * whole session name): used as it is, so the new pager finds its pages.
   */
  resumed?: boolean;
  /** Path of a file holding the shared secret for peers that authenticate. */
  tokenFile?: string;
  /**
   * Called when pages are irrecoverably lost (every replica gone). The pager
   * reacts by stopping the target; the store keeps serving other keys.
   */
  onLoss?: (keys: Uint32Array) => void;
}

/** A page the pager stored cannot be found on any replica. Never served as zeros. */
export class PageLostError extends Error {
  /** The keys that are lost. */
  readonly keys: Uint32Array;
  /** Builds the error for the given lost keys, with a reason for the log. */
  constructor(keys: Uint32Array, reason: string) {
    super(`${keys.length} page(s) lost: ${reason}`);
    this.name = "PageLostError";
    this.keys = keys;
  }
}

/** The backend cannot be reached or refused us; the message says what to do. */
export class StoreUnavailableError extends Error {
  /** Builds the error; `message` is one line meant for the user. */
  constructor(message: string) {
    super(message);
    this.name = "StoreUnavailableError";
  }
}
