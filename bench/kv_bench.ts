/**
 * Loopback benchmark of the memcached and Redis page stores: per-request
 * latency (median, p99) of single-page get and put with one request in
 * flight (what one fault costs), and throughput of batched get/put with
 * several batches in flight (what eviction and prefetch see).
 *
 * ```
 * deno run --allow-all bench/kv_bench.ts [--pages 20000] [--cluster] [--json FILE]
 * ```
 *
 * Starts its own servers on free loopback ports and stops them at the end.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { openMemcachedStore } from "../transport/memcached.ts";
import { openRedisStore } from "../transport/redis.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";
import { startMemcached, startRedis, startRedisCluster } from "../testing/servers.ts";

const { values } = parseArgs({
  options: {
    pages: { type: "string", default: "20000" },
    single: { type: "string", default: "3000" },
    batch: { type: "string", default: "32" },
    inflight: { type: "string", default: "4" },
    cluster: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const PAGES = Number(values.pages), SINGLE = Number(values.single);
const BATCH = Number(values.batch), INFLIGHT = Number(values.inflight);

interface Result {
  backend: string;
  getMedianUs: number;
  getP99Us: number;
  putMedianUs: number;
  putP99Us: number;
  batchPutPagesPerSec: number;
  batchGetPagesPerSec: number;
}

function pct(sorted: Float64Array, p: number): number {
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]);
}

async function measure(backend: string, store: PageStore): Promise<Result> {
  const page = new Uint8Array(PAGE_SIZE);
  crypto.getRandomValues(page);
  const one = new Uint32Array(1);
  // Warm up connections and the JIT.
  for (let i = 0; i < 1500; i++) {
    one[0] = i;
    await store.put(one, page);
    await store.get(one, page);
  }
  const put = new Float64Array(SINGLE), get = new Float64Array(SINGLE);
  for (let i = 0; i < SINGLE; i++) {
    one[0] = i;
    const t0 = performance.now();
    await store.put(one, page);
    put[i] = (performance.now() - t0) * 1000;
  }
  for (let i = 0; i < SINGLE; i++) {
    one[0] = (i * 7919) % SINGLE;
    const t0 = performance.now();
    await store.get(one, page);
    get[i] = (performance.now() - t0) * 1000;
  }
  put.sort();
  get.sort();

  const pages = new Uint8Array(BATCH * PAGE_SIZE);
  crypto.getRandomValues(pages.subarray(0, 65536));
  const run = async (op: "put" | "get"): Promise<number> => {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: INFLIGHT }, async () => {
      const buf = new Uint8Array(BATCH * PAGE_SIZE);
      buf.set(pages);
      const keys = new Uint32Array(BATCH);
      while (next < PAGES) {
        const base = next;
        next += BATCH;
        for (let j = 0; j < BATCH; j++) keys[j] = 100000 + ((base + j) % PAGES);
        if (op === "put") await store.put(keys, buf);
        else await store.get(keys, buf);
      }
    }));
    return Math.round(PAGES / ((performance.now() - t0) / 1000));
  };
  const batchPutPagesPerSec = await run("put");
  const batchGetPagesPerSec = await run("get");
  return {
    backend,
    getMedianUs: pct(get, 0.5),
    getP99Us: pct(get, 0.99),
    putMedianUs: pct(put, 0.5),
    putP99Us: pct(put, 0.99),
    batchPutPagesPerSec,
    batchGetPagesPerSec,
  };
}

const results: Result[] = [];
const namespace = `remora:bench:${Deno.pid}`;
{
  const mc = await startMemcached({ memoryMb: 512 });
  try {
    const store = await openMemcachedStore([`memcached://${mc.hostPort}`], {
      replicas: 1,
      namespace,
    });
    results.push(await measure("memcached", store));
    await store.close();
  } finally {
    await mc.stop();
  }
}
{
  const a = await startMemcached({ memoryMb: 512 }), b = await startMemcached({ memoryMb: 512 });
  try {
    const store = await openMemcachedStore([
      `memcached://${a.hostPort}`,
      `memcached://${b.hostPort}`,
    ], {
      replicas: 2,
      namespace,
    });
    results.push(await measure("memcached x2, replicas=2", store));
    await store.close();
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}
{
  const r = await startRedis(["--maxmemory-policy", "noeviction"]);
  try {
    const store = await openRedisStore([`redis://${r.hostPort}`], { replicas: 1, namespace });
    results.push(await measure("redis", store));
    await store.close();
  } finally {
    await r.stop();
  }
}
if (values.cluster) {
  const c = await startRedisCluster(3);
  try {
    const store = await openRedisStore([`redis-cluster://${c.nodes[0].hostPort}`], {
      replicas: 1,
      namespace,
    });
    results.push(await measure("redis-cluster x3", store));
    await store.close();
  } finally {
    await c.stop();
  }
}

console.log(
  `pages=${PAGES} batch=${BATCH} inflight=${INFLIGHT} single=${SINGLE} (4 KiB pages, loopback)\n` +
    "backend                    get med/p99 us   put med/p99 us   batch put pages/s   batch get pages/s",
);
for (const r of results) {
  console.log(
    `${r.backend.padEnd(26)} ${`${r.getMedianUs}/${r.getP99Us}`.padStart(14)}   ${
      `${r.putMedianUs}/${r.putP99Us}`.padStart(14)
    }   ${String(r.batchPutPagesPerSec).padStart(17)}   ${
      String(r.batchGetPagesPerSec).padStart(17)
    }`,
  );
}
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(results, null, 2) + "\n");
