/**
 * Peers as separate hosts: each peer in its own network namespace with its
 * own address (testing/netns.ts), so that one can be cut off with no reset
 * to tell anyone, and healed, while another freezes (SIGSTOP) and resumes.
 */

import assert from "node:assert/strict";
import { test, waitUntil, withPatience } from "../testing/harness.ts";
import { type TestHosts, withHosts } from "../testing/netns.ts";
import { keyRange, pagesFor } from "../testing/pages.ts";
import { assertNoMismatch, roundsMore, withPagerRun } from "../testing/pager_run.ts";
import { makeTokenFile, type PeerProcess, slabHolders, startPeer } from "../testing/peers.ts";
import { openPeerStore } from "../transport/tcp.ts";
import { PeerConnection } from "../transport/tcp/connection.ts";
import { MsgType } from "../transport/tcp/protocol.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";
import { readSecretFile } from "../transport/token.ts";
import { decodeStat } from "../transport/tcp/connection.ts";

const SLAB_PAGES = 64;

async function verify(store: PageStore, keys: Uint32Array, version: number): Promise<void> {
  const into = new Uint8Array(keys.length * PAGE_SIZE);
  await store.get(keys, into);
  const expected = pagesFor(keys, version);
  for (let i = 0; i < keys.length; i++) {
    const at = i * PAGE_SIZE;
    for (let j = 0; j < PAGE_SIZE; j++) {
      if (into[at + j] !== expected[at + j]) assert.fail(`page of key ${keys[i]} differs`);
    }
  }
}

/** Bytes peer `peer` has lent to all sessions, asked over a session of our own. */
async function lentBytes(peer: PeerProcess, tokenFile: string): Promise<number> {
  const [hostname, port] = peer.hostPort.split(":");
  const conn = await PeerConnection.open(
    { address: peer.url, hostname, port: Number(port), tls: false },
    await readSecretFile(tokenFile),
    `test:observer:${crypto.randomUUID()}`,
  );
  try {
    const stat = decodeStat(await conn.request(MsgType.STAT));
    return stat.capacityBytes - stat.freeBytes;
  } finally {
    await conn.close();
  }
}

async function withHostPeers(
  count: number,
  fn: (hosts: TestHosts, peers: PeerProcess[], tokenFile: string) => Promise<void>,
): Promise<void> {
  const tokenFile = await makeTokenFile();
  try {
    await withHosts(count, async (hosts) => {
      const peers: PeerProcess[] = [];
      try {
        for (const host of hosts.hosts) peers.push(await startPeer({ tokenFile, host }));
        await fn(hosts, peers, tokenFile);
      } finally {
        await Promise.all(peers.map((p) => p.stop()));
      }
    });
  } finally {
    await Deno.remove(tokenFile);
  }
}

test("a peer host cut off mid-run is declared down and re-replicated; healed, it joins again and lends only what it holds", async () => {
  await withHostPeers(3, async (hosts, peers, tokenFile) => {
    const store = await openPeerStore(peers.map((p) => p.url), {
      replicas: 2,
      namespace: `test:${crypto.randomUUID()}`,
      tokenFile,
      slabPages: SLAB_PAGES,
      reconnectMs: 200,
    });
    try {
      const keys = keyRange(0, 10 * SLAB_PAGES);
      await store.put(keys, pagesFor(keys, 0));
      assert.ok(store.health().endpoints[0].pages > 0, "the cut-off host held nothing");
      await hosts.partition(0);
      // Writes and reads go on while the link silently drops everything.
      for (let version = 1; version <= 3; version++) {
        await withPatience(
          `writes of version ${version} while cut off`,
          store.put(keys, pagesFor(keys, version)),
        );
        await withPatience(
          `reads of version ${version} while cut off`,
          verify(store, keys, version),
        );
      }
      await waitUntil("the cut-off peer down and replication deficit 0", () => {
        const h = store.health();
        return h.endpoints[0].state === "down" && h.replicationDeficit === 0;
      });
      assert.equal(store.health().endpoints[0].pages, 0);
      await hosts.heal(0);
      await waitUntil("the healed peer up again", () => store.health().endpoints[0].state === "up");
      // Its old copies were given up while it was gone: it must not hold
      // them too (double counting), nor ever serve them.
      const held = () => store.health().endpoints[0].pages;
      await waitUntil(
        () => `the healed peer lending only the ${held()} pages the store places there`,
        async () =>
          (await lentBytes(peers[0], tokenFile)) ===
            Math.ceil(held() / SLAB_PAGES) * SLAB_PAGES * PAGE_SIZE,
      );
      await verify(store, keys, 3);
      await store.put(keys, pagesFor(keys, 4));
      for (let i = 0; i < 3; i++) await verify(store, keys, 4);
    } finally {
      await store.close();
    }
  });
});

test("pager --replicas 2 on three hosts: a holder frozen 10 s, then another cut off and healed; the target verifies throughout", async () => {
  await withHosts(3, async (hosts) => {
    await withPagerRun(async (run) => {
      const peers = await run.peers(3, hosts.hosts);
      const { pager } = await run.pager(peers, "--replicas", "2");
      // 6 MiB is one slab: exactly two peers hold it once the pager evicted.
      await waitUntil("two peers holding the slab", () => slabHolders(peers).length === 2);
      await roundsMore(pager, 2);
      const [frozen, cut] = slabHolders(peers);
      const spare = peers.find((p) => p !== frozen && p !== cut)!;

      frozen.signal("SIGSTOP");
      try {
        await roundsMore(pager, 2);
        await pager.waitFor(new RegExp(`peer ${frozen.url} is down`));
        await waitUntil("the copy on the spare peer", () => slabHolders([spare]).length === 1);
        await roundsMore(pager, 2);
        await new Promise((r) => setTimeout(r, 10_000)); // the rest of the 10 s freeze
      } finally {
        frozen.signal("SIGCONT");
      }
      await pager.waitFor(new RegExp(`peer ${frozen.url} is back`));
      await roundsMore(pager, 2);

      await hosts.partition(peers.indexOf(cut));
      await roundsMore(pager, 2);
      await pager.waitFor(new RegExp(`peer ${cut.url} is down`));
      await roundsMore(pager, 2);
      await hosts.heal(peers.indexOf(cut));
      await pager.waitFor(new RegExp(`peer ${cut.url} is back`));
      await roundsMore(pager, 3);
      assertNoMismatch(pager);

      pager.kill("SIGTERM");
      assert.equal((await pager.status).code, 0, pager.output());
      assert.match(pager.output(), /detached; every page is back/);
      await roundsMore(pager, 1);
      assertNoMismatch(pager);
    });
  });
});
