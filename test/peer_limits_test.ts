/**
 * The peer daemon under hostile load (issue #20, server side): floods of idle
 * or non-reading connections, a session of 200k slabs drained, TLS sockets
 * that never say hello, accept() out of file descriptors, and option values
 * past what the runtime holds. Under each flood a real pager keeps paging a
 * verifying target through the peer, and the peer's RSS stays within
 * `--capacity` plus {@linkcode OVERHEAD_MIB}.
 *
 * Floods come from other loopback addresses (127.0.0.2 and up) than the
 * legitimate clients (127.0.0.1), are bounded in count and time, and stop by
 * themselves. Nothing here measures a speed: events are awaited patiently.
 */

import assert from "node:assert/strict";
import net from "node:net";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE } from "../transport/store.ts";
import {
  encodeFrame,
  FrameReader,
  MAX_FRAME_BODY,
  MAX_PREAUTH_BODY,
  MsgType,
  u32s,
} from "../transport/tcp/protocol.ts";
import { test, waitUntil, withPatience } from "../testing/harness.ts";
import {
  makeTestCertificates,
  makeTokenFile,
  type PeerProcess,
  type RawPeerConnection,
  rawPeerConnection,
  startPeer,
} from "../testing/peers.ts";
import { keyRange, pagesFor, verifyStored } from "../testing/pages.ts";
import {
  buildTarget,
  killPid,
  Proc,
  REMOTE_PAGER_PERMS,
  ROOT,
  startPager,
} from "../testing/procs.ts";

/**
 * What the peer may hold beyond `--capacity`: the runtime itself and every
 * bounded buffer. Serving from sockets of its own (FFI: libc's symbols, the
 * reactor's code) costs about 5 MiB more than Deno's sockets (slab churn:
 * peak 129-131 MiB against 124.5, idle 53.7 against 51.0).
 */
const OVERHEAD_MIB = 72;
const MAIN = `${ROOT}transport/peer/main.ts`;
const memcheck = await buildTarget("memcheck");

/** VmRSS of a process in MiB (0 once it is gone). */
function rssMiB(pid: number): number {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  } catch {
    return 0;
  }
}

/** Samples a process's RSS every 100 ms until stopped; resolves with the largest seen. */
function watchRss(pid: number): { stop: () => Promise<number> } {
  let max = rssMiB(pid);
  let running = true;
  const loop = (async () => {
    while (running) {
      max = Math.max(max, rssMiB(pid));
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return Math.max(max, rssMiB(pid));
    },
  };
}

function assertRss(maxMiB: number, capacityMiB: number, what: string, peer: { output(): string }) {
  console.log(`peer VmRSS under ${what}: max ${maxMiB.toFixed(1)} MiB`);
  assert.ok(
    maxMiB <= capacityMiB + OVERHEAD_MIB,
    `peer RSS ${maxMiB.toFixed(1)} MiB under ${what} exceeds --capacity ${capacityMiB} MiB + ` +
      `${OVERHEAD_MIB} MiB\n${peer.output().split("\n").slice(-30).join("\n")}`,
  );
}

/** A pager paging memcheck (6 MiB in a 1 MiB budget) through `url`; the target checks every word. */
async function startLegitPager(
  url: string,
  tokenFile: string,
  extra: string[] = [],
): Promise<Proc> {
  const pager = startPager(
    ["--local", "1M", "--backend", url, "--token-file", tokenFile, ...extra],
    { perms: REMOTE_PAGER_PERMS, program: [memcheck, "6", "0", "1", "0", "20"] },
  );
  pager.status.then(() => exited.add(pager), () => exited.add(pager));
  await roundsMore(pager, 2);
  return pager;
}

/** Pagers that exited: waiting for their rounds is over. */
const exited = new WeakSet<Proc>();

function rounds(pager: Proc): number {
  return pager.count(/parent round \d+ ok/);
}

/** Waits for `more` further verified rounds (each checks every word of the previous one). */
async function roundsMore(pager: Proc, more: number): Promise<void> {
  const want = rounds(pager) + more;
  await waitUntil(
    () =>
      `${want} verified rounds; pager output:\n${pager.text().split("\n").slice(-30).join("\n")}`,
    () => rounds(pager) >= want || /MISMATCH/.test(pager.text()) || exited.has(pager),
  );
  assert.doesNotMatch(pager.text(), /MISMATCH/, pager.text());
}

/** Detaches the pager (SIGTERM: every page back, exit 0), then ends the target, which outlives it. */
async function stopPager(pager: Proc): Promise<void> {
  const target = Number(/ready pid (\d+)/.exec(pager.text())?.[1] ?? 0);
  pager.kill("SIGTERM");
  const status = await withPatience("the pager to detach", pager.status);
  if (target > 0) killPid(target);
  assert.equal(status.code, 0, pager.text());
  assert.doesNotMatch(pager.text(), /MISMATCH/, pager.text());
}

/** A new client session from 127.0.0.1 writes and reads back pages: the peer still admits. */
async function freshClientVerifies(url: string, tokenFile: string, tlsCaFile?: string) {
  const store = await openPeerStore([url], {
    replicas: 1,
    namespace: `fresh:${crypto.randomUUID()}`,
    tokenFile,
    slabPages: 64,
    tlsCaFile,
  });
  try {
    const keys = keyRange(0, 128);
    await store.put(keys, pagesFor(keys));
    const into = new Uint8Array(keys.length * PAGE_SIZE);
    await store.get(keys, into);
    assert.deepEqual(into, pagesFor(keys), "a fresh client read back what it wrote");
  } finally {
    await store.close();
  }
}

interface Flood {
  /** Connections the flood opened. */
  opened: number;
  /** Connections the peer closed on it. */
  closedByPeer: number;
  /** Ends the flood (it also ends by itself) and closes its sockets. */
  stop(): Promise<void>;
}

/**
 * Idle connections from `hosts` (loopback addresses), `perHost` held open at
 * once and each reopened when the peer closes it, until `maxOpened` were
 * opened or `maxMs` passed. Nothing is ever sent on them.
 */
function idleFlood(
  port: number,
  hosts: string[],
  perHost: number,
  maxOpened: number,
  maxMs = 60_000,
): Flood {
  const sockets = new Set<net.Socket>();
  const deadline = Date.now() + maxMs;
  let stopped = false;
  const flood: Flood = {
    opened: 0,
    closedByPeer: 0,
    stop: async () => {
      stopped = true;
      for (const s of sockets) s.destroy();
      await new Promise((r) => setTimeout(r, 100));
    },
  };
  const open = (host: string) => {
    if (stopped || flood.opened >= maxOpened || Date.now() > deadline) return;
    flood.opened++;
    const s = net.connect({ host: "127.0.0.1", port, localAddress: host });
    sockets.add(s);
    s.on("data", () => {});
    s.on("error", () => {});
    s.on("close", () => {
      sockets.delete(s);
      if (stopped) return;
      flood.closedByPeer++;
      // Reopen on the next turn: a flood that keeps the peer's pool full.
      setTimeout(() => open(host), 0);
    });
  };
  for (const host of hosts) for (let i = 0; i < perHost; i++) open(host);
  setTimeout(() => stopped = true, maxMs);
  return flood;
}

function hostsFrom(first: number, count: number): string[] {
  return Array.from({ length: count }, (_, i) => `127.0.0.${first + i}`);
}

/** Lines of `text` matching `re`. */
function countLines(text: string, re: RegExp): number {
  return text.split("\n").filter((l) => re.test(l)).length;
}

/** At most one detailed and one summary line per kind per 10 s interval, plus one of each at the edges. */
function logBound(kinds: number, elapsedMs: number): number {
  return kinds * 2 * (Math.ceil(elapsedMs / 10_000) + 1);
}

test("a pre-auth reader allocates 1 KiB and grows to the largest frame only after auth", () => {
  const reader = new FrameReader(MAX_PREAUTH_BODY);
  assert.ok(reader.capacity <= 4 + MAX_PREAUTH_BODY, `pre-auth buffer of ${reader.capacity} bytes`);
  reader.maxBody = MAX_FRAME_BODY;
  assert.ok(reader.capacity <= 4 + MAX_PREAUTH_BODY, "raising the limit alone allocates nothing");
});

test("1,000s of idle unauthenticated connections from 10 hosts: legitimate clients get in, RSS stays bounded, the log is not flooded", async () => {
  const tokenFile = await makeTokenFile();
  const peer = await startPeer({ tokenFile, capacity: "256M" });
  let flood: Flood | null = null;
  try {
    const pager = await startLegitPager(peer.url, tokenFile);
    const rss = watchRss(peer.child.pid);
    const started = Date.now();
    flood = idleFlood(peer.port, hostsFrom(2, 10), 120, 20_000);
    await waitUntil(
      () => `the flood to open 3,000 connections (${flood!.opened})`,
      () => flood!.opened >= 3000,
    );
    // Legitimate new sessions from another host, one after the other, during the flood.
    for (let i = 0; i < 5; i++) await freshClientVerifies(peer.url, tokenFile);
    await roundsMore(pager, 3);
    await waitUntil(
      () => `the peer to close flood connections (${flood!.closedByPeer})`,
      () => flood!.closedByPeer >= 1000,
    );
    await flood.stop();
    const elapsed = Date.now() - started;
    assertRss(await rss.stop(), 256, "an idle-connection flood", peer);
    await roundsMore(pager, 1);
    await stopPager(pager);
    const refusals = countLines(peer.output(), /unauthenticated|no authentication within/);
    console.log(
      `flood: ${flood.opened} opened, ${flood.closedByPeer} closed by the peer; ` +
        `${refusals} log lines about them in ${elapsed} ms`,
    );
    assert.ok(refusals >= 1, `the evictions are logged:\n${peer.output()}`);
    assert.ok(
      refusals <= logBound(2, elapsed),
      `${refusals} log lines about refused connections in ${elapsed} ms:\n` +
        peer.output().split("\n").slice(-20).join("\n"),
    );
  } finally {
    await flood?.stop();
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});

test("16 connections pipelining 120 READs of 256 pages without reading replies: RSS within --capacity + overhead, the pager verifies", async () => {
  const tokenText = crypto.randomUUID();
  const tokenFile = await makeTokenFile(tokenText);
  const token = new TextEncoder().encode(tokenText);
  const peer = await startPeer({ tokenFile, capacity: "256M" });
  const conns: Deno.TcpConn[] = [];
  try {
    const pager = await startLegitPager(peer.url, tokenFile);
    const namespace = `reader:${crypto.randomUUID()}`;
    const first = await rawPeerConnection(peer.port, token, namespace);
    conns.push(first.conn);
    const offsets = u32s(...Array.from({ length: 256 }, (_, i) => i));
    await first.conn.write(encodeFrame(MsgType.ALLOC, 2, u32s(1, 256)));
    assert.equal((await first.nextFrame())?.type, MsgType.OK);
    await writeAll(
      first.conn,
      encodeFrame(MsgType.WRITE, 3, u32s(1, 256), offsets, new Uint8Array(256 * PAGE_SIZE)),
    );
    assert.equal((await first.nextFrame())?.type, MsgType.OK);
    for (let i = 1; i < 16; i++) {
      conns.push((await rawPeerConnection(peer.port, token, namespace)).conn);
    }
    const rss = watchRss(peer.child.pid);
    const reads: Uint8Array[] = [];
    for (let id = 10; id < 130; id++) {
      reads.push(encodeFrame(MsgType.READ, id, u32s(1, 256), offsets));
    }
    const request = concat(reads);
    // Writes that the peer stops reading would block: they are not awaited.
    const writes = conns.map((c) => writeAll(c, request).catch(() => {}));
    await roundsMore(pager, 4);
    await freshClientVerifies(peer.url, tokenFile);
    assertRss(await rss.stop(), 256, "16 connections pipelining READs", peer);
    for (const c of conns) c.close();
    await Promise.all(writes);
    await roundsMore(pager, 1);
    await stopPager(pager);
  } finally {
    for (const c of conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await conn.write(data.subarray(at));
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test("DRAIN and SIGUSR1 with 200,000 slabs in one session: an OK reply, every id in EVICT lists, the peer lives on", async () => {
  const tokenText = crypto.randomUUID();
  const tokenFile = await makeTokenFile(tokenText);
  const token = new TextEncoder().encode(tokenText);
  const peer = await startPeer({ tokenFile, capacity: "1G", args: ["--slab-size", "4K"] });
  try {
    const namespace = `many:${crypto.randomUUID()}`;
    const a = await rawPeerConnection(peer.port, token, namespace);
    const SLABS = 200_000;
    await allocMany(a, SLABS);
    const b = await rawPeerConnection(peer.port, token, namespace);
    await b.conn.write(encodeFrame(MsgType.DRAIN, 7, new Uint8Array(0)));
    const evicted = new Set<number>();
    let ok = false;
    while (!ok || evicted.size < SLABS) {
      const f = await withPatience("the DRAIN reply and EVICT lists", b.nextFrame());
      assert.ok(f, `the peer closed the connection after DRAIN:\n${peer.output()}`);
      if (f.type === MsgType.EVICT) {
        const v = new DataView(f.payload.buffer, f.payload.byteOffset, f.payload.byteLength);
        for (let i = 0; i < f.payload.length; i += 4) evicted.add(v.getUint32(i, true));
      } else {
        assert.equal(f.type, MsgType.OK, `DRAIN answered with type ${f.type}`);
        assert.equal(f.id, 7);
        ok = true;
      }
    }
    peer.signal("SIGUSR1");
    await b.conn.write(encodeFrame(MsgType.STAT, 8, new Uint8Array(0)));
    for (;;) {
      const f = await withPatience("a STAT reply after SIGUSR1", b.nextFrame());
      assert.ok(f, `the peer closed the connection after SIGUSR1:\n${peer.output()}`);
      if (f.type === MsgType.EVICT) continue;
      assert.equal(f.type, MsgType.OK, peer.output());
      assert.equal(f.id, 8);
      break;
    }
    assert.doesNotMatch(peer.output(), /Maximum call stack|RangeError/);
    a.conn.close();
    b.conn.close();
  } finally {
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});

/** Reserves slabs 1..count of one page each, pipelined, reading the replies as they come. */
async function allocMany(c: RawPeerConnection, count: number): Promise<void> {
  const replies = (async () => {
    for (let n = 0; n < count; n++) {
      const f = await c.nextFrame();
      assert.equal(f?.type, MsgType.OK, `ALLOC ${n + 1} of ${count} not OK`);
    }
  })();
  const BATCH = 10_000;
  for (let at = 0; at < count; at += BATCH) {
    const frames: Uint8Array[] = [];
    for (let id = at + 1; id <= Math.min(count, at + BATCH); id++) {
      frames.push(encodeFrame(MsgType.ALLOC, id, u32s(id, 1)));
    }
    await writeAll(c.conn, concat(frames));
  }
  await withPatience(`${count} ALLOC replies`, replies);
}

test("TLS: 120 sockets that never send a ClientHello are closed for real; a tcps:// pager verifies meanwhile", async () => {
  const dir = await Deno.makeTempDir({ prefix: "remora-tls-" });
  const tokenFile = await makeTokenFile();
  const sockets: Deno.TcpConn[] = [];
  let peer: PeerProcess | null = null;
  try {
    await makeTestCertificates(dir);
    peer = await startPeer({
      tokenFile,
      scheme: "tcps",
      args: ["--tls-cert", `${dir}/cert.pem`, "--tls-key", `${dir}/key.pem`],
    });
    const pager = await startLegitPager(peer.url, tokenFile, ["--tls-ca", `${dir}/ca.pem`]);
    const rss = watchRss(peer.child.pid);
    for (let i = 0; i < 120; i++) {
      sockets.push(await Deno.connect({ hostname: "127.0.0.1", port: peer.port }));
    }
    // Each silent socket must see the peer close it (EOF or reset): none stays open.
    await withPatience(
      "the peer to close all 120 silent sockets",
      Promise.all(sockets.map((s) => s.read(new Uint8Array(64)).catch(() => null))),
    );
    await roundsMore(pager, 2);
    await freshClientVerifies(peer.url, tokenFile, `${dir}/ca.pem`);
    const open = socketFds(peer.child.pid);
    assert.ok(open <= 12, `the peer still holds ${open} sockets:\n${peer.output()}`);
    assertRss(await rss.stop(), 256, "120 silent TLS sockets", peer);
    await stopPager(pager);
  } finally {
    for (const s of sockets) {
      try {
        s.close();
      } catch { /* closed */ }
    }
    await peer?.stop();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(tokenFile);
  }
});

/** Sockets a process holds open, from /proc/PID/fd. */
function socketFds(pid: number): number {
  let n = 0;
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`).startsWith("socket:")) n++;
    } catch { /* closed meanwhile */ }
  }
  return n;
}

test("accept() out of file descriptors backs off and logs a few lines; the pager verifies, new clients get in afterwards", async () => {
  const tokenFile = await makeTokenFile();
  // 128 descriptors, 20 flooding hosts x 32 pre-auth connections: accept() fails with EMFILE.
  const peer = new Proc("prlimit", [
    "--nofile=128:128",
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-read",
    MAIN,
    "--listen",
    "127.0.0.1:0",
    "--token-file",
    tokenFile,
  ], { label: "peer (128 fds)" });
  let flood: Flood | null = null;
  try {
    const port = Number((await peer.waitFor(/listening on [^\s]+:(\d+)/))[1]);
    const url = `tcp://127.0.0.1:${port}`;
    const pager = await startLegitPager(url, tokenFile);
    const started = Date.now();
    flood = idleFlood(port, hostsFrom(2, 20), 32, 20_000, 20_000);
    await peer.waitFor(/accept failed/);
    await roundsMore(pager, 3);
    await flood.stop();
    const elapsed = Date.now() - started;
    const lines = countLines(peer.text(), /accept fail/);
    console.log(`EMFILE flood: ${flood.opened} opened; ${lines} accept log lines in ${elapsed} ms`);
    assert.ok(
      lines <= logBound(1, elapsed),
      `${lines} lines about accept failures in ${elapsed} ms:\n` +
        peer.text().split("\n").slice(-20).join("\n"),
    );
    await freshClientVerifies(url, tokenFile);
    await stopPager(pager);
  } finally {
    await flood?.stop();
    peer.kill("SIGKILL");
    await peer.status;
    await Deno.remove(tokenFile);
  }
});

test("duration and size options past what the runtime holds are refused in one line (exit 2)", async () => {
  const bad: [string[], RegExp][] = [
    [["--grace", "2200000"], /--grace must be at most 2147483 seconds/],
    [["--grace", "1e3"], /--grace must be a number of seconds/],
    [["--auth-timeout", "99999999"], /--auth-timeout must be at most/],
    [["--capacity", "99999999T"], /--capacity: .*too large/],
    [["--slab-size", "8G"], /--slab-size must be between 4K and 1G/],
    [["--max-queued", "1K"], /--max-queued must be between/],
    [["--max-connections", "0x10"], /--max-connections must be a whole number/],
    [["drain", "--peer", "127.0.0.1:1", "--timeout", "9999999"], /--timeout must be at most/],
  ];
  for (const [args, expected] of bad) {
    const daemon = args[0] === "drain" ? [] : ["--insecure-no-auth", "--listen", "127.0.0.1:0"];
    const p = new Proc(Deno.execPath(), [
      "run",
      "--allow-net",
      "--allow-read",
      MAIN,
      ...args,
      ...daemon,
    ]);
    const code = await p.exit();
    assert.equal(code, 2, `${args.join(" ")}: exit ${code}\n${p.text()}`);
    assert.match(p.text(), expected);
    assert.equal(p.text().trim().split("\n").length, 1, `one line for ${args.join(" ")}`);
  }
  // The longest grace the runtime holds is accepted.
  const longest = await startPeer({ args: ["--grace", "2147483"] });
  await longest.stop();
});

test("slab churn (60 MiB written, verified and freed, 8 times): RSS within --capacity + overhead, and freed slabs go back to the host at once", async () => {
  const tokenFile = await makeTokenFile();
  const peer = await startPeer({ tokenFile, capacity: "64M", args: ["--slab-size", "1M"] });
  const store = await openPeerStore([peer.url], {
    replicas: 1,
    namespace: `churn:${crypto.randomUUID()}`,
    tokenFile,
    slabPages: 256,
  });
  try {
    const idle = rssMiB(peer.child.pid);
    const rss = watchRss(peer.child.pid);
    const pages = 60 * 256;
    for (let round = 0; round < 8; round++) {
      const keys = keyRange(round * pages, pages); // new keys: new slabs every round
      for (let at = 0; at < pages; at += 256) {
        const some = keys.subarray(at, at + 256);
        await store.put(some, pagesFor(some, round));
      }
      await verifyStored(store, keys, round);
      await store.delete(keys);
    }
    assertRss(await rss.stop(), 64, "slab churn", peer);
    // What the store freed is the host's again, not the runtime's to keep.
    await waitUntil(
      () =>
        `the peer's RSS back within 24 MiB of its ${idle.toFixed(1)} MiB before the churn (now ${
          rssMiB(peer.child.pid).toFixed(1)
        })`,
      () => rssMiB(peer.child.pid) <= idle + 24,
    );
  } finally {
    await store.close();
    await peer.stop();
    await Deno.remove(tokenFile);
  }
});
