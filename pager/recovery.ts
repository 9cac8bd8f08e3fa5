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
import type { PageStore } from "../transport/store.ts";
import { getLogger } from "@logtape/logtape";
import {
  DamagedRecordError,
  pagesPathOf,
  removeOrphans,
  SessionRecord,
  stateDir,
  StoreKind,
} from "./record.ts";
import { errorText, hex } from "./state.ts";
import type { PagerState } from "./state.ts";
import { AttachError, type Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

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

/** A killed pager's index: keys and the addresses of the pages they hold. */
export interface RecordedKeys {
  keys: Uint32Array;
  addrs: Float64Array;
}

/**
 * Opens the store's side of `record` before anything in the target is
 * touched: the embedded store's page file (checked to hold every recorded
 * page), or the keys a memcached or Redis store holds under the same
 * namespace, or the slabs a peer session holds. Throws {@linkcode UnrecoverableError} with one line if that
 * cannot be done without feeding the target wrong data.
 *
 * @example
 * ```ts
 * declare const store: PageStore, record: SessionRecord;
 * const recorded = await reopenStore(store, record, 1234);
 * console.log(`${recorded.keys.length} pages in the store`);
 * ```
 */
export async function reopenStore(
  store: PageStore,
  record: SessionRecord,
  pid: number,
): Promise<RecordedKeys> {
  const keys: number[] = [], addrs: number[] = [];
  record.entries((key, addr) => {
    keys.push(key);
    addrs.push(addr);
  });
  const recorded = { keys: Uint32Array.from(keys), addrs: Float64Array.from(addrs) };
  const cannot = (why: string) =>
    new UnrecoverableError(
      `cannot take over pid ${pid}: ${why}, so ${keys.length} of its pages cannot be recovered; ` +
        `it stays blocked (never fed zeros)`,
    );
  if (record.store === StoreKind.EMBEDDED && store.persistAt !== undefined) {
    const path = pagesPathOf(record.path);
    const highest = keys.reduce((a, b) => Math.max(a, b), -1);
    const file = MappedFile.open(path, PAGE);
    const size = file?.size ?? -1;
    file?.close();
    if (file === null || size < (highest + 1) * PAGE) {
      throw cannot(`${path} is ${file === null ? "missing" : "too short"}`);
    }
    store.persistAt(path, recorded.keys);
    return recorded;
  }
  if (record.store === StoreKind.KEYED && store.resume !== undefined) {
    if (store.namespace !== record.namespace) {
      throw cannot(`its pages are under another namespace than this store's`);
    }
    try {
      await store.resume(recorded.keys);
    } catch (e) {
      throw cannot((e as Error).message);
    }
    return recorded;
  }
  throw cannot(
    record.store === StoreKind.OTHER
      ? "its pages went to a store whose take-over is not supported yet (RDMA)"
      : `it was paged to ${
        record.store === StoreKind.EMBEDDED ? "the embedded store" : "a remote store"
      } and this pager was given ${store.name}: give the same --backend`,
  );
}

/** What a recovery found, for its one line. */
export interface Recovered {
  /** Pages present in the target. */
  resident: number;
  /** Pages only the store holds. */
  remote: number;
  /** Keys no page refers to any more (unmapped, or written but not yet recorded), freed. */
  freed: number;
  /** The record it came from. */
  from: string;
}

/**
 * Gives the registered table of `t` the keys the record names: an absent
 * page with an entry is REMOTE with that key, a present one keeps its key as
 * its slot (RESIDENT, its copy no longer current), and an entry whose page
 * is no longer registered is freed.
 *
 * @example
 * ```ts
 * declare const s: PagerState, t: Target, record: SessionRecord;
 * const found = adoptRecordedKeys(s, t, record, await reopenStore(s.store, record, t.pid));
 * console.log(`${found.remote} pages in the store`);
 * ```
 */
export function adoptRecordedKeys(
  s: PagerState,
  t: Target,
  record: SessionRecord,
  { keys, addrs }: RecordedKeys,
): Recovered {
  let freed = 0;
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k], addr = addrs[k];
    s.slots.claim(key);
    const r = t.table.find(addr);
    const i = r === null ? 0 : (addr - r.start) / PAGE;
    if (r !== null && r.slot[i] !== NO_SLOT) {
      // Never written so (a key is cleared before its page is rekeyed): say so.
      log.warn("pid {pid}: two recorded keys for page {addr}; keeping the first", {
        pid: t.pid,
        addr: hex(addr),
      });
    }
    if (r === null || r.slot[i] !== NO_SLOT || addr % PAGE !== 0) {
      record.released(key);
      s.slots.release(key); // deleted from the store with the next batch
      freed++;
      continue;
    }
    r.slot[i] = key;
    if ((r.state[i] & KIND_MASK) === Kind.EMPTY) s.book.foundRemote(r, i);
  }
  // Keys below the ceiling that no entry names held copies of a kill
  // between a write and its entry, or whose delete had not happened yet:
  // released, they are deleted from the store with the next batch and reused.
  for (let key = 0; key < record.keyCeiling; key++) {
    if (s.slots.refs(key) > 0) continue;
    s.slots.claim(key);
    s.slots.release(key);
    freed++;
  }
  return { resident: s.book.resident, remote: s.book.remote, freed, from: record.path };
}

/**
 * A killed pager's record of `pid`, or null if there is none; removes the
 * records of targets that are gone on the way. Throws {@linkcode AttachError}
 * if a living pager holds it, {@linkcode UnrecoverableError} if it is damaged.
 *
 * @example
 * ```ts
 * const record = openRecord(4242);
 * if (record !== null) console.log(`taking over from ${record.path}`);
 * ```
 */
export function openRecord(pid: number): SessionRecord | null {
  const dir = stateDir();
  try {
    for (const path of removeOrphans(dir)) {
      log.debug("removed {path}: its target is gone", { path });
    }
    return SessionRecord.open(dir, pid);
  } catch (e) {
    if (e instanceof DamagedRecordError) {
      throw new UnrecoverableError(
        `cannot take over pid ${pid}: ${e.message}, so the pages it listed cannot be recovered; ` +
          `it stays blocked (never fed zeros)`,
      );
    }
    throw new AttachError(errorText(e));
  }
}

/**
 * The record of a new target, with the embedded store's pages in a file
 * beside it; null (and a warning) if it cannot be made: then paging goes on,
 * but a new pager could not take over if this one were killed.
 *
 * @example
 * ```ts
 * declare const store: PageStore;
 * const record = newRecord(4242, store); // before the first page is stored
 * ```
 */
export function newRecord(pid: number, store: PageStore): SessionRecord | null {
  let record: SessionRecord | null = null;
  try {
    record = SessionRecord.create(stateDir(), pid, StoreKind.OTHER);
    if (store.persistAt !== undefined) {
      store.persistAt(pagesPathOf(record.path));
      record.store = StoreKind.EMBEDDED;
    } else if (store.resume !== undefined && store.namespace !== undefined) {
      record.namespace = store.namespace;
      record.store = StoreKind.KEYED;
    }
    return record;
  } catch (e) {
    record?.remove();
    log.warn(
      "no recovery record ({err}): if this pager is killed, pid {pid} cannot be taken over",
      {
        err: errorText(e),
        pid,
      },
    );
    return null;
  }
}
