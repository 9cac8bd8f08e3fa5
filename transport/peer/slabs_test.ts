/**
 * Unit tests of the peer's slab store: capacity accounting and the choice a
 * partial drain makes (the least recently touched of its sample).
 *
 * @module
 */

import assert from "node:assert/strict";
import { PAGE_SIZE } from "../store.ts";
import { encodeFrame, MsgType, u32s } from "../tcp/protocol.ts";
import { type Session, SlabStore } from "./slabs.ts";

const SLAB_PAGES = 16;
const SLAB_BYTES = SLAB_PAGES * PAGE_SIZE;

function frame(type: number, ...parts: Uint8Array[]) {
  const bytes = encodeFrame(type, 1, ...parts);
  return { type, id: 1, payload: bytes.subarray(9) };
}

function storeWith(slabs: number, headroom?: () => number) {
  const store = new SlabStore({
    capacityBytes: 100 * SLAB_BYTES,
    slabBytes: SLAB_BYTES,
    maxSessionBytes: 100 * SLAB_BYTES,
    hostHeadroom: headroom,
  });
  const session: Session = { namespace: "t", slabs: new Map(), bytes: 0 };
  for (let id = 1; id <= slabs; id++) {
    store.handle(session, frame(MsgType.ALLOC, u32s(id, SLAB_PAGES)));
  }
  return { store, session };
}

function touch(store: SlabStore, session: Session, id: number): void {
  const page = new Uint8Array(PAGE_SIZE);
  store.handle(session, frame(MsgType.WRITE, u32s(id, 1), u32s(0), page));
}

Deno.test("a partial drain asks back the least recently touched slabs, lends that much less, and counts what came back", () => {
  const { store, session } = storeWith(4);
  for (const id of [3, 1, 4, 2]) touch(store, session, id); // 3 is the coldest, then 1
  // The sample is twice the need: with 2 slabs wanted out of 4, it is all of them.
  const chosen = store.reclaim([session], 2 * SLAB_BYTES, true);
  assert.deepEqual([...chosen.get(session)!].sort(), [1, 3]);
  assert.equal(store.capacityBytes, 98 * SLAB_BYTES);
  assert.equal(store.reclaimPendingBytes, 2 * SLAB_BYTES);
  // A second drain never picks a slab already asked back.
  const again = store.reclaim([session], SLAB_BYTES, false);
  assert.ok(![1, 3].includes(again.get(session)![0]));
  store.freeSlab(session, 1);
  store.freeSlab(session, 3);
  assert.deepEqual(store.reclaimed, { slabs: 2, bytes: 2 * SLAB_BYTES });
  assert.equal(store.reclaimPendingBytes, SLAB_BYTES);
});

Deno.test("a partial drain of more than is lent asks for everything, and nothing when nothing is lent", () => {
  const { store, session } = storeWith(3);
  assert.equal(store.reclaim([session], 10 * SLAB_BYTES, false).get(session)!.length, 3);
  const empty = storeWith(0);
  assert.equal(empty.store.reclaim([empty.session], SLAB_BYTES, true).size, 0);
});

Deno.test("the host's headroom bounds what is lent on top (--reserve)", () => {
  let headroom = 2 * SLAB_BYTES;
  const { store, session } = storeWith(0, () => headroom);
  assert.equal(store.freeBytes, 2 * SLAB_BYTES);
  for (const id of [1, 2, 3]) store.handle(session, frame(MsgType.ALLOC, u32s(id, SLAB_PAGES)));
  assert.equal(session.slabs.size, 2, "the third slab is refused: its reservation is lent");
  // Written pages show in the host's available memory (here by hand), not twice here.
  for (let page = 0; page < SLAB_PAGES; page++) {
    store.handle(session, frame(MsgType.WRITE, u32s(1, 1), u32s(page), new Uint8Array(PAGE_SIZE)));
  }
  headroom -= SLAB_BYTES;
  assert.equal(store.freeBytes, 0, "slab 2 is still reserved and unwritten");
  headroom = SLAB_BYTES + SLAB_BYTES;
  assert.equal(store.freeBytes, SLAB_BYTES);
  headroom = 0;
  assert.equal(store.freeBytes, 0);
});
