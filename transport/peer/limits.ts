/**
 * What the peer daemon allows each kind of connection, and how it says no
 * without flooding its own log.
 *
 * Connections that have not authenticated yet are a separate, small pool:
 * they are bounded per client host and in all, and the newest arrival makes
 * room by closing the oldest unauthenticated connection of the host holding
 * the most, so a flood from one host cannot keep another host's clients out,
 * and never touches an authenticated connection.
 *
 * @module
 */

import type { Logger } from "@logtape/logtape";

/** Bounds on connections. */
export interface ConnectionLimits {
  /** Most authenticated connections at once. */
  maxAuthenticated: number;
  /** Most connections still authenticating, over all hosts. */
  maxUnauthenticated: number;
  /** Most connections still authenticating from one host. */
  maxUnauthenticatedPerHost: number;
}

/** A connection as admission sees it. */
export interface Admitted {
  /** The client's address without port. */
  readonly host: string;
}

/** Keeps the count of connections per kind and picks which one makes room. */
export class Admission<T extends Admitted> {
  readonly #limits: ConnectionLimits;
  /** Unauthenticated connections per host, oldest first (a Set keeps insertion order). */
  readonly #pending = new Map<string, Set<T>>();
  #pendingCount = 0;
  #authenticated = 0;

  /** Builds an empty admission with these limits. */
  constructor(limits: ConnectionLimits) {
    this.#limits = limits;
  }

  /** Connections still authenticating. */
  get unauthenticated(): number {
    return this.#pendingCount;
  }

  /** Authenticated connections. */
  get authenticated(): number {
    return this.#authenticated;
  }

  /**
   * Counts a new connection as unauthenticated. Returns the connection that
   * must be closed to make room for it (no longer counted), or null.
   */
  admit(conn: T): T | null {
    let victim: T | null = null;
    const mine = this.#pending.get(conn.host);
    if (mine && mine.size >= this.#limits.maxUnauthenticatedPerHost) {
      victim = oldest(mine);
    } else if (this.#pendingCount >= this.#limits.maxUnauthenticated) {
      victim = oldest(this.#largestHost());
    }
    if (victim) this.#dropPending(victim);
    let set = this.#pending.get(conn.host);
    if (!set) this.#pending.set(conn.host, set = new Set());
    set.add(conn);
    this.#pendingCount++;
    return victim;
  }

  /** Moves an authenticated connection to its own pool; false if that pool is full. */
  promote(conn: T): boolean {
    if (this.#authenticated >= this.#limits.maxAuthenticated) return false;
    this.#dropPending(conn);
    this.#authenticated++;
    return true;
  }

  /** Forgets a connection that closed; `authenticated` says which pool it was in. */
  release(conn: T, authenticated: boolean): void {
    if (authenticated) this.#authenticated--;
    else this.#dropPending(conn);
  }

  #dropPending(conn: T): void {
    const set = this.#pending.get(conn.host);
    if (!set?.delete(conn)) return;
    this.#pendingCount--;
    if (set.size === 0) this.#pending.delete(conn.host);
  }

  #largestHost(): Set<T> {
    let largest: Set<T> | null = null;
    for (const set of this.#pending.values()) {
      if (!largest || set.size > largest.size) largest = set;
    }
    return largest!;
  }
}

function oldest<T>(set: Set<T>): T {
  return set.values().next().value as T;
}

/**
 * Logs the first event of each kind in an interval at once, and the number
 * of further ones in one summary line when the interval ends: a flood of
 * refused connections costs a few lines, not one per connection.
 */
export class RateLimitedLog {
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #kinds = new Map<string, { since: number; more: number; summary: string }>();
  #timer: ReturnType<typeof setTimeout> | null = null;

  /** Logs to `log` at warning level, at most one detailed line per kind per `intervalMs`. */
  constructor(log: Logger, intervalMs = 10_000) {
    this.#log = log;
    this.#intervalMs = intervalMs;
  }

  /**
   * Logs `message` (a logtape template with `props`) unless an event of the
   * same `kind` was logged less than an interval ago; then counts it, and
   * `summary` ("N <summary> in the last S s") reports the count later.
   */
  warn(kind: string, summary: string, message: string, props: Record<string, unknown>): void {
    const now = Date.now();
    const k = this.#kinds.get(kind);
    if (k && now - k.since < this.#intervalMs) {
      k.more++;
      this.#schedule();
      return;
    }
    if (k) this.#report(kind);
    this.#kinds.set(kind, { since: now, more: 0, summary });
    this.#log.warn(message, props);
  }

  /** Reports what is still counted and stops the timer. */
  close(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    for (const kind of [...this.#kinds.keys()]) this.#report(kind);
  }

  #report(kind: string): void {
    const k = this.#kinds.get(kind)!;
    this.#kinds.delete(kind);
    if (k.more === 0) return;
    this.#log.warn("{n} more {what} in the last {s} s", {
      n: k.more,
      what: k.summary,
      s: Math.max(1, Math.round((Date.now() - k.since) / 1000)),
    });
  }

  #schedule(): void {
    if (this.#timer !== null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      const now = Date.now();
      for (const [kind, k] of [...this.#kinds]) {
        if (now - k.since >= this.#intervalMs) this.#report(kind);
      }
      for (const k of this.#kinds.values()) {
        if (k.more > 0) this.#schedule();
      }
    }, this.#intervalMs);
    // A pending summary must not keep a stopping daemon alive.
    Deno.unrefTimer(this.#timer as unknown as number);
  }
}

/** Exponential delays between retries of a failing operation, reset by a success. */
export class Backoff {
  readonly #minMs: number;
  readonly #maxMs: number;
  #ms = 0;

  /** Starts at `minMs`, doubles up to `maxMs`. */
  constructor(minMs = 10, maxMs = 1000) {
    this.#minMs = minMs;
    this.#maxMs = maxMs;
  }

  /** The delay before the next retry. */
  next(): number {
    this.#ms = this.#ms === 0 ? this.#minMs : Math.min(this.#maxMs, this.#ms * 2);
    return this.#ms;
  }

  /** The operation succeeded: the next failure starts at the shortest delay again. */
  reset(): void {
    this.#ms = 0;
  }
}
