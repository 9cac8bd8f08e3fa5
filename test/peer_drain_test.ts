/**
 * Partial drains, Infiniswap-style: a peer gives back part of its memory
 * (`peer drain --bytes`, or by itself under `--reserve`); the owners move
 * the slabs it asks back and keep using the rest, every page intact.
 */

import assert from "node:assert/strict";
import { test, waitUntil } from "../testing/harness.ts";
import { keyRange, pagesFor, verifyStored } from "../testing/pages.ts";
import {
  drainPeer,
  lentBytes,
  makeTokenFile,
  type PeerProcess,
  startPeer,
} from "../testing/peers.ts";
import {
  assertNoMismatch,
  detachAndVerify,
  roundsMore,
  withPagerRun,
} from "../testing/pager_run.ts";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE, type PageStore } from "../transport/store.ts";

const SLAB_PAGES = 64;
const SLAB_BYTES = SLAB_PAGES * PAGE_SIZE;

async function withStoreOnPeers(
  peerArgs: string[][],
  fn: (store: PageStore, peers: PeerProcess[], tokenFile: string) => Promise<void>,
): Promise<void> {
  const tokenFile = await makeTokenFile();
  const peers: PeerProcess[] = [];
  try {
    for (const args of peerArgs) peers.push(await startPeer({ tokenFile, args }));
    const store = await openPeerStore(peers.map((p) => p.url), {
      replicas: 2,
      namespace: `test:${crypto.randomUUID()}`,
      tokenFile,
      slabPages: SLAB_PAGES,
      reconnectMs: 200,
    });
    try {
      await fn(store, peers, tokenFile);
    } finally {
      await store.close();
    }
  } finally {
    await Promise.all(peers.map((p) => p.stop()));
    await Deno.remove(tokenFile);
  }
}

test("peer drain --bytes half: the peer asks back about half its slabs, the owner moves them, the rest stay", async () => {
  await withStoreOnPeers([[], [], []], async (store, peers, tokenFile) => {
    const keys = keyRange(0, 30 * SLAB_PAGES);
    await store.put(keys, pagesFor(keys, 1));
    const before = await lentBytes(peers[0], tokenFile);
    assert.ok(before >= 4 * SLAB_BYTES, `peer 0 lends only ${before} bytes`);
    const half = Math.floor(before / SLAB_BYTES / 2) * SLAB_BYTES;
    // Writes go on while the slabs move: a move must never bring back an older page.
    let version = 1;
    let writing = true;
    const writer = (async () => {
      while (writing) {
        version++;
        await store.put(keys, pagesFor(keys, version));
      }
    })();
    const drained = await drainPeer(peers[0], tokenFile, ["--bytes", String(half)]);
    writing = false;
    await writer;
    assert.equal(drained.code, 0, drained.output);
    assert.match(drained.output, /gave back \d+ bytes/);
    const after = await lentBytes(peers[0], tokenFile);
    assert.ok(after <= before - half, `lent ${before}, then ${after} after giving back ${half}`);
    assert.ok(after > 0, "a partial drain took everything");
    await waitUntil("replication deficit 0", () => store.health().replicationDeficit === 0);
    await verifyStored(store, keys, version);
    // It lends that much less from now on: new slabs go elsewhere when it is full.
    assert.ok(store.health().endpoints[0].pages * PAGE_SIZE <= after);
  });
});

test("--reserve: when the host's available memory falls under it, the peer asks slabs back by itself", async () => {
  const dir = await Deno.makeTempDir();
  const meminfo = `${dir}/meminfo`;
  const setAvailable = (bytes: number) =>
    Deno.writeTextFile(meminfo, `MemTotal: 99999999 kB\nMemAvailable: ${bytes / 1024} kB\n`);
  const reserve = 1024 * 1024 * 1024;
  await setAvailable(2 * reserve); // more headroom than its capacity: it places as the others do
  try {
    const args = ["--reserve", String(reserve), "--meminfo", meminfo];
    await withStoreOnPeers([args, [], []], async (store, peers, tokenFile) => {
      const keys = keyRange(0, 30 * SLAB_PAGES);
      await store.put(keys, pagesFor(keys, 1));
      const before = await lentBytes(peers[0], tokenFile);
      assert.ok(before >= 4 * SLAB_BYTES, `peer 0 lends only ${before} bytes`);
      // The host now needs 3 slabs' worth back.
      await setAvailable(reserve - 3 * SLAB_BYTES);
      await waitUntil(
        "the peer's log to say it asks for bytes back",
        () => /asking for \d+ bytes back/.test(peers[0].output()),
      );
      await waitUntil(
        "the peer under its reserve to lend 3 slabs less",
        async () => (await lentBytes(peers[0], tokenFile)) <= before - 3 * SLAB_BYTES,
      );
      await waitUntil("replication deficit 0", () => store.health().replicationDeficit === 0);
      await verifyStored(store, keys, 1);
      // Asked once for the shortfall, not again while the host's figure lags.
      assert.equal(peers[0].output().match(/asking for \d+ bytes back/g)?.length, 1);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("a peer drained by half with no other peer to take its slabs: their pages come home into the target, which verifies on", async () => {
  await withPagerRun(async (run) => {
    const [peer] = await run.peers(1);
    // 1 MiB slabs: the 5 MiB the pager keeps remote fill several.
    const { pager } = await run.pager([peer], "--slab-size", "1M");
    await roundsMore(pager, 2);
    const before = await lentBytes(peer, run.tokenFile);
    const half = Math.floor(before / 2 ** 21) * 2 ** 20;
    assert.ok(half > 0, `the peer lends only ${before} bytes`);
    // Exit 0: every slab the peer asked back was freed there (the pager may
    // place new slabs on it afterwards, within what it still lends).
    const out = await drainPeer(peer, run.tokenFile, ["--bytes", String(half)]);
    assert.equal(out.code, 0, out.output);
    await pager.waitFor(/no other peer has room: its \d+ pages go home/);
    await pager.waitFor(/pages come home from a store that must give them up/);
    await roundsMore(pager, 3);
    assertNoMismatch(pager);
    await detachAndVerify(pager);
  });
});
