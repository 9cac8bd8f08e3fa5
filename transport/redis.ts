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

import { getLogger } from "@logtape/logtape";
import {
  type EndpointHealth,
  PAGE_SIZE,
  PageLostError,
  type PageStore,
  type StoreHealth,
  type StoreOptions,
  StoreUnavailableError,
} from "./store.ts";
import {
  checkSize,
  ConnectionError,
  connectTcp,
  KeySet,
  LatencyWindow,
  PipeConn,
  ProtocolError,
  readSecret,
} from "./kv/pipe.ts";
import {
  encodeCommand,
  hashSlot,
  parseResp,
  type Resp,
  RespError,
  respToJs,
  writeHeader,
} from "./kv/resp.ts";

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

interface Target {
  cluster: boolean;
  tls: boolean;
  seeds: { hostname: string; port: number }[];
  user: string;
  pass: string;
  db: number;
  assumeNoEviction: boolean;
  caFile: string;
}

function parseUrls(urls: string[]): Target {
  const t: Target = {
    cluster: false,
    tls: false,
    seeds: [],
    user: "",
    pass: "",
    db: 0,
    assumeNoEviction: false,
    caFile: "",
  };
  const schemes = new Set<string>();
  for (const url of urls) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new StoreUnavailableError(
        `bad Redis address "${url}": use redis://[user:pass@]HOST:PORT`,
      );
    }
    const scheme = u.protocol.slice(0, -1);
    if (!["redis", "rediss", "redis-cluster", "rediss-cluster"].includes(scheme)) {
      throw new StoreUnavailableError(
        `bad Redis address "${url}": use redis://, rediss:// or redis-cluster://`,
      );
    }
    schemes.add(scheme);
    const hostname = u.hostname.replace(/^\[(.*)\]$/, "$1");
    if (hostname === "") throw new StoreUnavailableError(`Redis address "${url}" has no host`);
    t.seeds.push({ hostname, port: u.port === "" ? 6379 : Number(u.port) });
    if (u.username) t.user = decodeURIComponent(u.username);
    if (u.password) t.pass = decodeURIComponent(u.password);
    const db = u.pathname.replace(/^\//, "");
    if (db !== "") {
      if (!/^\d+$/.test(db)) {
        throw new StoreUnavailableError(`Redis address "${url}": database must be a number`);
      }
      t.db = Number(db);
    }
    const assume = u.searchParams.get("assume-noeviction");
    if (assume === "1" || assume === "true" || assume === "yes") t.assumeNoEviction = true;
    const ca = u.searchParams.get("ca-file");
    if (ca) t.caFile = ca;
  }
  if (schemes.size !== 1) {
    throw new StoreUnavailableError(`--backend mixes ${[...schemes].join(" and ")}`);
  }
  const scheme = [...schemes][0];
  t.cluster = scheme.endsWith("-cluster");
  t.tls = scheme.startsWith("rediss");
  if (!t.cluster && t.seeds.length > 1) {
    throw new StoreUnavailableError(
      "several redis:// servers given: use redis-cluster:// for a Redis Cluster (remora does not shard plain Redis)",
    );
  }
  if (t.cluster && t.db !== 0) throw new StoreUnavailableError("Redis Cluster has only database 0");
  return t;
}

const SLOTS = 16384;
const MAX_ROUNDS = 6;

/** One Redis server or one Redis Cluster holding a session's pages. */
export class RedisStore implements PageStore {
  /** The URL the user gave, without credentials. */
  readonly name: string;
  #t: Target;
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

  private constructor(t: Target, opts: RedisOptions) {
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
    const t = parseUrls(urls);
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
            if (e instanceof StoreUnavailableError && !/cannot reach/.test(e.message)) throw e;
          }
        }
        if (last) throw last;
        // Every master must pass the eviction check before we store a page.
        await Promise.all([...new Set(store.#slots)].filter((n) => n).map((n) => store.#conn(n!)));
      }
    } catch (e) {
      store.#closed = true; // closing the others is not "a node failed"
      store.#closeConns();
      if (e instanceof ConnectionError || e instanceof ProtocolError) {
        throw new StoreUnavailableError(e.message);
      }
      throw e;
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
    if (this.#closed) return Promise.reject(new StoreUnavailableError("Redis store is closed"));
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
      const t = this.#t;
      if (t.pass !== "" || t.user !== "") {
        const r = await call(conn, t.user ? ["AUTH", t.user, t.pass] : ["AUTH", t.pass]);
        if (r instanceof RespError) {
          throw new StoreUnavailableError(`${node.label} refused authentication (${r.message})`);
        }
      }
      if (t.db !== 0) {
        const r = await call(conn, ["SELECT", String(t.db)]);
        if (r instanceof RespError) {
          throw new StoreUnavailableError(`${node.label}: SELECT ${t.db}: ${r.message}`);
        }
      }
      await this.#checkEviction(conn, node);
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

  async #checkEviction(conn: PipeConn<Resp>, node: Node): Promise<void> {
    const r = await call(conn, ["CONFIG", "GET", "maxmemory-policy"]);
    if (r instanceof RespError) {
      if (/^NOAUTH/.test(r.message)) {
        throw new StoreUnavailableError(
          `${node.label} needs a password: use redis://user:pass@host:port or --token-file`,
        );
      }
      if (this.#t.assumeNoEviction) {
        log.warn("{node}: cannot read maxmemory-policy ({err}); trusting assume-noeviction", {
          node: node.label,
          err: r.message,
        });
        return;
      }
      throw new StoreUnavailableError(
        `${node.label} does not allow CONFIG GET (${r.message}), so remora cannot verify that ` +
          `maxmemory-policy is noeviction: make sure it is, then add ?assume-noeviction=1 to the URL`,
      );
    }
    const policy = Array.isArray(r) && r.length === 2 ? String(r[1]) : undefined;
    if (policy !== "noeviction") {
      throw new StoreUnavailableError(
        `${node.label} has maxmemory-policy ${policy ?? "unknown"}, which may evict pages: set ` +
          `maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)`,
      );
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
    out.set(this.#prefix, off);
    off += this.#prefix.length;
    let started = false;
    for (let shift = 28; shift >= 0; shift -= 4) {
      const d = (key >>> shift) & 15;
      if (d === 0 && !started && shift > 0) continue;
      started = true;
      out[off++] = d < 10 ? 48 + d : 87 + d;
    }
    return off;
  }

  /**
   * Runs one command per key (GET, SET or DEL), pipelined per node, following
   * cluster redirections. Returns the indices of keys whose value is missing
   * (GET only); throws {@linkcode StoreUnavailableError} for anything else.
   */
  async #batch(
    op: "GET" | "SET" | "DEL",
    keys: Uint32Array,
    pages?: Uint8Array,
    into?: Uint8Array,
  ): Promise<number[]> {
    if (this.#closed) throw new StoreUnavailableError("Redis store is closed");
    const n = keys.length;
    const kmax = this.#prefix.length + 8;
    const kbuf = new Uint8Array(n * kmax);
    const klen = new Uint16Array(n);
    const slot = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      klen[i] = this.#keyBytes(keys[i], kbuf, i * kmax) - i * kmax;
      if (this.#t.cluster) slot[i] = hashSlot(kbuf.subarray(i * kmax), klen[i]);
    }
    const verb = te.encode(`$${op.length}\r\n${op}\r\n`);
    const argc = op === "SET" ? 3 : 2;
    const asking = encodeCommand(["ASKING"]);
    const wait = this.#opts.replicas > 1 && op === "SET"
      // Half the request timeout, so WAIT answers before the watchdog fires.
      ? encodeCommand([
        "WAIT",
        String(this.#opts.replicas - 1),
        String(Math.floor((this.#opts.requestTimeoutMs ?? 5000) / 2)),
      ])
      : undefined;
    const missing: number[] = [];
    const errors: string[] = [];
    let todo: number[] = Array.from({ length: n }, (_, i) => i);
    let askTo = new Map<number, Node>();
    let tryagain = false;
    for (let round = 0; todo.length > 0; round++) {
      if (round === MAX_ROUNDS) {
        throw new StoreUnavailableError(
          `${op} of ${todo.length} page(s) failed after ${MAX_ROUNDS} tries: ${
            [...new Set(errors)].slice(-3).join("; ") || "redirect loop"
          }`,
        );
      }
      if (tryagain) await new Promise((r) => setTimeout(r, 20 * round));
      tryagain = false;
      const groups = new Map<Node, number[]>();
      for (const i of todo) {
        let node = askTo.get(i) ?? (this.#t.cluster ? this.#slots[slot[i]] : this.#single);
        if (node === undefined) {
          await this.#refresh();
          node = this.#slots[slot[i]];
          if (node === undefined) {
            throw new StoreUnavailableError(
              `Redis Cluster has no node serving slot ${slot[i]} (cluster down?)`,
            );
          }
        }
        let g = groups.get(node);
        if (g === undefined) groups.set(node, g = []);
        g.push(i);
      }
      const asked = askTo;
      askTo = new Map();
      const retry: number[] = [];
      let refresh = false;
      await Promise.all([...groups].map(async ([node, list]) => {
        // replyKey[k] >= 0: reply to key index; -1: ASKING's OK; -2: WAIT's count.
        const replyKey: number[] = [];
        let size = 64;
        for (const i of list) {
          size += 64 + klen[i] + (op === "SET" ? PAGE_SIZE + 16 : 0) +
            (asked.has(i) ? asking.length : 0);
        }
        const buf = new Uint8Array(size + (wait?.length ?? 0));
        let off = 0;
        for (const i of list) {
          if (asked.has(i)) {
            buf.set(asking, off);
            off += asking.length;
            replyKey.push(-1);
          }
          off = writeHeader(buf, off, 42, argc);
          buf.set(verb, off);
          off += verb.length;
          off = writeHeader(buf, off, 36, klen[i]);
          buf.set(kbuf.subarray(i * kmax, i * kmax + klen[i]), off);
          off += klen[i];
          buf[off++] = 13;
          buf[off++] = 10;
          if (op === "SET") {
            off = writeHeader(buf, off, 36, PAGE_SIZE);
            buf.set(pages!.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), off);
            off += PAGE_SIZE;
            buf[off++] = 13;
            buf[off++] = 10;
          }
          replyKey.push(i);
        }
        if (wait) {
          buf.set(wait, off);
          off += wait.length;
          replyKey.push(-2);
        }
        const t0 = performance.now();
        try {
          const conn = await this.#conn(node);
          await conn.send(buf.subarray(0, off), replyKey.length, (k, r) => {
            const i = replyKey[k];
            if (r instanceof RespError) {
              const m = r.message;
              if (i >= 0 && (m.startsWith("MOVED ") || m.startsWith("ASK "))) {
                const [kind, s, addr] = m.split(" ");
                const colon = addr?.lastIndexOf(":") ?? -1;
                if (colon <= 0) throw new ProtocolError(`${node.label}: bad redirection "${m}"`);
                const host = addr.slice(0, colon).replace(/^\[(.*)\]$/, "$1") || node.hostname;
                const target = this.#node(host, Number(addr.slice(colon + 1)));
                if (kind === "MOVED") {
                  this.#moved++;
                  this.#slots[Number(s)] = target;
                  refresh = true;
                } else {
                  this.#asked++;
                  askTo.set(i, target);
                }
                retry.push(i);
              } else if (i >= 0 && (m.startsWith("TRYAGAIN") || m.startsWith("CLUSTERDOWN"))) {
                tryagain = true;
                retry.push(i);
                if (errors.length < 8) errors.push(`${node.label}: ${m}`);
              } else if (i !== -1) {
                // OOM and friends: the page is not stored, the put fails and
                // the pager keeps its local copy.
                if (errors.length < 8) errors.push(`${node.label}: ${m}`);
              }
              return;
            }
            if (i === -2) {
              if (typeof r !== "number" || r < this.#opts.replicas - 1) {
                errors.push(
                  `${node.label}: only ${r} of ${
                    this.#opts.replicas - 1
                  } Redis replica(s) confirmed the write`,
                );
              }
            } else if (i >= 0) {
              if (op === "GET") {
                if (r === null) missing.push(i);
                else if (r instanceof Uint8Array && r.length === PAGE_SIZE) {
                  into!.set(r, i * PAGE_SIZE);
                } else {errors.push(
                    `${node.label}: value of page ${keys[i]} is not a ${PAGE_SIZE}-byte page`,
                  );}
              } else if (op === "SET" ? r !== "OK" : typeof r !== "number") {
                errors.push(`${node.label}: unexpected reply to ${op}`);
              }
            }
          });
          node.latency.record((performance.now() - t0) * 1000);
        } catch (e) {
          const msg = (e as Error).message;
          if (this.#t.cluster) {
            // The node may have failed over: reload the map and retry there.
            refresh = true;
            tryagain = true;
            for (const k of list) retry.push(k);
            if (errors.length < 8) errors.push(msg);
          } else {
            throw new StoreUnavailableError(msg);
          }
        }
      }));
      const hard = errors.filter((m) =>
        !/TRYAGAIN|CLUSTERDOWN|cannot reach|closed|reset|no reply|write failed/.test(m)
      );
      if (hard.length > 0) {
        const oom = hard.find((m) => m.includes("OOM"));
        throw new StoreUnavailableError(
          oom !== undefined
            ? `Redis is full, page(s) not stored (${oom}): raise maxmemory or add nodes`
            : hard.slice(0, 3).join("; "),
        );
      }
      if (refresh) await this.#refresh().catch((e) => errors.push((e as Error).message));
      todo = retry;
    }
    return missing;
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
      for (const batch of this.#keys.batches(4096)) {
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
    const endpoints: EndpointHealth[] = [...this.#nodes.values()].map((n) => ({
      address: `${this.#t.tls ? "rediss" : "redis"}://${n.addr}`,
      state: n.down ? "down" : "up",
      requests: n.latency.requests,
      medianLatencyUs: n.latency.median(),
      pages: counts.get(n) ?? 0,
    }));
    // Redis replicates server-side; with replicas > 1 every SET waits (WAIT)
    // for that many copies, so a page we hold has no known deficit.
    return { pages: this.#keys.size, replicationDeficit: 0, endpoints };
  }
}

/** Sends one command and returns its reply with bulk strings copied out as text. */
async function call(conn: PipeConn<Resp>, args: string[]): Promise<Resp> {
  let out: Resp = null;
  await conn.send(encodeCommand(args), 1, (_, r) => out = respToJs(r) as Resp);
  return out;
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
