/**
 * What a peer store knows of each peer (an {@linkcode Endpoint}) and of each
 * slab (a {@linkcode Slab}: which peers hold a copy, which pages it holds).
 *
 * @module
 */

import { LatencyWindow } from "../kit.ts";
import type { PeerConnection, PeerTarget } from "./connection.ts";

/** Where a peer stands: `down` until connected, `draining` once it asks for its memory back. */
export type EndpointState = "up" | "down" | "draining";

/** Hedge delay before any latency is known: generous, a first request may set up a slab. */
const FIRST_HEDGE_MS = 20;
/** The shortest hedge delay: a timer tick, and a peer answering in 1 ms is not late. */
const MIN_HEDGE_MS = 1;
/**
 * The longest: a frozen replica costs a request at most this (the bench's
 * target is 5 ms added to p99), even when pipelining has made the peer's
 * recent p99 long. A late write only marks its pages lagging on that peer.
 */
const MAX_HEDGE_MS = 3;

/**
 * One peer: its connection, its state, what it reported of its memory, and
 * how fast it answers.
 *
 * @example
 * ```ts
 * const ep = new Endpoint({ address: "tcp://h:7070", hostname: "h", port: 7070, tls: false });
 * ep.live; // false: not connected yet
 * ```
 */
export class Endpoint {
  readonly target: PeerTarget;
  conn: PeerConnection | null = null;
  state: EndpointState = "down";
  /** Free bytes as the peer last reported them. */
  freeBytes = 0;
  /** Bytes of slabs asked of this peer and not yet answered: the peer's report leaves them out. */
  pendingBytes = 0;
  /**
   * Late once (a hedge delay or a write's grace ran out) and not answered
   * since: asked last for reads and left out of new placements, until its
   * next answer clears it or the request timeout declares it down.
   */
  suspect = false;
  readonly latency = new LatencyWindow();
  reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  lastError = "";
  reportedError = "";

  constructor(target: PeerTarget) {
    this.target = target;
  }

  get live(): boolean {
    return this.state !== "down" && this.conn !== null && this.conn.alive;
  }

  /** Free bytes net of allocations in flight, so that a burst of placements spreads out. */
  get availableBytes(): number {
    return this.freeBytes - this.pendingBytes;
  }

  /**
   * How long to wait for this peer before asking another replica: twice its
   * recent 99th percentile (1 to 3 ms), so that about one request in a
   * hundred is hedged on a healthy peer, and a frozen one costs about that much.
   */
  hedgeDelayMs(): number {
    if (this.latency.requests === 0) return FIRST_HEDGE_MS;
    const twiceP99 = Math.ceil((2 * this.latency.quantile(0.99)) / 1000);
    return Math.min(MAX_HEDGE_MS, Math.max(MIN_HEDGE_MS, twiceP99));
  }
}

/**
 * `slabPages` consecutive keys placed together on the same replicas.
 *
 * @example
 * ```ts
 * const slab = new Slab(3, 17, 64); // keys 192..255, named 17 on the peers
 * await slab.locked(async () => { slab.present[0] = 1; });
 * ```
 */
export class Slab {
  /** Which `slabPages` keys it holds: keys `index * slabPages` onwards. */
  readonly index: number;
  /**
   * Its name on the peers, never reused within a session: a FREE of a slab
   * given up can then never hit a newer slab of the same keys.
   */
  readonly id: number;
  /** Replicas holding a complete copy. */
  replicas: Endpoint[] = [];
  /** Replicas being filled: they receive writes but serve no reads yet. */
  syncing: Endpoint[] = [];
  /** Replicas whose peer asked for this slab back (a partial drain): moved off, then freed there. */
  readonly leaving = new Set<Endpoint>();
  /** Its pages are being pulled home (no other peer had room when its peer wanted it back). */
  goingHome = false;
  readonly present: Uint8Array;
  presentCount = 0;
  /**
   * Per replica, the pages (offset to count) whose writes it has not confirmed
   * in time: until it does, it may hold an older version of them, so reads of
   * them skip it. Requests on a connection complete in order, so once its
   * last late write of a page is confirmed it is current again.
   */
  readonly #lagging = new Map<Endpoint, Map<number, number>>();
  readonly #newestLateWrite = new Map<Endpoint, Promise<void>>();
  #lock: Promise<void> = Promise.resolve();

  constructor(index: number, id: number, pages: number) {
    this.index = index;
    this.id = id;
    this.present = new Uint8Array(pages);
  }

  /**
   * Notes that `ep` has not confirmed `write` of `offsets` in time. When it
   * does, those pages are current on it again; when it fails, `onFailure`
   * decides (the store drops it as a replica).
   */
  markLagging(
    ep: Endpoint,
    offsets: number[],
    write: Promise<unknown>,
    onFailure: (error: unknown) => void,
  ): void {
    let pages = this.#lagging.get(ep);
    if (!pages) this.#lagging.set(ep, pages = new Map());
    for (const off of offsets) pages.set(off, (pages.get(off) ?? 0) + 1);
    const marked = pages;
    const release = () => {
      if (this.#lagging.get(ep) !== marked) return; // forgotten meanwhile: nothing to clear
      for (const off of offsets) {
        const n = marked.get(off)! - 1;
        if (n === 0) marked.delete(off);
        else marked.set(off, n);
      }
      if (marked.size === 0) this.#lagging.delete(ep);
    };
    // Requests on one connection complete in order: the newest late write
    // settles after every earlier one.
    this.#newestLateWrite.set(ep, write.then(release, onFailure));
  }

  /** Settles once `ep` has confirmed, or failed, every write it was late with. */
  caughtUp(ep: Endpoint): Promise<void> {
    return this.#newestLateWrite.get(ep) ?? Promise.resolve();
  }

  /** Whether `ep` may hold an older version of any of `offsets`. */
  isLagging(ep: Endpoint, offsets: number[]): boolean {
    const pages = this.#lagging.get(ep);
    return pages !== undefined && offsets.some((off) => pages.has(off));
  }

  /** Pages some replica may hold in an older version (they count as under-replicated). */
  get laggingPages(): number {
    let n = 0;
    for (const pages of this.#lagging.values()) n += pages.size;
    return n;
  }

  /** Forgets `ep` as a replica: what it lagged no longer matters. */
  forget(ep: Endpoint): void {
    this.replicas = this.replicas.filter((r) => r !== ep);
    this.syncing = this.syncing.filter((r) => r !== ep);
    this.leaving.delete(ep);
    this.#lagging.delete(ep);
    this.#newestLateWrite.delete(ep);
  }

  /** Runs `fn` exclusively: a write and a copy chunk never interleave, so a copy never overwrites a newer page. */
  locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn);
    this.#lock = run.then(() => {}, () => {});
    return run;
  }
}

/**
 * Power of two choices among live, non-draining peers not in `excluded`: two
 * drawn at random, the one with more room wins. A suspect peer (late lately)
 * only when there is no other; null when none is usable.
 *
 * @example
 * ```ts ignore
 * const ep = pickPeer(endpoints, new Set(slab.replicas));
 * ```
 */
export function pickPeer(endpoints: Endpoint[], excluded: Set<Endpoint>): Endpoint | null {
  const usable = endpoints.filter((ep) => ep.state === "up" && ep.live && !excluded.has(ep));
  const trusted = usable.filter((ep) => !ep.suspect);
  const pool = trusted.length > 0 ? trusted : usable;
  if (pool.length === 0) return null;
  if (pool.length === 1) return pool[0];
  const a = Math.floor(Math.random() * pool.length);
  let b = Math.floor(Math.random() * (pool.length - 1));
  if (b >= a) b++;
  return pool[a].availableBytes >= pool[b].availableBytes ? pool[a] : pool[b];
}
