/**
 * memcached backend against real memcached processes on loopback.
 *
 * @module
 */

import { test, waitUntil } from "../testing/harness.ts";
import { runPager } from "../testing/procs.ts";
import { freePort, memcachedCommand, memcachedItems, startMemcached } from "../testing/servers.ts";
import { checkPage, fillPage } from "../testing/pages.ts";
import {
  assertVerified,
  moreRounds,
  startPaged,
  stderrLines,
  waitAtLeast,
  waitStopped,
} from "./helpers/paged.ts";
import assert from "node:assert/strict";
import { openMemcachedStore } from "../transport/memcached.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "../transport/store.ts";

function keysFrom(start: number, n: number, stride = 1): Uint32Array {
  return Uint32Array.from({ length: n }, (_, i) => start + i * stride);
}

function pagesFor(keys: Uint32Array, gen = 0): Uint8Array {
  const buf = new Uint8Array(keys.length * PAGE_SIZE);
  keys.forEach((k, i) => fillPage(buf, i, k, gen));
  return buf;
}

async function putAll(
  store: { put(k: Uint32Array, p: Uint8Array): Promise<void> },
  keys: Uint32Array,
  batch: number,
  gen = 0,
) {
  const work: Promise<void>[] = [];
  for (let i = 0; i < keys.length; i += batch) {
    const k = keys.subarray(i, i + batch);
    work.push(store.put(k, pagesFor(k, gen)));
  }
  await Promise.all(work);
}

async function checkAll(
  store: { get(k: Uint32Array, p: Uint8Array): Promise<void> },
  keys: Uint32Array,
  batch: number,
  gen = 0,
) {
  await Promise.all(
    Array.from({ length: Math.ceil(keys.length / batch) }, async (_, b) => {
      const k = keys.subarray(b * batch, (b + 1) * batch);
      const into = new Uint8Array(k.length * PAGE_SIZE);
      await store.get(k, into);
      k.forEach((key, i) => checkPage(into, i, key, gen));
    }),
  );
}

const ns = () => `remora:test:${Deno.pid}:${crypto.randomUUID().slice(0, 8)}`;

test("memcached: round trip of many pages, overwrite, delete, close leaves nothing", async () => {
  const mc = await startMemcached();
  try {
    const store = await openMemcachedStore([`memcached://${mc.hostPort}`], {
      replicas: 1,
      namespace: ns(),
    });
    const keys = keysFrom(7, 3000, 3);
    await putAll(store, keys, 64);
    await checkAll(store, keys, 50);
    // Single-page gets, many in flight.
    await checkAll(store, keys.subarray(0, 200), 1);
    // Overwrite half, then read everything back.
    await putAll(store, keys.subarray(0, 1500), 100, 1);
    await checkAll(store, keys.subarray(0, 1500), 100, 1);
    await checkAll(store, keys.subarray(1500), 100, 0);
    assert.equal(store.health().pages, 3000);
    await store.delete(keys.subarray(0, 1000));
    assert.equal(store.health().pages, 2000);
    assert.equal(await memcachedItems(mc.port), 2000);
    const h = store.health();
    assert.equal(h.endpoints[0].state, "up");
    assert.ok(h.endpoints[0].requests > 0);
    await store.close();
    assert.equal(await memcachedItems(mc.port), 0);
  } finally {
    await mc.stop();
  }
});

test("memcached: two servers with replicas=2 survive losing one mid-run", async () => {
  const a = await startMemcached(), b = await startMemcached();
  try {
    const store = await openMemcachedStore([
      `memcached://${a.hostPort}`,
      `memcached://${b.hostPort}`,
    ], {
      replicas: 2,
      namespace: ns(),
    });
    const keys = keysFrom(0, 1500);
    await putAll(store, keys, 64);
    // Both servers hold every page.
    assert.equal(await memcachedItems(a.port), 1500);
    assert.equal(await memcachedItems(b.port), 1500);
    assert.equal(store.health().replicationDeficit, 0);
    // Crash one while reads are in flight.
    const reading = checkAll(store, keys, 32);
    a.kill("SIGKILL");
    await reading;
    await checkAll(store, keys, 64);
    const h = store.health();
    assert.equal(h.endpoints.find((e) => e.address.endsWith(`:${a.port}`))!.state, "down");
    assert.equal(h.replicationDeficit, 1500);
    // Writes go on to the survivor.
    await putAll(store, keys.subarray(0, 100), 50, 2);
    await checkAll(store, keys.subarray(0, 100), 50, 2);
    await store.close();
    assert.equal(await memcachedItems(b.port), 0);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test("memcached: three servers, replicas=2, lost server is re-replicated", async () => {
  const servers = await Promise.all([startMemcached(), startMemcached(), startMemcached()]);
  try {
    const store = await openMemcachedStore(servers.map((s) => `memcached://${s.hostPort}`), {
      replicas: 2,
      namespace: ns(),
    });
    const keys = keysFrom(100, 900);
    await putAll(store, keys, 64);
    const total = (await Promise.all(servers.map((s) => memcachedItems(s.port)))).reduce((x, y) =>
      x + y
    );
    assert.equal(total, 1800);
    servers[1].kill("SIGKILL");
    await checkAll(store, keys, 64);
    await waitUntil("re-replication to end", () => store.health().replicationDeficit === 0);
    const left = (await memcachedItems(servers[0].port)) + (await memcachedItems(servers[2].port));
    assert.equal(left, 1800);
    // Now losing a second server still loses nothing.
    servers[0].kill("SIGKILL");
    await checkAll(store, keys, 64);
    await store.close();
    assert.equal(await memcachedItems(servers[2].port), 0);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
});

test("memcached: a server that may evict is refused with how to fix it", async () => {
  const mc = await startMemcached({ noEvict: false });
  try {
    await assert.rejects(
      openMemcachedStore([`memcached://${mc.hostPort}`], { replicas: 1, namespace: ns() }),
      (e: Error) =>
        e instanceof StoreUnavailableError && /evictions on/.test(e.message) &&
        /-M/.test(e.message),
    );
  } finally {
    await mc.stop();
  }
});

test("memcached: a store down at start gives one clear line", async () => {
  const port = freePort();
  await assert.rejects(
    openMemcachedStore([`memcached://127.0.0.1:${port}`], { replicas: 1, namespace: ns() }),
    (e: Error) =>
      e instanceof StoreUnavailableError &&
      e.message ===
        `cannot reach memcached at 127.0.0.1:${port}: connection refused; is it running?`,
  );
});

test("memcached: a full server makes put reject; a missing page is lost, never zeros", async () => {
  const mc = await startMemcached({ memoryMb: 2 });
  try {
    const lostSeen: number[] = [];
    const store = await openMemcachedStore([`memcached://${mc.hostPort}`], {
      replicas: 1,
      namespace: ns(),
      onLoss: (k) => lostSeen.push(...k),
    });
    let rejected: Error | undefined;
    for (let b = 0; b < 64 && !rejected; b++) {
      try {
        await putAll(store, keysFrom(b * 256, 256), 256);
      } catch (e) {
        rejected = e as Error;
      }
    }
    assert.ok(rejected, "a 2 MB memcached must refuse some of 16k pages");
    assert.match(rejected.message, /out of memory/);
    // Pages stored before it filled are intact.
    await checkAll(store, keysFrom(0, 64), 64);
    // Lose pages behind the store's back: get must reject, never fill zeros.
    await memcachedCommand(mc.port, "flush_all");
    const into = new Uint8Array(4 * PAGE_SIZE).fill(0xaa);
    await assert.rejects(store.get(keysFrom(0, 4), into), PageLostError);
    assert.deepEqual(lostSeen, [0, 1, 2, 3]);
    await store.close();
  } finally {
    await mc.stop();
  }
});

test("memcached: the only server going down makes get and put reject clearly", async () => {
  const mc = await startMemcached();
  let lost = 0;
  const store = await openMemcachedStore([`memcached://${mc.hostPort}`], {
    replicas: 1,
    namespace: ns(),
    onLoss: (k) => lost += k.length,
  });
  try {
    await putAll(store, keysFrom(0, 10), 10);
    await mc.stop();
    const into = new Uint8Array(10 * PAGE_SIZE);
    await assert.rejects(
      store.get(keysFrom(0, 10), into),
      (e: Error) => e instanceof PageLostError && /memcached at/.test(e.message),
    );
    assert.equal(lost, 10);
    await assert.rejects(
      store.put(keysFrom(0, 1), new Uint8Array(PAGE_SIZE)),
      (e: Error) => e instanceof StoreUnavailableError && /down/.test(e.message),
    );
    assert.equal(store.health().endpoints[0].state, "down");
  } finally {
    await store.close();
    await mc.stop();
  }
});

test("memcached: text-protocol authentication (-Y) with URL user:password", async () => {
  const authFile = await Deno.makeTempFile();
  await Deno.writeTextFile(authFile, "pager:s3cret\n");
  const mc = await startMemcached({ args: ["-Y", authFile] });
  try {
    await assert.rejects(
      openMemcachedStore([`memcached://pager:wrong@${mc.hostPort}`], {
        replicas: 1,
        namespace: ns(),
      }),
      (e: Error) => e instanceof StoreUnavailableError && /refused user "pager"/.test(e.message),
    );
    await assert.rejects(
      openMemcachedStore([`memcached://${mc.hostPort}`], { replicas: 1, namespace: ns() }),
      (e: Error) => e instanceof StoreUnavailableError && /needs? a user/.test(e.message),
    );
    const store = await openMemcachedStore([`memcached://pager:s3cret@${mc.hostPort}`], {
      replicas: 1,
      namespace: ns(),
    });
    await putAll(store, keysFrom(0, 100), 50);
    await checkAll(store, keysFrom(0, 100), 50);
    await store.close();
  } finally {
    await mc.stop();
    await Deno.remove(authFile);
  }
});

// ------------------------------------------------------------------ under the pager
// The target (memcheck) checks every word of its 12 MiB each round and prints
// MISMATCH on a wrong one; the pager keeps 4 MiB of it resident, so every
// round moves thousands of pages to memcached and back.

async function readStats(file: string) {
  return JSON.parse(await Deno.readTextFile(file));
}

test("memcached under the pager: the target verifies its memory; its exit deletes every key", async () => {
  const mc = await startMemcached();
  // Slow rounds (300 ms apart) so that it is still running when the pager attaches.
  const run = await startPaged([`memcached://${mc.hostPort}`], { rounds: 14, sleepMs: 300 });
  try {
    await moreRounds(run.target, 1);
    const held = await waitAtLeast(() => memcachedItems(mc.port), 1000);
    assert.ok(held >= 1000, `evicted pages are in memcached: ${held}`);
    assert.equal(await run.target.exit(), 0, run.target.text());
    assert.equal(await run.pager.exit(), 0, run.pager.text());
    assertVerified(run.target);
    assert.match(run.target.text(), /parent done/);
    const s = await readStats(run.statsFile);
    assert.ok(s.counters.pagesEvicted > 4000, `evicted ${s.counters.pagesEvicted}`);
    assert.ok(s.counters.pagesFetched > 4000, `fetched ${s.counters.pagesFetched}`);
    assert.equal(await memcachedItems(mc.port), 0, "the exited target's keys are deleted");
  } finally {
    await run.cleanup();
    await mc.stop();
  }
});

test("memcached under the pager: --replicas 2, one of two servers killed mid-run, nothing lost; detach deletes keys", async () => {
  const a = await startMemcached(), b = await startMemcached();
  const run = await startPaged([`memcached://${a.hostPort}`, `memcached://${b.hostPort}`], {
    extra: ["--replicas", "2"],
  });
  try {
    await moreRounds(run.target, 2);
    // Every evicted page has a copy on each server.
    const onA = await waitAtLeast(() => memcachedItems(a.port), 1000);
    const onB = await waitAtLeast(() => memcachedItems(b.port), 1000);
    assert.ok(onA >= 1000 && onB >= 1000, `pages on both servers: ${onA}, ${onB}`);
    a.kill("SIGKILL");
    await moreRounds(run.target, 3);
    await run.pager.waitFor(/is down/);
    run.pager.kill("SIGTERM");
    assert.equal(await run.pager.exit(), 0, run.pager.text());
    assert.match(run.pager.text(), /detached; every page is back/);
    // The target runs on, unpaged, with all its data.
    await moreRounds(run.target, 2);
    assertVerified(run.target);
    const s = await readStats(run.statsFile);
    assert.ok(s.counters.pagesFetched > 4000, `fetched ${s.counters.pagesFetched}`);
    assert.equal(await memcachedItems(b.port), 0, "a graceful detach deletes the keys");
  } finally {
    await run.cleanup();
    await Promise.all([a.stop(), b.stop()]);
  }
});

test("memcached under the pager: a page missing from memcached stops the target (SIGSTOP), never zeros", async () => {
  const mc = await startMemcached();
  const run = await startPaged([`memcached://${mc.hostPort}`]);
  try {
    await moreRounds(run.target, 1);
    const held = await waitAtLeast(() => memcachedItems(mc.port), 1000);
    assert.ok(held >= 1000, `pages were evicted to memcached before the flush: ${held}`);
    await memcachedCommand(mc.port, "flush_all");
    assert.equal(await run.pager.exit(), 3, run.pager.text());
    assert.match(await waitStopped(run.target.pid), /^[Tt]$/, "the target is stopped");
    const lost = stderrLines(run.pager).filter((l) => /could not be read back/.test(l));
    assert.equal(lost.length, 1, run.pager.text());
    assert.match(lost[0], /SIGSTOP/);
    assert.ok(!/^\s+at /m.test(run.pager.text()), `no stack trace: ${run.pager.text()}`);
    assertVerified(run.target);
  } finally {
    await run.cleanup();
    await mc.stop();
  }
});

test("memcached under the pager: the only server going down stops the target with one clear line", async () => {
  const mc = await startMemcached();
  const run = await startPaged([`memcached://${mc.hostPort}`]);
  try {
    await moreRounds(run.target, 1);
    const held = await waitAtLeast(() => memcachedItems(mc.port), 1000);
    assert.ok(held >= 1000, `pages were evicted to memcached before it went down: ${held}`);
    await mc.stop();
    assert.equal(await run.pager.exit(), 3, run.pager.text());
    assert.match(await waitStopped(run.target.pid), /^[Tt]$/, "the target is stopped");
    const lost = stderrLines(run.pager).filter((l) => /could not be read back/.test(l));
    assert.equal(lost.length, 1, run.pager.text());
    assert.match(lost[0], new RegExp(`memcached at ${mc.hostPort}`));
    assert.ok(!/^\s+at /m.test(run.pager.text()), `no stack trace: ${run.pager.text()}`);
    assertVerified(run.target);
  } finally {
    await run.cleanup();
    await mc.stop();
  }
});

test("memcached and the pager CLI: an evicting server or one that is down is refused in one line", async () => {
  const mc = await startMemcached({ noEvict: false });
  try {
    const evicting = await runPager([
      "--backend",
      `memcached://${mc.hostPort}`,
      "--",
      "/bin/echo",
      "ran",
    ]);
    assert.equal(evicting.code, 1, evicting.p.text());
    assert.deepEqual(stderrLines(evicting.p).length, 1, evicting.p.text());
    assert.match(evicting.p.err.join("\n"), /may evict pages.*start it with -M/);
    assert.ok(!evicting.p.out.includes("ran"), "the program was not started");
  } finally {
    await mc.stop();
  }
  const port = freePort();
  const down = await runPager(["--backend", `memcached://127.0.0.1:${port}`, "--", "/bin/true"]);
  assert.equal(down.code, 1, down.p.text());
  assert.deepEqual(stderrLines(down.p), [
    `remora: cannot reach memcached at 127.0.0.1:${port}: connection refused; is it running?`,
  ]);
});
