/**
 * Co-location: a one-threaded target and the pager's loop share one CPU.
 *
 * A fault is two wake-ups: the target's fault wakes the pager, the pager's
 * `UFFDIO_COPY` wakes the target. Across two CPUs each one wakes a CPU that
 * went idle, which on a virtual machine whose idle vCPUs halt at once costs
 * tens of microseconds (30 us on average here, more than the pager's own
 * work). On one CPU the same fault is two context switches. So, while the
 * pager has one target and that target one thread, both run on the CPU the
 * target ran on: the target's affinity narrowed to that CPU, and the loop's
 * thread too (only that thread: the pager's helpers stay free to run
 * elsewhere). It ends, and the target gets its own affinity back, as soon as
 * the target has a second thread (for good: it is not narrowed again), a
 * second target is attached (a fork), or the pager detaches.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { cpuAffinity, maskHasCpu, onlyCpu, setCpuAffinity } from "../ffi/libc.ts";
import { childProcesses, listThreads, threadPlacement } from "../ffi/proc.ts";
import { setHelperCpus } from "../ffi/shim.ts";
import type { Target } from "./target.ts";

const log = getLogger(["remora", "pager"]);

/** How often the loop looks whether co-location should begin or end. */
const CHECK_MS = 20;

/**
 * Keeps a one-threaded target and the pager's loop on one CPU.
 *
 * @example
 * ```ts
 * declare const targets: Map<number, Target>;
 * const together = new Colocation(true);
 * together.check(targets, performance.now()); // from the loop, often
 * if (together.active) { /* do not busy-wait: the target wants this CPU *\/ }
 * together.end();                               // at detach
 * ```
 */
export class Colocation {
  readonly #enabled: boolean;
  #target: Target | null = null;
  /** The target's affinity before, given back at the end. */
  #theirs: BigUint64Array | null = null;
  /** The loop thread's affinity before. */
  #ours: BigUint64Array | null = null;
  #nextCheck = 0;
  #cpu = -1;
  #refused = false;
  /**
   * Targets seen with a second thread: never again (a program that starts
   * short-lived threads would otherwise have them born on one CPU each time).
   */
  readonly #threaded = new WeakSet<Target>();

  /** Co-location when `enabled` (the `colocate` option). */
  constructor(enabled: boolean) {
    this.#enabled = enabled;
  }

  /** The target and the loop share a CPU now: the loop must not busy-wait. */
  get active(): boolean {
    return this.#target !== null;
  }

  /** Begins or ends co-location as the targets are now; looks at most every {@linkcode CHECK_MS}. */
  check(targets: Map<number, Target>, now: number): void {
    if (!this.#enabled || this.#refused || now < this.#nextCheck) return;
    this.#nextCheck = now + CHECK_MS;
    const only = targets.size === 1 ? targets.values().next().value! : null;
    const alone = only !== null && !only.exited ? threadPlacement(only.pid, only.pid) : null;
    if (only !== null && alone !== null && alone.threads > 1) this.#threaded.add(only);
    if (this.#target !== null) {
      if (this.#target !== only || alone === null || alone.threads !== 1) this.end();
      return;
    }
    if (only === null || alone === null || alone.threads !== 1 || this.#threaded.has(only)) return;
    this.#begin(only, alone.cpu);
  }

  /**
   * Gives the target (every thread it has now, and the children it forked
   * meanwhile, which inherited the narrow mask) and the loop their own
   * affinity back.
   */
  end(): void {
    const t = this.#target;
    if (t === null) return;
    this.#target = null;
    if (this.#ours !== null) setCpuAffinity(0, this.#ours);
    setHelperCpus(null);
    if (t.exited || this.#theirs === null) return;
    giveBackAffinity(t.pid, this.#theirs, onlyCpu(this.#cpu));
    if (t.record !== null) t.record.ownAffinity = null;
    log.debug("pid {pid}: no longer shares a CPU with the pager", { pid: t.pid });
  }

  /** A fork: co-location ends at the next look, which comes at once. */
  forked(): void {
    this.#nextCheck = 0;
  }

  #begin(t: Target, cpu: number): void {
    const theirs = cpuAffinity(t.pid), ours = cpuAffinity(0);
    if (theirs === null || ours === null || !maskHasCpu(theirs, cpu) || !maskHasCpu(ours, cpu)) {
      return;
    }
    // Recorded first: a pager that takes over from us, killed, gives them back.
    if (t.record !== null) t.record.ownAffinity = theirs;
    if (setCpuAffinity(t.pid, onlyCpu(cpu)) < 0 || setCpuAffinity(0, onlyCpu(cpu)) < 0) {
      setCpuAffinity(t.pid, theirs);
      if (t.record !== null) t.record.ownAffinity = null;
      this.#refused = true; // not allowed to (a cpuset, a policy): stop trying
      return;
    }
    this.#target = t;
    this.#theirs = theirs;
    this.#ours = ours;
    this.#cpu = cpu;
    setHelperCpus(otherCpus(ours, cpu));
    log.debug("pid {pid} shares CPU {cpu} with the pager", { pid: t.pid, cpu });
  }
}

/**
 * Gives every thread of `pid` the CPU affinity `mask` (threads started while
 * it was narrowed inherited the narrow one), and so to its children (and
 * theirs) that still have exactly the `narrow` mask: forked while it was
 * narrowed, a program they exec keeps it. At the end of co-location, or when
 * taking over from a pager killed during one.
 *
 * @example
 * ```ts
 * import type { SessionRecord } from "./record.ts";
 * declare const record: SessionRecord;
 * const own = record.ownAffinity;
 * if (own !== null) giveBackAffinity(4242, own, cpuAffinity(4242)!);
 * ```
 */
export function giveBackAffinity(pid: number, mask: BigUint64Array, narrow: BigUint64Array): void {
  for (const tid of listThreads(pid)) setCpuAffinity(tid, mask);
  for (const child of childProcesses(pid)) {
    const theirs = cpuAffinity(child);
    if (theirs !== null && sameMask(theirs, narrow)) giveBackAffinity(child, mask, narrow);
  }
}

/** `mask` without `cpu`, or `mask` itself if that is its only CPU: where the loop's helpers run. */
function otherCpus(mask: BigUint64Array, cpu: number): BigUint64Array {
  const others = mask.slice();
  others[cpu >> 6] &= ~(1n << BigInt(cpu & 63));
  return others.some((w) => w !== 0n) ? others : mask;
}

function sameMask(a: BigUint64Array, b: BigUint64Array): boolean {
  return a.length === b.length && a.every((w, i) => w === b[i]);
}
