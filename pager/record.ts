/**
 * What a new pager needs to take over a target whose pager was killed: a
 * file on tmpfs, named after the target's pid and start time, mode 0600,
 * written in place through a shared mapping (so a kill loses nothing written
 * before it) and locked by the living pager that owns it.
 *
 * It holds a header (the pager's pid; the target's userfaultfd number in the
 * target's own fd table, its scratch and trampoline addresses; the registers
 * of a thread the pager was running a system call in) and an index: for each
 * store key, the address of the page whose copy it holds.
 *
 * The order of writes that makes a kill at any moment safe, for an evicted
 * page: the store confirms the copy, then {@linkcode SessionRecord.stored}
 * writes the index entry, then the page is dropped in the target. A key is
 * cleared from the index ({@linkcode SessionRecord.released}) when the page
 * it held is freed, unmapped or its key released, before the store forgets
 * it. So at recovery a page that is not present and has an index entry is in
 * the store; a present one is resident (its entry is its slot, kept); no
 * entry and not present means it was never evicted or was freed: zeros.
 *
 * @module
 */

import { MappedFile, removeFile } from "../ffi/mapped_file.ts";
import { listDirectory, readSmallFile } from "../ffi/libc.ts";
import type { RegisterKeeper } from "../ffi/ptrace.ts";

/** Where records and the embedded store's page files live unless `REMORA_STATE_DIR` says otherwise. */
export const DEFAULT_STATE_DIR = "/dev/shm";
const CHUNK_BYTES = 1 << 20;
const CHUNK_WORDS = CHUNK_BYTES / 8;
/** Header words (a page); the index follows, one word per key. */
const HEADER_WORDS = 512;
const MAGIC = 0x72656d6f7261; // "remora"
const VERSION = 1;
const H = {
  magic: 0,
  version: 1,
  pagerPid: 2,
  targetPid: 3,
  startTime: 4,
  remoteUffd: 5,
  scratch: 6,
  trampoline: 7,
  vdsoSyscall: 8,
  injectingTid: 9,
  store: 10,
  children: 11,
  dropRuns: 12,
  namespaceBytes: 13,
  keyCeiling: 14,
} as const;
/** The store's key namespace, UTF-8, from this byte of the header. */
const NAMESPACE_AT = 1024;
const NAMESPACE_MAX = 1024;
/**
 * The target's own CPU affinity while a pager has narrowed it (see
 * colocate.ts): a mask of 1,024 CPUs in 16 64-bit words from this word of the
 * header; all zero when it is not narrowed.
 */
const AFFINITY_AT = 64;
const AFFINITY_WORDS = 16;
/** Saved registers: 27 64-bit words from this word of the header. */
const REGS_AT = 32;
const REGS_WORDS = 27;

/** A record is there but cannot be read: what it held cannot be recovered. */
export class DamagedRecordError extends Error {
  /** Builds the error; `message` names the file and what is wrong with it. */
  constructor(message: string) {
    super(message);
    this.name = "DamagedRecordError";
  }
}

/**
 * How the store a record's pages went to can be found again: the embedded
 * store's page file; servers that keep keys under the pager's namespace
 * (memcached, Redis) or a session name (peers); or not at all yet (RDMA).
 */
export const StoreKind = { OTHER: 0, EMBEDDED: 1, KEYED: 2 } as const;

/** The target's layout a new pager needs (all addresses in the target). */
export interface TargetLayout {
  remoteUffd: number;
  scratch: number;
  trampoline: number;
  vdsoSyscall: number;
}

/**
 * One target's record. The living pager writes it; a new one reads it.
 *
 * @example
 * ```ts
 * const rec = SessionRecord.create("/dev/shm", 1234, StoreKind.EMBEDDED);
 * rec.stored(7, 0x7f0000001000); // key 7 holds that page
 * rec.released(7);
 * rec.remove();
 * ```
 */
export class SessionRecord implements RegisterKeeper {
  /** The file's path. */
  readonly path: string;
  readonly #file: MappedFile;
  #header: Float64Array;
  #regs: BigInt64Array;
  #affinity: BigUint64Array;
  #index: (Float64Array | undefined)[] = [];
  /** Chunks the file has (only this pager grows it). */
  #chunks: number;

  private constructor(file: MappedFile) {
    this.#file = file;
    this.path = file.path;
    this.#chunks = Math.max(1, file.chunks);
    const head = file.chunk(0);
    this.#header = new Float64Array(head.buffer, head.byteOffset, HEADER_WORDS);
    this.#regs = new BigInt64Array(head.buffer, head.byteOffset + REGS_AT * 8, REGS_WORDS);
    this.#affinity = new BigUint64Array(
      head.buffer,
      head.byteOffset + AFFINITY_AT * 8,
      AFFINITY_WORDS,
    );
  }

  /** Makes the record of `pid` in `dir` (it must not exist) and locks it. */
  static create(dir: string, pid: number, store: number): SessionRecord {
    const path = recordPath(dir, pid);
    if (path === null) throw new Error(`pid ${pid} exited while attaching`);
    const rec = new SessionRecord(MappedFile.create(path, CHUNK_BYTES));
    const h = rec.#header;
    h[H.version] = VERSION;
    h[H.pagerPid] = Deno.pid;
    h[H.targetPid] = pid;
    h[H.startTime] = startTime(pid) ?? 0;
    h[H.store] = store;
    h[H.magic] = MAGIC;
    return rec;
  }

  /**
   * The record of `pid` in `dir`, or null if there is none. Throws with one
   * line if a living pager holds it or it is not a record.
   */
  static open(dir: string, pid: number): SessionRecord | null {
    const path = recordPath(dir, pid);
    if (path === null) return null;
    const file = MappedFile.open(path, CHUNK_BYTES);
    if (file === null) return null;
    if (file.size < CHUNK_BYTES) {
      file.close();
      throw new DamagedRecordError(`${path} is damaged (${file.size} bytes, too short)`);
    }
    const rec = new SessionRecord(file);
    const h = rec.#header;
    if (h[H.magic] !== MAGIC || h[H.version] !== VERSION) {
      file.close();
      throw new DamagedRecordError(`${path} is damaged (not a remora record of this version)`);
    }
    if (!file.tryLock()) {
      const holder = h[H.pagerPid]; // read before the unmap: a view of it would fault
      file.close();
      throw new Error(
        `pid ${pid} is already under another userfaultfd: remora pager pid ${holder} is paging it`,
      );
    }
    h[H.pagerPid] = Deno.pid;
    return rec;
  }

  /**
   * The store kind and namespace of `pid`'s record, read without taking it
   * over (its lock is not taken), or null if there is none or it is unreadable:
   * what a recovering pager must open its store with.
   */
  static peek(dir: string, pid: number): { store: number; namespace: string } | null {
    const path = recordPath(dir, pid);
    const file = path === null ? null : MappedFile.open(path, CHUNK_BYTES);
    if (file === null) return null;
    try {
      if (file.size < CHUNK_BYTES) return null;
      const rec = new SessionRecord(file);
      const h = rec.#header;
      if (h[H.magic] !== MAGIC || h[H.version] !== VERSION) return null;
      return { store: h[H.store], namespace: rec.namespace };
    } finally {
      file.close();
    }
  }

  /** The store's key namespace on shared servers ("" if none was recorded). */
  get namespace(): string {
    const n = Math.min(this.#header[H.namespaceBytes], NAMESPACE_MAX);
    const bytes = new Uint8Array(this.#header.buffer, this.#header.byteOffset + NAMESPACE_AT, n);
    return new TextDecoder().decode(bytes);
  }

  set namespace(ns: string) {
    const bytes = new TextEncoder().encode(ns);
    if (bytes.length > NAMESPACE_MAX) {
      throw new Error(`namespace of ${bytes.length} bytes is too long to record`);
    }
    new Uint8Array(this.#header.buffer, this.#header.byteOffset + NAMESPACE_AT, bytes.length).set(
      bytes,
    );
    this.#header[H.namespaceBytes] = bytes.length;
  }

  /** The store the pages went to ({@linkcode StoreKind}). */
  get store(): number {
    return this.#header[H.store];
  }

  set store(kind: number) {
    this.#header[H.store] = kind;
  }

  /** Forked children the pager was also paging when it stopped writing. */
  get children(): number {
    return this.#header[H.children];
  }

  set children(n: number) {
    this.#header[H.children] = n;
  }

  /** The target's layout as the dead pager left it. */
  get layout(): TargetLayout {
    const h = this.#header;
    return {
      remoteUffd: h[H.remoteUffd],
      scratch: h[H.scratch],
      trampoline: h[H.trampoline],
      vdsoSyscall: h[H.vdsoSyscall],
    };
  }

  set layout(l: TargetLayout) {
    const h = this.#header;
    h[H.remoteUffd] = l.remoteUffd;
    h[H.scratch] = l.scratch;
    h[H.trampoline] = l.trampoline;
    h[H.vdsoSyscall] = l.vdsoSyscall;
  }

  /**
   * The target's own CPUs while the pager has narrowed them to one (null: not
   * narrowed). Set before the narrowing, cleared once they are given back: a
   * pager that takes over gives them back if the dead one could not.
   */
  get ownAffinity(): BigUint64Array | null {
    return this.#affinity.some((w) => w !== 0n) ? this.#affinity.slice() : null;
  }

  set ownAffinity(mask: BigUint64Array | null) {
    this.#affinity.fill(0n);
    if (mask !== null) this.#affinity.set(mask.subarray(0, AFFINITY_WORDS));
  }

  /** See {@linkcode RegisterKeeper.keep}: before the pager changes them. */
  keep(tid: number, regs: BigInt64Array): void {
    this.#regs.set(regs);
    this.#header[H.injectingTid] = tid;
  }

  /** See {@linkcode RegisterKeeper.done}: the thread has its own registers back. */
  done(): void {
    this.#header[H.injectingTid] = 0;
  }

  /**
   * Runs staged in the target's scratch area for a drop under way (0: none).
   * Set before the injected drop, cleared after it: a new pager matches that
   * drop's REMOVE events as ours and takes away its guard markers.
   */
  get dropRuns(): number {
    return this.#header[H.dropRuns];
  }

  set dropRuns(n: number) {
    this.#header[H.dropRuns] = n;
  }

  /** The thread a killed pager had borrowed, and its own registers; null if none. */
  borrowed(): { tid: number; regs: BigInt64Array } | null {
    const tid = this.#header[H.injectingTid];
    return tid === 0 ? null : { tid, regs: this.#regs.slice() };
  }

  /**
   * Key `key` is about to be written: a kill before its index entry leaves a
   * copy nobody refers to, which the next pager deletes (every key below the
   * ceiling without an entry).
   */
  noteKey(key: number): void {
    if (key >= this.#header[H.keyCeiling]) this.#header[H.keyCeiling] = key + 1;
  }

  /** One past the highest key ever written (see {@linkcode noteKey}). */
  get keyCeiling(): number {
    return this.#header[H.keyCeiling];
  }

  /** Key `key` holds a confirmed copy of the page at `addr`: after the store's confirmation, before the drop. */
  stored(key: number, addr: number): void {
    this.#slot(key)[(HEADER_WORDS + key) % CHUNK_WORDS] = addr;
  }

  /** Key `key` holds nothing any more (its page was freed or unmapped, or it was released). */
  released(key: number): void {
    const w = HEADER_WORDS + key;
    const c = Math.floor(w / CHUNK_WORDS);
    if (c < this.#chunks) this.#words(c)[w % CHUNK_WORDS] = 0; // else never written
  }

  /** Every index entry: `visit(key, address)`. */
  entries(visit: (key: number, addr: number) => void): void {
    for (let c = 0; c < this.#chunks; c++) {
      const words = this.#words(c);
      for (let w = c === 0 ? HEADER_WORDS : 0; w < CHUNK_WORDS; w++) {
        if (words[w] !== 0) visit(c * CHUNK_WORDS + w - HEADER_WORDS, words[w]);
      }
    }
  }

  /** Closes the record and deletes it (detach, target gone). */
  remove(): void {
    this.#detachViews();
    this.#file.remove();
  }

  /** Closes it, leaving the file for a later pager. */
  close(): void {
    this.#detachViews();
    this.#file.close();
  }

  /** Points every view at plain memory before the unmap: a late write lands nowhere, not in a fault. */
  #detachViews(): void {
    this.#header = new Float64Array(HEADER_WORDS);
    this.#regs = new BigInt64Array(REGS_WORDS);
    this.#index = [];
    this.#chunks = 0;
    this.#closed = true;
  }

  #closed = false;

  #slot(key: number): Float64Array {
    return this.#words(Math.floor((HEADER_WORDS + key) / CHUNK_WORDS));
  }

  #words(c: number): Float64Array {
    let words = this.#index[c];
    if (words === undefined && this.#closed) {
      words = this.#index[c] = new Float64Array(CHUNK_WORDS); // written after close: lost on purpose
    } else if (words === undefined) {
      const bytes = this.#file.chunk(c);
      words = this.#index[c] = new Float64Array(bytes.buffer, bytes.byteOffset, CHUNK_WORDS);
      this.#chunks = Math.max(this.#chunks, c + 1);
    }
    return words;
  }
}

/** The directory for records and page files: `REMORA_STATE_DIR`, else {@linkcode DEFAULT_STATE_DIR}. */
export function stateDir(): string {
  try {
    return Deno.env.get("REMORA_STATE_DIR") ?? DEFAULT_STATE_DIR;
  } catch {
    return DEFAULT_STATE_DIR; // no --allow-env: the default
  }
}

/** `dir/remora-PID-STARTTIME.state`, or null if `pid` does not exist. */
export function recordPath(dir: string, pid: number): string | null {
  const start = startTime(pid);
  return start === null ? null : `${dir}/remora-${pid}-${start}.state`;
}

/** The page file of the embedded store beside `record`. */
export function pagesPathOf(record: string): string {
  return record.replace(/\.state$/, ".pages");
}

/**
 * Deletes the records (and page files) in `dir` whose target is gone: its pid
 * no longer exists, or belongs to a process started at another time. A
 * record a living pager holds is never one of them (its target lives).
 * Returns the paths deleted.
 */
export function removeOrphans(dir: string): string[] {
  const gone: string[] = [];
  // Page files too: one whose record went first (a pager killed between the
  // two deletions) would otherwise hold its memory until the next boot.
  for (const name of listDirectory(dir)) {
    const m = /^remora-(\d+)-(\d+)\.(state|pages)$/.exec(name);
    if (m === null) continue;
    if (startTime(Number(m[1])) === Number(m[2])) continue;
    const path = `${dir}/${name}`;
    removeFile(path);
    gone.push(path);
  }
  return gone;
}

/** When `pid` started, in clock ticks since boot (/proc/PID/stat field 22), or null. */
export function startTime(pid: number): number | null {
  const stat = readSmallFile(`/proc/${pid}/stat`);
  if (stat === null) return null;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const v = Number(fields[19]);
  return Number.isFinite(v) ? v : null;
}
