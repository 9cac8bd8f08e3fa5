/**
 * Wire protocol between a remora client and a peer daemon.
 *
 * Every frame is `u32 length | u8 type | u32 id | payload`, little endian,
 * where `length` counts the bytes after itself (so at least 5). Requests carry
 * a client-chosen id that the response echoes, so many requests can be in
 * flight on one connection and responses may be matched out of order.
 * Server pushes (drain notices) use id 0.
 *
 * Handshake: the peer sends HELLO (version, auth flag, instance id, server
 * nonce); the client answers AUTH (client nonce, namespace, HMAC-SHA256 of
 * both nonces and the namespace under the shared token); the peer answers
 * OK with its own HMAC, so each side proves it knows the token without ever
 * sending it.
 *
 * @module
 */

import { createHmac, timingSafeEqual } from "node:crypto";
import { concat, ProtocolError } from "../kit.ts";
import { PAGE_SIZE } from "../store.ts";
import { FramePool } from "./frame_pool.ts";

/** A frame violated the protocol; the connection that sent it must be closed (one class for every transport). */
export { ProtocolError };

/** Protocol version carried in HELLO; a mismatch refuses the connection. */
export const PROTOCOL_VERSION = 1;
/** Bytes of the length prefix. */
export const LENGTH_BYTES = 4;
/** Bytes of type plus id that follow the length prefix. */
export const HEADER_BYTES = 5;
/** Most pages one READ or WRITE may carry; clients split larger batches. */
export const MAX_PAGES_PER_REQUEST = 256;
/** Largest frame body accepted after authentication (a full WRITE plus slack). */
export const MAX_FRAME_BODY = HEADER_BYTES + 8 + MAX_PAGES_PER_REQUEST * (4 + PAGE_SIZE) + 64;
/** Largest frame body accepted before authentication: garbage cannot make a peer buffer much. */
export const MAX_PREAUTH_BODY = 1024;
/** Bytes of each nonce in the handshake. */
export const NONCE_BYTES = 32;
/** Bytes of the peer's random instance id, which changes on every restart. */
export const INSTANCE_ID_BYTES = 16;
/** Longest namespace a client may claim. */
export const MAX_NAMESPACE_BYTES = 256;

/** Frame types. Requests are below 0x80, responses and pushes at or above. */
export const MsgType = {
  /** Client proves the token and names its session. */
  AUTH: 0x01,
  /**
   * Reserve a slab: `u32 slab, u32 pages`, then optionally `u32 index, u32
   * generation` (which keys it holds, and the client's count of ALLOCs): kept
   * for {@linkcode MsgType.LIST}.
   */
  ALLOC: 0x10,
  /** Release a slab: `u32 slab`. */
  FREE: 0x11,
  /** Store pages: `u32 slab, u32 count, u32 offsets[count], pages`. */
  WRITE: 0x12,
  /** Load pages: `u32 slab, u32 count, u32 offsets[count]`. */
  READ: 0x13,
  /** Capacity and usage of the peer. */
  STAT: 0x14,
  /**
   * Ask the peer to drain: every client moves its slabs away. With an
   * `f64 bytes` payload, a partial drain: the peer lends that much less and
   * asks for its least active slabs of about that size back (RECLAIM).
   */
  DRAIN: 0x15,
  /** Free every slab of this session (a client that reconnects after giving them up). */
  RESET: 0x16,
  /**
   * One RDMA control message (`transport/rdma/handshake.ts`), id 0, in both
   * directions: after authentication this connection carries the queue-pair
   * handshake and slab grants of an `rdma://` client; the pages themselves
   * move by one-sided RDMA READ/WRITE, never in frames.
   */
  RDMA: 0x17,
  /**
   * This session's slabs, for a client taking over a killed one's session:
   * reply `u32 count`, then per slab `u32 slab, u32 pages, u32 index, u32
   * generation` (index and generation 0xffffffff if ALLOC gave none).
   */
  LIST: 0x18,
  /** Peer greeting, first frame on every connection. */
  HELLO: 0x82,
  /** Success; payload depends on the request. */
  OK: 0x80,
  /** Failure: `u8 code, utf8 message`. */
  ERR: 0x81,
  /** Push: the peer is draining; `u32 slabs[]` of this session to move away. */
  EVICT: 0x90,
  /**
   * Push: the peer wants part of its memory back; `u32 slabs[]` of this
   * session to move to other peers (or home), the rest stay.
   */
  RECLAIM: 0x91,
} as const;

/** Error codes carried in ERR frames. */
export const ErrCode = {
  /** The frame could not be parsed. */
  MALFORMED: 1,
  /** The token proof did not verify. */
  AUTH: 2,
  /** The peer has no free capacity for the slab. */
  NO_CAPACITY: 3,
  /** The slab does not exist in this session (the peer may have restarted). */
  NO_SLAB: 4,
  /** The session reached its per-client memory or connection bound. */
  QUOTA: 5,
  /** The peer is draining and accepts no new slabs. */
  DRAINING: 6,
  /** An offset or size is out of range. */
  BAD_REQUEST: 7,
  /** A page was read that was never written. */
  NOT_PRESENT: 8,
} as const;

/** Builds a frame from a type, an id and payload parts, in one buffer. */
export function encodeFrame(type: number, id: number, ...parts: Uint8Array[]): Uint8Array {
  let payload = 0;
  for (const p of parts) payload += p.length;
  const frame = new Uint8Array(LENGTH_BYTES + HEADER_BYTES + payload);
  const view = new DataView(frame.buffer);
  view.setUint32(0, HEADER_BYTES + payload, true);
  frame[4] = type;
  view.setUint32(5, id, true);
  let at = LENGTH_BYTES + HEADER_BYTES;
  for (const p of parts) {
    frame.set(p, at);
    at += p.length;
  }
  return frame;
}

/** Buffers of large frames from {@linkcode allocFrame}, reused once written. */
const replyFrames = new FramePool();

/**
 * Allocates a frame whose payload the caller fills in place (every byte): a
 * large reply is built once, where it will be written from, instead of copied
 * into a frame. Send it once only: a {@linkcode FrameWriter} gives a large one
 * back for reuse after writing it.
 */
export function allocFrame(
  type: number,
  id: number,
  payloadBytes: number,
): { frame: Uint8Array; payload: Uint8Array } {
  const frame = replyFrames.take(LENGTH_BYTES + HEADER_BYTES + payloadBytes);
  const view = new DataView(frame.buffer, frame.byteOffset);
  view.setUint32(0, HEADER_BYTES + payloadBytes, true);
  frame[4] = type;
  view.setUint32(5, id, true);
  return { frame, payload: frame.subarray(LENGTH_BYTES + HEADER_BYTES) };
}

/** Encodes a handful of `u32` values little endian; for a list, use {@linkcode u32sFrom}. */
export function u32s(...values: number[]): Uint8Array {
  return u32sFrom(values);
}

/**
 * Encodes `u32` values little endian. Takes the list itself: spreading a long
 * list into a call (`u32s(...ids)`) overflows the stack near 120k values.
 */
export function u32sFrom(values: Iterable<number>): Uint8Array {
  const list = Array.isArray(values) ? values : Array.from(values);
  const out = new Uint8Array(list.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < list.length; i++) view.setUint32(i * 4, list[i], true);
  return out;
}

/** One parsed frame; `payload` is a view into the reader's buffer, valid until the next read. */
export interface Frame {
  /** Message type, one of {@linkcode MsgType}. */
  type: number;
  /** Request id (0 for pushes and the handshake). */
  id: number;
  /** Bytes after the header. */
  payload: Uint8Array;
}

/** What a {@linkcode FrameReader} reads from: a `Deno.Conn` or any byte stream. */
export type ByteReader = Pick<Deno.Conn, "read">;
/** What a {@linkcode FrameWriter} writes to: a `Deno.Conn` or any byte stream. */
export type ByteWriter = Pick<Deno.Conn, "write">;

/** Smallest buffer a reader starts with: room for a pre-auth frame and its length. */
const MIN_READ_BUFFER = LENGTH_BYTES + MAX_PREAUTH_BODY;

/**
 * Accumulates bytes from a stream and cuts them into frames. The buffer starts
 * sized for `maxBody` only up to the pre-auth limit and grows to fit the
 * largest frame actually announced (at most `maxBody`), so an idle or
 * unauthenticated connection costs about 1 KiB however the sender behaves.
 */
export class FrameReader {
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  /** Largest body currently allowed; raised after authentication. */
  maxBody: number;

  /** Builds a reader that accepts bodies up to `maxBody` bytes. */
  constructor(maxBody: number) {
    this.maxBody = maxBody;
    this.#buf = new Uint8Array(Math.min(MIN_READ_BUFFER, LENGTH_BYTES + maxBody));
  }

  /** Bytes of buffer allocated now (grows with the frames received, up to `maxBody` + 4). */
  get capacity(): number {
    return this.#buf.length;
  }

  /** Reads once from `conn`; false at end of stream. */
  async fill(conn: ByteReader): Promise<boolean> {
    if (this.#start > 0 && this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await conn.read(this.#buf.subarray(this.#end));
    if (n === null) return false;
    this.#end += n;
    return true;
  }

  /** Bytes received but not yet returned as frames (a truncated frame at end of stream). */
  get pending(): number {
    return this.#end - this.#start;
  }

  /** Returns the next complete frame, or null if more bytes are needed. */
  next(): Frame | null {
    const avail = this.#end - this.#start;
    if (avail < LENGTH_BYTES) return null;
    const b = this.#buf;
    const s = this.#start;
    const len = (b[s] | (b[s + 1] << 8) | (b[s + 2] << 16) | (b[s + 3] << 24)) >>> 0;
    if (len < HEADER_BYTES) throw new ProtocolError(`frame length ${len} below header size`);
    if (len > this.maxBody) {
      throw new ProtocolError(`frame length ${len} exceeds limit ${this.maxBody}`);
    }
    if (avail < LENGTH_BYTES + len) {
      if (s + LENGTH_BYTES + len > b.length) this.#makeRoom(LENGTH_BYTES + len);
      return null;
    }
    const type = b[s + 4];
    const id = (b[s + 5] | (b[s + 6] << 8) | (b[s + 7] << 16) | (b[s + 8] << 24)) >>> 0;
    const payload = b.subarray(s + LENGTH_BYTES + HEADER_BYTES, s + LENGTH_BYTES + len);
    this.#start = s + LENGTH_BYTES + len;
    return { type, id, payload };
  }

  /** Moves the partial frame to the front, growing the buffer (doubling) if it cannot hold `frameBytes`. */
  #makeRoom(frameBytes: number): void {
    const live = this.#buf.subarray(this.#start, this.#end);
    if (frameBytes > this.#buf.length) {
      let size = this.#buf.length;
      while (size < frameBytes) size *= 2;
      const grown = new Uint8Array(Math.min(size, LENGTH_BYTES + this.maxBody));
      grown.set(live);
      this.#buf = grown;
    } else {
      this.#buf.copyWithin(0, this.#start, this.#end);
    }
    this.#end -= this.#start;
    this.#start = 0;
  }
}

/** Frames at least this large are written as they are; smaller ones are coalesced. */
const COALESCE_BELOW = 64 * 1024;

/**
 * Serialises writes on one connection. Small frames queued in the same turn
 * of the event loop go out in one syscall; a large frame (a READ reply) is
 * written from its own buffer, never copied again. `queued` counts the bytes
 * not yet handed to the kernel, so a server can stop reading requests from a
 * client that does not read its replies.
 */
export class FrameWriter {
  #conn: ByteWriter;
  #queue: Uint8Array[] = [];
  #queued = 0;
  #flushing: Promise<void> | null = null;
  #failed: Error | null = null;
  #drainWaiters: { below: number; resolve: () => void; reject: (e: Error) => void }[] = [];

  /** Wraps `conn`; the writer never closes it. */
  constructor(conn: ByteWriter) {
    this.#conn = conn;
  }

  /** Bytes queued or being written, not yet handed to the kernel. */
  get queued(): number {
    return this.#queued;
  }

  /** Queues a frame; resolves when it and everything before it is written. */
  send(frame: Uint8Array): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    this.#queue.push(frame);
    this.#queued += frame.length;
    if (this.#flushing === null) this.#flushing = this.#flush();
    return this.#flushing;
  }

  /** Queues a frame without waiting; a write failure surfaces through the next `send` or `drained`. */
  enqueue(frame: Uint8Array): void {
    this.send(frame).catch(() => {});
  }

  /** Resolves once fewer than `below` bytes are queued; rejects if the connection failed. */
  drained(below: number): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#queued < below) return Promise.resolve();
    return new Promise((resolve, reject) => this.#drainWaiters.push({ below, resolve, reject }));
  }

  async #flush(): Promise<void> {
    // Let the caller queue the rest of this turn's frames first: one syscall for all.
    await Promise.resolve();
    try {
      while (this.#queue.length > 0) {
        const batch = this.#nextBatch();
        let at = 0;
        while (at < batch.length) at += await this.#conn.write(batch.subarray(at));
        this.#queued -= batch.length;
        // A large frame from allocFrame is sent once: its buffer can serve the next one.
        replyFrames.give(batch);
        this.#wakeDrained();
      }
    } catch (e) {
      this.#failed = e instanceof Error ? e : new Error(String(e));
      this.#queue = [];
      this.#queued = 0;
      for (const w of this.#drainWaiters.splice(0)) w.reject(this.#failed);
      throw this.#failed;
    } finally {
      this.#flushing = null;
    }
  }

  /** Takes the next buffer to write: a large frame alone, or a run of small frames joined. */
  #nextBatch(): Uint8Array {
    const first = this.#queue[0];
    let n = 1;
    let bytes = first.length;
    if (first.length < COALESCE_BELOW) {
      while (
        n < this.#queue.length && this.#queue[n].length < COALESCE_BELOW &&
        bytes + this.#queue[n].length <= 4 * COALESCE_BELOW
      ) bytes += this.#queue[n++].length;
    }
    const parts = this.#queue.splice(0, n);
    return n === 1 ? first : concat(...parts);
  }

  #wakeDrained(): void {
    if (this.#drainWaiters.length === 0) return;
    const still = [];
    for (const w of this.#drainWaiters) {
      if (this.#queued < w.below) w.resolve();
      else still.push(w);
    }
    this.#drainWaiters = still;
  }
}

const encoder = new TextEncoder();

/** HMAC that a client sends to prove the token; binds both nonces and the namespace. */
export function clientProof(
  token: Uint8Array,
  serverNonce: Uint8Array,
  clientNonce: Uint8Array,
  namespace: string,
): Uint8Array {
  return hmac(token, "remora-peer-v1 client", serverNonce, clientNonce, namespace);
}

/** HMAC the peer answers with, so the client knows it talks to a token holder. */
export function serverProof(
  token: Uint8Array,
  serverNonce: Uint8Array,
  clientNonce: Uint8Array,
  namespace: string,
): Uint8Array {
  return hmac(token, "remora-peer-v1 server", serverNonce, clientNonce, namespace);
}

function hmac(
  token: Uint8Array,
  label: string,
  a: Uint8Array,
  b: Uint8Array,
  namespace: string,
): Uint8Array {
  const h = createHmac("sha256", token);
  h.update(encoder.encode(label));
  h.update(a);
  h.update(b);
  h.update(encoder.encode(namespace));
  return new Uint8Array(h.digest());
}

/** Constant-time equality of two proofs (false on different lengths). */
export function proofsEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
