/**
 * Bringing remote pages back into a target ahead of any fault: all of them
 * on a detach, or those of given keys when the store must give the keys up
 * with nowhere else to keep them (a peer wants its memory back and no other
 * peer has room). The pages come in through the fault service, as a fault's
 * would, so a fault that races them waits for the same fetch.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { FaultService, Fetch } from "./faults.ts";
import { HAS_COPY, Kind, KIND_MASK, NO_SLOT, PAGE, type Region } from "./page_table.ts";
import type { PagerState } from "./state.ts";
import type { Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/** Pages per store request while bringing pages back. */
const BATCH = 256;

/**
 * Fetches the remote pages of `t` that `pick` chooses, `BATCH` at a time,
 * placed writable (plain memory, no stored copy kept current). Returns how
 * many were fetched; stops early if the target exits or the pager ends.
 *
 * @example
 * ```ts ignore
 * await fetchRemote(s, faults, t, () => true); // everything, as a detach does
 * ```
 */
export async function fetchRemote(
  s: PagerState,
  faults: FaultService,
  t: Target,
  pick: (r: Region, i: number) => boolean,
): Promise<number> {
  const before = s.counters.pagesFetched;
  for (const r of t.table.regions) {
    for (let i = 0; i < r.pages;) {
      if (t.exited || s.end !== null) return s.counters.pagesFetched - before;
      const f: Fetch = {
        target: t,
        addrs: [],
        writes: [],
        keys: new Uint32Array(BATCH),
        started: [],
      };
      let n = 0;
      for (; i < r.pages && n < BATCH; i++) {
        if ((r.state[i] & KIND_MASK) !== Kind.REMOTE || !pick(r, i)) continue;
        s.book.beginFetch(r, i);
        f.addrs.push(r.start + i * PAGE);
        f.writes.push(true);
        f.started.push(performance.now());
        s.slots.retain(r.slot[i]);
        f.keys[n++] = r.slot[i];
      }
      if (n === 0) continue;
      f.keys = f.keys.subarray(0, n);
      await faults.start(f);
    }
  }
  return s.counters.pagesFetched - before;
}

/**
 * The store must give up `keys`: their remote pages come home into every
 * target that refers to them, the local budget grows by as many pages (the
 * memory has to live somewhere; `resize` takes it back once peers have room),
 * and every resident page lets go of its key, so the store can delete it.
 * Pages busy meanwhile (being evicted or fetched) keep theirs: the store
 * asks again.
 *
 * @example
 * ```ts ignore
 * store.setPullHome?.((keys) => pullHome(s, faults, keys));
 * ```
 */
export async function pullHome(
  s: PagerState,
  faults: FaultService,
  keys: Uint32Array,
): Promise<void> {
  const wanted = new Set(keys);
  const pick = (r: Region, i: number) => wanted.has(r.slot[i]);
  let remote = 0;
  for (const t of s.targets.values()) {
    for (const r of t.table.regions) {
      for (let i = 0; i < r.pages; i++) {
        if ((r.state[i] & KIND_MASK) === Kind.REMOTE && pick(r, i)) remote++;
      }
    }
  }
  if (remote > 0) {
    s.budget.resize((s.budget.pages + remote) * PAGE);
    log.warn(
      "{n} pages come home from a store that must give them up: the local budget grows to {mib} MiB",
      {
        n: remote,
        mib: (s.budget.pages * PAGE / 1048576).toFixed(1),
      },
    );
  }
  let fetched = 0;
  for (const t of [...s.targets.values()]) fetched += await fetchRemote(s, faults, t, pick);
  s.counters.pagesPulledHome += fetched;
  for (const t of s.targets.values()) letGoOfKeys(s, t, wanted);
  s.wakeLoop();
}

/** Resident pages of `t` holding one of `keys` drop it: their stored copy is no longer theirs. */
function letGoOfKeys(s: PagerState, t: Target, keys: Set<number>): void {
  for (const r of t.table.regions) {
    for (let i = 0; i < r.pages; i++) {
      const key = r.slot[i];
      if (key === NO_SLOT || !keys.has(key) || (r.state[i] & KIND_MASK) !== Kind.RESIDENT) continue;
      if (r.state[i] & HAS_COPY) s.book.copyGivenUp(r, i);
      t.record?.released(key);
      s.slots.release(key);
      r.slot[i] = NO_SLOT;
    }
  }
}
