/**
 * Peers as separate hosts: each peer in its own network namespace with its
 * own address (testing/netns.ts), so that one can be cut off with no reset
 * to tell anyone, and healed, while another freezes (SIGSTOP) and resumes.
 */

import assert from "node:assert/strict";
import { test, waitUntil, withPatience } from "../testing/harness.ts";
import { type TestHosts, withHosts } from "../testing/netns.ts";
import { keyRange, pagesFor, verifyStored } from "../testing/pages.ts";
import {
  assertNoMismatch,
  detachAndVerify,
  roundsMore,
  withPagerRun,
} from "../testing/pager_run.ts";
import {
  drainPeer,
  lentBytes,
  makeTokenFile,
  type PeerProcess,
  startPeer,
} from "../testing/peers.ts";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE } from "../transport/store.ts";

const SLAB_PAGES = 64;

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
          verifyStored(store, keys, version),
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
      await verifyStored(store, keys, 3);
      await store.put(keys, pagesFor(keys, 4));
      for (let i = 0; i < 3; i++) await verifyStored(store, keys, 4);
    } finally {
      await store.close();
    }
  });
});

test("pager --replicas 2 on three hosts: one frozen 10 s, one cut off and healed, one drained by half; the target verifies throughout", async () => {
  await withHosts(3, async (hosts) => {
    await withPagerRun(async (run) => {
      const peers = await run.peers(3, hosts.hosts);
      // 1 MiB slabs: the 5 MiB the pager keeps remote spread over all three.
      const { pager } = await run.pager(peers, "--replicas", "2", "--slab-size", "1M");
      const [frozen, cut, drained] = peers;
      const lent = (p: PeerProcess) => lentBytes(p, run.tokenFile);
      await waitUntil("every peer lending", async () => {
        for (const p of peers) if ((await lent(p)) === 0) return false;
        return true;
      });
      await roundsMore(pager, 2);

      frozen.signal("SIGSTOP");
      try {
        await roundsMore(pager, 2);
        await pager.waitFor(new RegExp(`peer ${frozen.url} is down`));
        await roundsMore(pager, 2);
        await new Promise((r) => setTimeout(r, 10_000)); // the rest of a 10 s freeze
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
      await roundsMore(pager, 2);

      // Both others were gone in turn: the third holds a copy of every slab.
      const before = await lent(drained);
      const half = Math.floor(before / 2 ** 21) * 2 ** 20;
      assert.ok(half > 0, `the peer to drain lends only ${before} bytes`);
      const out = await drainPeer(drained, run.tokenFile, ["--bytes", String(half)]);
      assert.equal(out.code, 0, out.output);
      await pager.waitFor(new RegExp(`peer ${drained.url} asked for \\d+ slab\\(s\\) back`));
      assert.ok((await lent(drained)) <= before - half);
      assert.ok((await lent(drained)) > 0, "a partial drain took everything");
      await roundsMore(pager, 3);
      assertNoMismatch(pager);

      await detachAndVerify(pager);
    });
  });
});

test("a delayed link (testing/netns.ts relay) keeps a stream whole and in order and adds its delay", async () => {
  await withHosts(1, async (hosts) => {
    const delay = { delayUs: 200, jitterUs: 100 };
    const rtt = await hosts.linkRoundTrip(0, delay, 200);
    // A lower bound only: a slower machine makes the round trip longer, never shorter.
    assert.ok(
      rtt.p50Us >= 2 * delay.delayUs,
      `round trip p50 ${rtt.p50Us} us through a 200 us link`,
    );
    const echo = await hosts.echoPort(0);
    const port = await hosts.delayedPort(0, echo, delay);
    const conn = await Deno.connect({ hostname: hosts.hosts[0].address, port });
    try {
      const sent = new Uint8Array(4 << 20);
      for (let i = 0; i < sent.length; i += 65536) {
        crypto.getRandomValues(sent.subarray(i, i + 65536));
      }
      const writing = (async () => {
        // Pieces of uneven sizes; a write may take only part of one.
        for (let at = 0; at < sent.length;) {
          at += await conn.write(sent.subarray(at, Math.min(sent.length, at + 1000 + (at % 7919))));
        }
      })();
      const got = new Uint8Array(sent.length);
      let have = 0;
      while (have < got.length) {
        const n = await withPatience(
          `echoed byte ${have} of ${got.length}`,
          conn.read(got.subarray(have)),
        );
        assert.ok(n !== null, `the relay closed after ${have} bytes`);
        have += n;
      }
      await writing;
      assert.ok(got.every((b, i) => b === sent[i]), "the echoed stream differs from what was sent");
    } finally {
      conn.close();
    }
  });
});

test("peers behind shaped links (delay with jitter, loss, a rate) page a target that verifies every word", async () => {
  await withHosts(3, async (hosts) => {
    await withPagerRun(async (run) => {
      const peers = await run.peers(3, hosts.hosts);
      const behindLinks: PeerProcess[] = [];
      for (let i = 0; i < peers.length; i++) {
        await hosts.shape(i, { lossPercent: 0.5, rate: "200mbit" });
        const port = await hosts.delayedPort(i, peers[i].port, { delayUs: 25, jitterUs: 20 });
        behindLinks.push({ ...peers[i], url: `tcp://${hosts.hosts[i].address}:${port}` });
      }
      const { pager } = await run.pager(behindLinks, "--replicas", "2", "--slab-size", "1M");
      await roundsMore(pager, 3);
      // Pages went through the shaped links to two of the three peers.
      const lending = async () => {
        let n = 0;
        for (const p of peers) if ((await lentBytes(p, run.tokenFile)) > 0) n++;
        return n;
      };
      await waitUntil("two peers lending (--replicas 2)", async () => (await lending()) >= 2);
      assertNoMismatch(pager);
      await detachAndVerify(pager);
    });
  });
});
