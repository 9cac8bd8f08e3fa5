/**
 * A fake peer daemon for tests of the client side: a Deno TCP server that
 * speaks the peer protocol (`transport/tcp/protocol.ts`) well enough to
 * store and return pages, and misbehaves on demand: it can pretend to need
 * no authentication (an impostor that does not know the token), or answer
 * READs with replies of the wrong size or with wrong bytes.
 *
 * @module
 */

import {
  clientProof,
  encodeFrame,
  ErrCode,
  FrameReader,
  INSTANCE_ID_BYTES,
  MAX_FRAME_BODY,
  MsgType,
  NONCE_BYTES,
  proofsEqual,
  PROTOCOL_VERSION,
  serverProof,
} from "../../transport/tcp/protocol.ts";
import { PAGE_SIZE } from "../../transport/store.ts";
import { serveLoopback } from "../../testing/servers.ts";

/** How the fake behaves. */
export interface FakePeerOptions {
  /** The shared token; with `impostor` it is not known to the fake. */
  token?: Uint8Array;
  /** Say "no auth" in HELLO and answer AUTH with 32 zero bytes instead of a proof. */
  impostor?: boolean;
  /**
   * Rewrites the payload of an OK to a READ of `pages` pages (`data` is what
   * it stored); default: the stored pages unchanged.
   */
  readReply?: (pages: number, data: Uint8Array) => Uint8Array;
}

/** A running fake peer. */
export interface FakePeer {
  /** `tcp://127.0.0.1:PORT`. */
  url: string;
  /** Its port. */
  port: number;
  /** Counts of what it received, for assertions. */
  seen: { auths: number; writes: number; reads: number; pagesWritten: number };
  /** Stops listening and closes every connection. */
  close(): Promise<void>;
}

/** Starts a fake peer on a free loopback port. */
export function startFakePeer(opts: FakePeerOptions = {}): FakePeer {
  const seen = { auths: 0, writes: 0, reads: 0, pagesWritten: 0 };
  const slabs = new Map<number, Map<number, Uint8Array>>();
  const server = serveLoopback((conn) => serve(conn, opts, seen, slabs));
  return {
    url: `tcp://127.0.0.1:${server.port}`,
    port: server.port,
    seen,
    close: () => server.close(),
  };
}

function stat(): Uint8Array {
  const b = new Uint8Array(29);
  const v = new DataView(b.buffer);
  v.setFloat64(0, 1 << 30, true);
  v.setFloat64(8, 1 << 30, true);
  return b;
}

async function serve(
  conn: Deno.Conn,
  opts: FakePeerOptions,
  seen: FakePeer["seen"],
  slabs: Map<number, Map<number, Uint8Array>>,
): Promise<void> {
  const serverNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const instance = new Uint8Array(INSTANCE_ID_BYTES).fill(7);
  const authFlag = opts.token && !opts.impostor ? 1 : 0;
  await writeAll(
    conn,
    encodeFrame(
      MsgType.HELLO,
      0,
      new Uint8Array([PROTOCOL_VERSION, authFlag]),
      instance,
      serverNonce,
    ),
  );
  const reader = new FrameReader(MAX_FRAME_BODY);
  let authed = false;
  while (await reader.fill(conn)) {
    let f;
    while ((f = reader.next()) !== null) {
      if (!authed) {
        const reply = answerAuth(f.payload, f.id, serverNonce, opts);
        seen.auths++;
        await writeAll(conn, reply);
        if (reply[4] !== MsgType.OK) return;
        authed = true;
        continue;
      }
      await writeAll(conn, answer(f.type, f.id, f.payload, opts, seen, slabs));
    }
  }
}

function answerAuth(
  p: Uint8Array,
  id: number,
  serverNonce: Uint8Array,
  opts: FakePeerOptions,
): Uint8Array {
  const clientNonce = p.slice(0, NONCE_BYTES);
  const proof = p.slice(NONCE_BYTES, NONCE_BYTES + 32);
  const nsLen = p[64] | (p[65] << 8);
  const namespace = new TextDecoder().decode(p.subarray(66, 66 + nsLen));
  if (opts.impostor || !opts.token) {
    // Knows no token: accepts anyone and cannot prove anything.
    return encodeFrame(MsgType.OK, id, new Uint8Array(32), stat());
  }
  if (!proofsEqual(proof, clientProof(opts.token, serverNonce, clientNonce, namespace))) {
    return encodeFrame(MsgType.ERR, id, new Uint8Array([ErrCode.AUTH]));
  }
  return encodeFrame(
    MsgType.OK,
    id,
    serverProof(opts.token, serverNonce, clientNonce, namespace),
    stat(),
  );
}

function answer(
  type: number,
  id: number,
  p: Uint8Array,
  opts: FakePeerOptions,
  seen: FakePeer["seen"],
  slabs: Map<number, Map<number, Uint8Array>>,
): Uint8Array {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  switch (type) {
    case MsgType.ALLOC:
      slabs.set(v.getUint32(0, true), new Map());
      return encodeFrame(MsgType.OK, id, stat());
    case MsgType.FREE:
      slabs.delete(v.getUint32(0, true));
      return encodeFrame(MsgType.OK, id, stat());
    case MsgType.WRITE: {
      const slab = slabs.get(v.getUint32(0, true));
      const count = v.getUint32(4, true);
      seen.writes++;
      seen.pagesWritten += count;
      const base = 8 + count * 4;
      for (let i = 0; i < count; i++) {
        slab?.set(
          v.getUint32(8 + i * 4, true),
          p.slice(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE),
        );
      }
      return encodeFrame(MsgType.OK, id);
    }
    case MsgType.READ: {
      const slab = slabs.get(v.getUint32(0, true));
      const count = v.getUint32(4, true);
      seen.reads++;
      const out = new Uint8Array(count * PAGE_SIZE);
      for (let i = 0; i < count; i++) {
        const page = slab?.get(v.getUint32(8 + i * 4, true));
        if (!page) return encodeFrame(MsgType.ERR, id, new Uint8Array([ErrCode.NOT_PRESENT]));
        out.set(page, i * PAGE_SIZE);
      }
      return encodeFrame(MsgType.OK, id, opts.readReply ? opts.readReply(count, out) : out);
    }
    default: // STAT, RESET, DRAIN
      if (type === MsgType.RESET) slabs.clear();
      return encodeFrame(MsgType.OK, id, stat());
  }
}

async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let at = 0;
  while (at < b.length) at += await conn.write(b.subarray(at));
}
