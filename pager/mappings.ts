/**
 * Which mappings of a target are paged: private anonymous memory, or guest
 * RAM in a shared file (memfd, tmpfs) that only this process maps. New
 * mappings raise no event, so the address-space size is polled (one small
 * read of /proc/PID/statm) and the maps are read again when it changed.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { Errno, errnoName, fstatfsType, HUGETLBFS_MAGIC, TMPFS_MAGIC } from "../ffi/libc.ts";
import {
  dontForkMappings,
  lockedMappings,
  type Mapping,
  otherProcessesMapping,
  readMaps,
} from "../ffi/proc.ts";
import { REGISTER_MODE_MISSING, REGISTER_MODE_WP, uffdRegister } from "../ffi/uffd.ts";
import { Kind, PAGE, Region, type SharedFile } from "./page_table.ts";
import { errorText, hex, type PagerState } from "./state.ts";
import { AttachError, presentInFile, type Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

// The statm poll: every 10 ms while the targets fault, backing off to 100 ms.
const RESCAN_MIN_MS = 10;
const RESCAN_MAX_MS = 100;
/**
 * A pageable shared mapping at least this large is taken for a virtual
 * machine's guest RAM: the process's private memory is then left alone.
 */
const GUEST_RAM_MIN_BYTES = 16 << 20;

/** A mapping to register, with the file behind it for guest RAM. */
interface Pageable {
  m: Mapping;
  file: SharedFile | null;
}

/**
 * Registers the pageable mappings of targets and finds new ones.
 *
 * @example
 * ```ts
 * declare const mappings: Mappings, t: Target;
 * mappings.register(t, true); // at attach: says why each left-out mapping is not paged
 * mappings.start();           // then keep looking for new ones
 * ```
 */
export class Mappings {
  readonly #s: PagerState;
  readonly #onSkip: (line: string) => void;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #delay = RESCAN_MIN_MS;
  #faultsAtLastScan = 0;
  #force = false;
  #stopped = false;

  /** Mapping registration over the shared state; `onSkip` hears why a mapping is left out. */
  constructor(state: PagerState, onSkip: (line: string) => void) {
    this.#s = state;
    this.#onSkip = onSkip;
  }

  /**
   * Registers every pageable mapping of `t` not yet tracked, and counts the
   * pages already present in it as resident. `reportSkips` says why others
   * are left out (at attach).
   */
  register(t: Target, reportSkips: boolean): void {
    const maps = readMaps(t.pid);
    if (maps === null) return;
    const shared = this.#sharedMappings(t, maps, reportSkips);
    if (reportSkips) this.#noticeGuestRam(t, shared);
    const candidates = t.sharedOnly
      ? []
      : maps.filter((m) => isAnonymousWritable(m) && m.start !== t.scratch);
    const fresh = candidates.filter((m) => t.table.gaps(m.start, m.end).length > 0);
    if (fresh.length === 0 && shared.length === 0 && !reportSkips) return;
    const locked = fresh.length > 0 || reportSkips ? lockedMappings(t.pid) : new Set<number>();
    if (reportSkips) this.#reportSkips(t, maps, locked);
    const all: Pageable[] = [
      ...shared,
      ...fresh.filter((m) => !locked.has(m.start)).map((m) => ({ m, file: null })),
    ];
    const present = new Uint8Array(65536);
    for (const p of all) {
      for (const [start, end] of t.table.gaps(p.m.start, p.m.end)) {
        this.#registerRange(t, p, start, end, present);
      }
    }
  }

  /** A large shared mapping is guest RAM: from then on only shared files are paged. */
  #noticeGuestRam(t: Target, shared: Array<{ m: Mapping; file: SharedFile }>): void {
    const ram = shared.filter(({ m }) => m.end - m.start >= GUEST_RAM_MIN_BYTES);
    if (ram.length === 0) return;
    t.sharedOnly = true;
    log.info(
      "pid {pid}: guest RAM {ram} is paged through its shared file (evicted by punching holes); " +
        "the process's private memory is not paged",
      {
        pid: t.pid,
        ram: ram.map(({ m }) => `${m.path} (${(m.end - m.start) >> 20} MiB)`).join(", "),
      },
    );
  }

  #reportSkips(t: Target, maps: Mapping[], locked: Set<number>): void {
    for (const m of maps) {
      if (m.start === t.scratch || m.perms[3] === "s") continue; // shared: reported already
      let why = skipReason(m, locked);
      if (why === null && t.sharedOnly && isAnonymousWritable(m)) {
        why = "private memory of a process whose guest RAM is paged: not paged";
      }
      if (why !== null) {
        this.#onSkip(`${hex(m.start)}-${hex(m.end)} ${m.path || "(anonymous)"}: ${why}`);
      }
    }
  }

  /** Registers `[start, end)` of mapping `p` for missing and write-protect faults. */
  #registerRange(t: Target, p: Pageable, start: number, end: number, present: Uint8Array): void {
    const res = uffdRegister(t.uffd, start, end - start, REGISTER_MODE_MISSING | REGISTER_MODE_WP);
    if (res === -Errno.EBUSY) {
      throw new AttachError(
        `pid ${t.pid} is already under another userfaultfd (EBUSY at ${hex(start)}): ` +
          `another pager or a tool like CRIU owns its memory`,
      );
    }
    if (res < 0) {
      if (p.file !== null) {
        log.warn("registering guest RAM {where} of pid {pid} failed: {err}; not paged", {
          where: `${hex(start)}-${hex(end)} ${p.m.path}`,
          pid: t.pid,
          err: errnoName(-res),
        });
      }
      return; // the mapping changed under us (unmapped, split): the next scan sees the new shape
    }
    const file = p.file === null
      ? null
      : { fd: p.file.fd, offset: p.file.offset + (start - p.m.start) };
    const r = new Region(start, (end - start) / PAGE, file);
    for (let from = 0; from < r.pages; from += present.length) {
      const n = Math.min(present.length, r.pages - from);
      // Shared file: the pages the file holds (mapped here or not), not the page table.
      if (r.file !== null) presentInFile(r.file.fd, r.file.offset + from * PAGE, n, present);
      else t.presentPages(start + from * PAGE, n, present);
      for (let k = 0; k < n; k++) if (present[k]) this.#s.book.foundResident(r, from + k);
    }
    t.table.add(r);
    if (r.file !== null) this.#s.budget.sharedPaging = true;
    for (let i = 0; i < r.pages; i++) {
      if (r.state[i] === Kind.RESIDENT) this.#s.admit(t, r, i);
    }
  }

  /**
   * Shared writable mappings of `t` not yet tracked that can be paged
   * through their file: shmem (memfd, tmpfs, shared anonymous) mapped once,
   * by this process alone. Says why the others are not paged.
   */
  #sharedMappings(
    t: Target,
    maps: Mapping[],
    reportSkips: boolean,
  ): Array<{ m: Mapping; file: SharedFile }> {
    const out: Array<{ m: Mapping; file: SharedFile }> = [];
    let dontFork: Set<number> | null = null;
    for (const m of maps) {
      if (m.perms[1] !== "w" || m.perms[3] !== "s" || m.start === t.scratch) continue;
      if (t.table.gaps(m.start, m.end).length === 0) continue; // tracked already
      const id = `${hex(m.start)}-${hex(m.end)}:${m.dev}:${m.inode}`;
      if (t.sharedSkipped.has(id)) continue;
      const where = `${hex(m.start)}-${hex(m.end)} ${m.path || "(shared)"}`;
      const skip = (why: string, warn = false) => {
        t.sharedSkipped.add(id);
        if (warn) log.warn("pid {pid}: {where}: {why}", { pid: t.pid, where, why });
        if (reportSkips) this.#onSkip(`${where}: ${why}`);
      };
      const fd = t.openShared(m);
      if (fd < 0) {
        skip(`shared mapping whose file cannot be opened (${errnoName(-fd)}): not paged`, true);
        continue;
      }
      dontFork ??= dontForkMappings(t.pid);
      const why = sharedSkipReason(t, m, fd, maps, dontFork);
      if (why !== null) {
        skip(why.text, why.warn);
        continue;
      }
      out.push({ m, file: { fd, offset: m.offset } });
    }
    return out;
  }

  /** Starts looking for new mappings, often while the targets are busy, rarely while idle. */
  start(): void {
    this.#schedule();
  }

  /** Stops looking. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  /** A mapping may have appeared (a fault outside every region, an unmap, a remap): look soon. */
  soon(): void {
    this.#force = true;
    if (this.#delay > RESCAN_MIN_MS && !this.#stopped) {
      this.#delay = RESCAN_MIN_MS;
      clearTimeout(this.#timer);
      this.#schedule();
    }
  }

  #schedule(): void {
    this.#timer = setTimeout(() => {
      const s = this.#s;
      if (this.#stopped || s.end !== null || s.detaching) return;
      this.#scan();
      // A program is most likely to map its memory right after it starts.
      const busy = s.counters.faults !== this.#faultsAtLastScan ||
        performance.now() - s.started < 1000;
      this.#faultsAtLastScan = s.counters.faults;
      this.#delay = busy ? RESCAN_MIN_MS : Math.min(RESCAN_MAX_MS, this.#delay * 2);
      if (s.book.resident > s.budget.pages) s.wakeLoop();
      this.#schedule();
    }, this.#delay);
  }

  #scan(): void {
    const force = this.#force;
    this.#force = false;
    for (const t of this.#s.targets.values()) {
      const size = t.addressSpacePages();
      if (!force && size === t.scannedSize) continue;
      t.scannedSize = size;
      try {
        this.register(t, false);
      } catch (e) {
        log.warn("scan of pid {pid} failed: {err}", { pid: t.pid, err: errorText(e) });
      }
    }
  }
}

/** Why a shared mapping cannot be paged through its file (null if it can). */
function sharedSkipReason(
  t: Target,
  m: Mapping,
  fd: number,
  maps: Mapping[],
  dontFork: Set<number>,
): { text: string; warn: boolean } | null {
  const fs = fstatfsType(fd);
  if (fs === HUGETLBFS_MAGIC) {
    return {
      text: "guest RAM on hugetlbfs is not supported (huge pages cannot be evicted 4 KiB at a " +
        "time): not paged; use memory-backend-memfd without hugetlb, or a file in /dev/shm",
      warn: true,
    };
  }
  if (fs !== TMPFS_MAGIC) {
    return { text: "shared mapping of a file on disk: not paged", warn: false };
  }
  // A child would share the file: its faults and our punches could not be kept apart.
  if (!dontFork.has(m.start)) {
    return {
      text: "shared mapping that a fork would share (not MADV_DONTFORK): not paged",
      warn: false,
    };
  }
  const aliases = maps.filter((o) => o.dev === m.dev && o.inode === m.inode).length;
  if (aliases > 1) {
    return { text: `its file is mapped ${aliases} times in the process: not paged`, warn: true };
  }
  const others = otherProcessesMapping(m.dev, m.inode, t.pid);
  if (others.length > 0) {
    return { text: `its file is also mapped by pid ${others.join(", ")}: not paged`, warn: true };
  }
  return null;
}

function isAnonymousWritable(m: Mapping): boolean {
  return m.perms[1] === "w" && m.perms[3] === "p" && isAnonymousPath(m.path);
}

function isAnonymousPath(path: string): boolean {
  return path === "" || path === "[heap]" || path === "[stack]" || path.startsWith("[anon:") ||
    path.startsWith("[stack:");
}

function skipReason(m: Mapping, locked: Set<number>): string | null {
  if (m.perms[1] !== "w") return null; // code and read-only data: nothing to page
  if (m.path === "[vvar]" || m.path === "[vdso]" || m.path === "[vsyscall]") {
    return "special mapping";
  }
  if (m.perms[3] === "s") return "shared mapping: not paged";
  if (!isAnonymousPath(m.path)) return "file-backed: not paged";
  if (locked.has(m.start)) return "mlocked: not paged";
  return null;
}
