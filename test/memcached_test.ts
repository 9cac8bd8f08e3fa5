/**
 * memcached backend against real memcached processes on loopback.
 *
 * @module
 */

import { test, waitUntil } from "../testing/harness.ts";
import { freePort, memcachedCommand, memcachedItems, startMemcached } from "../testing/servers.ts";
import { checkFilled, keyRange, putFilled } from "../testing/pages.ts";
import {
  assertDownRefused,
  assertRefusedAtStart,
  assertStoppedOnLoss,
  assertVerified,
  moreRounds,
  readStats,
  startPaged,
  uniqueNamespace,
  waitAtLeast,
} from "./helpers/paged.ts";
import assert from "node:assert/strict";
import { openMemcachedStore } from "../transport/memcached.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "../transport/store.ts";

test("memcached: round trip of many pages, overwrite, delete, close leaves nothing", async () => {
  const mc = await startMemcached();
  try {
    const store = await openMemcachedStore([`memcached://${mc.hostPort}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    });
    const keys = keyRange(7, 3000, 3);
    await putFilled(store, keys, 64);
    await checkFilled(store, keys, 50);
    // Single-page gets, many in flight.
    await checkFilled(store, keys.subarray(0, 200), 1);
    // Overwrite half, then read everything back.
    await putFilled(store, keys.subarray(0, 1500), 100, 1);
    await checkFilled(store, keys.subarray(0, 1500), 100, 1);
    await checkFilled(store, keys.subarray(1500), 100, 0);
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
      namespace: uniqueNamespace(),
    });
    const keys = keyRange(0, 1500);
    await putFilled(store, keys, 64);
    // Both servers hold every page.
    assert.equal(await memcachedItems(a.port), 1500);
    assert.equal(await memcachedItems(b.port), 1500);
    assert.equal(store.health().replicationDeficit, 0);
    // Crash one while reads are in flight.
    const reading = checkFilled(store, keys, 32);
    a.kill("SIGKILL");
    await reading;
    await checkFilled(store, keys, 64);
    const h = store.health();
    assert.equal(h.endpoints.find((e) => e.address.endsWith(`:${a.port}`))!.state, "down");
    assert.equal(h.replicationDeficit, 1500);
    // Writes go on to the survivor.
    await putFilled(store, keys.subarray(0, 100), 50, 2);
    await checkFilled(store, keys.subarray(0, 100), 50, 2);
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
      namespace: uniqueNamespace(),
    });
    const keys = keyRange(100, 900);
    await putFilled(store, keys, 64);
    const total = (await Promise.all(servers.map((s) => memcachedItems(s.port)))).reduce((x, y) =>
      x + y
    );
    assert.equal(total, 1800);
    servers[1].kill("SIGKILL");
    await checkFilled(store, keys, 64);
    await waitUntil("re-replication to end", () => store.health().replicationDeficit === 0);
    const left = (await memcachedItems(servers[0].port)) + (await memcachedItems(servers[2].port));
    assert.equal(left, 1800);
    // Now losing a second server still loses nothing.
    servers[0].kill("SIGKILL");
    await checkFilled(store, keys, 64);
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
      openMemcachedStore([`memcached://${mc.hostPort}`], {
        replicas: 1,
        namespace: uniqueNamespace(),
      }),
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
    openMemcachedStore([`memcached://127.0.0.1:${port}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    }),
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
      namespace: uniqueNamespace(),
      onLoss: (k) => lostSeen.push(...k),
    });
    let rejected: Error | undefined;
    for (let b = 0; b < 64 && !rejected; b++) {
      try {
        await putFilled(store, keyRange(b * 256, 256), 256);
      } catch (e) {
        rejected = e as Error;
      }
    }
    assert.ok(rejected, "a 2 MB memcached must refuse some of 16k pages");
    assert.match(rejected.message, /out of memory/);
    // Pages stored before it filled are intact.
    await checkFilled(store, keyRange(0, 64), 64);
    // Lose pages behind the store's back: get must reject, never fill zeros.
    await memcachedCommand(mc.port, "flush_all");
    const into = new Uint8Array(4 * PAGE_SIZE).fill(0xaa);
    await assert.rejects(store.get(keyRange(0, 4), into), PageLostError);
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
    namespace: uniqueNamespace(),
    onLoss: (k) => lost += k.length,
  });
  try {
    await putFilled(store, keyRange(0, 10), 10);
    await mc.stop();
    const into = new Uint8Array(10 * PAGE_SIZE);
    await assert.rejects(
      store.get(keyRange(0, 10), into),
      (e: Error) => e instanceof PageLostError && /memcached at/.test(e.message),
    );
    assert.equal(lost, 10);
    await assert.rejects(
      store.put(keyRange(0, 1), new Uint8Array(PAGE_SIZE)),
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
        namespace: uniqueNamespace(),
      }),
      (e: Error) => e instanceof StoreUnavailableError && /refused user "pager"/.test(e.message),
    );
    await assert.rejects(
      openMemcachedStore([`memcached://${mc.hostPort}`], {
        replicas: 1,
        namespace: uniqueNamespace(),
      }),
      (e: Error) => e instanceof StoreUnavailableError && /needs? a user/.test(e.message),
    );
    const store = await openMemcachedStore([`memcached://pager:s3cret@${mc.hostPort}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    });
    await putFilled(store, keyRange(0, 100), 50);
    await checkFilled(store, keyRange(0, 100), 50);
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
    const s = await readStats(run);
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
    const s = await readStats(run);
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
    await assertStoppedOnLoss(run, /SIGSTOP/);
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
    await assertStoppedOnLoss(run, new RegExp(`memcached at ${mc.hostPort}`));
  } finally {
    await run.cleanup();
    await mc.stop();
  }
});

test("memcached and the pager CLI: an evicting server or one that is down is refused in one line", async () => {
  const mc = await startMemcached({ noEvict: false });
  try {
    await assertRefusedAtStart(`memcached://${mc.hostPort}`, /may evict pages.*start it with -M/);
  } finally {
    await mc.stop();
  }
  await assertDownRefused("memcached", "memcached");
});
