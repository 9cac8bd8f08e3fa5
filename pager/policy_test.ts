/**
 * Unit tests of the eviction order: FIFO by admission, a second chance for
 * referenced pages, stale entries forgotten, growth past the first array and
 * wrap-around of the ring.
 *
 * @module
 */

import assert from "node:assert/strict";
import { FifoSecondChance, type Inspect, Verdict } from "./policy.ts";

/** Picks up to `n` victims with `inspect`; returns them as `[target, page]` pairs. */
function pickPairs(p: FifoSecondChance, n: number, inspect: Inspect): [number, number][] {
  const targets: number[] = [], pages: number[] = [];
  const found = p.pick(n, inspect, targets, pages);
  assert.equal(found, targets.length);
  assert.equal(found, pages.length);
  return targets.map((t, i) => [t, pages[i]]);
}

const always: Inspect = () => Verdict.VICTIM;

Deno.test("pages leave in the order they were admitted", () => {
  const p = new FifoSecondChance();
  for (let k = 0; k < 5; k++) p.admit(k % 2, k * 4096);
  assert.equal(p.size, 5);
  assert.deepEqual(pickPairs(p, 3, always), [[0, 0], [1, 4096], [0, 8192]]);
  assert.equal(p.size, 2);
  assert.deepEqual(pickPairs(p, 10, always), [[1, 12288], [0, 16384]]);
  assert.equal(p.size, 0);
  assert.deepEqual(pickPairs(p, 1, always), []);
});

Deno.test("a referenced page goes to the back once, then out", () => {
  const p = new FifoSecondChance();
  for (const page of [1, 2, 3]) p.admit(0, page);
  const referenced = new Set([1]);
  const secondChance: Inspect = (_t, page) => {
    if (referenced.delete(page)) return Verdict.REFERENCED; // the bit is cleared on this look
    return Verdict.VICTIM;
  };
  assert.deepEqual(pickPairs(p, 3, secondChance).map(([, page]) => page), [2, 3, 1]);
  assert.equal(p.size, 0);
});

Deno.test("referenced pages keep their relative order behind the others", () => {
  const p = new FifoSecondChance();
  for (let page = 0; page < 6; page++) p.admit(0, page);
  const referenced = new Set([0, 2, 4]);
  const inspect: Inspect = (_t, page) =>
    referenced.delete(page) ? Verdict.REFERENCED : Verdict.VICTIM;
  assert.deepEqual(pickPairs(p, 3, inspect).map(([, page]) => page), [1, 3, 5]);
  // The referenced pages are still queued, in their old order.
  assert.deepEqual(pickPairs(p, 3, always).map(([, page]) => page), [0, 2, 4]);
});

Deno.test("stale entries are dropped without being returned", () => {
  const p = new FifoSecondChance();
  for (let page = 0; page < 4; page++) p.admit(0, page);
  const inspect: Inspect = (_t, page) => page % 2 === 0 ? Verdict.STALE : Verdict.VICTIM;
  assert.deepEqual(pickPairs(p, 4, inspect).map(([, page]) => page), [1, 3]);
  assert.equal(p.size, 0);
});

Deno.test("a pick ends even if every page stays referenced", () => {
  const p = new FifoSecondChance();
  for (let page = 0; page < 100; page++) p.admit(0, page);
  let looks = 0;
  const stubborn: Inspect = () => {
    looks++;
    return Verdict.REFERENCED;
  };
  assert.deepEqual(pickPairs(p, 1, stubborn), []);
  assert.equal(looks, 201, "each entry is looked at most twice, plus one");
  assert.equal(p.size, 100, "nothing lost");
});

Deno.test("the queue grows past its first array and keeps its order", () => {
  const p = new FifoSecondChance();
  const before = p.bytes;
  const n = 10_000;
  for (let k = 0; k < n; k++) p.admit(k % 7, k * 4096);
  assert.equal(p.size, n);
  assert.ok(p.bytes > before, "more metadata after growing");
  const got = pickPairs(p, n, always);
  assert.equal(got.length, n);
  got.forEach(([t, page], k) => {
    assert.equal(page, k * 4096);
    assert.equal(t, k % 7);
  });
});

Deno.test("the ring wraps around, and grows while wrapped, in order", () => {
  const p = new FifoSecondChance();
  let admitted = 0, taken = 0;
  // Move the head deep into the array so that the tail wraps past its end.
  for (; admitted < 4000; admitted++) p.admit(1, admitted);
  for (const [, page] of pickPairs(p, 3900, always)) assert.equal(page, taken++);
  for (; admitted < 8000; admitted++) p.admit(1, admitted); // wraps, then grows
  for (const [, page] of pickPairs(p, 8000, always)) assert.equal(page, taken++);
  assert.equal(taken, 8000);
  assert.equal(p.size, 0);
});

Deno.test("addresses beyond 32 bits and target numbers up to 65535 survive", () => {
  const p = new FifoSecondChance();
  const high = 0x7fff_ffff_f000;
  p.admit(65535, high);
  assert.deepEqual(pickPairs(p, 1, always), [[65535, high]]);
});

Deno.test("prefetched pages go first; a touched one joins the main queue", () => {
  const fifo = new FifoSecondChance();
  fifo.admit(0, 0x1000);
  fifo.admitAhead(0, 0x8000);
  fifo.admitAhead(0, 0x9000);
  const touched = new Set([0x8000]);
  const t: number[] = [], p: number[] = [];
  const inspect = (_: number, page: number) =>
    touched.has(page) ? Verdict.REFERENCED : Verdict.VICTIM;
  assert.deepEqual(fifo.pick(1, inspect, t, p), 1);
  assert.deepEqual(p, [0x9000], "the untouched prefetch goes before the older page");
  touched.clear();
  assert.deepEqual(fifo.pick(2, inspect, t, p), 2);
  assert.deepEqual(
    p,
    [0x9000, 0x1000, 0x8000],
    "the touched one waits behind the main queue's front",
  );
  assert.deepEqual(fifo.size, 0);
});
