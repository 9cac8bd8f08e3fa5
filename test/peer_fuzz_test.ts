/**
 * Hostile input against a live peer daemon while a real client uses it:
 * garbage before authentication, random, truncated, oversized and
 * inconsistent frames after it, and reads of another session's slabs.
 */

import { test } from "../testing/harness.ts";
import { makeTokenFile, rawPeerConnection, startPeer } from "../testing/peers.ts";
import { keyRange, pagesFor } from "../testing/pages.ts";
import assert from "node:assert/strict";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE } from "../transport/store.ts";
import { encodeFrame, MAX_FRAME_BODY, MsgType, u32s } from "../transport/tcp/protocol.ts";

/** xorshift32, seeded so that a failing run can be replayed. */
function prng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

function bytes(rand: (n: number) => number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, () => rand(256));
}

function lengthPrefix(n: number): Uint8Array {
  return u32s(n);
}

async function writeQuietly(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  try {
    let at = 0;
    while (at < data.length) at += await conn.write(data.subarray(at));
  } catch { /* the peer may close first: that is the point */ }
}

test("fuzzed frames close only their own connection; a concurrent client's data verifies", async () => {
  const seed = Date.now() >>> 0;
  const rand = prng(seed);
  const tokenText = crypto.randomUUID();
  const tokenFile = await makeTokenFile(tokenText);
  const token = new TextEncoder().encode(tokenText);
  const peer = await startPeer({ tokenFile });
  try {
    const store = await openPeerStore([peer.url], {
      replicas: 1,
      namespace: `victim:${crypto.randomUUID()}`,
      tokenFile,
      slabPages: 64,
    });
    try {
      const keys = keyRange(0, 512);
      await store.put(keys, pagesFor(keys));
      let stopClient = false;
      const client = (async () => {
        let rounds = 0;
        while (!stopClient) {
          const some = keys.subarray((rounds * 61) % 448, (rounds * 61) % 448 + 64);
          await store.put(some, pagesFor(some, rounds % 2));
          const into = new Uint8Array(some.length * PAGE_SIZE);
          await store.get(some, into);
          assert.deepEqual(
            into,
            pagesFor(some, rounds % 2),
            `client data corrupted (seed ${seed})`,
          );
          await store.put(some, pagesFor(some));
          rounds++;
        }
        return rounds;
      })();

      const attacks: Record<string, () => Promise<void>> = {
        async garbageBeforeAuth() {
          const { conn } = await rawPeerConnection(peer.port, null);
          await writeQuietly(conn, bytes(rand, 1 + rand(3000)));
          conn.close();
        },
        async oversizedBeforeAuth() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, null);
          await writeQuietly(conn, lengthPrefix(2048 + rand(1 << 30)));
          assert.equal(await nextFrame(), null); // the peer hangs up at once
          conn.close();
        },
        async randomFramesAfterAuth() {
          const { conn } = await rawPeerConnection(peer.port, token);
          for (let i = 0; i < 5; i++) {
            // DRAIN is a legitimate request of any token holder: it would
            // (correctly) send the victim's slabs away, so it is left out.
            let type = rand(256);
            if (type === MsgType.DRAIN) type = MsgType.STAT;
            await writeQuietly(conn, encodeFrame(type, rand(1000), bytes(rand, rand(200))));
          }
          conn.close();
        },
        async oversizedAfterAuth() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, token);
          await writeQuietly(conn, lengthPrefix(MAX_FRAME_BODY + 1 + rand(1 << 20)));
          assert.equal(await nextFrame(), null);
          conn.close();
        },
        async undersizedFrame() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, token);
          await writeQuietly(conn, lengthPrefix(rand(5)));
          assert.equal(await nextFrame(), null);
          conn.close();
        },
        async truncatedWrite() {
          const { conn } = await rawPeerConnection(peer.port, token);
          const frame = encodeFrame(
            MsgType.WRITE,
            9,
            u32s(0, 2, 0, 1),
            new Uint8Array(2 * PAGE_SIZE),
          );
          await writeQuietly(conn, frame.subarray(0, rand(frame.length - 1)));
          conn.close();
        },
        async inconsistentCounts() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, token);
          // Claims 3 pages but carries 1; then a READ asking for 100000 pages.
          await writeQuietly(
            conn,
            encodeFrame(MsgType.WRITE, 2, u32s(0, 3, 0, 1, 2), new Uint8Array(PAGE_SIZE)),
          );
          assert.equal(await nextFrame(), null);
          conn.close();
          const second = await rawPeerConnection(peer.port, token);
          await writeQuietly(second.conn, encodeFrame(MsgType.READ, 3, u32s(0, 100000)));
          assert.equal(await second.nextFrame(), null);
          second.conn.close();
        },
        async otherSessionsSlabsAreInvisible() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, token);
          for (let slab = 0; slab < 8; slab++) {
            await writeQuietly(
              conn,
              encodeFrame(MsgType.READ, 100 + slab, u32s(slab, 1, rand(64))),
            );
            const reply = await nextFrame();
            assert.equal(reply?.type, MsgType.ERR, "a foreign session read another session's slab");
          }
          conn.close();
        },
        async wrongProof() {
          const { conn, nextFrame } = await rawPeerConnection(peer.port, null);
          await writeQuietly(
            conn,
            encodeFrame(
              MsgType.AUTH,
              1,
              bytes(rand, 32),
              bytes(rand, 32),
              new Uint8Array([1, 0]),
              new Uint8Array([65]),
            ),
          );
          const reply = await nextFrame();
          assert.equal(reply?.type, MsgType.ERR);
          assert.equal(await nextFrame(), null);
          conn.close();
        },
      };
      const names = Object.keys(attacks);
      // Every kind of attack once, then random ones: 160 connections in all,
      // a few at a time, alongside the real client (bounded in count, not time).
      for (const name of names) await attacks[name]();
      for (let launched = names.length; launched < 160; launched += 4) {
        await Promise.all(Array.from({ length: 4 }, () => attacks[names[rand(names.length)]]()));
      }
      stopClient = true;
      assert.ok((await client) > 0);
      const into = new Uint8Array(keys.length * PAGE_SIZE);
      await store.get(keys, into);
      assert.deepEqual(into, pagesFor(keys), `client data corrupted (seed ${seed})`);
      assert.equal(
        store.health().endpoints[0].state,
        "up",
        `${JSON.stringify(store.health())}\n${
          peer.output().split("\n").filter((l) => !/closing/.test(l)).join("\n")
        }`,
      );
    } finally {
      await store.close();
    }
    // The daemon is still up and still serves new clients.
    const fresh = await openPeerStore([peer.url], {
      replicas: 1,
      namespace: "after-fuzz",
      tokenFile,
      slabPages: 64,
    });
    await fresh.close();
    assert.match(peer.output(), /closing "?127\.0\.0\.1:\d+"?: "?frame length \d+ exceeds limit/);
    assert.match(peer.output(), /closing "?127\.0\.0\.1:\d+"?: "?token proof did not verify/);
  } finally {
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});
