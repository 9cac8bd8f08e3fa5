/**
 * Waits on sockets of our own ({@linkcode FdSocket}) without waking Deno's
 * event loop per message.
 *
 * On its own (a peer daemon), the reactor waits for the next message in a
 * synchronous `poll` while traffic flows, after looking for it for `spinMs`:
 * on this machine kind waking a thread that sleeps on the other CPU costs
 * 50-150 us, more than the whole request (a one-page READ round trip over
 * loopback: 137 us p50 with both ends sleeping, 21 us with both looking
 * first). The look yields the CPU between polls (`sched_yield`), so it only
 * uses a CPU no other thread wants: three peers sharing this 2-CPU machine
 * with their client took a one-at-a-time get (replicas 2) to 415 us p50
 * looking without yielding, 72 us yielding. After {@linkcode HOT_MS} without
 * a message the wait moves to a worker thread and uses no CPU; the event loop
 * gets a turn every {@linkcode SLICE_MS} while hot.
 *
 * Driven (the pager): a loop that waits itself puts the reactor's fds in its
 * own poll beside its userfaultfds ({@linkcode StoreWaiter}), and the reactor
 * never waits.
 *
 * Handlers run as promise continuations: after a dispatch the reactor lets
 * microtasks run until no socket was touched for a few rounds (`activity`),
 * so that a reply is written before it waits again.
 *
 * @module
 */

import { close as closeFd, eventfd, eventfdDrain, eventfdSignal, schedYield } from "../ffi/libc.ts";
import { POLL, PollSet } from "../ffi/poll.ts";
import { shutdownBoth } from "../ffi/socket.ts";
import { yieldToEventLoop } from "../ffi/yield.ts";
import type { StoreWaiter } from "./store.ts";

/** Keep waiting synchronously this long after the last ready fd. */
const HOT_MS = 1;
/** While hot, the event loop gets a turn at least this often. */
const SLICE_MS = 1;
/** Microtask rounds without socket activity that count as settled. */
const QUIET_ROUNDS = 4;
/** Most rounds spent settling before waiting anyway. */
const MAX_SETTLE_ROUNDS = 64;

/** An fd the reactor polls, and what to call when it is ready. */
export interface Watcher {
  /** The file descriptor. */
  readonly fd: number;
  /** Called with the fd's `revents` when it is ready (any bit). */
  ready(revents: number): void;
}

/**
 * The loop that waits on watched fds and dispatches readiness.
 *
 * @example
 * ```ts
 * const reactor = Reactor.shared();
 * reactor.want({ fd: 0, ready: (revents) => console.log(revents) }, 0x1);
 * ```
 */
export class Reactor implements StoreWaiter {
  static #shared: Reactor | null = null;
  readonly #interest = new Map<number, { watcher: Watcher; events: number }>();
  readonly #set = new PollSet();
  #wake = -1;
  #waitingAsync = false;
  #deferredCloses: number[] = [];
  #running = false;
  #hotUntil = 0;
  #turnedAt = 0;
  #driver: (() => void) | null = null;
  /** Bumped by every socket read, write or close: handlers are still at work while it moves. */
  activity = 0;
  /** See {@linkcode StoreWaiter.asleep}. */
  asleep = false;
  /**
   * How long the hot loop looks for the next message before it sleeps in
   * poll (a peer daemon sets it from `--busy-poll-us`).
   */
  spinMs = 0.05;

  /** The process's reactor (created on first use). */
  static shared(): Reactor {
    return Reactor.#shared ??= new Reactor();
  }

  /** Polls `watcher.fd` for `events` from now on (0: not at all). */
  want(watcher: Watcher, events: number): void {
    const had = this.#interest.get(watcher.fd);
    if (events === 0) this.#interest.delete(watcher.fd);
    else if (had && had.watcher === watcher) had.events = events;
    else this.#interest.set(watcher.fd, { watcher, events });
    // Only a new fd or a new event matters to a sleeping wait; dropping one
    // can wait, unless nothing is left to wait for (the wait must end).
    if ((events & ~(had?.events ?? 0)) !== 0 || this.#interest.size === 0) this.#changed();
  }

  /**
   * Stops watching `fd` and closes it, once no poll is looking at it (a
   * number closed under a running `poll` could be reused by the next open).
   */
  close(fd: number): void {
    this.#interest.delete(fd);
    shutdownBoth(fd);
    if (this.#waitingAsync || this.asleep) {
      this.#deferredCloses.push(fd);
      this.#changed();
    } else {
      closeFd(fd);
    }
  }

  /** See {@linkcode StoreWaiter.drive}. */
  drive(wake: () => void): void {
    this.#driver = wake;
    if (this.#waitingAsync) eventfdSignal(this.#wake);
  }

  /** See {@linkcode StoreWaiter.release}. */
  release(): void {
    this.#driver = null;
    this.asleep = false;
    this.#closeDeferred();
    this.#changed();
  }

  /** See {@linkcode StoreWaiter.addTo}. */
  addTo(set: PollSet): () => boolean {
    if (!this.asleep) this.#closeDeferred();
    const first = set.size;
    const watchers: Watcher[] = [];
    for (const { watcher, events } of this.#interest.values()) {
      set.add(watcher.fd, events);
      watchers.push(watcher);
    }
    return () => {
      let any = false;
      watchers.forEach((w, k) => {
        const revents = set.revents(first + k);
        // A watcher removed or replaced by an earlier one's handler is not called.
        if (revents === 0 || this.#interest.get(w.fd)?.watcher !== w) return;
        any = true;
        w.ready(revents);
      });
      return any;
    };
  }

  #changed(): void {
    if (this.#driver !== null) {
      if (this.asleep) this.#driver();
      return;
    }
    if (this.#waitingAsync) eventfdSignal(this.#wake);
    if (!this.#running && this.#interest.size > 0) {
      this.#running = true;
      queueMicrotask(() => void this.#run());
    }
  }

  #closeDeferred(): void {
    for (const fd of this.#deferredCloses.splice(0)) closeFd(fd);
  }

  /** Waits on its own while no driver does and there is something to wait for. */
  async #run(): Promise<void> {
    if (this.#wake < 0) this.#wake = eventfd();
    try {
      while (this.#interest.size > 0 && this.#driver === null) {
        await this.#settle();
        if (this.#interest.size === 0 || this.#driver !== null) break;
        this.#set.clear();
        this.#set.add(this.#wake, POLL.IN);
        const dispatch = this.addTo(this.#set);
        const r = await this.#wait();
        if (r <= 0) continue;
        if (this.#set.revents(0) !== 0) eventfdDrain(this.#wake);
        if (dispatch()) this.#hotUntil = performance.now() + HOT_MS;
      }
    } finally {
      this.#running = false;
    }
  }

  async #wait(): Promise<number> {
    const now = performance.now();
    if (now < this.#hotUntil) {
      if (now - this.#turnedAt >= SLICE_MS) {
        await turnEventLoop();
        this.#turnedAt = performance.now();
        return this.#set.waitNow(0);
      }
      // The next message usually comes within microseconds: look for it a
      // little before sleeping (a wake-up from the other CPU costs more),
      // letting continuations run meanwhile: one may send the next request.
      const spinEnd = now + this.spinMs, seen = this.activity;
      while (performance.now() < spinEnd) {
        const r = this.#set.waitNow(0);
        if (r !== 0) return r;
        // Step aside for a runnable thread (the program this serves, another
        // peer on the same machine): the look only uses a CPU nobody wants.
        schedYield();
        await null;
        if (this.activity !== seen) return 0; // something moved: look again
      }
      return this.#set.waitNow(Math.max(1, Math.ceil(this.#hotUntil - now)));
    }
    this.#waitingAsync = true;
    try {
      return await this.#set.waitLater(-1);
    } finally {
      this.#waitingAsync = false;
      this.#closeDeferred();
    }
  }

  /** Lets promise continuations run until sockets have been quiet for a few rounds. */
  async #settle(): Promise<void> {
    let quiet = 0;
    for (let round = 0; round < MAX_SETTLE_ROUNDS && quiet < QUIET_ROUNDS; round++) {
      const seen = this.activity;
      await null;
      quiet = this.activity === seen ? quiet + 1 : 0;
    }
  }
}

/**
 * One event-loop turn (a MessageChannel round, about 10 us; `setTimeout(0)`
 * takes 1-2 ms here), with a timer beside it: a port's message alone does not
 * keep a process alive in every runtime mode, and a lone client may have
 * nothing else pending.
 */
async function turnEventLoop(): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([yieldToEventLoop(), new Promise((r) => timer = setTimeout(r, 5))]);
  clearTimeout(timer);
}
