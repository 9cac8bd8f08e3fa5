/**
 * One batch of the Redis store: a GET, SET or DEL per key, its key names and
 * hash slots computed once, a pipelined request built per node, the replies
 * checked, and what failed sorted into transient failures (retried: a
 * connection that broke, `TRYAGAIN`, `CLUSTERDOWN`) and hard ones (the batch
 * fails: `OOM`, a reply of the wrong type or size, too few replicas).
 * Classification is by error type, connection kind and reply code, never by
 * message text. Routing and redirections are the store's (`../redis.ts`).
 *
 * @module
 */

import { PAGE_SIZE, StoreUnavailableError } from "../store.ts";
import { ConnectionError } from "../kit.ts";
import { writeKeyName } from "./pipe.ts";
import { encodeCommand, hashSlot, type Resp, type RespError } from "./resp.ts";
import { writeBulk, writeHeader } from "./resp.ts";

/** A batch's command. */
export type RedisOp = "GET" | "SET" | "DEL";

/** Reply slot of an ASKING sent before a redirected key. */
export const ASKING_REPLY = -1;
/** Reply slot of the WAIT that follows the SETs when replicas > 1. */
export const WAIT_REPLY = -2;

/** What a {@linkcode RedisBatch} needs to know of the store. */
export interface RedisBatchOptions {
  /** Key name prefix (`<namespace>:`). */
  prefix: Uint8Array;
  /** Whether keys are routed by hash slot. */
  cluster: boolean;
  /** Copies Redis must confirm (WAIT for replicas - 1 after SETs). */
  replicas: number;
  /** The request timeout; WAIT waits half of it. */
  requestTimeoutMs: number;
}

/** A request for one node: the bytes, and what each reply answers (key index or a `*_REPLY`). */
export interface NodeRequest {
  /** Commands, pipelined. */
  bytes: Uint8Array;
  /** Reply k answers key `replyKey[k]`, or is {@linkcode ASKING_REPLY} / {@linkcode WAIT_REPLY}. */
  replyKey: number[];
}

const te = new TextEncoder();
const ASKING = encodeCommand(["ASKING"]);
/** Failure texts kept for the final message. */
const KEEP = 8;

/**
 * State of one batch across its rounds (a round sends every key still to do
 * and collects redirections and retries).
 *
 * @example
 * ```ts
 * const b = new RedisBatch("DEL", Uint32Array.of(1, 2), {
 *   prefix: new TextEncoder().encode("ns:"), cluster: false, replicas: 1, requestTimeoutMs: 5000,
 * });
 * const req = b.encode([0, 1], new Set()); // two DELs
 * req.replyKey; // [0, 1]
 * ```
 */
export class RedisBatch {
  /** The command. */
  readonly op: RedisOp;
  /** The page keys. */
  readonly keys: Uint32Array;
  /** Hash slot of each key (cluster only; zeros otherwise). */
  readonly slot: Uint16Array;
  /** Indices of keys a GET found missing. */
  readonly missing: number[] = [];
  #pages: Uint8Array | undefined;
  #into: Uint8Array | undefined;
  #kbuf: Uint8Array;
  #klen: Uint16Array;
  #kmax: number;
  #verb: Uint8Array;
  #wait: Uint8Array | undefined;
  #replicas: number;
  #transient: string[] = [];
  #hard: string[] = [];
  #oom: string | undefined;

  /** Prepares `op` on `keys`; `pages` holds the SET values, `into` receives GET values. */
  constructor(
    op: RedisOp,
    keys: Uint32Array,
    o: RedisBatchOptions,
    pages?: Uint8Array,
    into?: Uint8Array,
  ) {
    this.op = op;
    this.keys = keys;
    this.#pages = pages;
    this.#into = into;
    this.#replicas = o.replicas;
    const n = keys.length;
    this.#kmax = o.prefix.length + 8;
    this.#kbuf = new Uint8Array(n * this.#kmax);
    this.#klen = new Uint16Array(n);
    this.slot = new Uint16Array(n);
    for (let i = 0, at = 0; i < n; i++, at += this.#kmax) {
      this.#klen[i] = writeKeyName(o.prefix, keys[i], this.#kbuf, at) - at;
      if (o.cluster) this.slot[i] = hashSlot(this.#kbuf.subarray(at), this.#klen[i]);
    }
    this.#verb = te.encode(`$${op.length}\r\n${op}\r\n`);
    // Half the request timeout, so WAIT answers before the watchdog fires.
    const waitMs = String(Math.floor(o.requestTimeoutMs / 2));
    this.#wait = o.replicas > 1 && op === "SET"
      ? encodeCommand(["WAIT", String(o.replicas - 1), waitMs])
      : undefined;
  }

  /** Builds the pipelined request for keys `list` of one node; keys in `asked` get ASKING first. */
  encode(list: number[], asked: { has(i: number): boolean }): NodeRequest {
    const replyKey: number[] = [];
    const buf = new Uint8Array(this.#size(list, asked));
    let off = 0;
    for (const i of list) {
      if (asked.has(i)) {
        buf.set(ASKING, off);
        off += ASKING.length;
        replyKey.push(ASKING_REPLY);
      }
      off = this.#command(i, buf, off);
      replyKey.push(i);
    }
    if (this.#wait) {
      buf.set(this.#wait, off);
      off += this.#wait.length;
      replyKey.push(WAIT_REPLY);
    }
    return { bytes: buf.subarray(0, off), replyKey };
  }

  #size(list: number[], asked: { has(i: number): boolean }): number {
    let size = 64 + (this.#wait?.length ?? 0);
    for (const i of list) {
      size += 64 + this.#klen[i] + (this.op === "SET" ? PAGE_SIZE + 16 : 0) +
        (asked.has(i) ? ASKING.length : 0);
    }
    return size;
  }

  /** Writes the command for key `i` at `off`: `*argc`, the verb, the key name, the page for SET. */
  #command(i: number, buf: Uint8Array, off: number): number {
    off = writeHeader(buf, off, 42, this.op === "SET" ? 3 : 2);
    buf.set(this.#verb, off);
    off += this.#verb.length;
    const at = i * this.#kmax;
    off = writeBulk(buf, off, this.#kbuf.subarray(at, at + this.#klen[i]));
    if (this.op === "SET") {
      off = writeBulk(buf, off, this.#pages!.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    }
    return off;
  }

  /** Takes a reply that is not an error: a key's value or status, or WAIT's count. */
  accept(where: string, i: number, r: Resp): void {
    if (i === WAIT_REPLY) {
      if (typeof r !== "number" || r < this.#replicas - 1) {
        this.#hard.push(
          `${where}: only ${r} of ${this.#replicas - 1} Redis replica(s) confirmed the write`,
        );
      }
    } else if (i < 0) {
      return; // ASKING's OK
    } else if (this.op === "GET") {
      if (r === null) this.missing.push(i);
      else if (r instanceof Uint8Array && r.length === PAGE_SIZE) this.#into!.set(r, i * PAGE_SIZE);
      else {this.#hard.push(
          `${where}: value of page ${this.keys[i]} is not a ${PAGE_SIZE}-byte page`,
        );}
    } else if (this.op === "SET" ? r !== "OK" : typeof r !== "number") {
      this.#hard.push(`${where}: unexpected reply to ${this.op}`);
    }
  }

  /**
   * Records an error reply that is not a redirection. `TRYAGAIN` and
   * `CLUSTERDOWN` to a key are transient (true: retry the key); anything
   * else (OOM and friends) fails the batch: the page is not stored, the put
   * fails and the pager keeps its local copy. ASKING's own errors are ignored.
   */
  refused(where: string, i: number, e: RespError): boolean {
    if (i >= 0 && (e.code === "TRYAGAIN" || e.code === "CLUSTERDOWN")) {
      keep(this.#transient, `${where}: ${e.message}`);
      return true;
    }
    if (i === ASKING_REPLY) return false;
    keep(this.#hard, `${where}: ${e.message}`);
    if (e.code === "OOM") this.#oom ??= `${where}: ${e.message}`;
    return false;
  }

  /** Records a failed request or slot map reload: a {@linkcode ConnectionError} is transient. */
  failed(e: unknown): void {
    const text = (e as Error).message;
    keep(e instanceof ConnectionError ? this.#transient : this.#hard, text);
  }

  /** Throws if anything failed for good in this batch. */
  throwIfHard(): void {
    if (this.#hard.length === 0) return;
    throw new StoreUnavailableError(
      this.#oom !== undefined
        ? `Redis is full, page(s) not stored (${this.#oom}): raise maxmemory or add nodes`
        : this.#hard.slice(0, 3).join("; "),
    );
  }

  /** The error for a batch still not done after `rounds` rounds. */
  gaveUp(left: number, rounds: number): StoreUnavailableError {
    const last = [...new Set(this.#transient)].slice(-3).join("; ") || "redirect loop";
    return new StoreUnavailableError(
      `${this.op} of ${left} page(s) failed after ${rounds} tries: ${last}`,
    );
  }
}

function keep(list: string[], text: string): void {
  if (list.length < KEEP) list.push(text);
}
