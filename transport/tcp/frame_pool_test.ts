/**
 * Unit tests of the pool of large reply frames: a frame given back is the
 * memory of the next one of its size class, small frames are not pooled, and
 * the pool keeps no more than its bound.
 *
 * @module
 */

import assert from "node:assert/strict";
import { FramePool, POOLED_FROM } from "./frame_pool.ts";

Deno.test("a large frame given back is reused by the next of its size class", () => {
  const pool = new FramePool();
  const first = pool.take(300_000);
  assert.equal(first.length, 300_000);
  first.fill(7);
  pool.give(first);
  assert.equal(pool.bytes, 512 * 1024);
  const second = pool.take(270_000);
  assert.equal(second.buffer, first.buffer, "same memory");
  assert.equal(second.length, 270_000);
  assert.equal(pool.bytes, 0);
  // Another class does not get it.
  pool.give(second);
  assert.notEqual(pool.take(100_000).buffer, first.buffer);
});

Deno.test("small frames and frames from elsewhere are not pooled", () => {
  const pool = new FramePool();
  const small = pool.take(POOLED_FROM - 1);
  pool.give(small);
  pool.give(new Uint8Array(1 << 20));
  assert.equal(pool.bytes, 0);
});

Deno.test("the pool keeps a bounded number of bytes and each buffer once", () => {
  const pool = new FramePool();
  const frames = Array.from({ length: 40 }, () => pool.take(1 << 20));
  for (const f of frames) pool.give(f);
  pool.give(frames[0]);
  assert.ok(pool.bytes <= 16 << 20, `pool holds ${pool.bytes} bytes`);
  assert.ok(pool.bytes > 0);
});
