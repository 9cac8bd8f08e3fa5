/**
 * Moving a peer client's slabs between peers: restoring the replica count
 * after a peer is lost, moving slabs off a peer that drains or wants some
 * back (paced when nothing is missing), and, when no other peer has room,
 * handing the keys to the pager to bring home. One pass at a time over
 * every slab; the store asks for passes when something changed.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { Endpoint, Slab } from "./replicas.ts";
import { MsgType, u32s } from "./protocol.ts";

const log = getLogger(["remora", "peer"]);

/**
 * Pages a slab copy (re-replication, a drain) moves per step. Writes to the
 * slab wait for a step in flight (so that no copy lands over a newer write):
 * small steps keep that wait short for the program being paged.
 */
const COPY_CHUNK_PAGES = 32;

/**
 * A paced copy (a slab moved off a peer that asked for it back, nothing
 * missing) rests this many times as long as each step took: on a busy host
 * the copy then takes about 1 / (1 + COPY_PACE) of what it would of the CPU
 * and links the paged program needs, and lasts 1 + COPY_PACE times longer.
 */
const COPY_PACE = 4;

/** What the mover needs of the store it works for. */
export interface MoverHost {
  /** Copies each slab should have. */
  readonly replicas: number;
  readonly slabPages: number;
  /** The store's slabs by index (a slab no longer there was freed or lost). */
  readonly slabs: ReadonlyMap<number, Slab>;
  closed(): boolean;
  /** A peer for a new replica, not one of `excluded`; null if none has room. */
  pickPeer(excluded: Set<Endpoint>): Endpoint | null;
  /** Reserves the slab on `ep`; false if refused. */
  allocOn(ep: Endpoint, slab: Slab): Promise<boolean>;
  /** Reads pages of a slab from whichever replica answers (hedged). */
  readFromAny(slabIndex: number, offsets: Uint8Array, keys: number[]): Promise<Uint8Array>;
  /** One request to `ep`. */
  call(ep: Endpoint, type: number, ...parts: Uint8Array[]): Promise<Uint8Array>;
}

/**
 * Re-replication and slab moves for one peer store.
 *
 * @example
 * ```ts ignore
 * const mover = new SlabMover(host);
 * mover.schedule(); // a peer went down: restore the replica count
 * await mover.settled();
 * ```
 */
export class SlabMover {
  readonly #host: MoverHost;
  #repair: Promise<void> | null = null;
  #repairAgain = false;
  #homeRetry: ReturnType<typeof setTimeout> | null = null;
  /** The pager's way to take keys home (see `PageStore.setPullHome`); null: slabs stay. */
  pullHome: ((keys: Uint32Array) => Promise<void>) | null = null;

  constructor(host: MoverHost) {
    this.#host = host;
  }

  /** Settles once no pass is running. */
  async settled(): Promise<void> {
    await this.#repair?.catch(() => {});
  }

  /** Cancels a pending retry (the store is closing). */
  stop(): void {
    if (this.#homeRetry !== null) clearTimeout(this.#homeRetry);
    this.#homeRetry = null;
  }

  /** Runs a pass over every slab soon (another follows if asked for during one). */
  schedule(): void {
    if (this.#host.closed()) return;
    if (this.#repair) {
      this.#repairAgain = true;
      return;
    }
    this.#repair = (async () => {
      do {
        this.#repairAgain = false;
        await this.#repairPass();
      } while (this.#repairAgain && !this.#host.closed());
    })().catch((e) => log.error("re-replication failed: {error}", { error: (e as Error).message }))
      .finally(() => {
        this.#repair = null;
      });
  }

  /** Restores the replica count of every slab and moves slabs off draining peers. */
  async #repairPass(): Promise<void> {
    for (const slab of [...this.#host.slabs.values()]) {
      if (this.#host.closed()) return;
      if (this.#host.slabs.get(slab.index) !== slab) continue;
      const healthy = () =>
        slab.replicas.filter((ep) => ep.state === "up" && ep.live && !slab.leaving.has(ep));
      const refused = new Set<Endpoint>();
      while (healthy().length < this.#host.replicas && !this.#host.closed()) {
        const target = this.#host.pickPeer(
          new Set([...slab.replicas, ...slab.syncing, ...refused]),
        );
        if (!target) break;
        if (!(await this.#host.allocOn(target, slab))) {
          refused.add(target);
          continue;
        }
        // A copy that restores a missing replica runs flat out; one that only
        // moves a slab off a peer that wants it back is paced.
        const paced = slab.replicas.filter((ep) => ep.live).length >=
          this.#host.replicas;
        if (!(await this.#copySlab(slab, target, paced))) break;
      }
      const draining = slab.replicas.filter((ep) =>
        ep.state === "draining" || slab.leaving.has(ep)
      );
      if (draining.length > 0 && healthy().length === 0) this.#sendHome(slab, draining);
      if (draining.length > 0 && healthy().length >= Math.min(this.#host.replicas, 1)) {
        for (const ep of draining) {
          if (healthy().length === 0) break;
          slab.forget(ep);
          await this.#host.call(ep, MsgType.FREE, u32s(slab.id)).catch(() => {});
        }
      }
    }
  }

  /**
   * A slab its peers want back while no other peer has room: its pages go
   * home into the program (the pager's pull), whose deletes then empty it,
   * and the emptied slab is freed on those peers. Pages busy meanwhile (being
   * evicted or fetched) keep it; another pull follows a second later.
   */
  #sendHome(slab: Slab, holders: Endpoint[]): void {
    const pull = this.pullHome;
    if (pull === null || slab.goingHome || slab.presentCount === 0) return;
    slab.goingHome = true;
    const base = slab.index * this.#host.slabPages;
    const keys: number[] = [];
    for (let off = 0; off < slab.present.length; off++) {
      if (slab.present[off]) keys.push(base + off);
    }
    log.warn(
      "peer {peer} wants slab {slab} back and no other peer has room: its {n} pages go home",
      { peer: holders.map((ep) => ep.target.address).join(", "), slab: slab.index, n: keys.length },
    );
    pull(Uint32Array.from(keys))
      .catch((e) =>
        log.error("pulling slab {slab} home failed: {error}", {
          slab: slab.index,
          error: (e as Error).message,
        })
      )
      .finally(() => {
        slab.goingHome = false;
        if (this.#host.slabs.get(slab.index) !== slab || this.#host.closed()) return;
        this.#homeRetry ??= setTimeout(() => {
          this.#homeRetry = null;
          this.schedule();
        }, 1000);
      });
  }

  /** Copies `slab` to `target` chunk by chunk; true once `target` is a full replica. */
  async #copySlab(slab: Slab, target: Endpoint, paced: boolean): Promise<boolean> {
    slab.syncing.push(target);
    const offsetsAll: number[] = [];
    for (let off = 0; off < slab.present.length; off++) if (slab.present[off]) offsetsAll.push(off);
    for (let at = 0; at < offsetsAll.length; at += COPY_CHUNK_PAGES) {
      const began = performance.now();
      const ok = await slab.locked(async () => {
        if (!slab.syncing.includes(target) || this.#host.slabs.get(slab.index) !== slab) {
          return false;
        }
        // Pages deleted meanwhile are skipped; pages written meanwhile already reached the target.
        const chunk = offsetsAll.slice(at, at + COPY_CHUNK_PAGES).filter((off) =>
          slab.present[off]
        );
        if (chunk.length === 0) return true;
        const offsets = u32s(...chunk);
        const base = slab.index * this.#host.slabPages;
        let data: Uint8Array;
        try {
          data = await this.#host.readFromAny(slab.index, offsets, chunk.map((o) => base + o));
        } catch {
          return false;
        }
        try {
          await this.#host.call(target, MsgType.WRITE, u32s(slab.id, chunk.length), offsets, data);
          return true;
        } catch (e) {
          slab.syncing = slab.syncing.filter((r) => r !== target);
          log.warn("copy of slab {slab} to {peer} failed: {error}", {
            slab: slab.index,
            peer: target.target.address,
            error: (e as Error).message,
          });
          return false;
        }
      });
      if (!ok) {
        slab.syncing = slab.syncing.filter((r) => r !== target);
        if (target.live) void this.#host.call(target, MsgType.FREE, u32s(slab.id)).catch(() => {});
        return false;
      }
      if (paced) await new Promise((r) => setTimeout(r, (performance.now() - began) * COPY_PACE));
    }
    slab.syncing = slab.syncing.filter((r) => r !== target);
    if (this.#host.slabs.get(slab.index) !== slab) {
      // Freed or lost meanwhile: the copy is of no use.
      if (target.live) void this.#host.call(target, MsgType.FREE, u32s(slab.id)).catch(() => {});
      return false;
    }
    slab.replicas.push(target);
    log.debug("slab {slab} now also on {peer}", { slab: slab.index, peer: target.target.address });
    return true;
  }
}
