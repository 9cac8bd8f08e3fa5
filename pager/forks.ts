/**
 * Fork adoption: when a target forks, its child shares the parent's page
 * state as of the fork, and gets its own userfaultfd (the FORK event's fd).
 * The child is found, attached and paged like its parent.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { readSmallFile } from "../ffi/libc.ts";
import { listThreads } from "../ffi/proc.ts";
import { uffdWriteProtect } from "../ffi/uffd.ts";
import { HAS_COPY, Kind, NO_SLOT, PAGE, type Region } from "./page_table.ts";
import { errorText, type PagerHooks, type PagerState, sleep } from "./state.ts";
import { Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/** A fork seen but not yet adopted. */
interface PendingFork {
  parent: Target;
  uffd: number;
  /** The parent's regions as of the fork, with a reference on every key the child may need. */
  snapshot: Region[];
}

/**
 * Adopts the children of forking targets.
 *
 * @example
 * ```ts
 * declare const forks: Forks, parent: Target, childUffd: number;
 * forks.forked(parent, childUffd); // in the FORK event's handler: snapshot now
 * forks.adoptPending();            // later, from the loop: find and attach the child
 * ```
 */
export class Forks {
  readonly #s: PagerState;
  readonly #hooks: PagerHooks;
  readonly #pending: PendingFork[] = [];
  #adopting = false;

  /** Fork adoption over the shared state. */
  constructor(state: PagerState, hooks: PagerHooks) {
    this.#s = state;
    this.#hooks = hooks;
  }

  /** Forks seen and not yet adopted. */
  get pending(): number {
    return this.#pending.length;
  }

  /** An adoption is under way or waiting: it needs the event loop to turn. */
  get busy(): boolean {
    return this.#adopting || this.#pending.length > 0;
  }

  /**
   * The target forked. Its child's page tables are a copy of the parent's as
   * of now, so snapshot the parent's state now, with a reference on every
   * stored key the child may need.
   */
  forked(parent: Target, uffd: number): void {
    // Shared-file regions are MADV_DONTFORK (only those are paged): the child has none.
    const snapshot = parent.table.regions.filter((r) => r.file === null).map((r) =>
      r.slice(0, r.pages)
    );
    for (const r of snapshot) {
      for (let i = 0; i < r.pages; i++) {
        if (r.state[i] & HAS_COPY && r.slot[i] !== NO_SLOT) this.#s.slots.retain(r.slot[i]);
        else r.slot[i] = NO_SLOT;
      }
    }
    this.#pending.push({ parent, uffd, snapshot });
  }

  /** Finds and attaches the children of the forks seen, one at a time, in the background. */
  adoptPending(): void {
    if (this.#adopting) return;
    this.#adopting = true;
    (async () => {
      while (this.#pending.length > 0 && this.#s.end === null) {
        await this.#adopt(this.#pending.shift()!);
      }
    })().finally(() => this.#adopting = false);
  }

  async #adopt({ parent, uffd, snapshot }: PendingFork): Promise<void> {
    try {
      const pid = await this.#findChild(parent);
      if (pid < 0) throw new Error("the forked child never appeared");
      const id = this.#s.nextTargetId();
      const child = await Target.adopt(id, pid, uffd, parent, this.#hooks.pump);
      this.#install(child, snapshot);
      log.info("pid {parent} forked {child}: paging the child too", {
        parent: parent.pid,
        child: pid,
      });
    } catch (e) {
      for (const r of snapshot) {
        for (let i = 0; i < r.pages; i++) this.#s.slots.release(r.slot[i]);
      }
      log.error("could not adopt a child of pid {pid}: {err}", {
        pid: parent.pid,
        err: errorText(e),
      });
    }
  }

  async #findChild(parent: Target): Promise<number> {
    for (let tries = 0; tries < 2000; tries++) {
      for (const tid of listThreads(parent.pid)) {
        const text = readSmallFile(`/proc/${parent.pid}/task/${tid}/children`) ?? "";
        for (const word of text.split(/\s+/)) {
          const pid = parseInt(word, 10);
          if (pid > 0 && !this.#s.knownPids.has(pid)) {
            this.#s.knownPids.add(pid);
            return pid;
          }
        }
      }
      await this.#hooks.pump.turn();
      await sleep(1);
    }
    return -1;
  }

  /** The child's pages: present ones are its own now, absent ones are in the store or empty. */
  #install(child: Target, snapshot: Region[]): void {
    const { book, slots } = this.#s;
    const present = new Uint8Array(65536);
    for (const r of snapshot) {
      // The child inherited write-protection bits; it starts with nothing clean.
      uffdWriteProtect(child.uffd, r.start, r.end - r.start, false);
      for (let from = 0; from < r.pages; from += present.length) {
        const n = Math.min(present.length, r.pages - from);
        child.presentPages(r.start + from * PAGE, n, present);
        for (let k = 0; k < n; k++) {
          const i = from + k;
          if (present[k]) {
            slots.release(r.slot[i]);
            r.slot[i] = NO_SLOT;
            book.foundResident(r, i);
          } else if (r.slot[i] !== NO_SLOT) {
            book.foundRemote(r, i);
          } else {
            book.foundEmpty(r, i);
          }
        }
      }
      child.table.add(r);
    }
    this.#s.targets.set(child.id, child);
    this.#s.noteFamily();
    for (const r of child.table.regions) {
      for (let i = 0; i < r.pages; i++) {
        if (r.state[i] === Kind.RESIDENT) this.#s.admit(child, r, i);
      }
    }
    this.#s.wakeLoop();
  }
}
