/**
 * The peer daemon's memory: sessions, their slabs, and the requests that
 * reserve, fill, read and free them. No sockets here: each request becomes
 * exactly one reply frame.
 *
 * Slabs are reserved against `capacity` when allocated and backed by an
 * ArrayBuffer only on first write, so an idle reservation costs nothing; a
 * freed slab's buffer is detached, which returns its memory at once.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { PAGE_SIZE } from "../store.ts";
import {
  allocFrame,
  encodeFrame,
  ErrCode,
  type Frame,
  MAX_PAGES_PER_REQUEST,
  MsgType,
  ProtocolError,
} from "../tcp/protocol.ts";

const log = getLogger(["remora", "peer"]);

/** One slab of a session. */
/** A slab's tag when its ALLOC named none. */
const NO_TAG = 0xffffffff;

export interface Slab {
  /** Pages it holds. */
  pages: number;
  /** Its bytes, allocated on the first write. */
  data: Uint8Array | null;
  /** 1 for each page written at least once. */
  present: Uint8Array;
  /** Pages written at least once: the part of it the host's memory really holds. */
  written: number;
  /** When a client last read or wrote it, on the store's request clock: lower is colder. */
  lastTouch: number;
  /** Asked back by a partial drain: its owner is moving it away. */
  reclaiming: boolean;
  /** Which keys it holds and the client's ALLOC count, as the ALLOC said (see LIST). */
  tag: [index: number, generation: number];
}

/** The slabs of one namespace, shared by its connections. */
export interface Session {
  /** The namespace the clients authenticated as. */
  namespace: string;
  /** Slabs by the client's id. */
  slabs: Map<number, Slab>;
  /** Bytes reserved by its slabs. */
  bytes: number;
}

/** Bounds of a {@linkcode SlabStore}. */
export interface SlabLimits {
  /** Most bytes lent to all sessions together. */
  capacityBytes: number;
  /** Largest slab, in bytes. */
  slabBytes: number;
  /** Most bytes one session may hold. */
  maxSessionBytes: number;
  /**
   * Bytes the host can still spare beyond its reserve (`--reserve`); the peer
   * lends no more than this on top of what it lent. Unbounded if absent.
   */
  hostHeadroom?: () => number;
}

/** Candidates sampled per slab a partial drain takes back (Infiniswap's E + c, with c = E). */
const RECLAIM_SAMPLE_FACTOR = 2;

/** Capacity accounting and the data requests of every session. */
export class SlabStore {
  readonly #limits: SlabLimits;
  #usedBytes = 0;
  /** Bytes partial drains took off the capacity. */
  #givenBackBytes = 0;
  /** Bytes of slabs asked back and not yet freed by their owners. */
  #reclaimPendingBytes = 0;
  /** The request clock: one tick per READ or WRITE. */
  #clock = 0;
  /** Bytes of pages written at least once, over all slabs (reserved bytes are lent lazily). */
  #writtenBytes = 0;
  /** Slabs and bytes partial drains got back. */
  readonly reclaimed = { slabs: 0, bytes: 0 };
  /** Whether new slabs are refused (the peer drains). */
  draining = false;

  /** Builds an empty store. */
  constructor(limits: SlabLimits) {
    this.#limits = limits;
  }

  /** Bytes reserved by all sessions. */
  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Bytes it lends at most: `--capacity` less what partial drains took back. */
  get capacityBytes(): number {
    return Math.max(0, this.#limits.capacityBytes - this.#givenBackBytes);
  }

  /** Bytes still available for new slabs (0 while draining, bounded by the host's headroom). */
  get freeBytes(): number {
    if (this.draining) return 0;
    const free = Math.max(0, this.capacityBytes - this.#usedBytes);
    const headroom = this.#limits.hostHeadroom?.();
    if (headroom === undefined) return free;
    // The host's available memory does not yet show what was reserved and never written.
    const unwritten = this.#usedBytes - this.#writtenBytes;
    return Math.max(0, Math.min(free, headroom - unwritten));
  }

  /** Bytes of slabs asked back by partial drains and still held. */
  get reclaimPendingBytes(): number {
    return this.#reclaimPendingBytes;
  }

  /**
   * A partial drain: lends `bytes` less from now on when `shrink`, and picks
   * slabs of about `bytes` to ask back, Infiniswap's way: sample twice as
   * many as needed at random, take the least recently touched. Returns them
   * by session; the owners move them and free them here.
   *
   * @example
   * ```ts
   * const store = new SlabStore({ capacityBytes: 1 << 30, slabBytes: 1 << 26, maxSessionBytes: 1 << 30 });
   * store.reclaim([], 1 << 26, true); // Map {} (nothing lent), and 64 MiB less to lend
   * ```
   */
  reclaim(sessions: Iterable<Session>, bytes: number, shrink: boolean): Map<Session, number[]> {
    if (shrink) {
      this.#givenBackBytes = Math.min(this.#limits.capacityBytes, this.#givenBackBytes + bytes);
    }
    const all: { session: Session; id: number; slab: Slab }[] = [];
    for (const session of sessions) {
      for (const [id, slab] of session.slabs) if (!slab.reclaiming) all.push({ session, id, slab });
    }
    if (all.length === 0 || bytes <= 0) return new Map();
    const mean = all.reduce((n, c) => n + c.slab.pages * PAGE_SIZE, 0) / all.length;
    const wanted = Math.ceil(bytes / mean);
    const sample = shuffled(all).slice(0, RECLAIM_SAMPLE_FACTOR * wanted);
    sample.sort((a, b) => a.slab.lastTouch - b.slab.lastTouch);
    const chosen = new Map<Session, number[]>();
    let taken = 0;
    for (const c of sample) {
      if (taken >= bytes) break;
      c.slab.reclaiming = true;
      taken += c.slab.pages * PAGE_SIZE;
      let ids = chosen.get(c.session);
      if (!ids) chosen.set(c.session, ids = []);
      ids.push(c.id);
    }
    this.#reclaimPendingBytes += taken;
    return chosen;
  }

  /** `f64 capacity, f64 free, f64 sessionBytes, u32 sessionSlabs, u8 draining`. */
  statBody(session: Session): Uint8Array {
    const out = new Uint8Array(29);
    const v = new DataView(out.buffer);
    v.setFloat64(0, this.capacityBytes, true);
    v.setFloat64(8, this.freeBytes, true);
    v.setFloat64(16, session.bytes, true);
    v.setUint32(24, session.slabs.size, true);
    out[28] = this.draining ? 1 : 0;
    return out;
  }

  /** Serves ALLOC, FREE, RESET, WRITE, READ and STAT; returns the reply frame. */
  handle(session: Session, frame: Frame): Uint8Array {
    const p = frame.payload;
    const view = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const bare = frame.type === MsgType.RESET || frame.type === MsgType.STAT ||
      frame.type === MsgType.LIST;
    if (!bare && p.length < 4) {
      throw new ProtocolError(`type ${frame.type} payload too short (${p.length})`);
    }
    switch (frame.type) {
      case MsgType.ALLOC:
        return this.#alloc(session, frame, view);
      case MsgType.FREE:
        this.freeSlab(session, view.getUint32(0, true));
        return encodeFrame(MsgType.OK, frame.id, this.statBody(session));
      case MsgType.RESET:
        this.freeAll(session);
        return encodeFrame(MsgType.OK, frame.id, this.statBody(session));
      case MsgType.WRITE:
      case MsgType.READ:
        return this.#pages(session, frame, view);
      case MsgType.LIST:
        return encodeFrame(MsgType.OK, frame.id, this.#list(session));
      case MsgType.STAT:
        return encodeFrame(
          MsgType.OK,
          frame.id,
          this.statBody(session),
          f64(this.#usedBytes),
          f64(this.#reclaimPendingBytes),
        );
      default:
        throw new ProtocolError(`unknown request type ${frame.type}`);
    }
  }

  /** LIST's reply: `u32 count`, then `u32 slab, u32 pages, u32 index, u32 generation` each. */
  #list(session: Session): Uint8Array {
    const out = new Uint32Array(1 + 4 * session.slabs.size);
    out[0] = session.slabs.size;
    let at = 1;
    for (const [id, slab] of session.slabs) {
      out.set([id, slab.pages, slab.tag[0], slab.tag[1]], at);
      at += 4;
    }
    return new Uint8Array(out.buffer);
  }

  /** Frees one slab of a session (nothing if it has no such slab). */
  freeSlab(session: Session, slabId: number): void {
    const slab = session.slabs.get(slabId);
    if (!slab) return;
    session.slabs.delete(slabId);
    // Give the bytes back to the host now: a dropped buffer's memory would
    // wait for a garbage collection (under churn that held up to half the
    // capacity more).
    (slab.data?.buffer as ArrayBuffer | undefined)?.resize(0);
    slab.data = null;
    session.bytes -= slab.pages * PAGE_SIZE;
    this.#usedBytes -= slab.pages * PAGE_SIZE;
    this.#writtenBytes -= slab.written * PAGE_SIZE;
    if (slab.reclaiming) this.#gotBack(slab);
    log.debug("slab {slab} of {ns} freed", { slab: slabId, ns: forLog(session.namespace) });
    if (this.draining && this.#usedBytes === 0) log.info("drain complete: no slab left");
  }

  #gotBack(slab: Slab): void {
    const bytes = slab.pages * PAGE_SIZE;
    this.#reclaimPendingBytes -= bytes;
    this.reclaimed.slabs++;
    this.reclaimed.bytes += bytes;
    if (this.#reclaimPendingBytes === 0) {
      log.info("partial drain complete: {n} slab(s), {bytes} bytes given back so far", {
        n: this.reclaimed.slabs,
        bytes: this.reclaimed.bytes,
      });
    }
  }

  /** Frees every slab of a session. */
  freeAll(session: Session): void {
    for (const id of [...session.slabs.keys()]) this.freeSlab(session, id);
  }

  #alloc(session: Session, frame: Frame, view: DataView): Uint8Array {
    if (view.byteLength < 8) throw new ProtocolError(`ALLOC payload too short`);
    const slabId = view.getUint32(0, true);
    const pages = view.getUint32(4, true);
    const bytes = pages * PAGE_SIZE;
    if (pages === 0 || bytes > this.#limits.slabBytes) {
      return errFrame(frame.id, ErrCode.BAD_REQUEST, `slab of ${pages} pages exceeds --slab-size`);
    }
    if (session.slabs.has(slabId)) {
      return encodeFrame(MsgType.OK, frame.id, this.statBody(session));
    }
    if (this.draining) return errFrame(frame.id, ErrCode.DRAINING, "peer is draining");
    if (bytes > this.freeBytes) {
      return errFrame(frame.id, ErrCode.NO_CAPACITY, "peer is full");
    }
    if (session.bytes + bytes > this.#limits.maxSessionBytes) {
      return errFrame(frame.id, ErrCode.QUOTA, "session memory bound reached");
    }
    session.slabs.set(slabId, {
      pages,
      data: null,
      present: new Uint8Array(pages),
      written: 0,
      lastTouch: this.#clock,
      reclaiming: false,
      tag: view.byteLength >= 16
        ? [view.getUint32(8, true), view.getUint32(12, true)]
        : [NO_TAG, NO_TAG],
    });
    session.bytes += bytes;
    this.#usedBytes += bytes;
    log.debug("slab {slab} of {pages} pages reserved for {ns}", {
      slab: slabId,
      pages,
      ns: forLog(session.namespace),
    });
    return encodeFrame(MsgType.OK, frame.id, this.statBody(session));
  }

  #pages(session: Session, frame: Frame, view: DataView): Uint8Array {
    if (view.byteLength < 8) throw new ProtocolError(`type ${frame.type} payload too short`);
    const slabId = view.getUint32(0, true);
    const count = view.getUint32(4, true);
    if (count === 0 || count > MAX_PAGES_PER_REQUEST) {
      throw new ProtocolError(`page count ${count} out of range`);
    }
    const dataBytes = frame.type === MsgType.WRITE ? count * PAGE_SIZE : 0;
    if (view.byteLength !== 8 + count * 4 + dataBytes) {
      throw new ProtocolError(
        `type ${frame.type} payload of ${view.byteLength} bytes for ${count} pages`,
      );
    }
    const slab = session.slabs.get(slabId);
    if (!slab) return errFrame(frame.id, ErrCode.NO_SLAB, `no slab ${slabId}`);
    slab.lastTouch = ++this.#clock;
    for (let i = 0; i < count; i++) {
      if (view.getUint32(8 + i * 4, true) >= slab.pages) {
        return errFrame(frame.id, ErrCode.BAD_REQUEST, "offset beyond slab");
      }
    }
    if (frame.type === MsgType.READ) return readPages(slab, slabId, frame, view, count);
    const before = slab.written;
    const reply = writePages(slab, frame, view, count);
    this.#writtenBytes += (slab.written - before) * PAGE_SIZE;
    return reply;
  }
}

/**
 * A slab's bytes: a resizable buffer, which V8 maps from the system itself
 * (not malloc), so that the slab's memory goes back to the host the moment
 * {@linkcode SlabStore.freeSlab} shrinks it to nothing. (A plain buffer of a
 * few MiB comes from malloc's heap, which keeps freed slabs for itself.)
 */
function slabBuffer(bytes: number): Uint8Array {
  return new Uint8Array(new ArrayBuffer(bytes, { maxByteLength: bytes }), 0, bytes);
}

function writePages(slab: Slab, frame: Frame, view: DataView, count: number): Uint8Array {
  const p = frame.payload;
  slab.data ??= slabBuffer(slab.pages * PAGE_SIZE);
  const base = 8 + count * 4;
  for (let i = 0; i < count; i++) {
    const off = view.getUint32(8 + i * 4, true);
    slab.data.set(p.subarray(base + i * PAGE_SIZE, base + (i + 1) * PAGE_SIZE), off * PAGE_SIZE);
    if (slab.present[off] === 0) slab.written++;
    slab.present[off] = 1;
  }
  return encodeFrame(MsgType.OK, frame.id);
}

/** The reply is built in the buffer it is written from: the pages are copied once. */
function readPages(
  slab: Slab,
  slabId: number,
  frame: Frame,
  view: DataView,
  count: number,
): Uint8Array {
  for (let i = 0; i < count; i++) {
    const off = view.getUint32(8 + i * 4, true);
    if (!slab.present[off] || !slab.data) {
      return errFrame(frame.id, ErrCode.NOT_PRESENT, `page ${off} of slab ${slabId} never written`);
    }
  }
  const out = allocFrame(MsgType.OK, frame.id, count * PAGE_SIZE);
  for (let i = 0; i < count; i++) {
    const off = view.getUint32(8 + i * 4, true);
    out.payload.set(slab.data!.subarray(off * PAGE_SIZE, (off + 1) * PAGE_SIZE), i * PAGE_SIZE);
  }
  return out.frame;
}

/** A Fisher-Yates shuffled copy. */
function shuffled<T>(items: T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

function f64(value: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setFloat64(0, value, true);
  return out;
}

/** An ERR reply: `u8 code, utf8 message`. */
export function errFrame(id: number, code: number, message: string): Uint8Array {
  return encodeFrame(MsgType.ERR, id, new Uint8Array([code]), new TextEncoder().encode(message));
}

/** Session names end in the client's random tag: logs show only a prefix of it, since knowing it opens the session. */
export function forLog(namespace: string): string {
  return namespace.replace(/\/([0-9a-f]{4})[0-9a-f]{28}$/, "/$1…");
}
