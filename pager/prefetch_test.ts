/**
 * Unit tests of the prefetchers: the trend each access pattern yields, the
 * depth growing with hits and shrinking with waste, window doubling, reverse
 * sweeps that stop at page 0, per-stream histories and their bounded table.
 *
 * Most tests replay an access pattern through a small model of the pager:
 * a touch of a page proposed earlier (and still unused) is a hit and raises no
 * fault; any other touch is a missing fault handed to the policy.
 *
 * @module
 */

import assert from "node:assert/strict";
import { LeapPrefetcher, NoPrefetch, type PrefetchPolicy, streamOf } from "./prefetch.ts";

/** What a replay saw. */
interface Replay {
  faults: number;
  proposed: number;
  hits: number;
  /** Pages proposed per fault, in fault order. */
  depths: number[];
  /** Every page proposed, with the stream it was proposed for. */
  pages: [number, number][];
}

/** Replays `(stream, page)` touches through `p` (see the module comment). */
function replay(p: PrefetchPolicy, touches: Iterable<[number, number]>): Replay {
  const out = new Float64Array(p.maxDepth);
  const waiting = new Map<number, number>(); // proposed, untouched page -> stream
  const r: Replay = { faults: 0, proposed: 0, hits: 0, depths: [], pages: [] };
  for (const [stream, page] of touches) {
    const owner = waiting.get(page);
    if (owner !== undefined) {
      waiting.delete(page);
      p.hit(owner);
      r.hits++;
      continue;
    }
    r.faults++;
    const n = p.onFault(stream, page, out);
    r.depths.push(n);
    for (let k = 0; k < n; k++) {
      if (waiting.has(out[k])) continue;
      waiting.set(out[k], stream);
      r.proposed++;
      r.pages.push([stream, out[k]]);
    }
  }
  return r;
}

/** Touches of one stream at the given pages. */
function* along(stream: number, pages: Iterable<number>): Iterable<[number, number]> {
  for (const page of pages) yield [stream, page];
}

function* range(from: number, to: number, step = 1): Iterable<number> {
  for (let p = from; step > 0 ? p < to : p > to; p += step) yield p;
}

/** Deterministic xorshift32 in [0, 1). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

const S = streamOf(0, 0);

Deno.test("a sequential sweep: trend +1 from the third fault, depth doubling to the cap", () => {
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  assert.equal(leap.onFault(S, 100, out), 0);
  assert.equal(leap.onFault(S, 101, out), 0); // one delta is no trend
  assert.equal(leap.onFault(S, 102, out), 2);
  assert.deepEqual([...out.subarray(0, 2)], [103, 104]);

  const r = replay(new LeapPrefetcher(), along(S, range(0, 10_000)));
  // Each window used in full lets the next one double: 2, 4, ..., 64, then 64.
  assert.deepEqual(r.depths.slice(0, 10), [0, 0, 2, 4, 8, 16, 32, 64, 64, 64]);
  assert.ok(r.faults <= 10_000 / 64 + 10, `${r.faults} faults`);
  assert.ok(r.hits >= r.proposed - 64, `${r.hits} hits of ${r.proposed}`);
  // Proposals run ahead in order, skipping only the pages that faulted.
  assert.ok(r.pages.every(([, page], i) => i === 0 || page > r.pages[i - 1][1]));
  // Every page is fetched once; the last window overshoots the end by less than 64.
  assert.ok(r.proposed + r.faults >= 10_000 && r.proposed + r.faults < 10_000 + 64);
});

Deno.test("reported hits grow the depth: hits + 2 rounded up to a power of two", () => {
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  for (const page of [0, 1, 2]) leap.onFault(S, page, out); // depth 2
  for (let k = 0; k < 6; k++) leap.hit(S);
  // Page 3 was proposed: the fault steps over nothing, so the 6 reported hits count.
  assert.equal(leap.onFault(S, 3, out), 8);
  for (let k = 0; k < 29; k++) leap.hit(S);
  assert.equal(leap.onFault(S, 4, out), 32);
  // No hits since: never below half the previous depth.
  assert.equal(leap.onFault(S, 5, out), 16);
  assert.equal(leap.onFault(S, 6, out), 8);
});

Deno.test("the depth is capped by maxDepth and out's length", () => {
  const r = replay(new LeapPrefetcher({ maxDepth: 16 }), along(S, range(0, 2000)));
  assert.equal(Math.max(...r.depths), 16);
  const leap = new LeapPrefetcher();
  const small = new Float64Array(3);
  for (const page of [0, 1, 2]) leap.onFault(S, page, small);
  for (let k = 0; k < 40; k++) leap.hit(S);
  assert.equal(leap.onFault(S, 3, small), 3);
});

Deno.test("wasted proposals shrink the depth to a quarter per fault", () => {
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  const r = replay(leap, along(S, range(0, 500)));
  assert.equal(r.depths.at(-1), 64);
  let page = 500;
  const seen: number[] = [];
  for (const waste of [64, 16, 4, 1]) {
    for (let k = 0; k < waste; k++) leap.wasted(S);
    // A fault one step along (inside the last window): no pages stepped over.
    seen.push(leap.onFault(S, ++page, out));
  }
  assert.deepEqual(seen, [16, 4, 1, 0]);
  // A trend with no waste starts again from 2.
  assert.equal(leap.onFault(S, ++page, out), 2);
});

Deno.test("strided access (every 3rd page): delta 3, nearly every proposal used", () => {
  const r = replay(new LeapPrefetcher(), along(S, range(0, 30_000, 3)));
  assert.ok(r.pages.every(([, page]) => page % 3 === 0));
  assert.ok(r.faults <= 10_000 / 64 + 10, `${r.faults} faults for 10000 touches`);
  assert.ok(r.hits >= r.proposed - 64, `${r.hits} hits of ${r.proposed}`);
});

Deno.test("a stride inside each pass of a sweep survives the jump back between passes", () => {
  // Pages 0, 3, 6, ... then 1, 4, 7, ... then 2, 5, 8, ... (the bench's strided workload).
  const n = 12_000;
  const pages = [...range(0, n, 3), ...range(1, n, 3), ...range(2, n, 3)];
  const r = replay(new LeapPrefetcher(), along(S, pages));
  assert.ok(r.faults <= n / 64 + 30, `${r.faults} faults for ${n} touches`);
  assert.ok(r.hits / r.proposed >= 0.95, `${r.hits} hits of ${r.proposed}`);
});

Deno.test("4 interleaved sequential streams with their own ids: each detected", () => {
  const rand = rng(7);
  const next = [0, 0, 0, 0];
  const base = (t: number) => t * 1_000_000;
  const touches: [number, number][] = [];
  // Threads run in a random interleaving, each sweeping its own 20000 pages.
  while (touches.length < 80_000) {
    const t = Math.floor(rand() * 4);
    if (next[t] < 20_000) touches.push([streamOf(1, 100 + t), base(t) + next[t]++]);
  }
  const leap = new LeapPrefetcher();
  const r = replay(leap, touches);
  assert.equal(leap.streams, 4);
  assert.ok(r.faults <= 4 * (20_000 / 64 + 10), `${r.faults} faults`);
  assert.ok(r.hits >= r.proposed - 4 * 64, `${r.hits} hits of ${r.proposed}`);
  for (const [stream, page] of r.pages) {
    const t = stream - streamOf(1, 100);
    assert.ok(page >= base(t) && page < base(t) + 20_000 + 64, `stream ${t} page ${page}`);
  }
});

Deno.test("uniform random faults propose (almost) nothing", () => {
  const rand = rng(42);
  const touches = [...along(S, Array.from({ length: 10_000 }, () => Math.floor(rand() * 65536)))];
  const r = replay(new LeapPrefetcher(), touches);
  assert.ok(r.proposed <= 50, `${r.proposed} pages proposed over ${r.faults} faults`);
});

Deno.test("the window doubles: a majority only in the longer history is found", () => {
  // 24 deltas of +1, then 4 of +1 among 4 distinct jumps: the newest 8 have no majority.
  const faults = [...range(0, 25)];
  let page = 24;
  for (const jump of [1000, 2000, 3000, 4000]) faults.push(page += jump, page += 1);
  const run = (leap: LeapPrefetcher) => {
    const out = new Float64Array(leap.maxDepth);
    let n = 0;
    for (const p of faults) n = leap.onFault(S, p, out);
    return { n, first: out[0] };
  };
  const long = run(new LeapPrefetcher());
  assert.ok(long.n > 0);
  assert.equal(long.first, page + 1);
  // A history of 8 holds only the newest 8: no majority, no proposal.
  assert.equal(run(new LeapPrefetcher({ history: 8 })).n, 0);
});

Deno.test("a reverse sweep: trend -1, never a negative page", () => {
  const r = replay(new LeapPrefetcher(), along(S, range(5000, -1, -1)));
  assert.ok(r.faults <= 5000 / 64 + 10, `${r.faults} faults`);
  assert.ok(r.pages.every(([, page]) => page >= 0 && Number.isInteger(page)));
  assert.ok(r.pages.some(([, page]) => page === 0));
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  for (const p of [10, 9, 8, 7, 6, 5]) leap.onFault(S, p, out);
  for (let k = 0; k < 60; k++) leap.hit(S);
  assert.equal(leap.onFault(S, 2, out), 2); // a continuation: only 1 and 0 remain
  assert.deepEqual([...out.subarray(0, 2)], [1, 0]);
});

Deno.test("a repeated fault on the same page proposes nothing and keeps the trend", () => {
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  for (const p of [0, 1, 2]) leap.onFault(S, p, out);
  assert.equal(leap.onFault(S, 2, out), 0);
  assert.ok(leap.onFault(S, 3, out) > 0);
});

Deno.test("streams are bounded: the least recently faulting one makes room", () => {
  const leap = new LeapPrefetcher({ streams: 4 });
  const out = new Float64Array(leap.maxDepth);
  const sweep = (t: number, from: number, to: number) => {
    let n = 0;
    for (let p = from; p < to; p++) n = leap.onFault(streamOf(0, t), t * 1000 + p, out);
    return n;
  };
  for (let t = 0; t < 4; t++) sweep(t, 0, 3);
  assert.equal(leap.streams, 4);
  sweep(1, 3, 4);
  sweep(2, 3, 4);
  sweep(3, 3, 4);
  sweep(4, 0, 3); // takes stream 0's slot, the least recent
  assert.equal(leap.streams, 4);
  assert.equal(sweep(0, 3, 4), 0); // stream 0 starts over (and evicts stream 1)
  assert.ok(sweep(2, 4, 5) > 0);
  assert.ok(sweep(4, 3, 4) > 0);
});

Deno.test("forget and forgetTarget drop histories; hits and waste of unknown streams are ignored", () => {
  const leap = new LeapPrefetcher();
  const out = new Float64Array(leap.maxDepth);
  for (const [target, tid] of [[1, 10], [1, 11], [2, 10]]) {
    for (const p of [0, 1, 2]) leap.onFault(streamOf(target, tid), p, out);
  }
  assert.equal(leap.streams, 3);
  leap.forgetTarget(1);
  assert.equal(leap.streams, 1);
  assert.ok(leap.onFault(streamOf(2, 10), 3, out) > 0);
  leap.forget(streamOf(2, 10));
  assert.equal(leap.streams, 0);
  leap.hit(streamOf(5, 5));
  leap.wasted(streamOf(5, 5));
  assert.equal(leap.streams, 0);
  assert.equal(leap.onFault(streamOf(2, 10), 4, out), 0);
});

Deno.test("the stream table survives heavy reuse (probe runs stay consistent)", () => {
  const leap = new LeapPrefetcher({ streams: 8 });
  const out = new Float64Array(leap.maxDepth);
  const rand = rng(3);
  for (let k = 0; k < 20_000; k++) {
    const id = streamOf(Math.floor(rand() * 4), Math.floor(rand() * 40));
    leap.onFault(id, k, out);
    if (k % 97 === 0) leap.forget(id);
    if (k % 1013 === 0) leap.forgetTarget(Math.floor(rand() * 4));
  }
  assert.ok(leap.streams <= 8);
  // Every tracked stream is still found (a broken probe run would make a lookup miss).
  for (let t = 0; t < 8; t++) leap.onFault(streamOf(9, t), 0, out);
  for (let t = 0; t < 8; t++) leap.onFault(streamOf(9, t), 1, out);
  for (let t = 0; t < 8; t++) assert.equal(leap.onFault(streamOf(9, t), 2, out), 2);
});

Deno.test("streamOf folds target and thread id into one exact integer", () => {
  assert.equal(streamOf(0, 0), 0);
  assert.notEqual(streamOf(1, 0), streamOf(0, 1));
  assert.equal(Math.floor(streamOf(7, 4_194_303) / 2 ** 22), 7);
  assert.ok(Number.isSafeInteger(streamOf(2 ** 30, 4_194_303)));
});

Deno.test("NoPrefetch proposes nothing", () => {
  const off = new NoPrefetch();
  const r = replay(off, along(S, range(0, 1000)));
  assert.equal(r.proposed, 0);
  assert.equal(r.faults, 1000);
  assert.equal(off.name, "off");
});

Deno.test("leap: the pages of the newest window are pending until the stream passes them", () => {
  const leap = new LeapPrefetcher({ maxDepth: 8 });
  const out = new Float64Array(leap.maxDepth);
  const s = streamOf(0, 1);
  for (let page = 100; page < 104; page++) leap.onFault(s, page, out);
  const n = leap.onFault(s, 104, out);
  assert.ok(n > 0, "a trend of +1");
  assert.equal(leap.pending(s, 104 + 1), true, "the first page proposed");
  assert.equal(leap.pending(s, 104 + n), true, "the last page proposed");
  assert.equal(leap.pending(s, 104 + n + 1), false, "past the window");
  assert.equal(leap.pending(s, 103), false, "behind the stream");
  assert.equal(leap.pending(streamOf(0, 2), 105), false, "another stream's page");
  // The stream passes the window and faults just past it: those pages are behind it now.
  leap.onFault(s, 104 + n + 1, out);
  assert.equal(leap.pending(s, 104 + 1), false);
  assert.equal(new NoPrefetch().pending(s, 105), false);
});

Deno.test("leap: a fault inside the window leaves the pages past it pending", () => {
  const leap = new LeapPrefetcher({ maxDepth: 16 });
  const out = new Float64Array(leap.maxDepth);
  const s = streamOf(0, 1);
  let page = 0, n = 0;
  // Sweep until the window is 16 pages deep.
  while (n < 16) {
    n = leap.onFault(s, page, out);
    page += n + 1;
  }
  const at = page - n - 1; // the fault that proposed at + 1 .. at + 16
  // One page of the window was evicted: the stream faults on it, inside the window.
  leap.onFault(s, at + 5, out);
  assert.equal(leap.pending(s, at + 16), true, "the old window's last page is still ahead");
  assert.equal(leap.pending(s, at + 4), false, "passed");
});

Deno.test("leap: a window cut for room keeps its depth for the next fault", () => {
  const grown = () => {
    const leap = new LeapPrefetcher({ maxDepth: 32 });
    const out = new Float64Array(leap.maxDepth);
    const s = streamOf(0, 1);
    let page = 0, n = 0;
    while (n < 32) {
      n = leap.onFault(s, page, out);
      page += n + 1;
    }
    return { leap, out, s, page: page - n - 1 };
  };
  // Only 3 of the 32 proposals fit: the stream faults again right after them.
  const cut = grown();
  cut.leap.cut(cut.s, 3);
  assert.equal(cut.leap.pending(cut.s, cut.page + 4), false, "the window is what was taken");
  assert.equal(cut.leap.onFault(cut.s, cut.page + 4, cut.out), 32, "depth kept");
  // The same fault after a window that was not cut shrinks the depth.
  const plain = grown();
  assert.ok(plain.leap.onFault(plain.s, plain.page + 4, plain.out) < 32, "depth shrinks");
});
