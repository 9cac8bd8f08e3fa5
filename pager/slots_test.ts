/**
 * Unit tests of store keys: dense allocation, reference counts shared by
 * forked children, release at the last reference, and reuse only after the
 * store has deleted a key.
 *
 * @module
 */

import assert from "node:assert/strict";
import { NO_SLOT } from "./page_table.ts";
import { SlotTable } from "./slots.ts";

Deno.test("keys are allocated densely from 0 with one reference each", () => {
  const s = new SlotTable();
  assert.deepEqual([s.allocate(), s.allocate(), s.allocate()], [0, 1, 2]);
  assert.equal(s.live, 3);
  assert.equal(s.refs(1), 1);
});

Deno.test("a key is released only when its last reference goes", () => {
  const s = new SlotTable();
  const k = s.allocate();
  s.retain(k); // a forked child shares the page
  s.release(k);
  assert.deepEqual(s.released, []);
  assert.equal(s.live, 1);
  s.release(k);
  assert.deepEqual(s.released, [k]);
  assert.equal(s.live, 0);
  assert.equal(s.refs(k), 0);
});

Deno.test("releasing NO_SLOT (a page that never had a key) does nothing", () => {
  const s = new SlotTable();
  s.allocate();
  s.release(NO_SLOT);
  assert.equal(s.live, 1);
  assert.deepEqual(s.released, []);
});

Deno.test("released keys are reused only after they are recycled, last recycled first", () => {
  const s = new SlotTable();
  const [a, b, c] = [s.allocate(), s.allocate(), s.allocate()];
  s.release(a);
  s.release(c);
  assert.equal(s.allocate(), 3, "a released key is not reused before the store deleted it");
  s.recycle(s.released.splice(0));
  assert.equal(s.allocate(), c);
  assert.equal(s.allocate(), a);
  assert.equal(s.allocate(), 4, "fresh keys again once the free list is empty");
  assert.equal(s.refs(b), 1);
  assert.equal(s.live, 5);
});

Deno.test("the tables grow past their first size", () => {
  const s = new SlotTable();
  const before = s.bytes;
  const keys = Array.from({ length: 5000 }, () => s.allocate());
  assert.equal(keys[4999], 4999);
  assert.ok(s.bytes > before);
  for (const k of keys) s.release(k);
  s.recycle(s.released.splice(0));
  const again = new Set(Array.from({ length: 5000 }, () => s.allocate()));
  assert.equal(again.size, 5000);
  assert.ok([...again].every((k) => k < 5000), "every recycled key reused, none new");
  assert.equal(s.allocate(), 5000);
});

Deno.test("a key's reference count is bounded and says so", () => {
  const s = new SlotTable();
  const k = s.allocate();
  for (let i = 1; i < 0xffff; i++) s.retain(k);
  assert.equal(s.refs(k), 0xffff);
  assert.throws(() => s.retain(k), /too many references/);
  assert.equal(s.refs(k), 0xffff, "unchanged by the refused retain");
});
