/**
 * Peer store throughput and latency over loopback against real peer daemons:
 * pipelined batched writes and reads, pipelined single-page reads, and the
 * latency of one single-page read at a time.
 *
 * ```
 * deno run --allow-all bench/peer_bench.ts [--pages 32768] [--singles 20000] [--json FILE]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";
import { makeTokenFile, type PeerProcess, startPeer } from "../testing/peers.ts";
import { keyRange, pagesFor } from "../testing/pages.ts";
import { type FrozenFigures, frozenReplica } from "./lib/frozen.ts";

/** One row of `peer_bench.ts --json`: one setup's throughput and single-page latency. */
export interface PeerFigures {
  setup: string;
  writePagesPerSec: number;
  readPagesPerSec: number;
  singleGetPipelinedPerSec: number;
  singleGetMedianUs: number;
  singleGetP99Us: number;
  /** With replicas: one peer stopped (SIGSTOP) for 3 s, before its request timeout. */
  frozen?: FrozenFigures;
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "string" },
    pages: { type: "string", default: "32768" }, // 128 MiB
    singles: { type: "string", default: "20000" },
  },
});
const PAGES = Math.max(1024, Math.floor(Number(values.pages) / 64) * 64);
const SINGLES = Math.max(1000, Number(values.singles));
const BATCH = 64;
const IN_FLIGHT = 16;

async function pipelined(
  count: number,
  inFlight: number,
  op: (i: number) => Promise<void>,
): Promise<number> {
  const start = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (next < count) await op(next++);
  }));
  return (performance.now() - start) / 1000;
}

async function measure(setup: string, store: PageStore): Promise<PeerFigures> {
  const keys = keyRange(0, PAGES);
  const data = pagesFor(keyRange(0, BATCH));
  const batches = PAGES / BATCH;
  const writeSec = await pipelined(
    batches,
    IN_FLIGHT,
    (b) => store.put(keys.subarray(b * BATCH, (b + 1) * BATCH), data),
  );
  const buffers = Array.from({ length: IN_FLIGHT }, () => new Uint8Array(BATCH * PAGE_SIZE));
  let slot = 0;
  const readSec = await pipelined(
    batches,
    IN_FLIGHT,
    (b) => store.get(keys.subarray(b * BATCH, (b + 1) * BATCH), buffers[slot++ % IN_FLIGHT]),
  );
  const one = new Uint8Array(PAGE_SIZE);
  const singles = SINGLES;
  const singleSec = await pipelined(
    singles,
    64,
    (i) =>
      store.get(
        keys.subarray((i * 7919) % PAGES, (i * 7919) % PAGES + 1),
        new Uint8Array(PAGE_SIZE),
      ),
  );
  const latencies = new Float64Array(Math.min(5000, SINGLES));
  for (let i = 0; i < 500; i++) await store.get(keys.subarray(i, i + 1), one); // warm up
  for (let i = 0; i < latencies.length; i++) {
    const k = (i * 104729) % PAGES;
    const t = performance.now();
    await store.get(keys.subarray(k, k + 1), one);
    latencies[i] = (performance.now() - t) * 1000;
  }
  latencies.sort();
  return {
    setup,
    writePagesPerSec: Math.round(PAGES / writeSec),
    readPagesPerSec: Math.round(PAGES / readSec),
    singleGetPipelinedPerSec: Math.round(singles / singleSec),
    singleGetMedianUs: Math.round(latencies[latencies.length >> 1]),
    singleGetP99Us: Math.round(latencies[Math.floor(latencies.length * 0.99)]),
  };
}

const tokenFile = await makeTokenFile();
const peers: PeerProcess[] = [];
const results: PeerFigures[] = [];
try {
  for (let i = 0; i < 3; i++) peers.push(await startPeer({ tokenFile, capacity: "1G" }));
  for (
    const [setup, urls, replicas] of [
      ["1 peer, replicas 1", [peers[0].url], 1],
      ["3 peers, replicas 1", peers.map((p) => p.url), 1],
      ["3 peers, replicas 2", peers.map((p) => p.url), 2],
    ] as const
  ) {
    const store = await openPeerStore([...urls], {
      replicas,
      namespace: `bench:${crypto.randomUUID()}`,
      tokenFile,
      slabPages: 4096, // 16 MiB slabs (a count of pages, not the page size)
    });
    try {
      const f = await measure(setup, store);
      if (replicas === 2) f.frozen = await frozenReplica(store, peers[0], PAGES);
      results.push(f);
      console.log(
        `${setup}: write ${f.writePagesPerSec} pages/s, read ${f.readPagesPerSec} pages/s (batches of ${BATCH}, ${IN_FLIGHT} in flight); ` +
          `single-page get ${f.singleGetPipelinedPerSec}/s pipelined (64 in flight), median ${f.singleGetMedianUs} us, p99 ${f.singleGetP99Us} us one at a time`,
      );
      if (f.frozen) {
        console.log(
          `${setup}, one peer frozen ${f.frozen.seconds} s: get p99 +${f.frozen.getP99Us} us; ` +
            `put p99 ${f.frozen.putP99Us} us (before the freeze ${f.frozen.putBaseP99Us} us)`,
        );
      }
    } finally {
      await store.close();
    }
  }
} finally {
  await Promise.all(peers.map((p) => p.stop()));
  await Deno.remove(tokenFile);
}
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(results, null, 2) + "\n");
