/**
 * What a replica frozen mid-run (SIGSTOP, shorter than the request timeout)
 * adds to single-page latency: the peer bench on loopback and the hosts
 * bench behind delayed links both measure it.
 *
 * @module
 */

import { PAGE_SIZE, type PageStore } from "../../transport/store.ts";
import type { PeerProcess } from "../../testing/peers.ts";
import { keyRange } from "../../testing/pages.ts";

/** How long a peer is stopped: under the 5 s request timeout, so it stays suspect. */
const FREEZE_MS = 3000;

/** p99 deltas while one replica is frozen. */
export interface FrozenFigures {
  /** Get p99 while frozen minus before, us. */
  getP99Us: number;
  /** Put p99 while frozen, and before, us. */
  putP99Us: number;
  putBaseP99Us: number;
  seconds: number;
}

/** p99 of `samples` (microseconds). */
function p99(samples: number[]): number {
  const sorted = Float64Array.from(samples).sort();
  return Math.round(sorted[Math.floor(sorted.length * 0.99)]);
}

/** Single-page gets and puts one at a time for `ms`, alternating; their latencies in us. */
async function singles(
  store: PageStore,
  ms: number,
  pages: number,
): Promise<{ get: number[]; put: number[] }> {
  const keys = keyRange(0, pages);
  const one = new Uint8Array(PAGE_SIZE);
  const out = { get: [] as number[], put: [] as number[] };
  const end = performance.now() + ms;
  for (let i = 0; performance.now() < end; i++) {
    const k = (i * 104729) % pages;
    let t = performance.now();
    await store.get(keys.subarray(k, k + 1), one);
    out.get.push((performance.now() - t) * 1000);
    t = performance.now();
    await store.put(keys.subarray(k, k + 1), one);
    out.put.push((performance.now() - t) * 1000);
  }
  return out;
}

/**
 * A replica frozen mid-run: what it adds to single-page p99 while it is
 * stopped, against the same loop just before (hedged reads, writes that
 * complete on the live replica). Keys 0 to `pages` must be stored.
 *
 * @example
 * ```ts ignore
 * const f = await frozenReplica(store, peers[0], 4096);
 * ```
 */
export async function frozenReplica(
  store: PageStore,
  peer: PeerProcess,
  pages: number,
): Promise<FrozenFigures> {
  const base = await singles(store, FREEZE_MS, pages);
  peer.signal("SIGSTOP");
  let frozen;
  try {
    frozen = await singles(store, FREEZE_MS, pages);
  } finally {
    peer.signal("SIGCONT");
  }
  return {
    getP99Us: p99(frozen.get) - p99(base.get),
    putP99Us: p99(frozen.put),
    putBaseP99Us: p99(base.put),
    seconds: FREEZE_MS / 1000,
  };
}
