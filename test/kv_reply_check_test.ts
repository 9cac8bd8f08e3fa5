/**
 * Every reply of the memcached and Redis clients is checked for exact size
 * and shape before a byte reaches the caller's page buffer (issue #20, item
 * 2): fake servers that answer a GET with a value of the wrong size, or of
 * the wrong type, make the page lost (PageLostError or a store error), and
 * the buffer keeps its previous bytes.
 */
import { test } from "../testing/harness.ts";
import { type LoopbackServer, serveLoopback } from "../testing/servers.ts";
import { assert, assertEquals } from "./helpers/assert.ts";
import { openStore } from "../transport/open.ts";
import type { PageStore } from "../transport/store.ts";

const te = new TextEncoder();
const td = new TextDecoder();

type Handler = (buf: Uint8Array, start: number) => { reply: string; next: number } | undefined;

/** Serves `handler` on a loopback port: it consumes one request at a time from the stream. */
function fakeServer(handler: Handler): LoopbackServer {
  return serveLoopback((conn) => serve(conn, handler));
}

async function serve(conn: Deno.Conn, handler: Handler): Promise<void> {
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(chunk);
    if (n === null) return;
    const joined = new Uint8Array(buf.length + n);
    joined.set(buf);
    joined.set(chunk.subarray(0, n), buf.length);
    let at = 0;
    let out = "";
    for (let r; (r = handler(joined, at)) !== undefined; at = r.next) out += r.reply;
    buf = joined.slice(at);
    if (out) await conn.write(te.encode(out));
  }
}

function lineAt(buf: Uint8Array, start: number): { line: string; next: number } | undefined {
  for (let i = start; i + 1 < buf.length; i++) {
    if (buf[i] === 13 && buf[i + 1] === 10) {
      return { line: td.decode(buf.subarray(start, i)), next: i + 2 };
    }
  }
  return undefined;
}

/** memcached's meta protocol, enough for open, put and get; `mg` answers `value`. */
function memcachedHandler(value: string): Handler {
  return (buf, start) => {
    const l = lineAt(buf, start);
    if (!l) return undefined;
    const [cmd, , size] = l.line.split(" ");
    if (cmd === "ms") {
      const end = l.next + Number(size) + 2;
      return end <= buf.length ? { reply: "HD\r\n", next: end } : undefined;
    }
    const reply = cmd === "version"
      ? "VERSION 1.6.21\r\n"
      : cmd === "stats"
      ? "STAT evictions off\r\nSTAT item_size_max 1048576\r\nEND\r\n"
      : cmd === "mg"
      ? value
      : "HD\r\n";
    return { reply, next: l.next };
  };
}

/** RESP commands (arrays of bulk strings); GET answers `value`. */
function redisHandler(value: string): Handler {
  return (buf, start) => {
    const head = lineAt(buf, start);
    if (!head) return undefined;
    const count = Number(head.line.slice(1));
    const args: string[] = [];
    let at = head.next;
    for (let i = 0; i < count; i++) {
      const len = lineAt(buf, at);
      if (!len) return undefined;
      const n = Number(len.line.slice(1));
      if (len.next + n + 2 > buf.length) return undefined;
      args.push(td.decode(buf.subarray(len.next, len.next + Math.min(n, 64))));
      at = len.next + n + 2;
    }
    const cmd = args[0].toUpperCase();
    const reply = cmd === "CONFIG"
      ? "*2\r\n$16\r\nmaxmemory-policy\r\n$10\r\nnoeviction\r\n"
      : cmd === "GET"
      ? value
      : cmd === "SET" || cmd === "PING"
      ? "+OK\r\n"
      : ":1\r\n";
    return { reply, next: at };
  };
}

async function assertGetRefused(store: PageStore, what: string): Promise<void> {
  const keys = Uint32Array.of(1, 2);
  await store.put(keys, new Uint8Array(2 * 4096).fill(0x11));
  const into = new Uint8Array(2 * 4096).fill(0xee);
  let error: unknown;
  try {
    await store.get(keys, into);
  } catch (e) {
    error = e;
  }
  assert(error instanceof Error, `waited for get to fail on ${what}, got pages`);
  assert(into.every((b) => b === 0xee), `no byte of ${what} reached the page buffer`);
}

const BAD_MEMCACHED: [string, string][] = [
  ["a 10-byte value", "VA 10\r\n0123456789\r\n"],
  ["an empty value", "VA 0\r\n\r\n"],
  ["a value one byte too long", `VA 4097\r\n${"x".repeat(4097)}\r\n`],
];

for (const [what, value] of BAD_MEMCACHED) {
  test(`memcached: ${what} is not a page`, async () => {
    const server = fakeServer(memcachedHandler(value));
    const lost: number[] = [];
    const store = await openStore([`memcached://127.0.0.1:${server.port}`], {
      replicas: 1,
      namespace: "t",
      onLoss: (k) => lost.push(...k),
    });
    try {
      await assertGetRefused(store, what);
      assertEquals(lost, [1, 2], "reported lost");
    } finally {
      await store.close().catch(() => {});
      await server.close();
    }
  });
}

const BAD_REDIS: [string, string][] = [
  ["a 10-byte value", "$10\r\n0123456789\r\n"],
  ["an empty value", "$0\r\n\r\n"],
  ["an integer", ":4096\r\n"],
  ["an array", "*1\r\n$4\r\nPAGE\r\n"],
];

for (const [what, value] of BAD_REDIS) {
  test(`redis: ${what} is not a page`, async () => {
    const server = fakeServer(redisHandler(value));
    const store = await openStore([`redis://127.0.0.1:${server.port}`], {
      replicas: 1,
      namespace: "t",
    });
    try {
      await assertGetRefused(store, what);
    } finally {
      await store.close().catch(() => {});
      await server.close();
    }
  });
}
