/**
 * Redis as a page backend: pages are 4 KiB strings named
 * `<namespace>:<key in hex>` on one Redis server (`redis://`, `rediss://` for
 * TLS) or spread over a Redis Cluster by hash slot (`redis-cluster://`).
 *
 * A hand-written, strict RESP2 client pipelines each batch as one write per
 * node. In a cluster, keys are routed by CRC16 hash slot from the CLUSTER
 * SLOTS map, MOVED refreshes the map and retries, ASK retries once with
 * ASKING. Open refuses a Redis whose `maxmemory-policy` is not `noeviction`:
 * an evicted page would be silent data loss.
 *
 * @module
 */

import { ffiAllowed } from "../ffi/socket.ts";
import { Reactor } from "./reactor.ts";
import { getLogger } from "@logtape/logtape";
import type { PageStore, StoreHealth, StoreOptions, StoreWaiter } from "./store.ts";
import { PageLostError, StoreUnavailableError } from "./store.ts";
import { asUnavailable, ConnectionError, LatencyWindow, ProtocolError } from "./kit.ts";
import { checkSize, connectTcp, KeySet, PipeConn, readSecret, writeKeyName } from "./kv/pipe.ts";
import { hashSlot, parseRedirect, parseResp, type Resp, RespError } from "./kv/resp.ts";
import { call, prepareSession } from "./kv/redis_session.ts";
import { parseRedisUrls, type RedisTarget } from "./kv/redis_url.ts";
import { RedisBatch, type RedisOp } from "./kv/redis_batch.ts";

const log = getLogger(["remora", "transport", "redis"]);
const te = new TextEncoder();

/** Extra options for {@linkcode openRedisStore}. */
export interface RedisOptions extends StoreOptions {
  /**
   * Accept a server whose eviction policy cannot be read (CONFIG disabled or
   * renamed). The operator vouches that it is `noeviction`. Also set by
   * `?assume-noeviction=1` in the URL.
   */
  assumeNoEviction?: boolean;
  /** A request with no reply after this many ms fails the connection (default 5000). */
  requestTimeoutMs?: number;
}

class Node {
  readonly hostname: string;
  readonly port: number;
  conn: PipeConn<Resp> | undefined;
  connecting: Promise<PipeConn<Resp>> | undefined;
  down = false;
  downReason = "";
  readonly latency = new LatencyWindow();
  constructor(hostname: string, port: number) {
    this.hostname = hostname;
    this.port = port;
  }
  get addr(): string {
    return `${this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname}:${this.port}`;
  }
  get label(): string {
    return `Redis at ${this.addr}`;
  }
}

const SLOTS = 16384;
const MAX_ROUNDS = 6;
/** Keys per DEL batch when deleting everything at close. */
const KEY_BATCH = 4096;

/** What one round of a batch learned: keys to retry, where to ASK, whether to reload the map. */
interface Round {
  retry: number[];
  askTo: Map<number, Node>;
  refresh: boolean;
  tryagain: boolean;
}

function newRound(): Round {
  return { retry: [], askTo: new Map(), refresh: false, tryagain: false };
}

/** One Redis server or one Redis Cluster holding a session's pages. */
export class RedisStore implements PageStore {
  /** The URL the user gave, without credentials. */
  readonly name: string;
  /** Replies on sockets of our own are awaited in the pager's poll (see `reactor.ts`). */
  readonly waiter: StoreWaiter | undefined = ffiAllowed() ? Reactor.shared() : undefined;
  #t: RedisTarget;
  #opts: RedisOptions;
  #nodes = new Map<string, Node>();
  #slots: (Node | undefined)[] = new Array(SLOTS);
  #single: Node | undefined;
  #prefix: Uint8Array;
  #keys = new KeySet();
  #closed = false;
  #refreshing: Promise<void> | undefined;
  #moved = 0;
  #slotPages = new Uint32Array(SLOTS);
  #slotScratch: Uint8Array;
  #caCerts: string[] | undefined;
  #asked = 0;

  private constructor(t: RedisTarget, opts: RedisOptions) {
    this.#t = t;
    this.#opts = opts;
    const scheme = (t.tls ? "rediss" : "redis") + (t.cluster ? "-cluster" : "");
    this.name = t.seeds.map((s) => `${scheme}://${s.hostname}:${s.port}`).join(",");
    this.#prefix = te.encode(`${opts.namespace}:`);
    this.#slotScratch = new Uint8Array(this.#prefix.length + 8);
  }

  /** MOVED and ASK redirections followed so far (for tests and metrics). */
  get redirections(): { moved: number; ask: number } {
    return { moved: this.#moved, ask: this.#asked };
  }

  /** Connects, authenticates, checks the eviction policy, and (cluster) loads the slot map. */
  static async open(urls: string[], opts: RedisOptions): Promise<RedisStore> {
    if (urls.length === 0) throw new StoreUnavailableError("no Redis server given");
    const t = parseRedisUrls(urls);
    if (opts.assumeNoEviction) t.assumeNoEviction = true;
    if (t.pass === "" && opts.tokenFile) t.pass = await readSecret(opts.tokenFile);
    if (opts.namespace.length === 0 || opts.namespace.length > 1000) {
      throw new StoreUnavailableError("the Redis key namespace must be 1-1000 characters");
    }
    const store = new RedisStore(t, opts);
    if (t.caFile) store.#caCerts = [await Deno.readTextFile(t.caFile)];
    try {
      if (!t.cluster) {
        store.#single = store.#node(t.seeds[0].hostname, t.seeds[0].port);
        await store.#conn(store.#single);
      } else {
        let last: Error | undefined;
        for (const seed of t.seeds) {
          try {
            await store.#loadSlots(store.#node(seed.hostname, seed.port));
            last = undefined;
            break;
          } catch (e) {
            last = e as Error;
            // A refusal is final; an unreachable seed or a garbled answer: try the next.
            if (e instanceof StoreUnavailableError) throw e;
          }
        }
        if (last) throw last;
        // Every master must pass the eviction check before we store a page.
        await Promise.all([...new Set(store.#slots)].filter((n) => n).map((n) => store.#conn(n!)));
      }
    } catch (e) {
      store.#closed = true; // closing the others is not "a node failed"
      store.#closeConns();
      throw asUnavailable(e);
    }
    return store;
  }

  #node(hostname: string, port: number): Node {
    const key = `${hostname}:${port}`;
    let n = this.#nodes.get(key);
    if (n === undefined) {
      n = new Node(hostname, port);
      this.#nodes.set(key, n);
    }
    return n;
  }

  /** The node's live connection, (re)connecting and checking it if needed. */
  #conn(node: Node): Promise<PipeConn<Resp>> {
    if (node.conn && !node.conn.failed) return Promise.resolve(node.conn);
    if (this.#closed) {
      return Promise.reject(new ConnectionError("closed", "Redis store is closed"));
    }
    if (!node.connecting) {
      node.connecting = this.#connect(node).then((c) => {
        node.conn = c;
        if (node.down) log.info("{node} is back", { node: node.label });
        node.down = false;
        return c;
      }, (e) => {
        node.down = true;
        node.downReason = (e as Error).message;
        throw e;
      }).finally(() => node.connecting = undefined);
    }
    return node.connecting;
  }

  async #connect(node: Node): Promise<PipeConn<Resp>> {
    const raw = await connectTcp({
      hostname: node.hostname,
      port: node.port,
      tls: this.#t.tls,
      caCerts: this.#caCerts,
      what: "Redis",
    });
    const conn = new PipeConn<Resp>(
      raw,
      parseResp,
      node.label,
      this.#opts.requestTimeoutMs ?? 5000,
    );
    try {
      await prepareSession(conn, node.label, this.#t);
      // Only now: a server refused at open is an error, not a node that went down.
      conn.onFail = (e) => {
        if (this.#closed || node.down) return;
        node.down = true;
        node.downReason = e.message;
        log.error("{node} failed: {err}", { node: node.label, err: e.message });
      };
      return conn;
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  /** Loads the slot map with CLUSTER SLOTS from `via`. */
  async #loadSlots(via: Node): Promise<void> {
    const conn = await this.#conn(via);
    const r = await call(conn, ["CLUSTER", "SLOTS"]);
    if (r instanceof RespError) {
      throw new StoreUnavailableError(
        /cluster support disabled/i.test(r.message)
          ? `${via.label} is not in cluster mode: use redis://${via.addr}`
          : `${via.label}: CLUSTER SLOTS: ${r.message}`,
      );
    }
    if (!Array.isArray(r)) throw new ProtocolError(`${via.label}: CLUSTER SLOTS is not an array`);
    const slots: (Node | undefined)[] = new Array(SLOTS);
    for (const range of r) {
      if (!Array.isArray(range) || range.length < 3 || !Array.isArray(range[2])) {
        throw new ProtocolError(`${via.label}: bad CLUSTER SLOTS entry`);
      }
      const [a, b, master] = range as [number, number, unknown[]];
      // An empty host means "the address you reached me on".
      const host = String(master[0]) === "" || master[0] === "?" ? via.hostname : String(master[0]);
      const node = this.#node(host, Number(master[1]));
      for (let s = a; s <= b && s < SLOTS; s++) slots[s] = node;
    }
    this.#slots = slots;
  }

  /** Reloads the slot map from any reachable node (one reload at a time). */
  #refresh(): Promise<void> {
    if (!this.#refreshing) {
      this.#refreshing = (async () => {
        let last: Error | undefined;
        const order = [...this.#nodes.values()].sort((x, y) => Number(x.down) - Number(y.down));
        for (const n of order) {
          try {
            await this.#loadSlots(n);
            return;
          } catch (e) {
            last = e as Error;
          }
        }
        throw last ?? new StoreUnavailableError("no Redis Cluster node reachable");
      })().finally(() => this.#refreshing = undefined);
    }
    return this.#refreshing;
  }

  /** Writes the key name for `key` (namespace + hex) at `off`; returns the new offset. */
  #keyBytes(key: number, out: Uint8Array, off: number): number {
    return writeKeyName(this.#prefix, key, out, off);
  }

  /**
   * Runs one command per key (GET, SET or DEL), pipelined per node, following
   * cluster redirections. Returns the indices of keys whose value is missing
   * (GET only); throws {@linkcode StoreUnavailableError} for anything else.
   */
  async #batch(
    op: RedisOp,
    keys: Uint32Array,
    pages?: Uint8Array,
    into?: Uint8Array,
  ): Promise<number[]> {
    if (this.#closed) throw new StoreUnavailableError("Redis store is closed");
    const b = new RedisBatch(
      op,
      keys,
      {
        prefix: this.#prefix,
        cluster: this.#t.cluster,
        replicas: this.#opts.replicas,
        requestTimeoutMs: this.#opts.requestTimeoutMs ?? 5000,
      },
      pages,
      into,
    );
    let todo: number[] = Array.from({ length: keys.length }, (_, i) => i);
    let last = newRound();
    for (let round = 0; todo.length > 0; round++) {
      if (round === MAX_ROUNDS) throw b.gaveUp(todo.length, MAX_ROUNDS);
      if (last.tryagain) await new Promise((r) => setTimeout(r, 20 * round));
      const groups = await this.#route(b, todo, last.askTo);
      const next = newRound();
      await Promise.all(
        [...groups].map(([node, list]) => this.#sendTo(node, b, list, last.askTo, next)),
      );
      b.throwIfHard();
      if (next.refresh) await this.#refresh().catch((e) => b.failed(e));
      todo = next.retry;
      last = next;
    }
    return b.missing;
  }

  /** Groups keys `todo` by the node serving them (an ASK target for this round first). */
  async #route(
    b: RedisBatch,
    todo: number[],
    askTo: Map<number, Node>,
  ): Promise<Map<Node, number[]>> {
    const groups = new Map<Node, number[]>();
    for (const i of todo) {
      let node = askTo.get(i) ?? (this.#t.cluster ? this.#slots[b.slot[i]] : this.#single);
      if (node === undefined) {
        await this.#refresh();
        node = this.#slots[b.slot[i]];
        if (node === undefined) {
          throw new StoreUnavailableError(
            `Redis Cluster has no node serving slot ${b.slot[i]} (cluster down?)`,
          );
        }
      }
      let g = groups.get(node);
      if (g === undefined) groups.set(node, g = []);
      g.push(i);
    }
    return groups;
  }

  /**
   * Sends keys `list` of the batch to `node` in one pipelined write. A broken
   * node of a cluster may have failed over: its keys are retried after the map
   * is reloaded; a single server's failure fails the batch.
   */
  async #sendTo(
    node: Node,
    b: RedisBatch,
    list: number[],
    asked: Map<number, Node>,
    round: Round,
  ): Promise<void> {
    const req = b.encode(list, asked);
    const t0 = performance.now();
    try {
      const conn = await this.#conn(node);
      await conn.send(req.bytes, req.replyKey.length, (k, r) => {
        const i = req.replyKey[k];
        if (r instanceof RespError) this.#onError(node, b, i, r, round);
        else b.accept(node.label, i, r);
      });
      node.latency.record((performance.now() - t0) * 1000);
    } catch (e) {
      if (!this.#t.cluster) throw new StoreUnavailableError((e as Error).message);
      round.refresh = true;
      round.tryagain = true;
      for (const k of list) round.retry.push(k);
      b.failed(e);
    }
  }

  /** An error reply to reply slot `i`: a redirection, a transient refusal (retried) or a failure. */
  #onError(node: Node, b: RedisBatch, i: number, e: RespError, round: Round): void {
    const to = i >= 0 ? this.#redirection(node, e) : undefined;
    if (to === undefined) {
      if (b.refused(node.label, i, e)) {
        round.tryagain = true;
        round.retry.push(i);
      }
      return;
    }
    const target = this.#node(to.host || node.hostname, to.port);
    if (to.kind === "MOVED") {
      this.#moved++;
      this.#slots[to.slot] = target;
      round.refresh = true;
    } else {
      this.#asked++;
      round.askTo.set(i, target);
    }
    round.retry.push(i);
  }

  /** The MOVED or ASK in `e`, if it is one; a malformed one names `node`. */
  #redirection(node: Node, e: RespError): ReturnType<typeof parseRedirect> {
    try {
      return parseRedirect(e);
    } catch (err) {
      throw new ProtocolError(`${node.label}: ${(err as Error).message}`);
    }
  }

  /** The key namespace: a new pager opened with it finds this session's keys. */
  get namespace(): string {
    return this.#opts.namespace;
  }

  /** Counts keys a killed pager stored under this namespace as this session's (see {@linkcode PageStore.resume}). */
  resume(keys: Uint32Array): void {
    for (const k of keys) if (this.#keys.add(k)) this.#countSlot(k, 1);
  }

  /** Stores pages (one SET each, pipelined per node); resolves when every node confirmed. */
  async put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    checkSize(keys, pages);
    await this.#batch("SET", keys, pages);
    for (const k of keys) if (this.#keys.add(k)) this.#countSlot(k, 1);
  }

  /** Reads pages; a missing one is lost (PageLostError, onLoss), never zeros. */
  async get(keys: Uint32Array, into: Uint8Array): Promise<void> {
    checkSize(keys, into);
    const missing = await this.#batch("GET", keys, undefined, into);
    if (missing.length > 0) {
      const lk = Uint32Array.from(missing, (i) => keys[i]);
      log.error(
        "{n} page(s) missing from Redis (flushed, restarted without persistence, or evicted)",
        {
          n: lk.length,
        },
      );
      this.#opts.onLoss?.(lk);
      throw new PageLostError(
        lk,
        "missing from Redis (flushed, restarted without persistence, or evicted)",
      );
    }
  }

  /** Deletes pages. */
  async delete(keys: Uint32Array): Promise<void> {
    await this.#batch("DEL", keys);
    for (const k of keys) if (this.#keys.delete(k)) this.#countSlot(k, -1);
  }

  /** Deletes every page this session stored, then closes the connections. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      for (const batch of this.#keys.batches(KEY_BATCH)) {
        await this.#batch("DEL", batch);
        for (const k of batch) if (this.#keys.delete(k)) this.#countSlot(k, -1);
      }
    } finally {
      this.#closed = true;
      this.#closeConns();
    }
  }

  #countSlot(key: number, delta: number): void {
    if (!this.#t.cluster) return;
    const kb = this.#slotScratch;
    this.#slotPages[hashSlot(kb, this.#keyBytes(key, kb, 0))] += delta;
  }

  #closeConns(): void {
    for (const n of this.#nodes.values()) n.conn?.close();
  }

  /** Per-node state, latency and page counts. */
  health(): StoreHealth {
    const counts = new Map<Node, number>();
    if (this.#t.cluster) {
      // Per-slot counts are kept on put/delete, so this is 16384 steps
      // whatever the number of pages.
      for (let slot = 0; slot < SLOTS; slot++) {
        const node = this.#slots[slot];
        if (node && this.#slotPages[slot] > 0) {
          counts.set(node, (counts.get(node) ?? 0) + this.#slotPages[slot]);
        }
      }
    } else if (this.#single) {
      counts.set(this.#single, this.#keys.size);
    }
    const scheme = this.#t.tls ? "rediss" : "redis";
    const endpoints = [...this.#nodes.values()].map((n) =>
      n.latency.health(`${scheme}://${n.addr}`, n.down ? "down" : "up", counts.get(n) ?? 0)
    );
    // Redis replicates server-side; with replicas > 1 every SET waits (WAIT)
    // for that many copies, so a page we hold has no known deficit.
    return { pages: this.#keys.size, replicationDeficit: 0, endpoints };
  }
}

/**
 * Opens a Redis server (`redis://[user:pass@]host[:port][/db]`, `rediss://`
 * for TLS) or a Redis Cluster (`redis-cluster://host:port[,...]`, any nodes
 * as seeds) as a page store. `opts.tokenFile` supplies the password if the
 * URL has none. Fails with a one-line {@linkcode StoreUnavailableError} if
 * unreachable, if authentication fails, or if the eviction policy is not
 * `noeviction` (or cannot be read, unless `?assume-noeviction=1`).
 */
export function openRedisStore(urls: string[], opts: StoreOptions): Promise<PageStore> {
  return RedisStore.open(urls, opts);
}
