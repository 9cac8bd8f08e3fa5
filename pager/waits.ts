/**
 * The pager loop's waits: one `poll` over its wake eventfd, each target's
 * userfaultfd and pidfd, and the store's sockets (a store with a
 * {@linkcode StoreWaiter}: its replies are read and their pages placed
 * without an event-loop round). While faults stream in the poll is a
 * synchronous FFI call, made after looking for the next message a little,
 * since waking from the other CPU costs more than the look; idle, it runs on a
 * worker thread and uses no CPU.
 *
 * @module
 */

import { eventfdDrain } from "../ffi/libc.ts";
import { POLL, PollSet } from "../ffi/poll.ts";
import type { StoreWaiter } from "../transport/store.ts";
import type { PagerState } from "./state.ts";
import type { Target } from "./target.ts";

/** The longest the loop blocks in a synchronous poll (the event loop waits meanwhile). */
export const SLICE_MS = 1;
/** How long the hot loop looks for the next message before it blocks in poll. */
const SPIN_MS = 0.03;
/**
 * How long it looks for a store's reply (and the next message) before it
 * blocks, while fetches are in flight: about a loopback round trip.
 */
const FETCH_SPIN_MS = 0.2;

/** What the waits need of the pager. */
export interface WaitHooks {
  /** Reads and handles every pending message; returns how many. */
  pump(): number;
  /** `t`'s pidfd turned readable: it exited (its last events are read first). */
  exited(t: Target): void;
  /**
   * Whether the loop may look for the next message before it blocks: not
   * while it shares its CPU with the target, which wants that CPU to run.
   */
  mayLook(): boolean;
}

/**
 * The loop's poll set and the ways it waits on it.
 *
 * @example
 * ```ts
 * declare const waits: LoopWaits;
 * waits.prepare();
 * const storeReady = await waits.sleep(1000);
 * ```
 */
export class LoopWaits {
  /** The store's sockets, when its replies arrive on fds of its own. */
  readonly waiter: StoreWaiter | undefined;
  readonly #s: PagerState;
  readonly #hooks: WaitHooks;
  readonly #set = new PollSet();
  readonly #untilSet = new PollSet();
  #waited: Target[] = [];
  #storeReady: () => boolean = () => false;

  /** Waits for `s`'s targets and store. */
  constructor(s: PagerState, hooks: WaitHooks) {
    this.#s = s;
    this.#hooks = hooks;
    this.waiter = s.store.waiter;
  }

  /** The store's sockets wait on this loop from now until {@linkcode release}. */
  drive(): void {
    this.waiter?.drive(() => this.#s.wakeLoop());
  }

  /** The store waits on its own again. */
  release(): void {
    this.waiter?.release();
  }

  /** Fills the set for the next wait: the wake eventfd, each target's uffd and pidfd, the store's sockets. */
  prepare(): void {
    const set = this.#set;
    set.clear();
    set.add(this.#s.wake, POLL.IN);
    this.#waited = [...this.#s.targets.values()];
    for (const t of this.#waited) {
      set.add(t.uffd, POLL.IN);
      set.add(t.pidfd, POLL.IN);
    }
    this.#storeReady = this.waiter?.addTo(set) ?? (() => false);
  }

  /** Looks without waiting; returns whether a store socket was ready. */
  look(): boolean {
    return this.#handle(this.#set.waitNow(0));
  }

  /**
   * The next message, or a store reply, usually comes within microseconds:
   * looks for it a little (longer while fetches are in flight), then blocks
   * for up to {@linkcode SLICE_MS}. Returns early when something moved
   * meanwhile (a message was served, a completion ran): the loop looks again.
   * Returns whether a store socket was ready.
   */
  async lookThenWait(): Promise<boolean> {
    const s = this.#s, waiter = this.waiter;
    // While fetches are in flight the faulting thread waits for them: a look
    // then takes no CPU it could use.
    const fetching = waiter !== undefined && s.inflight > 0;
    const lookMs = fetching ? FETCH_SPIN_MS : this.#hooks.mayLook() ? SPIN_MS : 0;
    const spinEnd = performance.now() + lookMs;
    const inflight = s.inflight, activity = waiter?.activity ?? 0;
    while (performance.now() < spinEnd) {
      if (this.#hooks.pump() > 0) return false;
      if (waiter === undefined) continue;
      const r = this.#set.waitNow(0);
      if (r !== 0) return this.#handle(r);
      // Completions may still be queued as microtasks: let them run.
      await null;
      if (s.inflight !== inflight || waiter.activity !== activity) return false;
    }
    return this.#handle(this.#set.waitNow(s.retries.length > 0 ? 0 : SLICE_MS));
  }

  /** Sleeps on a worker thread (no CPU) for up to `timeoutMs`; returns whether a store socket was ready. */
  async sleep(timeoutMs: number): Promise<boolean> {
    if (this.waiter) this.waiter.asleep = true;
    let r: number;
    try {
      r = await this.#set.waitLater(timeoutMs);
    } finally {
      if (this.waiter) this.waiter.asleep = false;
    }
    return this.#handle(r);
  }

  /**
   * Serves faults (and reads store replies, whose completions run once this
   * returns) until `fd` is readable or `timeoutMs` passes; returns whether it
   * turned readable. See `PagerHooks.serveUntil`.
   */
  serveUntil(fd: number, timeoutMs: number): boolean {
    const set = this.#untilSet;
    const end = performance.now() + timeoutMs;
    for (;;) {
      this.#hooks.pump();
      set.clear();
      set.add(fd, POLL.IN);
      for (const t of this.#s.targets.values()) if (!t.exited) set.add(t.uffd, POLL.IN);
      const storeReady = this.waiter?.addTo(set);
      const left = end - performance.now();
      const r = set.waitNow(left > 0 ? Math.ceil(left) : 0);
      if (r > 0) storeReady?.();
      if (r > 0 && set.revents(0) !== 0) return true;
      if (left <= 0) return false;
    }
  }

  /** Handles what a wait of the main set reported; returns whether a store socket was ready. */
  #handle(r: number): boolean {
    if (r <= 0) return false;
    const set = this.#set;
    if (set.revents(0) !== 0) eventfdDrain(this.#s.wake);
    this.#waited.forEach((t, k) => {
      if (set.revents(2 + 2 * k) !== 0 && !t.exited) this.#hooks.exited(t);
    });
    return this.#storeReady();
  }
}
