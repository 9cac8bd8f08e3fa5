/**
 * `--reserve`: the peer keeps this much of its host's memory for the host.
 * It lends no more than the host's available memory beyond the reserve, and
 * when available memory falls under the reserve it asks for slabs back
 * (a partial drain of the shortfall), Infiniswap's answer to a host that
 * wants its memory back.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";

const log = getLogger(["remora", "peer"]);

/** How often the host's available memory is read. */
const POLL_MS = 1000;

/** What a {@linkcode HostReserve} asks of the daemon. */
export interface Reclaimer {
  /** Asks for about `bytes` of slabs back (without lowering the capacity). */
  reclaim(bytes: number, shrink: boolean): void;
  /** Bytes asked back and not yet moved away. */
  readonly reclaimPendingBytes: number;
}

/**
 * `MemAvailable` of a meminfo file, in bytes.
 *
 * @example
 * ```ts
 * memAvailable("/proc/meminfo"); // e.g. 24978128896
 * ```
 */
export function memAvailable(path: string): number {
  const m = /^MemAvailable:\s+(\d+)\s+kB$/m.exec(Deno.readTextFileSync(path));
  if (!m) throw new Error(`${path} has no MemAvailable line`);
  return Number(m[1]) * 1024;
}

/**
 * Watches the host's available memory against a reserve.
 *
 * @example
 * ```ts
 * const reserve = new HostReserve(2 ** 30, "/proc/meminfo");
 * reserve.headroom(); // bytes the peer may still lend on top of what it lent
 * reserve.watch(server); // polls every second until stop()
 * ```
 */
export class HostReserve {
  readonly #reserveBytes: number;
  readonly #meminfo: string;
  #available: number;
  /**
   * Bytes asked back since available memory last stood above the reserve:
   * freed slabs reach the host's figure only after the garbage collector,
   * so a shortfall already asked for is not asked for again.
   */
  #askedBack = 0;
  #timer: ReturnType<typeof setInterval> | null = null;

  /** Reads the meminfo file once: a bad path fails here, at start. */
  constructor(reserveBytes: number, meminfo: string) {
    this.#reserveBytes = reserveBytes;
    this.#meminfo = meminfo;
    this.#available = memAvailable(meminfo);
  }

  /** Available memory beyond the reserve at the last reading (never negative). */
  headroom(): number {
    return Math.max(0, this.#available - this.#reserveBytes);
  }

  /** Polls until {@linkcode stop}, asking `daemon` for the shortfall back. */
  watch(daemon: Reclaimer): void {
    this.#timer = setInterval(() => this.#check(daemon), POLL_MS);
  }

  /** Stops polling. */
  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #check(daemon: Reclaimer): void {
    try {
      this.#available = memAvailable(this.#meminfo);
    } catch (e) {
      log.warn("cannot read {path}: {error}", { path: this.#meminfo, error: (e as Error).message });
      return;
    }
    const shortfall = this.#reserveBytes - this.#available;
    if (shortfall <= 0) {
      this.#askedBack = 0;
      return;
    }
    const more = shortfall - this.#askedBack;
    // One partial drain at a time, and only for a shortfall not yet asked for.
    if (more <= 0 || daemon.reclaimPendingBytes > 0) return;
    this.#askedBack += more;
    log.warn(
      "host memory available {available} bytes is under --reserve {reserve}: asking for {bytes} bytes back",
      {
        available: this.#available,
        reserve: this.#reserveBytes,
        bytes: more,
      },
    );
    daemon.reclaim(more, false);
  }
}
