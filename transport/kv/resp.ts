/**
 * RESP2 (the Redis protocol) for the Redis backend: a strict reply parser,
 * command encoding straight into a caller's buffer, and the cluster's CRC16
 * hash slot.
 *
 * @module
 */

import { ProtocolError } from "../kit.ts";
import { findCrlf, parseUint } from "./pipe.ts";

/**
 * An error reply (`-ERR ...`, `-MOVED ...`, `-OOM ...`). Redis classifies its
 * errors by the first word, {@linkcode RespError.code}; callers do too.
 *
 * @example
 * ```ts
 * const e = new RespError("OOM command not allowed when used memory > 'maxmemory'.");
 * e.code; // "OOM"
 * ```
 */
export class RespError {
  /** The whole line after `-`. */
  readonly message: string;
  /** Builds it from the reply line. */
  constructor(message: string) {
    this.message = message;
  }

  /** The error code: the reply's first word (`ERR`, `MOVED`, `ASK`, `OOM`, `TRYAGAIN`, `NOAUTH`...). */
  get code(): string {
    const space = this.message.indexOf(" ");
    return space < 0 ? this.message : this.message.slice(0, space);
  }
}

/** Where a cluster redirection (`MOVED` or `ASK`) sends a key. */
export interface Redirect {
  /** `MOVED`: the slot lives there now; `ASK`: only this key, once, after ASKING. */
  kind: "MOVED" | "ASK";
  /** The hash slot. */
  slot: number;
  /** The node's host; empty when it is the one that answered. */
  host: string;
  /** The node's port. */
  port: number;
}

/**
 * Reads a `MOVED <slot> <host>:<port>` or `ASK ...` error reply; `undefined`
 * for any other error; {@linkcode ProtocolError} for a malformed one.
 *
 * @example
 * ```ts
 * parseRedirect(new RespError("MOVED 3999 127.0.0.1:6381"));
 * // { kind: "MOVED", slot: 3999, host: "127.0.0.1", port: 6381 }
 * ```
 */
export function parseRedirect(e: RespError): Redirect | undefined {
  const kind = e.code;
  if (kind !== "MOVED" && kind !== "ASK") return undefined;
  const [, slot, addr] = e.message.split(" ");
  const colon = addr?.lastIndexOf(":") ?? -1;
  if (colon <= 0) throw new ProtocolError(`bad redirection "${e.message}"`);
  const host = addr.slice(0, colon).replace(/^\[(.*)\]$/, "$1");
  return { kind, slot: Number(slot), host, port: Number(addr.slice(colon + 1)) };
}

/**
 * A RESP2 reply: simple string, error, integer, bulk string (a view into the
 * read buffer, valid only inside the reply sink; `null` for a missing value),
 * or array (`null` for a null array).
 */
export type Resp = string | RespError | number | Uint8Array | null | Resp[];

const td = new TextDecoder();

/** First reply lines only memcached sends (to a command it does not know, or its meta replies). */
const MEMCACHED_LINE = /^(ERROR|CLIENT_ERROR|SERVER_ERROR|VERSION |STORED|NOT_STORED|EN$|HD|VA )/;

/** Parses one RESP2 reply; `undefined` if incomplete; {@linkcode ProtocolError} if malformed. */
export function parseResp(
  buf: Uint8Array,
  start: number,
  end: number,
): { value: Resp; next: number } | undefined {
  if (start >= end) return undefined;
  const cr = findCrlf(buf, start + 1, end);
  if (cr < 0) {
    if (end - start > 65536) throw new ProtocolError("RESP line too long");
    return undefined;
  }
  const next = cr + 2;
  switch (buf[start]) {
    case 36: { // $ bulk string
      if (buf[start + 1] === 45) { // "$-1"
        if (cr !== start + 3 || buf[start + 2] !== 49) throw new ProtocolError("bad null bulk");
        return { value: null, next };
      }
      const len = parseUint(buf, start + 1, cr);
      if (end < next + len + 2) return undefined;
      if (buf[next + len] !== 13 || buf[next + len + 1] !== 10) {
        throw new ProtocolError("bulk string not followed by CRLF");
      }
      return { value: buf.subarray(next, next + len), next: next + len + 2 };
    }
    case 43: // + simple string
      return { value: td.decode(buf.subarray(start + 1, cr)), next };
    case 45: // - error
      return { value: new RespError(td.decode(buf.subarray(start + 1, cr))), next };
    case 58: { // : integer
      const neg = buf[start + 1] === 45;
      const n = parseUint(buf, start + (neg ? 2 : 1), cr);
      return { value: neg ? -n : n, next };
    }
    case 42: { // * array
      if (buf[start + 1] === 45) {
        if (cr !== start + 3 || buf[start + 2] !== 49) throw new ProtocolError("bad null array");
        return { value: null, next };
      }
      const count = parseUint(buf, start + 1, cr);
      const items: Resp[] = [];
      let pos = next;
      for (let i = 0; i < count; i++) {
        const r = parseResp(buf, pos, end);
        if (r === undefined) return undefined;
        items.push(r.value);
        pos = r.next;
      }
      return { value: items, next: pos };
    }
    default: {
      // RESP3 types never appear: we never send HELLO 3.
      const line = td.decode(buf.subarray(start, Math.min(cr, start + 60)));
      if (MEMCACHED_LINE.test(line)) {
        throw new ProtocolError(
          `answered "${line}" in memcached's text protocol: it is a memcached server, ` +
            `not Redis (wrong kind of store: use memcached://HOST:PORT for it)`,
        );
      }
      throw new ProtocolError(
        `unexpected RESP type byte 0x${buf[start].toString(16)} ("${line}"): not a Redis server?`,
      );
    }
  }
}

/** Copies bulk strings out of the read buffer (to keep a reply past its sink) as text. */
export function respToJs(r: Resp): unknown {
  if (r instanceof Uint8Array) return td.decode(r);
  if (Array.isArray(r)) return r.map(respToJs);
  return r;
}

const te = new TextEncoder();

/** Encodes a command of string and byte arguments as a RESP array of bulk strings. */
export function encodeCommand(args: (string | Uint8Array)[]): Uint8Array {
  const parts = args.map((a) => typeof a === "string" ? te.encode(a) : a);
  let size = 16;
  for (const p of parts) size += p.length + 16;
  const out = new Uint8Array(size);
  let off = writeHeader(out, 0, 42, parts.length);
  for (const p of parts) off = writeBulk(out, off, p);
  return out.subarray(0, off);
}

/**
 * Writes a bulk string (`$<len>\r\n<bytes>\r\n`) at `off`; returns the new offset.
 *
 * @example
 * ```ts
 * const out = new Uint8Array(16);
 * writeBulk(out, 0, new TextEncoder().encode("OK")); // 8: "$2\r\nOK\r\n"
 * ```
 */
export function writeBulk(out: Uint8Array, off: number, bytes: Uint8Array): number {
  off = writeHeader(out, off, 36, bytes.length);
  out.set(bytes, off);
  off += bytes.length;
  out[off++] = 13;
  out[off++] = 10;
  return off;
}

/** Writes `<type><n>\r\n` at `off`; returns the new offset. */
export function writeHeader(out: Uint8Array, off: number, type: number, n: number): number {
  out[off++] = type;
  const s = String(n);
  for (let i = 0; i < s.length; i++) out[off++] = s.charCodeAt(i);
  out[off++] = 13;
  out[off++] = 10;
  return off;
}

const CRC_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1;
    t[i] = c & 0xffff;
  }
  return t;
})();

/** CRC16-CCITT (XMODEM), as Redis Cluster uses it. */
export function crc16(bytes: Uint8Array, a = 0, b = bytes.length): number {
  let crc = 0;
  for (let i = a; i < b; i++) {
    crc = ((crc << 8) & 0xffff) ^ CRC_TABLE[((crc >> 8) ^ bytes[i]) & 0xff];
  }
  return crc;
}

/** The cluster hash slot of `key`, honouring `{hash tags}`. */
export function hashSlot(key: Uint8Array, len = key.length): number {
  let open = -1;
  for (let i = 0; i < len; i++) {
    if (key[i] === 123) {
      open = i;
      break;
    }
  }
  if (open >= 0) {
    for (let j = open + 1; j < len; j++) {
      if (key[j] === 125) {
        if (j > open + 1) return crc16(key, open + 1, j) & 16383;
        break;
      }
    }
  }
  return crc16(key, 0, len) & 16383;
}
