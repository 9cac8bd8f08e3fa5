/**
 * Prefetch against real processes: pages brought back ahead of a fault are
 * exactly the stored copies (every target checks every word), sequential
 * access is served mostly by prefetch, random access gets almost none, and
 * memory freed, moved or unmapped while prefetches may be in flight reads as
 * the program expects, its stored copies freed.
 */
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { test } from "../testing/harness.ts";
import { makeTokenFile, startPeer } from "../testing/peers.ts";
import { buildTarget, type Proc, REMOTE_PAGER_PERMS, startPager } from "../testing/procs.ts";
import type { PagerStats } from "../pager/stats.ts";

const memcheck = await buildTarget("memcheck");
const randwalk = await buildTarget("randwalk");
const churn = await buildTarget("churn");

function assertVerified(p: Proc): void {
  assert(!/MISMATCH/.test(p.output()), `the target read wrong data:\n${p.output()}`);
}

/** Runs the pager on `program` to its end and returns its final statistics. */
async function pagedRun(args: string[], program: string[], perms = ["--allow-ffi"]) {
  const stats = await Deno.makeTempFile({ suffix: ".json" });
  const p = startPager(["--stats-json", stats, ...args], {
    perms: [...perms, "--allow-write"],
    program,
    env: { REMORA_AWAIT_PAGER: "1" }, // paged from the first touch (testing/targets/await_pager.h)
  });
  assertEquals(await p.exit(), 0, p.output());
  assertVerified(p);
  const s = JSON.parse(await Deno.readTextFile(stats)) as PagerStats;
  await Deno.remove(stats);
  return { p, s };
}

test("a sequential sweep comes back mostly by prefetch, every word verified", async () => {
  const { p, s } = await pagedRun(["--local", "8M"], [memcheck, "64", "4"]);
  assertMatch(p.output(), /parent done/);
  const c = s.counters;
  // The first sweep over fresh memory: most pages get zeros ahead of it, not through a fault.
  assert(
    c.zeroFillsAhead > c.zeroFills,
    `zero-filled ahead ${c.zeroFillsAhead}, by fault ${c.zeroFills}`,
  );
  assert(
    c.pagesPrefetched > c.pagesFetched / 2,
    `prefetched ${c.pagesPrefetched} of ${c.pagesFetched}`,
  );
  assert(c.prefetchHits > c.pagesPrefetched / 2, `hits ${c.prefetchHits} of ${c.pagesPrefetched}`);
  // Fewer faults than pages fetched: the prefetched ones raised none.
  assert(
    c.missingFaults - c.zeroFills < c.pagesFetched / 2,
    `fetch faults ${c.missingFaults - c.zeroFills} for ${c.pagesFetched} pages`,
  );
});

test("a sequential sweep is evicted in long runs: the holes its faults leave between prefetched pages are filled", async () => {
  // The page a fault brought in is queued behind the pages fetched ahead with
  // it, so a batch of victims would have a hole per fault; each run costs one
  // zap (and its TLB flush) inside the target. Unfilled: about 30 pages a run.
  const { s } = await pagedRun(["--local", "8M"], [memcheck, "32", "4"]);
  const c = s.counters;
  assert(c.pagesEvicted > 8192, `pages evicted: ${c.pagesEvicted}`);
  assert(c.guardedDropRuns > 0, "dropped by guard markers (one thread)");
  assert(
    c.pagesEvicted / c.guardedDropRuns >= 64,
    `${c.pagesEvicted} pages evicted in ${c.guardedDropRuns} runs`,
  );
});

test("--prefetch off brings every page back through its own fault", async () => {
  const { s } = await pagedRun(["--local", "8M", "--prefetch", "off"], [memcheck, "32", "3"]);
  assertEquals(s.counters.pagesPrefetched, 0);
  assertEquals(s.counters.zeroFillsAhead, 0);
  assert(s.counters.pagesFetched > 0, "pages moved");
});

test("random access from four threads gets almost no prefetch", async () => {
  const { s } = await pagedRun(["--local", "8M"], [randwalk, "32", "4", "3"]);
  const c = s.counters;
  assert(c.pagesFetched > 1000, `pages moved: ${c.pagesFetched}`);
  assert(
    c.pagesPrefetched <= c.pagesFetched / 10,
    `prefetched ${c.pagesPrefetched} of ${c.pagesFetched}`,
  );
});

test("freed, moved and unmapped memory reads as expected with prefetches to a peer in flight", async () => {
  const tokenFile = await makeTokenFile();
  const peer = await startPeer({ tokenFile });
  try {
    const { p, s } = await pagedRun(
      ["--local", "4M", "--backend", peer.url, "--token-file", tokenFile],
      [churn, "24", "3"],
      [...REMOTE_PAGER_PERMS],
    );
    assertMatch(p.output(), /^done$/m);
    assert(s.counters.pagesPrefetched > 0, "pages were prefetched from the peer");
    assertEquals(s.store.pages, 0, "every stored copy was freed");
  } finally {
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});

test("a sweep that reads then writes each page gets writable prefetches from a peer, every write kept", async () => {
  const tokenFile = await makeTokenFile();
  const peer = await startPeer({ tokenFile });
  try {
    // memcheck checks each page's previous round before writing the next one:
    // a read fault, then a write. Pages fetched ahead for it after its first
    // writes are placed writable and dirty, so every one of its writes must
    // reach the peer at eviction; the next round's check reads them back.
    const { p, s } = await pagedRun(
      ["--local", "4M", "--backend", peer.url, "--token-file", tokenFile],
      [memcheck, "24", "4"],
      [...REMOTE_PAGER_PERMS],
    );
    assertMatch(p.output(), /parent done/);
    const c = s.counters;
    assert(
      c.pagesPrefetched > c.pagesFetched / 2,
      `prefetched ${c.pagesPrefetched} of ${c.pagesFetched}`,
    );
    // Write-protected, each prefetched page would take a write-protect fault.
    assert(
      c.wpFaults < c.pagesPrefetched / 2,
      `write-protect faults ${c.wpFaults} for ${c.pagesPrefetched} pages prefetched`,
    );
  } finally {
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});
