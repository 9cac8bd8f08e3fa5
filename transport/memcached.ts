/**
 * memcached as a page backend (as FluidMem did): pages are 4 KiB values named
 * `<namespace>:<key in hex>`, spread over one or more servers by consistent
 * hashing, optionally replicated on distinct servers.
 *
 * Speaks memcached's meta text protocol (`mg`/`ms`/`md`, memcached >= 1.6)
 * through a hand-written, strict, pipelined client: every batch is one write
 * per server and replies are matched in order. Open refuses a server that
 * may evict items (started without `-M`), because an evicted page would be
 * silent data loss.
 *
 * @module
 */

import { ffiAllowed } from "../ffi/socket.ts";
import { Reactor } from "./reactor.ts";
import { getLogger } from "@logtape/logtape";
import type { PageStore, StoreHealth, StoreOptions, StoreWaiter } from "./store.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "./store.ts";
import { asUnavailable, concat, LatencyWindow, ProtocolError } from "./kit.ts";
import { HashRing } from "./kv/hashring.ts";
import { checkSize, connectTcp, findCrlf, KeySet, parseUint, PipeConn } from "./kv/pipe.ts";
import { readSecret, writeKeyName } from "./kv/pipe.ts";

const log = getLogger(["remora", "transport", "memcached"]);

/** One memcached reply, as the strict parser understands it. */
export type McReply =
  | { t: "VA"; data: Uint8Array }
  | { t: "EN" | "HD" | "NF" | "NS" | "EX" | "STORED" }
  | { t: "STATS"; stats: Map<string, string> }
  | { t: "VERSION"; version: string }
  | { t: "ERROR"; message: string };

const td = new TextDecoder();
const te = new TextEncoder();

const SIMPLE: Record<string, McReply> = {
  EN: { t: "EN" },
  HD: { t: "HD" },
  NF: { t: "NF" },
  NS: { t: "NS" },
  EX: { t: "EX" },
  STORED: { t: "STORED" },
};

/**
 * Parses one memcached reply (meta replies, `STAT ... END`, `VERSION`,
 * errors). Anything else is a {@linkcode ProtocolError}: a client that
 * guesses could hand the pager another page's bytes.
 */
export function parseMcReply(
  buf: Uint8Array,
  start: number,
  end: number,
): { value: McReply; next: number } | undefined {
  const cr = findCrlf(buf, start, end);
  if (cr < 0) {
    if (end - start > 8192) throw new ProtocolError("reply line too long");
    return undefined;
  }
  // "VA <size>[ flags]\r\n<data>\r\n": the hot path, checked byte-wise.
  if (buf[start] === 86 && buf[start + 1] === 65 && buf[start + 2] === 32) {
    let e = start + 3;
    while (e < cr && buf[e] !== 32) e++;
    const size = parseUint(buf, start + 3, e);
    const dataStart = cr + 2;
    if (end < dataStart + size + 2) return undefined;
    if (buf[dataStart + size] !== 13 || buf[dataStart + size + 1] !== 10) {
      throw new ProtocolError("value not followed by CRLF");
    }
    return {
      value: { t: "VA", data: buf.subarray(dataStart, dataStart + size) },
      next: dataStart + size + 2,
    };
  }
  const line = td.decode(buf.subarray(start, cr));
  const next = cr + 2;
  const simple = SIMPLE[line];
  if (simple !== undefined) return { value: simple, next };
  if (line.startsWith("STAT ")) {
    // A stats listing is one reply: every line up to END.
    const stats = new Map<string, string>();
    let pos = start;
    for (;;) {
      const c = findCrlf(buf, pos, end);
      if (c < 0) return undefined;
      const l = td.decode(buf.subarray(pos, c));
      pos = c + 2;
      if (l === "END") return { value: { t: "STATS", stats }, next: pos };
      const m = /^STAT (\S+) (.*)$/.exec(l);
      if (!m) throw new ProtocolError(`bad stats line "${l.slice(0, 60)}"`);
      stats.set(m[1], m[2]);
    }
  }
  if (line.startsWith("VERSION ")) return { value: { t: "VERSION", version: line.slice(8) }, next };
  if (line === "ERROR" || line.startsWith("SERVER_ERROR") || line.startsWith("CLIENT_ERROR")) {
    return { value: { t: "ERROR", message: line }, next };
  }
  if (/^[-+:$*]/.test(line)) {
    // RESP (Redis, Valkey, KeyDB...): e.g. "-ERR unknown command 'version'".
    throw new ProtocolError(
      `answered "${line.slice(0, 60)}" in Redis's protocol (RESP): it is a Redis server, ` +
        `not memcached (wrong kind of store: use redis://HOST:PORT for it)`,
    );
  }
  throw new ProtocolError(`unexpected reply "${line.slice(0, 60)}": not a memcached server?`);
}

/** Extra options for {@linkcode openMemcachedStore}. */
export interface MemcachedOptions extends StoreOptions {
  /** A request with no reply after this many ms marks the server down (default 5000). */
  requestTimeoutMs?: number;
  /** Copy pages of a lost server onto the remaining ones in the background (default true). */
  rereplicate?: boolean;
}

class Server {
  readonly address: string;
  readonly hostname: string;
  readonly port: number;
  conn: PipeConn<McReply> | undefined;
  down = false;
  downReason = "";
  readonly latency = new LatencyWindow();
  constructor(address: string, hostname: string, port: number) {
    this.address = address;
    this.hostname = hostname;
    this.port = port;
  }
  get label(): string {
    return `memcached at ${this.hostname}:${this.port}`;
  }
}

function parseUrl(
  url: string,
): { address: string; hostname: string; port: number; user: string; pass: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new StoreUnavailableError(`bad memcached address "${url}": use memcached://HOST:PORT`);
  }
  if (u.protocol !== "memcached:") {
    throw new StoreUnavailableError(`bad memcached address "${url}": use memcached://HOST:PORT`);
  }
  const hostname = u.hostname.replace(/^\[(.*)\]$/, "$1");
  if (hostname === "") throw new StoreUnavailableError(`memcached address "${url}" has no host`);
  const port = u.port === "" ? 11211 : Number(u.port);
  return {
    address: `memcached://${u.host}`,
    hostname,
    port,
    user: decodeURIComponent(u.username),
    pass: decodeURIComponent(u.password),
  };
}

// Longest meta command header we build: "ms " + key (<= 250) + " 4096 ME\r\n".
const MAX_HEADER = 270;
const GET_TAIL = te.encode(" v\r\n");
const CRLF = te.encode("\r\n");
const SET_TAIL = te.encode(` ${PAGE_SIZE}\r\n`);
const ADD_TAIL = te.encode(` ${PAGE_SIZE} ME\r\n`);
/** Keys per pipelined batch when walking every stored key (close, rescans). */
const KEY_BATCH = 4096;

/** memcached servers holding one session's pages. */
export class MemcachedStore implements PageStore {
  /** `memcached://host:port[,...]`. */
  readonly name: string;
  /** Replies on sockets of our own are awaited in the pager's poll (see `reactor.ts`). */
  readonly waiter: StoreWaiter | undefined = ffiAllowed() ? Reactor.shared() : undefined;
  #servers: Server[];
  #ring: HashRing;
  #replicas: number;
  #prefix: Uint8Array;
  #keys = new KeySet();
  #opts: MemcachedOptions;
  #place: Uint16Array;
  #downFlags: Uint8Array;
  #rereplicating = 0;
  // Per-server page counts and keys short of replicas, kept incrementally;
  // a server loss changes placements, so it marks them stale for one rescan.
  #counts: Float64Array;
  #short = 0;
  #countsStale = false;
  #countPlace: Uint16Array;
  #downCount = 0;
  #rereplicateTask: Promise<void> = Promise.resolve();
  #closed = false;
  #closing = false;

  private constructor(servers: Server[], opts: MemcachedOptions) {
    this.#servers = servers;
    this.#opts = opts;
    this.#replicas = Math.max(1, opts.replicas);
    this.name = servers.map((s) => s.address).join(",");
    this.#ring = new HashRing(servers.map((s) => s.address), opts.namespace);
    this.#prefix = te.encode(`${opts.namespace}:`);
    this.#downFlags = new Uint8Array(servers.length);
    this.#place = new Uint16Array(servers.length);
    this.#counts = new Float64Array(servers.length);
    this.#countPlace = new Uint16Array(servers.length);
  }

  /** Connects to every server and checks it cannot evict pages. */
  static async open(urls: string[], opts: MemcachedOptions): Promise<MemcachedStore> {
    if (urls.length === 0) throw new StoreUnavailableError("no memcached server given");
    if (!/^[\x21-\x7e]{1,200}$/.test(opts.namespace)) {
      throw new StoreUnavailableError(
        `namespace "${opts.namespace}" cannot name memcached keys: use 1-200 printable characters, no spaces`,
      );
    }
    const parsed = urls.map(parseUrl);
    if (opts.replicas > parsed.length) {
      throw new StoreUnavailableError(
        `--replicas ${opts.replicas} needs at least ${opts.replicas} memcached servers, got ${parsed.length}`,
      );
    }
    const servers = parsed.map((p) => new Server(p.address, p.hostname, p.port));
    const store = new MemcachedStore(servers, opts);
    const tokenPass = opts.tokenFile ? await readSecret(opts.tokenFile) : "";
    try {
      await Promise.all(
        servers.map((s, i) => store.#connect(s, parsed[i].user, parsed[i].pass || tokenPass)),
      );
    } catch (e) {
      store.#closed = true; // closing the others is not "a server went down"
      for (const s of servers) s.conn?.close();
      throw asUnavailable(e);
    }
    return store;
  }

  async #connect(s: Server, user: string, pass: string): Promise<void> {
    const raw = await connectTcp({
      hostname: s.hostname,
      port: s.port,
      what: "memcached",
      timeoutMs: 3000,
    });
    const conn = new PipeConn<McReply>(
      raw,
      parseMcReply,
      s.label,
      this.#opts.requestTimeoutMs ?? 5000,
    );
    s.conn = conn;
    const one = async (cmd: string | Uint8Array): Promise<McReply> => {
      let r: McReply | undefined;
      await conn.send(typeof cmd === "string" ? te.encode(cmd) : cmd, 1, (_, v) => r = v);
      return r!;
    };
    if (user !== "") {
      // memcached's text-protocol authentication (-Y auth file): a `set`
      // whose value is "user password". Not encrypted: see the README.
      const cred = te.encode(`${user} ${pass}`);
      const r = await one(
        concat(te.encode(`set auth 0 0 ${cred.length}\r\n`), cred, te.encode("\r\n")),
      );
      if (r.t !== "STORED") {
        throw new StoreUnavailableError(
          `${s.label} refused user "${user}" (${
            r.t === "ERROR" ? r.message : r.t
          }): check the -Y auth file`,
        );
      }
    }
    const v = await one("version\r\n");
    if (v.t !== "VERSION") {
      throw new StoreUnavailableError(
        `${s.label} answered ${v.t === "ERROR" ? v.message : v.t} to "version"` +
          (user === "" ? ": does it need a user (memcached://user:pass@host:port)?" : ""),
      );
    }
    const [major, minor] = v.version.split(".").map(Number);
    if (!(major > 1 || (major === 1 && minor >= 6))) {
      throw new StoreUnavailableError(
        `${s.label} is version ${v.version}: remora needs memcached 1.6 or later (meta protocol)`,
      );
    }
    const st = await one("stats settings\r\n");
    if (st.t !== "STATS") {
      throw new StoreUnavailableError(`${s.label} did not answer "stats settings"`);
    }
    const ev = st.stats.get("evictions");
    if (ev !== "off") {
      throw new StoreUnavailableError(
        `${s.label} may evict pages (evictions ${ev ?? "unknown"}): start it with -M ` +
          `(e.g. memcached -M -m 4096) so a full cache refuses writes instead of dropping pages`,
      );
    }
    const itemMax = Number(st.stats.get("item_size_max") ?? 1 << 20);
    if (itemMax < PAGE_SIZE + 512) {
      throw new StoreUnavailableError(
        `${s.label} has item_size_max ${itemMax}: raise it (-I) above 8k`,
      );
    }
    // Only now: a server refused at open is not "down", it is an error.
    conn.onFail = (e) => this.#markDown(s, e);
    if (conn.failed) this.#markDown(s, conn.failed);
  }

  #markDown(s: Server, e: Error): void {
    if (s.down || this.#closed) return;
    s.down = true;
    s.downReason = e.message;
    this.#downFlags[this.#servers.indexOf(s)] = 1;
    this.#downCount++;
    this.#countsStale = true;
    const live = this.#servers.filter((x) => !x.down).length;
    log.error("{server} is down ({reason}); {live} of {all} memcached servers remain", {
      server: s.label,
      reason: e.message,
      live,
      all: this.#servers.length,
    });
    if (
      this.#replicas > 1 && (this.#opts.rereplicate ?? true) && live >= this.#replicas &&
      !this.#closing
    ) {
      const idx = this.#servers.indexOf(s);
      this.#rereplicateTask = this.#rereplicateTask.then(() => this.#rereplicate(idx)).catch((
        err,
      ) =>
        log.error("re-replication after losing {server} stopped: {err}", {
          server: s.label,
          err: String(err),
        })
      );
    }
  }

  /**
   * Live servers holding `key`: the first `replicas` distinct live servers
   * clockwise. Skipping dead servers moves their share to the next ones on
   * the ring, which is where re-replication copies it.
   */
  #placeLive(key: number, out: Uint16Array): number {
    // The first replicas + (servers down) distinct servers always include
    // enough live ones, so the walk stops early.
    const all = this.#ring.place(key, this.#replicas + this.#downCount, this.#place);
    let n = 0;
    for (let j = 0; j < all && n < this.#replicas; j++) {
      const s = this.#place[j];
      if (this.#downFlags[s] === 0) out[n++] = s;
    }
    return n;
  }

  #keyBytes(key: number, out: Uint8Array, off: number): number {
    return writeKeyName(this.#prefix, key, out, off);
  }

  #putCmd(key: number, page: Uint8Array, out: Uint8Array, off: number, addOnly: boolean): number {
    out[off++] = 109; // "ms "
    out[off++] = 115;
    out[off++] = 32;
    off = this.#keyBytes(key, out, off);
    const tail = addOnly ? ADD_TAIL : SET_TAIL;
    out.set(tail, off);
    off += tail.length;
    out.set(page, off);
    off += PAGE_SIZE;
    out[off++] = 13;
    out[off++] = 10;
    return off;
  }

  #simpleCmd(verb: number, key: number, tail: Uint8Array, out: Uint8Array, off: number): number {
    out[off++] = 109; // "m?"
    out[off++] = verb;
    out[off++] = 32;
    off = this.#keyBytes(key, out, off);
    out.set(tail, off);
    return off + tail.length;
  }

  #liveOrThrow(): void {
    if (this.#closed) throw new StoreUnavailableError("memcached store is closed");
  }

  /** Writes every page to all its live replicas; resolves once each page has a confirmed copy on each. */
  async put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    checkSize(keys, pages);
    this.#liveOrThrow();
    const n = keys.length;
    const S = this.#servers.length;
    const idx: number[][] = Array.from({ length: S }, () => []);
    const place = new Uint16Array(this.#replicas);
    for (let i = 0; i < n; i++) {
      const c = this.#placeLive(keys[i], place);
      if (c === 0) {
        throw new StoreUnavailableError(
          `cannot store page ${
            keys[i]
          }: every memcached server holding it is down (${this.#downSummary()})`,
        );
      }
      for (let j = 0; j < c; j++) idx[place[j]].push(i);
    }
    const errors: string[] = [];
    const confirmed = new Uint8Array(n);
    const refused = new Uint8Array(n);
    await Promise.all(idx.map(async (list, s) => {
      if (list.length === 0) return;
      const server = this.#servers[s];
      const buf = new Uint8Array(list.length * (MAX_HEADER + PAGE_SIZE + 2));
      let off = 0;
      for (const i of list) {
        off = this.#putCmd(
          keys[i],
          pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE),
          buf,
          off,
          false,
        );
      }
      const t0 = performance.now();
      try {
        await server.conn!.send(buf.subarray(0, off), list.length, (k, r) => {
          if (r.t === "HD") {
            confirmed[list[k]]++;
          } else {
            refused[list[k]] = 1;
            if (errors.length < 4) {
              errors.push(`${server.label}: ${r.t === "ERROR" ? r.message : r.t}`);
            }
          }
        });
        server.latency.record((performance.now() - t0) * 1000);
      } catch (e) {
        // The connection broke, so the server is now marked down: its copies
        // count in the replication deficit, not as a failed put.
        errors.push((e as Error).message);
      }
    }));
    // A page is stored once every replica that is still up confirmed it; a
    // server that refused (e.g. "SERVER_ERROR out of memory") fails the put,
    // so the pager keeps its local copy.
    let failed = 0;
    for (let i = 0; i < n; i++) if (confirmed[i] === 0 || refused[i]) failed++;
    if (failed > 0) {
      const full = errors.find((m) => m.includes("out of memory"));
      throw new StoreUnavailableError(
        full !== undefined
          ? `memcached is full, ${failed} page(s) not stored (${full}): give it more memory (-m) or add servers`
          : `${failed} page(s) not stored in memcached: ${errors.join("; ")}`,
      );
    }
    for (let i = 0; i < n; i++) if (this.#keys.add(keys[i])) this.#count(keys[i], 1);
  }

  /** The key namespace: a new pager opened with it finds this session's keys. */
  get namespace(): string {
    return this.#opts.namespace;
  }

  /**
   * Counts keys a killed pager stored under this namespace as this session's
   * (see {@linkcode PageStore.resume}). With replicas, refused: which replica
   * missed a write while a server was down died with that pager.
   */
  resume(keys: Uint32Array): void {
    if (this.#replicas > 1) {
      throw new Error(
        "a killed pager's pages in memcached with --replicas above 1 cannot be recovered yet " +
          "(a replica may have missed a write)",
      );
    }
    for (let i = 0; i < keys.length; i++) if (this.#keys.add(keys[i])) this.#count(keys[i], 1);
  }

  /** Reads pages from the first live replica, falling back to the others; a page found nowhere is lost. */
  async get(keys: Uint32Array, into: Uint8Array): Promise<void> {
    checkSize(keys, into);
    this.#liveOrThrow();
    const n = keys.length;
    const S = this.#servers.length;
    // attempt[i]: which live replica of key i we try next.
    const attempt = new Uint8Array(n);
    let todo: number[] = Array.from({ length: n }, (_, i) => i);
    const lost: number[] = [];
    const reasons: string[] = [];
    const place = new Uint16Array(this.#replicas);
    while (todo.length > 0) {
      const idx: number[][] = Array.from({ length: S }, () => []);
      for (const i of todo) {
        const c = this.#placeLive(keys[i], place);
        if (attempt[i] >= c) {
          lost.push(i);
          if (c < this.#replicas && reasons.length < 4) {
            const down = `replica(s) down: ${this.#downSummary()}`;
            if (!reasons.includes(down)) reasons.push(down);
          }
          continue;
        }
        idx[place[attempt[i]]].push(i);
      }
      const retry: number[] = [];
      await Promise.all(idx.map(async (list, s) => {
        if (list.length === 0) return;
        const server = this.#servers[s];
        const buf = new Uint8Array(list.length * MAX_HEADER);
        let off = 0;
        for (const i of list) off = this.#simpleCmd(103, keys[i], GET_TAIL, buf, off);
        const got = new Uint8Array(list.length);
        const t0 = performance.now();
        try {
          await server.conn!.send(buf.subarray(0, off), list.length, (k, r) => {
            const i = list[k];
            if (r.t === "VA" && r.data.length === PAGE_SIZE) {
              into.set(r.data, i * PAGE_SIZE);
              got[k] = 1;
            } else if (r.t !== "EN" && reasons.length < 4) {
              reasons.push(`${server.label}: ${r.t === "ERROR" ? r.message : r.t}`);
            }
          });
          server.latency.record((performance.now() - t0) * 1000);
        } catch (e) {
          if (reasons.length < 4) reasons.push((e as Error).message);
        }
        for (let k = 0; k < list.length; k++) {
          if (got[k]) continue;
          const i = list[k];
          if (!server.down) {
            // The server is up but lacks the page: evicted, flushed or
            // restarted. The next replica may still have it.
            if (this.#rereplicating === 0) {
              log.warn("{server} has no copy of page {key}; trying another replica", {
                server: server.label,
                key: keys[i],
              });
            }
            attempt[i]++;
          }
          // A server that went down drops out of the live placement, so the
          // same attempt index now names the next replica.
          retry.push(i);
        }
      }));
      todo = retry;
    }
    if (lost.length > 0) {
      const lk = Uint32Array.from(lost, (i) => keys[i]);
      const why = reasons.length > 0 ? reasons.join("; ") : "missing on every memcached replica";
      log.error("{count} page(s) lost: {why}", { count: lk.length, why });
      this.#opts.onLoss?.(lk);
      throw new PageLostError(lk, why);
    }
  }

  /** Deletes pages from every live server that may hold them. */
  async delete(keys: Uint32Array): Promise<void> {
    this.#liveOrThrow();
    await this.#deleteKeys(keys);
    for (const k of keys) if (this.#keys.delete(k)) this.#count(k, -1);
  }

  async #deleteKeys(keys: Uint32Array): Promise<void> {
    const S = this.#servers.length;
    const idx: number[][] = Array.from({ length: S }, () => []);
    const place = new Uint16Array(this.#replicas);
    for (let i = 0; i < keys.length; i++) {
      const c = this.#placeLive(keys[i], place);
      for (let j = 0; j < c; j++) idx[place[j]].push(i);
    }
    await Promise.all(idx.map(async (list, s) => {
      if (list.length === 0) return;
      const server = this.#servers[s];
      const buf = new Uint8Array(list.length * MAX_HEADER);
      let off = 0;
      for (const i of list) off = this.#simpleCmd(100, keys[i], CRLF, buf, off);
      try {
        await server.conn!.send(buf.subarray(0, off), list.length, () => {});
      } catch (e) {
        // A dead server's memory is gone with it; nothing left to delete.
        log.warn("delete on {server} failed: {err}", {
          server: server.label,
          err: (e as Error).message,
        });
      }
    }));
  }

  /**
   * After losing server `dead`, copies every page it held onto the server
   * that now takes its place, reading the surviving copy. Uses "add" mode
   * (`ME`) so a concurrent newer `put` is never overwritten by the older copy.
   */
  async #rereplicate(dead: number): Promise<void> {
    const all = new Uint16Array(this.#servers.length);
    const place = new Uint16Array(this.#replicas);
    const page = new Uint8Array(PAGE_SIZE);
    let copied = 0;
    const affected: number[] = [];
    for (const batch of this.#keys.batches(KEY_BATCH)) {
      for (const k of batch) {
        const c = this.#ring.place(k, this.#replicas, all);
        for (let j = 0; j < c; j++) if (all[j] === dead) affected.push(k);
      }
    }
    this.#rereplicating = affected.length;
    log.info("re-replicating {n} page(s) that had a copy on the lost server", {
      n: affected.length,
    });
    for (const k of affected) {
      if (this.#closing) break;
      this.#rereplicating--;
      if (!this.#keys.has(k)) continue;
      const one = Uint32Array.of(k);
      try {
        await this.get(one, page);
      } catch {
        continue; // already reported as lost by get
      }
      const c = this.#placeLive(k, place);
      const buf = new Uint8Array(MAX_HEADER + PAGE_SIZE + 2);
      for (let j = 0; j < c; j++) {
        const s = this.#servers[place[j]];
        const len = this.#putCmd(k, page, buf, 0, true);
        try {
          await s.conn!.send(buf.subarray(0, len), 1, () => {});
        } catch { /* that server is now down too; its own pass handles it */ }
      }
      // A delete that raced us must not leave our copy behind.
      if (!this.#keys.has(k)) await this.#deleteKeys(one);
      copied++;
    }
    this.#rereplicating = 0;
    log.info("re-replication done: {n} page(s) copied", { n: copied });
  }

  #downSummary(): string {
    return this.#servers.filter((s) => s.down).map((s) => `${s.label}: ${s.downReason}`).join("; ");
  }

  /** Deletes every page this session stored, then closes the connections. */
  async close(): Promise<void> {
    if (this.#closed || this.#closing) return;
    // Stop re-replication first: a copy it adds after our deletes would leak.
    this.#closing = true;
    await this.#rereplicateTask;
    try {
      for (const batch of this.#keys.batches(KEY_BATCH)) await this.#deleteKeys(batch);
    } finally {
      this.#closed = true;
      for (const s of this.#servers) s.conn?.close();
    }
  }

  /** Per-server state, latency and page counts, and the replication deficit. */
  health(): StoreHealth {
    if (this.#countsStale) {
      this.#countsStale = false;
      this.#counts.fill(0);
      this.#short = 0;
      for (const batch of this.#keys.batches(KEY_BATCH)) for (const k of batch) this.#count(k, 1);
    }
    const live = this.#servers.filter((s) => !s.down).length;
    const endpoints = this.#servers.map((s, i) =>
      s.latency.health(s.address, s.down ? "down" : "up", this.#counts[i])
    );
    const deficit = live < this.#replicas ? this.#keys.size : this.#short + this.#rereplicating;
    return {
      pages: this.#keys.size,
      replicationDeficit: Math.min(deficit, this.#keys.size),
      endpoints,
    };
  }

  #count(key: number, delta: number): void {
    if (this.#countsStale) return;
    const place = this.#countPlace;
    const c = this.#placeLive(key, place);
    for (let j = 0; j < c; j++) this.#counts[place[j]] += delta;
    if (c < this.#replicas) this.#short += delta;
  }
}

/**
 * Opens memcached servers (`memcached://[user:pass@]host[:port]`, default
 * port 11211) as one page store. Fails with a one-line
 * {@linkcode StoreUnavailableError} if a server is unreachable, older than
 * 1.6, or may evict items (not started with `-M`).
 */
export function openMemcachedStore(urls: string[], opts: StoreOptions): Promise<PageStore> {
  return MemcachedStore.open(urls, opts);
}
