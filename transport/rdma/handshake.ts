/**
 * The RDMA control plane: the few messages a client and a peer exchange over
 * their (already authenticated) TCP control connection to bring an RC queue
 * pair up and to hand out, drain and take back slabs of registered memory.
 * The data itself never crosses this connection: it moves by one-sided RDMA
 * READ and WRITE.
 *
 * Wire format, all integers big-endian, every message exactly as long as its
 * type says (decoding rejects anything shorter, longer or out of range):
 *
 * ```
 * header      magic 0x52 ('R') | version 1 | type u8 | reserved 0      4 bytes
 * qp          qp_num u32 (< 2^24) | lid u16 | psn u32 (< 2^24) | mtu u8 (1..5) | rd_atomic u8 (>= 1) | gid[16]   28
 * slab        slab_id u32 | rkey u32 | addr u64 | length u64 (multiple of 4096, > 0)            24
 * HELLO         client -> peer   qp | slabs_wanted u16 | ns_len u16 | namespace (1..255 bytes UTF-8)
 * ACCEPT        peer -> client   qp | count u16 | slab * count (count <= 64)
 * SLAB_REQUEST  client -> peer   count u16 (1..64)
 * SLAB_GRANT    peer -> client   count u16 | slab * count (0 = refused: peer is full)
 * SLAB_DRAIN    peer -> client   slab_id u32: move your pages off this slab
 * SLAB_RELEASED client -> peer   slab_id u32: nothing of mine is there; deregister it
 * SLAB_KEPT     client -> peer   slab_id u32: I could not move everything (no room
 *                                anywhere else); the slab stays registered and in use
 * ERROR         either way       code u16 | len u16 | message (<= 1024 bytes UTF-8)
 * ```
 *
 * On a byte stream each message is preceded by its length as a u32
 * ({@linkcode writeFrame}, {@linkcode readFrame}).
 *
 * @module
 */

/** Message kinds. */
export const MSG = {
  HELLO: 1,
  ACCEPT: 2,
  SLAB_REQUEST: 3,
  SLAB_GRANT: 4,
  SLAB_DRAIN: 5,
  SLAB_RELEASED: 6,
  ERROR: 7,
  SLAB_KEPT: 8,
} as const;

/** `ERROR` codes. */
export const RDMA_ERROR = {
  /** The peer has no usable RDMA device: the client should use tcp://. */
  NO_DEVICE: 1,
  /** The peer cannot bring the queue pair up (bad path, MTU, GID...). */
  QP_FAILED: 2,
  /** Malformed or unexpected message. */
  PROTOCOL: 3,
} as const;

const MAGIC = 0x52;
const VERSION = 1;
const HEADER = 4;
const QP_BYTES = 28;
const SLAB_BYTES = 24;
/** Most slabs one ACCEPT or SLAB_GRANT carries. */
export const MAX_SLABS_PER_MESSAGE = 64;
const MAX_NAMESPACE = 255;
const MAX_ERROR_TEXT = 1024;
/** Longest valid message; frames announcing more are refused before reading them. */
export const MAX_MESSAGE_BYTES = HEADER + QP_BYTES + 2 + MAX_SLABS_PER_MESSAGE * SLAB_BYTES;
const PAGE = 4096;

/** One side of an RC connection: what the other side's `ibv_modify_qp(RTR)` needs. */
export interface QpEndpoint {
  /** QP number (24 bits). */
  qpNum: number;
  /** Port LID (InfiniBand); 0 on RoCE. */
  lid: number;
  /** Initial packet sequence number (24 bits) of our send queue. */
  psn: number;
  /** Our port's active MTU (`IBV_MTU_*`, 1..5); both sides use the smaller. */
  mtu: number;
  /**
   * RDMA READs this side can have outstanding on the QP (initiator depth and
   * responder resources). Both sides use the smaller value, so the client
   * never has more READs in flight than the peer's QP can answer (exceeding
   * that is a protocol error that breaks the connection).
   */
  rdAtomic: number;
  /** Port GID; all zeros when the path needs no GRH (InfiniBand, one subnet). */
  gid: Uint8Array;
}

/** A slab of registered memory on a peer that one client may READ and WRITE. */
export interface SlabGrant {
  /** Peer-chosen id, unique per peer. */
  slabId: number;
  /** Remote key of the slab's registration. */
  rkey: number;
  /** Remote virtual address of the slab's first byte. */
  addr: bigint;
  /** Length in bytes (a multiple of 4096). */
  length: number;
}

/** Every control-plane message. */
export type RdmaMessage =
  | { type: "hello"; qp: QpEndpoint; slabsWanted: number; namespace: string }
  | { type: "accept"; qp: QpEndpoint; slabs: SlabGrant[] }
  | { type: "slab-request"; count: number }
  | { type: "slab-grant"; slabs: SlabGrant[] }
  | { type: "slab-drain"; slabId: number }
  | { type: "slab-released"; slabId: number }
  | { type: "slab-kept"; slabId: number }
  | { type: "error"; code: number; message: string };

/** A message failed validation. */
export class HandshakeError extends Error {
  /** Builds the error. */
  constructor(message: string) {
    super(`bad RDMA control message: ${message}`);
    this.name = "HandshakeError";
  }
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new HandshakeError(what);
}

function u24(n: number, what: string): void {
  check(Number.isInteger(n) && n >= 0 && n < 1 << 24, `${what} ${n} is not a 24-bit value`);
}

function uint(n: number, bits: 16 | 32, what: string): void {
  check(Number.isInteger(n) && n >= 0 && n < 2 ** bits, `${what} ${n} is not a u${bits}`);
}

function validateQp(qp: QpEndpoint): void {
  u24(qp.qpNum, "qp_num");
  uint(qp.lid, 16, "lid");
  u24(qp.psn, "psn");
  check(Number.isInteger(qp.mtu) && qp.mtu >= 1 && qp.mtu <= 5, `mtu ${qp.mtu} is not 1..5`);
  check(
    Number.isInteger(qp.rdAtomic) && qp.rdAtomic >= 1 && qp.rdAtomic <= 255,
    `rd_atomic ${qp.rdAtomic} is not 1..255`,
  );
  check(qp.gid.byteLength === 16, `gid is ${qp.gid.byteLength} bytes, not 16`);
}

function validateSlab(s: SlabGrant): void {
  uint(s.slabId, 32, "slab_id");
  uint(s.rkey, 32, "rkey");
  check(s.addr > 0n && s.addr < 2n ** 64n, `slab address ${s.addr} out of range`);
  check(
    Number.isSafeInteger(s.length) && s.length > 0 && s.length % PAGE === 0,
    `slab length ${s.length} is not a positive multiple of ${PAGE}`,
  );
  check(s.addr + BigInt(s.length) <= 2n ** 64n, "slab wraps around the address space");
}

function validateSlabs(slabs: SlabGrant[], allowEmpty: boolean): void {
  check(slabs.length <= MAX_SLABS_PER_MESSAGE, `${slabs.length} slabs in one message`);
  check(allowEmpty || slabs.length > 0, "no slabs");
  slabs.forEach(validateSlab);
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/** Encodes a message; throws {@linkcode HandshakeError} if a field is out of range. */
export function encode(m: RdmaMessage): Uint8Array {
  let body: number;
  let text: Uint8Array = new Uint8Array(0);
  switch (m.type) {
    case "hello":
      validateQp(m.qp);
      uint(m.slabsWanted, 16, "slabs_wanted");
      text = enc.encode(m.namespace);
      check(text.length >= 1 && text.length <= MAX_NAMESPACE, "namespace must be 1..255 bytes");
      body = QP_BYTES + 4 + text.length;
      break;
    case "accept":
      validateQp(m.qp);
      validateSlabs(m.slabs, true);
      body = QP_BYTES + 2 + m.slabs.length * SLAB_BYTES;
      break;
    case "slab-request":
      check(
        Number.isInteger(m.count) && m.count >= 1 && m.count <= MAX_SLABS_PER_MESSAGE,
        `slab request count ${m.count} is not 1..${MAX_SLABS_PER_MESSAGE}`,
      );
      body = 2;
      break;
    case "slab-grant":
      validateSlabs(m.slabs, true);
      body = 2 + m.slabs.length * SLAB_BYTES;
      break;
    case "slab-drain":
    case "slab-released":
    case "slab-kept":
      uint(m.slabId, 32, "slab_id");
      body = 4;
      break;
    case "error":
      uint(m.code, 16, "error code");
      text = enc.encode(m.message);
      check(text.length <= MAX_ERROR_TEXT, "error text too long");
      body = 4 + text.length;
      break;
  }
  const out = new Uint8Array(HEADER + body);
  const dv = new DataView(out.buffer);
  out[0] = MAGIC;
  out[1] = VERSION;
  out[2] = MSG[TYPE_KEY[m.type]];
  let o = HEADER;
  const putQp = (qp: QpEndpoint) => {
    dv.setUint32(o, qp.qpNum);
    dv.setUint16(o + 4, qp.lid);
    dv.setUint32(o + 6, qp.psn);
    dv.setUint8(o + 10, qp.mtu);
    dv.setUint8(o + 11, qp.rdAtomic);
    out.set(qp.gid, o + 12);
    o += QP_BYTES;
  };
  const putSlabs = (slabs: SlabGrant[]) => {
    dv.setUint16(o, slabs.length);
    o += 2;
    for (const s of slabs) {
      dv.setUint32(o, s.slabId);
      dv.setUint32(o + 4, s.rkey);
      dv.setBigUint64(o + 8, s.addr);
      dv.setBigUint64(o + 16, BigInt(s.length));
      o += SLAB_BYTES;
    }
  };
  switch (m.type) {
    case "hello":
      putQp(m.qp);
      dv.setUint16(o, m.slabsWanted);
      dv.setUint16(o + 2, text.length);
      out.set(text, o + 4);
      break;
    case "accept":
      putQp(m.qp);
      putSlabs(m.slabs);
      break;
    case "slab-request":
      dv.setUint16(o, m.count);
      break;
    case "slab-grant":
      putSlabs(m.slabs);
      break;
    case "slab-drain":
    case "slab-released":
    case "slab-kept":
      dv.setUint32(o, m.slabId);
      break;
    case "error":
      dv.setUint16(o, m.code);
      dv.setUint16(o + 2, text.length);
      out.set(text, o + 4);
      break;
  }
  return out;
}

const TYPE_KEY = {
  hello: "HELLO",
  accept: "ACCEPT",
  "slab-request": "SLAB_REQUEST",
  "slab-grant": "SLAB_GRANT",
  "slab-drain": "SLAB_DRAIN",
  "slab-released": "SLAB_RELEASED",
  "slab-kept": "SLAB_KEPT",
  error: "ERROR",
} as const satisfies Record<RdmaMessage["type"], keyof typeof MSG>;

/** Decodes exactly one message; throws {@linkcode HandshakeError} on any inconsistency. */
export function decode(b: Uint8Array): RdmaMessage {
  check(b.byteLength >= HEADER, `${b.byteLength} bytes is shorter than a header`);
  check(b.byteLength <= MAX_MESSAGE_BYTES, `${b.byteLength} bytes is longer than any message`);
  check(b[0] === MAGIC, "bad magic");
  check(b[1] === VERSION, `version ${b[1]} (expected ${VERSION})`);
  check(b[3] === 0, "reserved byte is not zero");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let o = HEADER;
  const need = (n: number, what: string) =>
    check(b.byteLength - o >= n, `${what}: truncated (${b.byteLength} bytes)`);
  const getQp = (): QpEndpoint => {
    need(QP_BYTES, "qp");
    const qp = {
      qpNum: dv.getUint32(o),
      lid: dv.getUint16(o + 4),
      psn: dv.getUint32(o + 6),
      mtu: dv.getUint8(o + 10),
      rdAtomic: dv.getUint8(o + 11),
      gid: b.slice(o + 12, o + 28),
    };
    o += QP_BYTES;
    validateQp(qp);
    return qp;
  };
  const getSlabs = (): SlabGrant[] => {
    need(2, "slab count");
    const n = dv.getUint16(o);
    o += 2;
    check(n <= MAX_SLABS_PER_MESSAGE, `${n} slabs in one message`);
    need(n * SLAB_BYTES, "slabs");
    const slabs: SlabGrant[] = [];
    for (let i = 0; i < n; i++) {
      const length = dv.getBigUint64(o + 16);
      check(length <= BigInt(Number.MAX_SAFE_INTEGER), "slab length too large");
      slabs.push({
        slabId: dv.getUint32(o),
        rkey: dv.getUint32(o + 4),
        addr: dv.getBigUint64(o + 8),
        length: Number(length),
      });
      o += SLAB_BYTES;
    }
    validateSlabs(slabs, true);
    return slabs;
  };
  const getText = (max: number, what: string): string => {
    need(2, what);
    const n = dv.getUint16(o);
    o += 2;
    check(n <= max, `${what} of ${n} bytes`);
    need(n, what);
    let s: string;
    try {
      s = dec.decode(b.subarray(o, o + n));
    } catch {
      throw new HandshakeError(`${what} is not UTF-8`);
    }
    o += n;
    return s;
  };
  let m: RdmaMessage;
  switch (b[2]) {
    case MSG.HELLO: {
      const qp = getQp();
      need(2, "slabs_wanted");
      const slabsWanted = dv.getUint16(o);
      o += 2;
      const namespace = getText(MAX_NAMESPACE, "namespace");
      check(namespace.length > 0, "empty namespace");
      m = { type: "hello", qp, slabsWanted, namespace };
      break;
    }
    case MSG.ACCEPT: {
      const qp = getQp();
      m = { type: "accept", qp, slabs: getSlabs() };
      break;
    }
    case MSG.SLAB_REQUEST: {
      need(2, "count");
      const count = dv.getUint16(o);
      o += 2;
      check(count >= 1 && count <= MAX_SLABS_PER_MESSAGE, `slab request count ${count}`);
      m = { type: "slab-request", count };
      break;
    }
    case MSG.SLAB_GRANT:
      m = { type: "slab-grant", slabs: getSlabs() };
      break;
    case MSG.SLAB_DRAIN:
    case MSG.SLAB_RELEASED:
    case MSG.SLAB_KEPT: {
      need(4, "slab_id");
      const slabId = dv.getUint32(o);
      o += 4;
      const type = b[2] === MSG.SLAB_DRAIN
        ? "slab-drain"
        : b[2] === MSG.SLAB_RELEASED
        ? "slab-released"
        : "slab-kept";
      m = { type, slabId };
      break;
    }
    case MSG.ERROR: {
      need(2, "code");
      const code = dv.getUint16(o);
      o += 2;
      m = { type: "error", code, message: getText(MAX_ERROR_TEXT, "error text") };
      break;
    }
    default:
      throw new HandshakeError(`unknown type ${b[2]}`);
  }
  check(o === b.byteLength, `${b.byteLength - o} trailing byte(s)`);
  return m;
}

/** A bidirectional channel of control messages (one per client-peer pair). */
export interface RdmaControlChannel {
  /** Sends one message. */
  send(m: RdmaMessage): Promise<void>;
  /** The next message, or `null` once the other side closed the channel. */
  receive(): Promise<RdmaMessage | null>;
  /** Closes the channel; a pending `receive` resolves to `null`. */
  close(): void;
}

/** What a byte stream must offer to carry frames (a `Deno.Conn` does). */
export interface ByteStream {
  /** Reads up to `p.length` bytes; `null` at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`; returns how many bytes were written. */
  write(p: Uint8Array): Promise<number>;
}

/** Writes one length-prefixed message to a stream. */
export async function writeFrame(w: Pick<ByteStream, "write">, m: RdmaMessage): Promise<void> {
  const body = encode(m);
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length);
  frame.set(body, 4);
  let off = 0;
  while (off < frame.length) off += await w.write(frame.subarray(off));
}

async function readExactly(r: Pick<ByteStream, "read">, n: number): Promise<Uint8Array | null> {
  const buf = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const got = await r.read(buf.subarray(off));
    if (got === null) {
      if (off === 0) return null;
      throw new HandshakeError(`stream ended inside a frame (${off} of ${n} bytes)`);
    }
    off += got;
  }
  return buf;
}

/**
 * Reads one length-prefixed message; `null` on a clean end of stream. A frame
 * announcing more than {@linkcode MAX_MESSAGE_BYTES} is refused before its
 * body is read.
 */
export async function readFrame(r: Pick<ByteStream, "read">): Promise<RdmaMessage | null> {
  const head = await readExactly(r, 4);
  if (head === null) return null;
  const n = new DataView(head.buffer).getUint32(0);
  check(n >= HEADER && n <= MAX_MESSAGE_BYTES, `frame of ${n} bytes`);
  const body = await readExactly(r, n);
  if (body === null) throw new HandshakeError("stream ended after a frame length");
  return decode(body);
}

/**
 * A control channel over a byte stream (a TCP connection the peer protocol
 * has already authenticated, or a plain one in tests).
 */
export function streamChannel(conn: Deno.Conn): RdmaControlChannel {
  let closed = false;
  let sending = Promise.resolve();
  return {
    send(m) {
      // Serialise writes so that two frames never interleave.
      const p = sending.then(() => writeFrame(conn, m));
      sending = p.catch(() => {});
      return p;
    },
    async receive() {
      if (closed) return null;
      try {
        return await readFrame(conn);
      } catch (e) {
        if (closed || e instanceof Deno.errors.BadResource) return null;
        throw e;
      }
    },
    close() {
      if (closed) return;
      closed = true;
      try {
        conn.close();
      } catch { /* already closed */ }
    },
  };
}

/** A control channel carried inside another protocol's frames, plus its inbox. */
export interface TunnelChannel {
  /** The channel to hand to the RDMA client store or peer service. */
  channel: RdmaControlChannel;
  /**
   * Feeds one received frame payload (an encoded message) to the channel, or
   * `null` when the carrying connection ended.
   */
  deliver(payload: Uint8Array | null): void;
}

/**
 * Wraps an RDMA control channel around a connection that already frames and
 * authenticates messages (the TCP peer protocol): `sendPayload` sends one
 * encoded message in one frame of that protocol, and the connection's reader
 * calls `deliver` with each such frame's payload. Messages are decoded, so
 * validated, when received.
 */
export function tunnelChannel(
  sendPayload: (payload: Uint8Array) => Promise<void>,
  onClose: () => void = () => {},
): TunnelChannel {
  const inbox: (Uint8Array | null)[] = [];
  const waiters: ((p: Uint8Array | null) => void)[] = [];
  let ended = false;
  const deliver = (p: Uint8Array | null) => {
    if (ended) return;
    if (p === null) ended = true;
    const w = waiters.shift();
    if (w) w(p);
    else inbox.push(p);
    // Every later receive() also sees the end.
    if (p === null) { for (const rest of waiters.splice(0)) rest(null); }
  };
  return {
    deliver,
    channel: {
      send(m) {
        if (ended) return Promise.reject(new HandshakeError("control channel closed"));
        return sendPayload(encode(m));
      },
      async receive() {
        const p = inbox.length > 0
          ? inbox.shift()!
          : ended
          ? null
          : await new Promise<Uint8Array | null>((r) => waiters.push(r));
        if (p === null) {
          inbox.unshift(null);
          return null;
        }
        return decode(p);
      },
      close() {
        if (ended) return;
        deliver(null);
        onClose();
      },
    },
  };
}
