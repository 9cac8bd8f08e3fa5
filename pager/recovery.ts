/**
 * Taking over a target whose pager was killed: its page table rebuilt from
 * what the kernel shows (present pages, read from pagemap when the ranges
 * are registered again) and what the dead pager's record says (which key
 * holds which absent page).
 *
 * @module
 */

import { MappedFile } from "../ffi/mapped_file.ts";
import { Kind, KIND_MASK, NO_SLOT, PAGE } from "./page_table.ts";
import { pagesPathOf, type SessionRecord } from "./record.ts";
import type { PagerState } from "./state.ts";
import { AttachError, type Target } from "./target.ts";

/**
 * A killed pager's target cannot be taken over without feeding it wrong data
 * (its page file is gone or damaged): nothing was touched, the target stays
 * blocked, and the CLI exits 3 as for lost pages.
 */
export class UnrecoverableError extends AttachError {
  /** Builds the error; `message` is one line meant for the user. */
  constructor(message: string) {
    super(message);
    this.name = "UnrecoverableError";
  }
}

/**
 * Checks, before anything is touched, that the embedded store's page file
 * of `record` holds every page the record says it does.
 *
 * @example
 * ```ts
 * declare const record: SessionRecord;
 * checkPageFile(record, 1234); // throws UnrecoverableError if not
 * ```
 */
export function checkPageFile(record: SessionRecord, pid: number): void {
  let pages = 0, highest = -1;
  record.entries((key) => {
    pages++;
    highest = Math.max(highest, key);
  });
  const path = pagesPathOf(record.path);
  const file = MappedFile.open(path, PAGE);
  const size = file?.size ?? -1;
  file?.close();
  if (file === null || size < (highest + 1) * PAGE) {
    throw new UnrecoverableError(
      `cannot take over pid ${pid}: ${path} is ${file === null ? "missing" : "too short"}, ` +
        `so ${pages} of its pages cannot be recovered; it stays blocked (never fed zeros)`,
    );
  }
}

/** What a recovery found, for its one line. */
export interface Recovered {
  /** Pages present in the target. */
  resident: number;
  /** Pages only the store holds. */
  remote: number;
  /** Stored copies no page needs any more (unmapped, or present again), freed. */
  freed: number;
  /** The record it came from. */
  from: string;
}

/**
 * Gives the registered table of `t` the keys the record names: an absent
 * page with an entry is REMOTE with that key, a present one keeps its key as
 * its slot (RESIDENT, its copy no longer current), and an entry whose page
 * is no longer registered is freed. Reopens the store's page file.
 *
 * @example
 * ```ts
 * declare const s: PagerState, t: Target, record: SessionRecord;
 * const found = adoptRecordedKeys(s, t, record);
 * console.log(`${found.remote} pages in the store`);
 * ```
 */
export function adoptRecordedKeys(s: PagerState, t: Target, record: SessionRecord): Recovered {
  const keys: number[] = [], addrs: number[] = [];
  record.entries((key, addr) => {
    keys.push(key);
    addrs.push(addr);
  });
  s.store.persistAt!(pagesPathOf(record.path), Uint32Array.from(keys));
  let freed = 0;
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k], addr = addrs[k];
    s.slots.claim(key);
    const r = t.table.find(addr);
    const i = r === null ? 0 : (addr - r.start) / PAGE;
    if (r === null || r.slot[i] !== NO_SLOT || addr % PAGE !== 0) {
      record.released(key);
      s.slots.release(key); // deleted from the store with the next batch
      freed++;
      continue;
    }
    r.slot[i] = key;
    if ((r.state[i] & KIND_MASK) === Kind.EMPTY) s.book.foundRemote(r, i);
  }
  s.slots.freeGaps();
  return { resident: s.book.resident, remote: s.book.remote, freed, from: record.path };
}
