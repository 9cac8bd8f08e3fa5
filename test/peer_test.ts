/**
 * Remote slabs on real peer daemons over loopback: placement, replication,
 * peer death, drain, restart, authentication and TLS.
 */

import { PATIENCE_MS, test, waitUntil, withPatience } from "../testing/harness.ts";
import { processState, waitHalted } from "../testing/procs.ts";
import {
  drainPeer,
  makeTestCertificates,
  makeTokenFile,
  type PeerProcess,
  rawPeerConnection,
  runPeerCommand,
  slabHolders,
  startPeer,
} from "../testing/peers.ts";
import { keyRange, pagesFor, verifyStored } from "../testing/pages.ts";
import { assertNoMismatch, roundsMore, withPagerRun } from "../testing/pager_run.ts";
import assert from "node:assert/strict";
import { openPeerStore, type PeerStoreOptions } from "../transport/tcp.ts";
import {
  PAGE_SIZE,
  PageLostError,
  type PageStore,
  StoreUnavailableError,
} from "../transport/store.ts";
import { encodeFrame, MsgType, u32s } from "../transport/tcp/protocol.ts";

async function withPeers(
  count: number,
  fn: (peers: PeerProcess[], tokenFile: string) => Promise<void>,
  extraArgs: string[] = [],
): Promise<void> {
  const tokenFile = await makeTokenFile();
  const peers: PeerProcess[] = [];
  try {
    for (let i = 0; i < count; i++) peers.push(await startPeer({ tokenFile, args: extraArgs }));
    await fn(peers, tokenFile);
  } finally {
    await Promise.all(peers.map((p) => p.stop()));
    await Deno.remove(tokenFile);
  }
}

/** Each peer drains at once (`peer drain` exits 0): it lends nothing any more. */
async function assertNothingLent(peers: PeerProcess[], tokenFile: string): Promise<void> {
  for (const peer of peers) {
    const out = await drainPeer(peer, tokenFile);
    assert.equal(out.code, 0, out.output);
  }
}

/** Opens a peer store on `urls` with `opts`, runs `fn` on it, and closes it whatever happens. */
async function usingStore(
  urls: string[],
  opts: PeerStoreOptions,
  fn: (store: PageStore) => Promise<void>,
): Promise<void> {
  const store = await openPeerStore(urls, opts);
  try {
    await fn(store);
  } finally {
    await store.close();
  }
}

/**
 * Runs `fn` on a store over `count` fresh peers with the default
 * {@linkcode options}; closes the store, then stops the peers.
 */
async function withPeerStore(
  count: number,
  fn: (store: PageStore, peers: PeerProcess[], tokenFile: string) => Promise<void>,
  extra: Partial<PeerStoreOptions> = {},
): Promise<void> {
  await withPeers(count, async (peers, tokenFile) => {
    await usingStore(
      peers.map((p) => p.url),
      options(tokenFile, extra),
      (store) => fn(store, peers, tokenFile),
    );
  });
}

/** Runs `fn` while `peer` is stopped (SIGSTOP), and resumes it after, whatever happens. */
async function whileFrozen(peer: PeerProcess, fn: () => Promise<void>): Promise<void> {
  peer.signal("SIGSTOP");
  try {
    await fn();
  } finally {
    peer.signal("SIGCONT");
  }
}

/** Stores {@linkcode pagesFor} keys 0 .. `count` - 1 in one put; returns the keys. */
async function putPages(store: PageStore, count: number): Promise<Uint32Array> {
  const keys = keyRange(0, count);
  await store.put(keys, pagesFor(keys));
  return keys;
}

function options(tokenFile: string, extra: Partial<PeerStoreOptions> = {}): PeerStoreOptions {
  return {
    replicas: 2,
    namespace: `test:${crypto.randomUUID()}`,
    tokenFile,
    slabPages: 64,
    reconnectMs: 200,
    ...extra,
  };
}

test("put and get round-trip many pages across slabs, overwrites and deletes", async () => {
  await withPeerStore(3, async (store) => {
    const keys = await putPages(store, 2000);
    await verifyStored(store, keys);
    const odd = keys.filter((k) => k % 2 === 1);
    await store.put(odd, pagesFor(odd, 1));
    await verifyStored(store, odd, 1);
    await verifyStored(store, keys.filter((k) => k % 2 === 0), 0);
    // Scattered single-page gets, many in flight at once.
    await Promise.all(
      [...keys.slice(0, 200)].map((k) => verifyStored(store, Uint32Array.of(k), k % 2)),
    );
    await store.delete(Uint32Array.of(4, 5));
    await assert.rejects(store.get(Uint32Array.of(4), new Uint8Array(PAGE_SIZE)), PageLostError);
    const health = store.health();
    assert.equal(health.pages, 1998);
    assert.equal(health.replicationDeficit, 0);
    assert.equal(health.endpoints.reduce((n, e) => n + e.pages, 0), 2 * 1998);
  });
});

test("power-of-two placement spreads slabs across three peers", async () => {
  await withPeers(3, async (peers, tokenFile) => {
    const store = await openPeerStore(
      peers.map((p) => p.url),
      options(tokenFile, { replicas: 1, slabPages: 16 }),
    );
    try {
      const keys = await putPages(store, 16 * 60);
      const perPeer = store.health().endpoints.map((e) => e.pages / 16);
      assert.equal(perPeer.reduce((a, b) => a + b, 0), 60);
      // Of the two peers drawn the one with more room wins, so the fullest peer
      // only gains a slab on a tie: it never leads the next by more than one,
      // whatever the draws (a uniform random spread such as 31/16/13 breaks this).
      const [first, second, last] = [...perPeer].sort((a, b) => b - a);
      assert.ok(first - second <= 1, `fullest peer leads by more than one: ${perPeer.join("/")}`);
      assert.ok(last > 0, `a peer got no slab: ${perPeer.join("/")}`);
      await verifyStored(store, keys);
    } finally {
      await store.close();
    }
  });
});

test("replicas=2 survives a SIGKILLed peer mid-run and restores the replica count", async () => {
  await withPeerStore(3, async (store, peers) => {
    const keys = await putPages(store, 1500);
    let stop = false;
    const readers = (async () => {
      let rounds = 0;
      while (!stop) {
        const start = (rounds * 97) % 1300;
        await verifyStored(store, keys.subarray(start, start + 100));
        rounds++;
      }
      return rounds;
    })();
    // Writers keep overwriting the last 100 keys while the peer dies and its
    // slabs are copied: the copy must never resurrect an older version.
    const hot = keys.subarray(1400, 1500);
    let version = 0;
    const writers = (async () => {
      while (!stop) {
        await store.put(hot, pagesFor(hot, version + 1));
        version++;
      }
    })();
    await new Promise((r) => setTimeout(r, 100));
    await peers[0].stop("SIGKILL");
    await waitUntil("replication deficit 0", () => {
      const h = store.health();
      return h.replicationDeficit === 0 && h.endpoints[0].state === "down";
    });
    stop = true;
    assert.ok((await readers) > 0);
    await writers;
    assert.ok(version > 0);
    await verifyStored(store, keys.subarray(0, 1400));
    await verifyStored(store, hot, version);
    const h = store.health();
    assert.equal(h.endpoints[0].pages, 0);
    assert.equal(h.endpoints[1].pages + h.endpoints[2].pages, 2 * 1500);
    // Writes after the loss still reach two replicas.
    await store.put(keys.subarray(0, 100), pagesFor(keys.subarray(0, 100), 7));
    await verifyStored(store, keys.subarray(0, 100), 7);
    assert.equal(store.health().replicationDeficit, 0);
  });
});

test("a frozen peer (SIGSTOP) is declared dead after the request timeout; reads fall back", async () => {
  // The default request timeout (5 s): long enough that a busy machine never
  // takes a live peer for a frozen one.
  await withPeerStore(3, async (store, peers) => {
    const keys = await putPages(store, 640);
    await whileFrozen(peers[0], async () => {
      // Each request to the frozen peer ends at its timeout; without one
      // this would hang until the test's patience runs out.
      await withPatience("reads to fall back from the frozen peer", verifyStored(store, keys));
      await waitUntil("replication deficit 0 without the frozen peer", () => {
        const h = store.health();
        return h.replicationDeficit === 0 && h.endpoints[0].state === "down";
      });
      await verifyStored(store, keys);
    });
  });
});

test("a frozen replica stalls neither reads nor writes: hedged reads, writes complete on the live replica", async () => {
  // A request timeout beyond the test's patience: only hedging can keep
  // reads and writes going while a replica is frozen.
  const slow = { connection: { requestTimeoutMs: 10 * PATIENCE_MS } };
  await withPeerStore(3, async (store, peers) => {
    const keys = await putPages(store, 640);
    await verifyStored(store, keys);
    await whileFrozen(peers[0], async () => {
      for (let round = 1; round <= 3; round++) {
        const put = store.put(keys, pagesFor(keys, round));
        await withPatience(`round ${round}: writes with a frozen replica`, put);
        const read = verifyStored(store, keys, round);
        await withPatience(`round ${round}: reads with a frozen replica`, read);
      }
      assert.notEqual(store.health().endpoints[0].state, "down", "not yet timed out");
    });
    // Back: its late writes land in order, so it is current again (or dropped).
    await waitUntil("replication deficit 0 after the peer resumed", () => {
      return store.health().replicationDeficit === 0;
    });
    // Reads rotate over the replicas: the resumed peer serves its share, all current.
    for (let i = 0; i < 5; i++) await verifyStored(store, keys, 3);
  }, slow);
});

test("a peer that freezes while no request needs it is noticed by the idle probe and re-replicated", async () => {
  await withPeerStore(3, async (store, peers) => {
    const keys = await putPages(store, 640);
    await whileFrozen(peers[0], async () => {
      // No read or write from here on: only the idle connection's probe can tell.
      await waitUntil("the idle frozen peer down and replication deficit 0", () => {
        const h = store.health();
        return h.replicationDeficit === 0 && h.endpoints[0].state === "down";
      });
      assert.equal(store.health().endpoints[0].pages, 0);
      await verifyStored(store, keys);
    });
  });
});

test("a drained peer hands its slabs to other peers with data intact", async () => {
  await withPeerStore(3, async (store, peers, tokenFile) => {
    const keys = await putPages(store, 1000);
    assert.ok(store.health().endpoints[0].pages > 0);
    const drained = await drainPeer(peers[0], tokenFile);
    assert.equal(drained.code, 0, drained.output);
    assert.match(drained.output, /drained/);
    const h = store.health();
    assert.equal(h.endpoints[0].pages, 0);
    assert.equal(h.endpoints[0].state, "draining");
    assert.equal(h.replicationDeficit, 0);
    await verifyStored(store, keys);
    // New slabs avoid the draining peer.
    const more = keyRange(5000, 200);
    await store.put(more, pagesFor(more));
    assert.equal(store.health().endpoints[0].pages, 0);
    await verifyStored(store, more);
  });
});

test("SIGUSR1 drains a peer even with replicas=1: slabs move first, nothing is lost", async () => {
  await withPeers(2, async (peers, tokenFile) => {
    const lost: number[] = [];
    const store = await openPeerStore(
      peers.map((p) => p.url),
      options(tokenFile, { replicas: 1, onLoss: (keys) => lost.push(...keys) }),
    );
    try {
      const keys = await putPages(store, 640);
      assert.ok(store.health().endpoints[0].pages > 0);
      peers[0].signal("SIGUSR1");
      await waitUntil(
        "slabs moved off the drained peer",
        () => store.health().endpoints[0].pages === 0,
      );
      assert.equal(store.health().endpoints[1].pages, 640);
      await verifyStored(store, keys);
      assert.deepEqual(lost, []);
      await waitUntil("peer logs the drain", () => /drain complete/.test(peers[0].output()));
    } finally {
      await store.close();
    }
  });
});

test("a full peer refuses new slabs and they go to peers with room", async () => {
  const tokenFile = await makeTokenFile();
  // 1 MiB holds four slabs of 64 pages.
  const small = await startPeer({ tokenFile, capacity: "1M" });
  const big = await startPeer({ tokenFile, capacity: "64M" });
  try {
    await usingStore([small.url, big.url], options(tokenFile, { replicas: 1 }), async (store) => {
      const keys = await putPages(store, 64 * 20);
      const [onSmall, onBig] = store.health().endpoints.map((e) => e.pages / 64);
      assert.ok(onSmall <= 4, `small peer got ${onSmall} slabs`);
      assert.equal(onSmall + onBig, 20);
      await verifyStored(store, keys);
    });
  } finally {
    await Promise.all([small.stop(), big.stop()]);
    await Deno.remove(tokenFile);
  }
});

test("a peer restarted empty gets its replicas back from the surviving copy", async () => {
  const tokenFile = await makeTokenFile();
  const a = await startPeer({ tokenFile });
  let b = await startPeer({ tokenFile });
  const port = b.port;
  try {
    await usingStore([a.url, b.url], options(tokenFile), async (store) => {
      const keys = await putPages(store, 600);
      await b.stop("SIGKILL");
      await waitUntil("peer b down", () => store.health().endpoints[1].state === "down");
      assert.ok(store.health().replicationDeficit > 0);
      await verifyStored(store, keys);
      b = await startPeer({ tokenFile, port });
      await waitUntil("replica count restored on the restarted peer", () => {
        const h = store.health();
        return h.replicationDeficit === 0 && h.endpoints[1].pages === 600;
      });
      await a.stop("SIGKILL");
      await waitUntil("peer a down", () => store.health().endpoints[0].state === "down");
      await verifyStored(store, keys);
    });
  } finally {
    await Promise.all([a.stop(), b.stop()]);
    await Deno.remove(tokenFile);
  }
});

test("replicas=1: losing the only copy calls onLoss and gets reject, never zeros", async () => {
  await withPeers(2, async (peers, tokenFile) => {
    const lost: number[] = [];
    const store = await openPeerStore(
      peers.map((p) => p.url),
      options(tokenFile, { replicas: 1, onLoss: (keys) => lost.push(...keys) }),
    );
    try {
      const keys = await putPages(store, 640);
      const onFirst = store.health().endpoints[0].pages;
      assert.ok(onFirst > 0);
      await peers[0].stop("SIGKILL");
      await waitUntil("onLoss", () => lost.length === onFirst);
      const lostSet = new Set(lost);
      const survivor = keys.filter((k) => !lostSet.has(k));
      await verifyStored(store, survivor);
      const err = await store.get(Uint32Array.of(lost[0]), new Uint8Array(PAGE_SIZE)).catch((e) =>
        e
      );
      assert.ok(err instanceof PageLostError);
      assert.deepEqual([...err.keys], [lost[0]]);
      // Writing a lost key again makes it readable again.
      await store.put(Uint32Array.of(lost[0]), pagesFor(Uint32Array.of(lost[0]), 3));
      await verifyStored(store, Uint32Array.of(lost[0]), 3);
    } finally {
      await store.close();
    }
  });
});

test("a session's slabs survive a reconnect within --grace and are freed after it", async () => {
  const tokenText = crypto.randomUUID();
  const tokenFile = await makeTokenFile(tokenText);
  const token = new TextEncoder().encode(tokenText);
  const peer = await startPeer({ tokenFile, args: ["--grace", "0.5"] });
  try {
    const page = pagesFor(Uint32Array.of(42));
    const first = await rawPeerConnection(peer.port, token);
    await first.conn.write(encodeFrame(MsgType.ALLOC, 2, u32s(0, 64)));
    assert.equal((await first.nextFrame())?.type, MsgType.OK);
    await first.conn.write(encodeFrame(MsgType.WRITE, 3, u32s(0, 1, 5), page));
    assert.equal((await first.nextFrame())?.type, MsgType.OK);
    first.conn.close();

    const again = await rawPeerConnection(peer.port, token, first.namespace);
    await again.conn.write(encodeFrame(MsgType.READ, 4, u32s(0, 1, 5)));
    const reply = await again.nextFrame();
    assert.equal(reply?.type, MsgType.OK);
    assert.deepEqual(reply.payload, page);
    again.conn.close();

    await waitUntil(
      "grace expiry",
      () => /did not return: freeing 1 slab/.test(peer.output()),
      5_000,
    );
    const late = await rawPeerConnection(peer.port, token, first.namespace);
    await late.conn.write(encodeFrame(MsgType.READ, 5, u32s(0, 1, 5)));
    assert.equal((await late.nextFrame())?.type, MsgType.ERR);
    late.conn.close();
  } finally {
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});

test("wrong token, missing token and unreachable peers are refused with one clear line", async () => {
  await withPeers(1, async ([peer], tokenFile) => {
    const wrong = await makeTokenFile("not-the-token-of-this-peer");
    try {
      await assert.rejects(
        openPeerStore([peer.url], options(wrong, { replicas: 1 })),
        (e) =>
          e instanceof StoreUnavailableError &&
          e.message === `peer ${peer.hostPort} rejected the token: check --token-file`,
      );
    } finally {
      await Deno.remove(wrong);
    }
    await assert.rejects(
      openPeerStore([peer.url], { ...options(tokenFile, { replicas: 1 }), tokenFile: undefined }),
      (e) =>
        e instanceof StoreUnavailableError && /requires a token: pass --token-file/.test(e.message),
    );
    await assert.rejects(
      openPeerStore(["tcp://127.0.0.1:1"], options(tokenFile, { replicas: 1 })),
      (e) => e instanceof StoreUnavailableError && /127\.0\.0\.1:1 unreachable/.test(e.message),
    );
    assert.match(peer.output(), /token proof did not verify/);
    // The peer still serves a client with the right token.
    const store = await openPeerStore([peer.url], options(tokenFile, { replicas: 1 }));
    await store.close();
  });
});

test("the daemon refuses to start without a token unless --insecure-no-auth", async () => {
  const out = await runPeerCommand(["--listen", "127.0.0.1:0"]);
  assert.equal(out.code, 2);
  assert.match(out.output, /no --token-file: refusing/);
  const help = await runPeerCommand(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.output, /--capacity SIZE/);
  assert.match(help.output, /peer drain/);
});

test("close frees every slab of the session on every peer", async () => {
  await withPeers(2, async (peers, tokenFile) => {
    const store = await openPeerStore(peers.map((p) => p.url), options(tokenFile));
    await putPages(store, 300);
    await store.close();
    // A drain completes at once only if nothing is lent any more.
    await assertNothingLent(peers, tokenFile);
  });
});

test("TLS: a tcps:// client reaches a peer whose certificate it trusts via --tls-ca", async () => {
  const dir = await Deno.makeTempDir({ prefix: "remora-tls-" });
  const tokenFile = await makeTokenFile();
  let peer: PeerProcess | null = null;
  try {
    await makeTestCertificates(dir);
    peer = await startPeer({
      tokenFile,
      scheme: "tcps",
      args: ["--tls-cert", `${dir}/cert.pem`, "--tls-key", `${dir}/key.pem`],
    });
    const store = await openPeerStore(
      [peer.url],
      options(tokenFile, { replicas: 1, tlsCaFile: `${dir}/ca.pem` }),
    );
    try {
      const keys = await putPages(store, 300);
      await verifyStored(store, keys);
    } finally {
      await store.close();
    }
    // Without trusting the certificate the client refuses the peer.
    await assert.rejects(
      openPeerStore([peer.url], options(tokenFile, { replicas: 1 })),
      StoreUnavailableError,
    );
  } finally {
    await peer?.stop();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(tokenFile);
  }
});

test("deleting every page of a slab frees it on its peers at once", async () => {
  await withPeerStore(2, async (store, peers, tokenFile) => {
    const keys = keyRange(0, 200); // four slabs of 64 pages
    await store.put(keys, pagesFor(keys));
    await store.delete(keys.subarray(0, 100)); // empties slab 0 only
    assert.equal(store.health().endpoints.reduce((n, e) => n + e.pages, 0), 2 * 100);
    await store.delete(keys.subarray(100));
    // Nothing is lent any more, although the session is still connected.
    await assertNothingLent(peers, tokenFile);
  });
});

// ---- the real pager, a verifying C target, real peers (testing/pager_run.ts) ----

test("pager --replicas 2: a peer SIGKILLed mid-run, the target verifies, the copy is restored, detach frees", async () => {
  await withPagerRun(async (run) => {
    const peers = await run.peers(3);
    const { pager, pid } = await run.pager(peers, "--replicas", "2");
    // 6 MiB is one slab: exactly two peers hold it once the pager evicted.
    await waitUntil("two peers holding the slab", () => slabHolders(peers).length === 2);
    await roundsMore(pager, 2);
    const holders = slabHolders(peers);
    assert.equal(holders.length, 2, peers.map((p) => p.output()).join("\n"));
    const spare = peers.find((p) => !holders.includes(p))!;
    await holders[0].stop("SIGKILL");
    await pager.waitFor(/peer .* is down/);
    // Re-replication in the background: the spare peer receives a copy.
    await waitUntil(
      "the copy on the spare peer",
      () => /slab \d+ of \d+ pages reserved/.test(spare.output()),
      60_000,
    );
    await roundsMore(pager, 2);
    assertNoMismatch(pager);
    // Detach: every page goes back, the target keeps running and verifying.
    pager.kill("SIGTERM");
    assert.equal((await pager.status).code, 0, pager.output());
    await pager.waitFor(/detached; every page is back/); // the output may trail the exit
    const fetched = Number((await pager.waitFor(/pages fetched (\d+)/))[1]);
    assert.ok(fetched > 0, "the target's pages never went through the peers");
    // The target keeps running on its own and still verifies its data.
    await roundsMore(pager, 1);
    assertNoMismatch(pager);
    assert.notEqual(processState(pid), "T");
    // And the surviving peers lend nothing any more.
    await assertNothingLent([holders[1], spare], run.tokenFile);
  });
});

test("pager --replicas 1: losing the only peer stops the target with SIGSTOP and exits 3, naming the pages", async () => {
  await withPagerRun(async (run) => {
    const [peer] = await run.peers(1);
    const { pager, pid } = await run.pager([peer]);
    await pager.waitFor(/--replicas 1|only copy|one copy/i);
    await waitUntil("the peer holding a slab", () => slabHolders([peer]).length === 1);
    await roundsMore(pager, 1);
    await peer.stop("SIGKILL");
    const status = await pager.status;
    assert.equal(status.code, 3, pager.output());
    // Its last lines may still be in the pipe when it has exited (the
    // stopped target holds the pipe open, so the output never "ends").
    await pager.waitFor(/could not be read back.*pages: 0x[0-9a-f]+/);
    await waitHalted(pid, () => pager.output());
    assertNoMismatch(pager);
  });
});

test("garbage sent to a peer's port while a real pager uses it: the workload still verifies", async () => {
  await withPagerRun(async (run) => {
    const peers = await run.peers(2);
    const { pager } = await run.pager(peers, "--replicas", "2");
    await waitUntil("a slab on the peers", () => slabHolders(peers).length === 2);
    // Random, truncated and oversized frames from other connections, bounded in count.
    let seed = 12345;
    const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0);
    for (let i = 0; i < 60; i++) {
      const peer = peers[i % 2];
      const [hostname, port] = peer.hostPort.split(":");
      const conn = await Deno.connect({ hostname, port: Number(port) });
      const junk = new Uint8Array(1 + (rand() % 9000));
      for (let k = 0; k < junk.length; k++) junk[k] = rand() & 0xff;
      if (i % 3 === 0) new DataView(junk.buffer).setUint32(0, 0xfffffff0, true); // huge length
      try {
        await conn.write(junk);
      } catch { /* the peer may already have closed it */ }
      conn.close();
    }
    await roundsMore(pager, 3);
    assertNoMismatch(pager);
    for (const p of peers) assert.notEqual(processState(p.child.pid), null, "the peers carry on");
    pager.kill("SIGTERM");
    assert.equal((await pager.status).code, 0, pager.output());
  });
});

test("a peer without --allow-ffi serves through Deno's sockets, says so, and a pager's target verifies through it", async () => {
  await withPagerRun(async (run) => {
    const [own] = await run.peers(1);
    const deno = await startPeer({
      tokenFile: run.tokenFile,
      ownSockets: false,
      args: ["--log-level", "debug"],
    });
    try {
      await waitUntil(
        "the peer started without --allow-ffi to say it serves through Deno's sockets",
        () => deno.output().includes("serving through Deno's sockets"),
      );
      assert.ok(!own.output().includes("serving through Deno's sockets"), own.output());
      // With replicas 2 every page is on both: reads go to either, writes to both.
      const { pager } = await run.pager([own, deno], "--replicas", "2");
      await waitUntil("a slab on both peers", () => slabHolders([own, deno]).length === 2);
      await roundsMore(pager, 3);
      assertNoMismatch(pager);
      pager.kill("SIGTERM");
      assert.equal((await pager.status).code, 0, pager.output());
    } finally {
      await deno.stop();
    }
  });
});
