/**
 * Taking over a killed client's peer session: which slab of which peer holds
 * which keys, rebuilt from the peers' LIST replies and the keys the client's
 * record says were stored (one replica per slab).
 *
 * @module
 */

import { PeerRequestError } from "./connection.ts";
import { ErrCode } from "./protocol.ts";
import { type Endpoint, Slab } from "./replicas.ts";

/** One slab a peer lists for the session: `u32 slab, u32 pages, u32 index, u32 generation`. */
export interface ListedSlab {
  id: number;
  pages: number;
  index: number;
  generation: number;
}

/**
 * Parses a LIST reply; a malformed one is a {@linkcode PeerRequestError}.
 *
 * @example
 * ```ts
 * declare const reply: Uint8Array;
 * for (const s of parseList(reply)) console.log(s.id, s.index);
 * ```
 */
export function parseList(p: Uint8Array): ListedSlab[] {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const count = p.length >= 4 ? v.getUint32(0, true) : -1;
  if (count < 0 || p.length !== 4 + 16 * count) {
    throw new PeerRequestError(ErrCode.MALFORMED, `LIST reply of ${p.length} bytes is malformed`);
  }
  const out: ListedSlab[] = [];
  for (let k = 0; k < count; k++) {
    const at = 4 + 16 * k;
    out.push({
      id: v.getUint32(at, true),
      pages: v.getUint32(at + 4, true),
      index: v.getUint32(at + 8, true),
      generation: v.getUint32(at + 12, true),
    });
  }
  return out;
}

/** The session rebuilt: slabs by index, copies to free, and what no peer holds. */
export interface RebuiltSession {
  slabs: Map<number, Slab>;
  /** Copies not chosen (a move the killed client left half done): freed on their peer. */
  extra: Array<{ ep: Endpoint; id: number }>;
  /** Keys whose slab no peer listed. */
  missing: number;
  /** Above every slab id and ALLOC generation seen: where the client's counters go on. */
  nextId: number;
  nextGeneration: number;
}

/**
 * Chooses, for every slab index, the copy with the lowest ALLOC generation:
 * while a slab moved (a drain), the old copy got every write and the new one
 * may be partial, and the old one is freed only once the move is done. Marks
 * `keys` present in their slabs.
 *
 * @example
 * ```ts
 * declare const ep: Endpoint;
 * const r = rebuildSession([{ ep, slabs: [{ id: 1, pages: 64, index: 0, generation: 1 }] }],
 *   Uint32Array.of(3), 64);
 * console.log(r.slabs.get(0)?.present[3]); // 1
 * ```
 */
export function rebuildSession(
  lists: Array<{ ep: Endpoint; slabs: ListedSlab[] }>,
  keys: Uint32Array,
  slabPages: number,
): RebuiltSession {
  const best = new Map<number, { ep: Endpoint; s: ListedSlab }>();
  const extra: Array<{ ep: Endpoint; id: number }> = [];
  let nextId = 1, nextGeneration = 1;
  for (const { ep, slabs } of lists) {
    for (const s of slabs) {
      nextId = Math.max(nextId, s.id + 1);
      if (s.generation !== 0xffffffff) nextGeneration = Math.max(nextGeneration, s.generation + 1);
      const have = best.get(s.index);
      if (s.pages !== slabPages || s.index === 0xffffffff) extra.push({ ep, id: s.id });
      else if (have === undefined) best.set(s.index, { ep, s });
      else if (s.generation < have.s.generation) {
        extra.push({ ep: have.ep, id: have.s.id });
        best.set(s.index, { ep, s });
      } else extra.push({ ep, id: s.id });
    }
  }
  const slabs = new Map<number, Slab>();
  for (const [index, { ep, s }] of best) {
    const slab = new Slab(index, s.id, slabPages);
    slab.replicas.push(ep);
    slabs.set(index, slab);
  }
  let missing = 0;
  for (const key of keys) {
    const slab = slabs.get(Math.floor(key / slabPages));
    if (slab === undefined) {
      missing++;
      continue;
    }
    const off = key % slabPages;
    if (slab.present[off] === 0) {
      slab.present[off] = 1;
      slab.presentCount++;
    }
  }
  return { slabs, extra, missing, nextId, nextGeneration };
}
