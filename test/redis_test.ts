/**
 * Redis backend against real redis-server processes (and a real 3-node
 * Redis Cluster) on loopback.
 *
 * @module
 */

import { test, waitUntil, withPatience } from "../testing/harness.ts";
import { freePort, redisCli, startRedis, startRedisCluster } from "../testing/servers.ts";
import { checkFilled, checkPage, filledPages, keyRange, putFilled } from "../testing/pages.ts";
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
import { openRedisStore, type RedisOptions, RedisStore } from "../transport/redis.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "../transport/store.ts";
import type { PageStore } from "../transport/store.ts";
import { hashSlot } from "../transport/kv/resp.ts";

const NOEVICT = ["--maxmemory-policy", "noeviction"];

/** Stores pages for `keys` in batches of `batch`, then reads every one back and checks it. */
async function roundTrip(store: PageStore, keys: Uint32Array, batch: number, gen = 0) {
  await putFilled(store, keys, batch, gen);
  await checkFilled(store, keys, batch, gen);
}

async function dbsize(port: number): Promise<number> {
  return Number((await redisCli(["-p", String(port), "DBSIZE"])).trim());
}

test("redis: round trip of many pages with ACL user and password; close leaves zero keys", async () => {
  const r = await startRedis(NOEVICT);
  try {
    await redisCli([
      "-p",
      String(r.port),
      "ACL",
      "SETUSER",
      "pager",
      "on",
      ">s3cret",
      "~*",
      "+@all",
    ]);
    await redisCli(["-p", String(r.port), "SET", "other-tenant", "x"]);
    const namespace = uniqueNamespace();
    const store = await openRedisStore([`redis://pager:s3cret@${r.hostPort}`], {
      replicas: 1,
      namespace,
    });
    const keys = keyRange(0, 3000);
    await roundTrip(store, keys, 64);
    await roundTrip(store, keys.subarray(0, 300), 1, 1); // single-page requests, many in flight
    assert.equal(await dbsize(r.port), 3001);
    await store.delete(keys.subarray(0, 1000));
    assert.equal(store.health().pages, 2000);
    assert.equal(store.health().endpoints[0].state, "up");
    await store.close();
    assert.equal(await dbsize(r.port), 1); // only the other tenant's key is left
  } finally {
    await r.stop();
  }
});

test("redis: wrong password and missing password are one clear line", async () => {
  const r = await startRedis([...NOEVICT, "--requirepass", "pw"]);
  try {
    await assert.rejects(
      openRedisStore([`redis://:nope@${r.hostPort}`], {
        replicas: 1,
        namespace: uniqueNamespace(),
      }),
      (e: Error) => e instanceof StoreUnavailableError && /refused authentication/.test(e.message),
    );
    await assert.rejects(
      openRedisStore([`redis://${r.hostPort}`], { replicas: 1, namespace: uniqueNamespace() }),
      (e: Error) => e instanceof StoreUnavailableError && /needs a password/.test(e.message),
    );
    // The token file is the password when the URL has none.
    const tok = await Deno.makeTempFile();
    await Deno.writeTextFile(tok, "pw\n");
    const store = await openRedisStore([`redis://${r.hostPort}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
      tokenFile: tok,
    });
    await roundTrip(store, keyRange(0, 10), 10);
    await store.close();
    await Deno.remove(tok);
  } finally {
    await r.stop();
  }
});

test("redis: an evicting policy is refused; unverifiable CONFIG needs the override", async () => {
  const lru = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
  const noconfig = await startRedis([...NOEVICT, "--rename-command", "CONFIG", ""]);
  try {
    await assert.rejects(
      openRedisStore([`redis://${lru.hostPort}`], { replicas: 1, namespace: uniqueNamespace() }),
      (e: Error) =>
        e instanceof StoreUnavailableError && /allkeys-lru/.test(e.message) &&
        /maxmemory-policy noeviction/.test(e.message),
    );
    await assert.rejects(
      openRedisStore([`redis://${noconfig.hostPort}`], {
        replicas: 1,
        namespace: uniqueNamespace(),
      }),
      (e: Error) => e instanceof StoreUnavailableError && /cannot verify/.test(e.message),
    );
    const store = await openRedisStore([`redis://${noconfig.hostPort}?assume-noeviction=1`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    });
    await store.close();
  } finally {
    await Promise.all([lru.stop(), noconfig.stop()]);
  }
});

test("redis: down at start, full, flushed, and down mid-run", async () => {
  const port = freePort();
  await assert.rejects(
    openRedisStore([`redis://127.0.0.1:${port}`], { replicas: 1, namespace: uniqueNamespace() }),
    (e: Error) =>
      e instanceof StoreUnavailableError &&
      e.message === `cannot reach Redis at 127.0.0.1:${port}: connection refused; is it running?`,
  );
  const r = await startRedis([...NOEVICT, "--maxmemory", "3mb"]);
  try {
    const lost: number[] = [];
    const store = await openRedisStore([`redis://${r.hostPort}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
      onLoss: (k) => lost.push(...k),
    });
    let rejected: Error | undefined;
    for (let b = 0; b < 16 && !rejected; b++) {
      const k = keyRange(b * 256, 256);
      await store.put(k, filledPages(k)).catch((e) => rejected = e);
    }
    assert.ok(rejected instanceof StoreUnavailableError, "a 3 MB Redis must refuse 4096 pages");
    assert.match(rejected.message, /OOM/);
    await redisCli(["-p", String(r.port), "FLUSHALL"]);
    await assert.rejects(store.get(keyRange(0, 3), new Uint8Array(3 * PAGE_SIZE)), PageLostError);
    assert.deepEqual(lost, [0, 1, 2]);
    await store.put(keyRange(0, 3), filledPages(keyRange(0, 3)));
    await r.stop();
    await assert.rejects(
      store.get(keyRange(0, 3), new Uint8Array(3 * PAGE_SIZE)),
      (e: Error) => e instanceof StoreUnavailableError && /Redis at 127\.0\.0\.1/.test(e.message),
    );
    assert.equal(store.health().endpoints[0].state, "down");
    await store.close().catch(() => {});
  } finally {
    await r.stop();
  }
});

test("redis-cluster: batches span slots, MOVED and ASK are followed, close empties every node", async () => {
  const cluster = await startRedisCluster(3);
  try {
    const namespace = uniqueNamespace();
    // Seed with one node only: most keys live elsewhere.
    const store = await openRedisStore([`redis-cluster://${cluster.nodes[0].hostPort}`], {
      replicas: 1,
      namespace,
    }) as RedisStore;
    const keys = keyRange(0, 2000);
    await roundTrip(store, keys, 100);
    const sizes = await Promise.all(cluster.nodes.map((n) => dbsize(n.port)));
    assert.equal(sizes.reduce((a, b) => a + b), 2000);
    assert.ok(sizes.every((s) => s > 300), `keys spread over the nodes: ${sizes}`);
    const h = store.health();
    assert.equal(h.endpoints.length, 3);
    assert.equal(h.endpoints.reduce((a, e) => a + e.pages, 0), 2000);

    // Migrate the slot of key 5 from its owner to another node, behind the
    // store's back: first half-way (ASK), then completely (MOVED).
    const keyName = new TextEncoder().encode(`${namespace}:5`);
    const slot = hashSlot(keyName);
    const ids = await Promise.all(
      cluster.nodes.map(async (n) =>
        (await redisCli(["-p", String(n.port), "CLUSTER", "MYID"])).trim()
      ),
    );
    const owners = await Promise.all(
      cluster.nodes.map(async (n) =>
        Number(await redisCli(["-p", String(n.port), "CLUSTER", "COUNTKEYSINSLOT", String(slot)]))
      ),
    );
    const src = owners.findIndex((c) => c > 0);
    const dst = (src + 1) % 3;
    const sp = String(cluster.nodes[src].port), dp = String(cluster.nodes[dst].port);
    await redisCli(["-p", dp, "CLUSTER", "SETSLOT", String(slot), "IMPORTING", ids[src]]);
    await redisCli(["-p", sp, "CLUSTER", "SETSLOT", String(slot), "MIGRATING", ids[dst]]);
    const inSlot = (await redisCli(["-p", sp, "CLUSTER", "GETKEYSINSLOT", String(slot), "1000"]))
      .trim().split("\n").filter((s) => s);
    assert.ok(inSlot.includes(`${namespace}:5`));
    // Move key 5 only: reading it now needs ASK; its slot-mates still answer at the source.
    await redisCli(["-p", sp, "MIGRATE", "127.0.0.1", dp, `${namespace}:5`, "0", "5000"]);
    await roundTrip(store, keyRange(0, 20), 20, 3);
    assert.ok(store.redirections.ask >= 1, "ASK followed");
    // Finish the migration and hand the slot over: the store's map is now stale.
    const rest = (await redisCli(["-p", sp, "CLUSTER", "GETKEYSINSLOT", String(slot), "1000"]))
      .trim().split("\n").filter((s) => s);
    if (rest.length > 0) {
      await redisCli(["-p", sp, "MIGRATE", "127.0.0.1", dp, "", "0", "5000", "KEYS", ...rest]);
    }
    for (const n of cluster.nodes) {
      await redisCli(["-p", String(n.port), "CLUSTER", "SETSLOT", String(slot), "NODE", ids[dst]]);
    }
    const into = new Uint8Array(PAGE_SIZE);
    await store.get(Uint32Array.of(5), into);
    checkPage(into, 0, 5, 3);
    assert.ok(store.redirections.moved >= 1, "MOVED followed");
    await roundTrip(store, keys, 250, 4);
    await store.close();
    const after = await Promise.all(cluster.nodes.map((n) => dbsize(n.port)));
    assert.deepEqual(after, [0, 0, 0]);

    // A master dying with no replica: its pages fail clearly (never zeros),
    // pages on the other masters still read.
    const s2 = await openRedisStore([`redis-cluster://${cluster.nodes[1].hostPort}`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    });
    const k2 = keyRange(0, 300);
    await roundTrip(s2, k2, 100);
    cluster.nodes[2].kill("SIGKILL");
    let failed = 0;
    for (let i = 0; i < k2.length; i += 60) {
      const into = new Uint8Array(60 * PAGE_SIZE);
      try {
        // Each batch must end, failing or not, instead of hanging.
        await withPatience("a batch to end", s2.get(k2.subarray(i, i + 60), into));
      } catch (e) {
        assert.ok(e instanceof StoreUnavailableError, String(e));
        assert.match((e as Error).message, /cannot reach Redis at|CLUSTERDOWN/);
        failed++;
      }
    }
    assert.ok(failed > 0, "batches touching the dead master fail");
    assert.equal(
      s2.health().endpoints.find((e) => e.address.endsWith(`:${cluster.nodes[2].port}`))?.state,
      "down",
    );
    await s2.close().catch(() => {});
  } finally {
    await cluster.stop();
  }
});

test("redis: replicas=2 makes every put wait for a Redis replica (WAIT)", async () => {
  const master = await startRedis([...NOEVICT, "--repl-diskless-sync-delay", "0"]);
  const replica = await startRedis([...NOEVICT, "--replicaof", "127.0.0.1", String(master.port)]);
  try {
    await waitUntil(
      "the Redis replica to attach to its master",
      async () =>
        (await redisCli(["-p", String(master.port), "INFO", "replication"])).includes(
          "connected_slaves:1",
        ),
    );
    const store = await openRedisStore([`redis://${master.hostPort}`], {
      replicas: 2,
      namespace: uniqueNamespace(),
      requestTimeoutMs: 2000,
    } as RedisOptions);
    await roundTrip(store, keyRange(0, 500), 50);
    assert.equal(await dbsize(replica.port), 500);
    await replica.stop();
    await assert.rejects(
      store.put(keyRange(0, 1), filledPages(keyRange(0, 1))),
      (e: Error) => e instanceof StoreUnavailableError && /replica/.test(e.message),
    );
    await store.close();
  } finally {
    await Promise.all([replica.stop(), master.stop()]);
  }
});

test("redis: rediss:// over TLS with a private CA (?ca-file=)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "remora-tls-" });
  const ssl = async (args: string[]) => {
    const out = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  };
  await ssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=remora-test-ca",
  ]);
  await ssl([
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "srv.key",
    "-out",
    "srv.csr",
    "-subj",
    "/CN=127.0.0.1",
  ]);
  await Deno.writeTextFile(`${dir}/ext.cnf`, "subjectAltName=IP:127.0.0.1\n");
  await ssl([
    "x509",
    "-req",
    "-in",
    "srv.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "srv.pem",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
  ]);
  const port = freePort();
  const r = await startRedis([
    ...NOEVICT,
    "--tls-port",
    String(port),
    "--tls-cert-file",
    `${dir}/srv.pem`,
    "--tls-key-file",
    `${dir}/srv.key`,
    "--tls-ca-cert-file",
    `${dir}/ca.pem`,
    "--tls-auth-clients",
    "no",
  ]);
  try {
    const store = await openRedisStore([`rediss://127.0.0.1:${port}?ca-file=${dir}/ca.pem`], {
      replicas: 1,
      namespace: uniqueNamespace(),
    });
    await roundTrip(store, keyRange(0, 200), 50);
    await store.close();
    assert.equal(await dbsize(r.port), 0);
    await assert.rejects(
      openRedisStore([`rediss://127.0.0.1:${port}`], { replicas: 1, namespace: uniqueNamespace() }),
      (e: Error) => e instanceof StoreUnavailableError && /TLS/.test(e.message),
    );
  } finally {
    await r.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// ------------------------------------------------------------------ under the pager
// The target (memcheck) checks every word of its 12 MiB each round and prints
// MISMATCH on a wrong one; the pager keeps 4 MiB of it resident, so every
// round moves thousands of pages to Redis and back.

test("redis under the pager: an ACL user's target verifies its memory; its exit deletes every key", async () => {
  const r = await startRedis(NOEVICT);
  try {
    await redisCli(["-p", String(r.port), "ACL", "SETUSER", "pager", "on", ">pw", "~*", "+@all"]);
    await redisCli(["-p", String(r.port), "ACL", "SETUSER", "default", "off"]);
    // Slow rounds (300 ms apart) so that it is still running when the pager attaches.
    const run = await startPaged([`redis://pager:pw@${r.hostPort}`], { rounds: 14, sleepMs: 300 });
    try {
      await moreRounds(run.target, 1);
      const held = await waitAtLeast(
        async () =>
          Number(
            await redisCli(["-p", String(r.port), "--user", "pager", "--pass", "pw", "DBSIZE"]),
          ),
        1000,
      );
      assert.ok(held >= 1000, `evicted pages are in Redis: ${held}`);
      assert.equal(await run.target.exit(), 0, run.target.text());
      assert.equal(await run.pager.exit(), 0, run.pager.text());
      assertVerified(run.target);
      assert.match(run.target.text(), /parent done/);
      const s = await readStats(run);
      assert.ok(s.counters.pagesEvicted > 4000, `evicted ${s.counters.pagesEvicted}`);
      assert.ok(s.counters.pagesFetched > 4000, `fetched ${s.counters.pagesFetched}`);
      const left = await redisCli([
        "-p",
        String(r.port),
        "--user",
        "pager",
        "--pass",
        "pw",
        "DBSIZE",
      ]);
      assert.equal(Number(left), 0, "the exited target's keys are deleted");
    } finally {
      await run.cleanup();
    }
  } finally {
    await r.stop();
  }
});

test("redis-cluster under the pager: the target verifies across 3 masters; detach empties every node", async () => {
  const cluster = await startRedisCluster(3);
  try {
    const run = await startPaged([`redis-cluster://${cluster.nodes[0].hostPort}`]);
    try {
      await moreRounds(run.target, 2);
      const sizes = await Promise.all(
        cluster.nodes.map((n) => waitAtLeast(() => dbsize(n.port), 200)),
      );
      assert.ok(sizes.every((s) => s > 200), `pages spread over the masters: ${sizes}`);
      run.pager.kill("SIGTERM");
      assert.equal(await run.pager.exit(), 0, run.pager.text());
      assert.match(run.pager.text(), /detached; every page is back/);
      await moreRounds(run.target, 2);
      assertVerified(run.target);
      const s = await readStats(run);
      assert.ok(s.counters.pagesFetched > 4000, `fetched ${s.counters.pagesFetched}`);
      const after = await Promise.all(cluster.nodes.map((n) => dbsize(n.port)));
      assert.deepEqual(after, [0, 0, 0], "a graceful detach deletes the keys");
    } finally {
      await run.cleanup();
    }
  } finally {
    await cluster.stop();
  }
});

for (const how of ["flushed", "killed"] as const) {
  test(`redis under the pager: a server ${how} mid-run stops the target (SIGSTOP) with one clear line`, async () => {
    const r = await startRedis(NOEVICT);
    try {
      const run = await startPaged([`redis://${r.hostPort}`]);
      try {
        await moreRounds(run.target, 1);
        const held = await waitAtLeast(() => dbsize(r.port), 1000);
        assert.ok(held >= 1000, `pages were evicted to Redis before it was ${how}: ${held}`);
        if (how === "flushed") await redisCli(["-p", String(r.port), "FLUSHALL"]);
        else await r.stop();
        await assertStoppedOnLoss(
          run,
          how === "flushed" ? /missing from Redis/ : /Redis at 127\.0\.0\.1/,
        );
      } finally {
        await run.cleanup();
      }
    } finally {
      await r.stop();
    }
  });
}

test("redis and the pager CLI: an evicting policy or a server that is down is refused in one line", async () => {
  const lru = await startRedis(["--maxmemory-policy", "allkeys-lru"]);
  try {
    await assertRefusedAtStart(
      `redis://${lru.hostPort}`,
      /maxmemory-policy allkeys-lru.*set maxmemory-policy noeviction/,
    );
  } finally {
    await lru.stop();
  }
  await assertDownRefused("redis", "Redis");
});
