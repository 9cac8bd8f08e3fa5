/**
 * Sockets of our own: whole streams both ways under backpressure, errors
 * shaped like Deno's, and the reactor driven by a caller's poll.
 *
 * @module
 */

import assert from "node:assert/strict";
import { POLL, PollSet } from "../ffi/poll.ts";
import { netAddrOf, sockaddrOf } from "../ffi/socket.ts";
import { FdListener, FdSocket, openTcp } from "./fd_socket.ts";
import { Reactor } from "./reactor.ts";

const MiB = 1 << 20;

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed + (i >> 12)) & 0xff;
  return b;
}

async function writeAll(c: { write(p: Uint8Array): Promise<number> }, b: Uint8Array) {
  for (let at = 0; at < b.length;) at += await c.write(b.subarray(at));
}

async function readExactly(c: { read(p: Uint8Array): Promise<number | null> }, n: number) {
  const out = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await c.read(out.subarray(at));
    if (got === null) throw new Error(`stream ended after ${at} of ${n} bytes`);
    at += got;
  }
  return out;
}

Deno.test("sockaddrOf and netAddrOf: IPv4, IPv6, localhost; names are left to Deno", () => {
  assert.deepEqual(netAddrOf(sockaddrOf("10.1.2.3", 7070)!), {
    transport: "tcp",
    hostname: "10.1.2.3",
    port: 7070,
  });
  assert.deepEqual(netAddrOf(sockaddrOf("localhost", 80)!).hostname, "127.0.0.1");
  assert.deepEqual(netAddrOf(sockaddrOf("::1", 9)!).hostname, "0:0:0:0:0:0:0:1");
  assert.deepEqual(netAddrOf(sockaddrOf("[fe80::1:2]", 9)!).hostname, "fe80:0:0:0:0:0:1:2");
  assert.deepEqual(sockaddrOf("peer.example", 1), null);
  assert.deepEqual(sockaddrOf("300.1.1.1", 1), null);
  assert.deepEqual(sockaddrOf("1::2::3", 1), null);
});

Deno.test("FdSocket: 8 MiB each way at once arrive whole and in order (partial writes wait for room)", async () => {
  const listener = FdListener.listen(sockaddrOf("127.0.0.1", 0)!);
  const [server, client] = await Promise.all([
    listener.accept(),
    openTcp("127.0.0.1", listener.addr.port),
  ]);
  assert(client instanceof FdSocket, "an IP address with FFI allowed gives a socket of our own");
  const up = pattern(8 * MiB, 1), down = pattern(8 * MiB, 2);
  const [, , gotUp, gotDown] = await Promise.all([
    writeAll(client, up),
    writeAll(server, down),
    readExactly(server, up.length),
    readExactly(client, down.length),
  ]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, down);
  client.close();
  assert.deepEqual(
    await server.read(new Uint8Array(16)),
    null,
    "end of stream after the peer closed",
  );
  server.close();
  listener.close();
});

Deno.test("FdSocket: close rejects a pending read; a refused connect names the address", async () => {
  const listener = FdListener.listen(sockaddrOf("127.0.0.1", 0)!);
  const port = listener.addr.port;
  const [server, client] = await Promise.all([listener.accept(), openTcp("127.0.0.1", port)]);
  const pending = server.read(new Uint8Array(8));
  server.close();
  await assert.rejects(() => pending, Deno.errors.BadResource);
  client.close();
  listener.close();
  await assert.rejects(
    () => openTcp("127.0.0.1", port),
    (e: Error) => e instanceof Deno.errors.ConnectionRefused && e.message.includes(`:${port}`),
  );
});

Deno.test("Reactor driven: a caller's own poll carries the sockets, the reactor never waits", async () => {
  const reactor = Reactor.shared();
  const listener = FdListener.listen(sockaddrOf("127.0.0.1", 0)!);
  const [server, client] = await Promise.all([
    listener.accept(),
    openTcp("127.0.0.1", listener.addr.port),
  ]);
  let woken = 0;
  reactor.drive(() => woken++);
  try {
    const set = new PollSet();
    assert(client instanceof FdSocket);
    const reply = readExactly(client, 3);
    await server.write(new Uint8Array([7, 8, 9]));
    // Nobody but this loop polls now: the reply arrives only through it.
    let got: Uint8Array | null = null;
    reply.then((r) => got = r);
    for (let i = 0; i < 2000 && got === null; i++) {
      set.clear();
      const dispatch = reactor.addTo(set);
      if (set.waitNow(5) > 0) dispatch();
      await null;
      await null;
    }
    assert.deepEqual(got, new Uint8Array([7, 8, 9]));
    // A caller asleep on a worker thread is told when a new fd needs watching.
    reactor.asleep = true;
    const next = server.read(new Uint8Array(4));
    assert(woken >= 1, "the driver was asked to look again");
    reactor.asleep = false;
    set.clear();
    set.add(client.fd, POLL.OUT);
    assert.deepEqual(set.waitNow(1000), 1);
    await client.write(new Uint8Array([1]));
    for (let i = 0; i < 2000; i++) {
      set.clear();
      const dispatch = reactor.addTo(set);
      if (set.waitNow(5) > 0 && dispatch()) break;
    }
    assert.deepEqual(await next, 1);
  } finally {
    reactor.release();
    server.close();
    client.close();
    listener.close();
  }
});
