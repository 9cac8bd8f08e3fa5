/**
 * A {@linkcode PageStore} over remora peer daemons (`tcp://host:port`, or
 * `tcps://` for TLS): Infiniswap's design over TCP instead of RDMA.
 *
 * The key space is cut into slabs of `slabPages` consecutive keys. Each slab
 * is placed, on first use, on `replicas` distinct peers chosen by the power
 * of two choices (sample two live peers, take the one with more free memory).
 * Writes resolve once every live replica confirmed; reads go to one replica
 * and fall back to the others. When a peer dies, its slabs are copied from a
 * surviving replica to another peer in the background; when a peer drains,
 * its slabs are copied away first and released after. A slab whose every
 * replica died is lost: `onLoss` is called and its keys reject with
 * {@linkcode PageLostError}, never zeros.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { ffiAllowed } from "../ffi/socket.ts";
import { Reactor } from "./reactor.ts";
import type { PageStore, StoreHealth, StoreOptions, StoreWaiter } from "./store.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "./store.ts";
import {
  ConnectionError,
  type ConnectionOptions,
  decodeStat,
  PeerConnection,
  PeerRequestError,
  type PeerTarget,
} from "./tcp/connection.ts";
import {
  ErrCode,
  MAX_NAMESPACE_BYTES,
  MAX_PAGES_PER_REQUEST,
  MsgType,
  u32s,
} from "./tcp/protocol.ts";
import { readSecretFile } from "./token.ts";
import { allOnTime, firstAnswer } from "./tcp/hedge.ts";
import { Endpoint, pickPeer, Slab } from "./tcp/replicas.ts";
import { parseList, rebuildSession } from "./tcp/resume.ts";
import { SlabMover } from "./tcp/mover.ts";

const log = getLogger(["remora", "peer"]);

/** Default slab: 64 MiB, the peer's default `--slab-size`. */
export const DEFAULT_SLAB_PAGES = 16384;

/** Options of {@linkcode openPeerStore} beyond the common {@linkcode StoreOptions}. */
export interface PeerStoreOptions extends StoreOptions {
  /** Pages per slab (default {@linkcode DEFAULT_SLAB_PAGES}); must fit the peers' `--slab-size`. */
  slabPages?: number;
  /** PEM file of a CA (or self-signed certificate) trusted for `tcps://` peers. */
  tlsCaFile?: string;
  /** Connection tunables (in-flight bound, timeouts). */
  connection?: ConnectionOptions;
  /** Delay between reconnection attempts to a dead peer (default 1000 ms). */
  reconnectMs?: number;
}

/** Parses `tcp://host:port` or `tcps://host:port` (IPv6 in brackets). */
export function parsePeerUrl(url: string): Omit<PeerTarget, "caCerts"> {
  const m = /^(tcps?):\/\/(\[[^\]]+\]|[^:/]+):(\d{1,5})\/?$/.exec(url);
  if (!m || Number(m[3]) > 65535) {
    throw new StoreUnavailableError(
      `bad peer address "${url}": use tcp://HOST:PORT or tcps://HOST:PORT`,
    );
  }
  return {
    address: url,
    hostname: m[2].replace(/^\[|\]$/g, ""),
    port: Number(m[3]),
    tls: m[1] === "tcps",
  };
}

/**
 * Opens a store over the peers at `urls`. Fails with
 * {@linkcode StoreUnavailableError} (one line) if no peer is reachable, a
 * peer rejects the token, or fewer peers answer than `replicas` would need at
 * the very least (one).
 */
export async function openPeerStore(urls: string[], opts: PeerStoreOptions): Promise<PageStore> {
  if (urls.length === 0) {
    throw new StoreUnavailableError("no peer given: use --backend tcp://HOST:PORT,...");
  }
  if (!Number.isInteger(opts.replicas) || opts.replicas < 1) {
    throw new StoreUnavailableError(`--replicas must be at least 1 (got ${opts.replicas})`);
  }
  if (opts.replicas > urls.length) {
    throw new StoreUnavailableError(
      `--replicas ${opts.replicas} needs at least ${opts.replicas} peers, got ${urls.length}`,
    );
  }
  const suffix = opts.resumed ? 0 : 33; // "/" and 128 random bits in hex, unless resumed
  if (new TextEncoder().encode(opts.namespace).length > MAX_NAMESPACE_BYTES - suffix) {
    throw new StoreUnavailableError(`namespace longer than ${MAX_NAMESPACE_BYTES - 33} bytes`);
  }
  const targets = urls.map(parsePeerUrl) as PeerTarget[];
  if (new Set(targets.map((t) => `${t.hostname}:${t.port}`)).size !== targets.length) {
    throw new StoreUnavailableError(
      "--backend lists the same peer twice: replicas must be on distinct peers",
    );
  }
  let token: Uint8Array | null = null;
  if (opts.tokenFile) {
    try {
      token = await readSecretFile(opts.tokenFile);
    } catch (e) {
      throw new StoreUnavailableError((e as Error).message);
    }
  }
  if (opts.tlsCaFile) {
    let ca: string;
    try {
      ca = await Deno.readTextFile(opts.tlsCaFile);
    } catch (e) {
      throw new StoreUnavailableError(
        `cannot read TLS CA file ${opts.tlsCaFile}: ${(e as Error).message}`,
      );
    }
    for (const t of targets) t.caCerts = [ca];
  }
  const store = new PeerStore(targets, token, opts);
  await store.connectAll();
  return store;
}

/**
 * A READ reply must be exactly one page per offset asked for: anything else is
 * a broken or hostile peer, and its bytes must never become a page.
 */
function checkReadReply(ep: Endpoint, pages: number, data: Uint8Array): void {
  if (data.length !== pages * PAGE_SIZE) {
    throw new PeerRequestError(
      ErrCode.MALFORMED,
      `peer ${ep.target.address} answered a READ of ${pages} page(s) with ${data.length} bytes ` +
        `instead of ${pages * PAGE_SIZE}`,
    );
  }
}

class PeerStore implements PageStore {
  readonly name: string;
  /** Replies on sockets of our own are awaited in the pager's poll (see `reactor.ts`). */
  readonly waiter: StoreWaiter | undefined = ffiAllowed() ? Reactor.shared() : undefined;
  readonly #endpoints: Endpoint[];
  readonly #token: Uint8Array | null;
  readonly #opts: PeerStoreOptions;
  readonly #slabPages: number;
  readonly #slabs = new Map<number, Slab>();
  readonly #placing = new Map<number, Promise<Slab>>();
  readonly #lost = new Set<number>();
  /** Re-replication, and moving slabs off peers that want them back. */
  readonly #mover: SlabMover;
  #closed = false;
  #readRotation = 0;
  #nextSlabId = 1;
  /** ALLOCs sent so far, the generation each one carries (see LIST). */
  #allocGeneration = 0;
  /** Opened to take over a killed client's session: keep what the peers hold until resume(). */
  #resuming: boolean;
  /**
   * The session name peers see: the pager's namespace plus 128 random bits,
   * so another token holder cannot guess it and open our slabs (it would have
   * to observe our traffic, which TLS prevents).
   */
  readonly #sessionName: string;

  constructor(targets: PeerTarget[], token: Uint8Array | null, opts: PeerStoreOptions) {
    this.name = targets.map((t) => t.address).join(",");
    this.#endpoints = targets.map((t) => new Endpoint(t));
    this.#token = token;
    this.#opts = opts;
    this.#slabPages = opts.slabPages ?? DEFAULT_SLAB_PAGES;
    this.#resuming = opts.resumed === true;
    this.#mover = new SlabMover({
      replicas: opts.replicas,
      slabPages: this.#slabPages,
      slabs: this.#slabs,
      closed: () => this.#closed,
      pickPeer: (excluded) => this.#pickPeer(excluded),
      allocOn: (ep, slab) => this.#allocOn(ep, slab),
      readFromAny: (index, offsets, keys) => this.#readFromAny(index, offsets, keys),
      call: (ep, type, ...parts) => this.#call(ep, type, ...parts),
    });
    this.#sessionName = this.#resuming
      ? opts.namespace
      : `${opts.namespace}/${
        Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) =>
          b.toString(16).padStart(2, "0"))
          .join("")
      }`;
  }

  /** The session name the peers know this store by: with it, a new pager takes the session over. */
  get namespace(): string {
    return this.#sessionName;
  }

  /**
   * Takes over a killed pager's session (opened with its session name, see
   * `StoreOptions.resumed`): asks every peer which slabs it holds for it and
   * marks `keys` present in them. Throws with one line if a peer cannot be
   * asked, or a key's slab is nowhere (its grace time ran out): those pages
   * would be lost. One replica only: which replica missed a write died with
   * that pager.
   */
  async resume(keys: Uint32Array): Promise<void> {
    if (this.#opts.replicas > 1) {
      throw new Error(
        "a killed pager's pages on peers with --replicas above 1 cannot be recovered yet",
      );
    }
    const down = this.#endpoints.filter((ep) => !ep.live);
    if (down.length > 0) {
      throw new Error(
        `peer ${down[0].target.address} cannot be asked which slabs it holds (${
          down[0].lastError ?? "down"
        })`,
      );
    }
    const lists = await Promise.all(this.#endpoints.map(async (ep) => ({
      ep,
      slabs: parseList(await this.#call(ep, MsgType.LIST, new Uint8Array(0))),
    })));
    const rebuilt = rebuildSession(lists, keys, this.#slabPages);
    if (rebuilt.missing > 0) {
      throw new Error(
        `${rebuilt.missing} page(s) are on no peer any more (the peers' --grace ran out?)`,
      );
    }
    for (const [index, slab] of rebuilt.slabs) this.#slabs.set(index, slab);
    this.#nextSlabId = rebuilt.nextId;
    this.#allocGeneration = rebuilt.nextGeneration;
    for (const { ep, id } of rebuilt.extra) {
      await this.#call(ep, MsgType.FREE, u32s(id)).catch(() => {});
    }
    this.#resuming = false;
  }

  async connectAll(): Promise<void> {
    const results = await Promise.allSettled(this.#endpoints.map((ep) => this.#connect(ep)));
    const errors = results.flatMap((
      r,
    ) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
    const tokenError = errors.find((m) => /token/.test(m));
    if (tokenError || errors.length === this.#endpoints.length) {
      await this.#shutdownConnections();
      throw new StoreUnavailableError(
        tokenError ?? (errors.length === 1 ? errors[0] : `no peer reachable: ${errors.join("; ")}`),
      );
    }
    for (const ep of this.#endpoints) {
      if (!ep.live) {
        log.warn("peer {peer} is not reachable yet ({error}); retrying in the background", {
          peer: ep.target.address,
          error: ep.lastError,
        });
        this.#scheduleReconnect(ep);
      }
    }
    if (this.#opts.replicas === 1) {
      log.warn(
        "--replicas 1: losing a peer loses the pages it holds (use --replicas 2 to survive a peer loss)",
      );
    }
  }

  // ---------------------------------------------------------------- PageStore

  async put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    this.#checkOpen();
    const groups = this.#groupBySlab(keys);
    await Promise.all(
      [...groups].map(([slabIndex, idx]) => this.#putSlab(slabIndex, idx, keys, pages)),
    );
  }

  async get(keys: Uint32Array, into: Uint8Array): Promise<void> {
    this.#checkOpen();
    const missing: number[] = [];
    for (const key of keys) {
      const slab = this.#slabs.get(Math.floor(key / this.#slabPages));
      if (this.#lost.has(key) || !slab || slab.present[key % this.#slabPages] === 0) {
        missing.push(key);
      }
    }
    if (missing.length > 0) {
      throw new PageLostError(
        Uint32Array.from(missing),
        "no replica holds them (peer lost or never stored)",
      );
    }
    if (keys.length === 1) {
      // The fault path: one page, no grouping.
      const slabIndex = Math.floor(keys[0] / this.#slabPages);
      const data = await this.#readFromAny(slabIndex, u32s(keys[0] % this.#slabPages), [keys[0]]);
      into.set(data.subarray(0, PAGE_SIZE));
      return;
    }
    const groups = this.#groupBySlab(keys);
    await Promise.all(
      [...groups].map(([slabIndex, idx]) => this.#getSlab(slabIndex, idx, keys, into)),
    );
  }

  async delete(keys: Uint32Array): Promise<void> {
    // Bookkeeping, except that a slab left with no page is handed back to its
    // peers: when a target exits, the pager deletes every key it had, and its
    // slabs are freed at once instead of at the end of the peers' grace time.
    const emptied = new Set<Slab>();
    for (const key of keys) {
      this.#lost.delete(key);
      const slab = this.#slabs.get(Math.floor(key / this.#slabPages));
      const off = key % this.#slabPages;
      if (slab && slab.present[off] === 1) {
        slab.present[off] = 0;
        if (--slab.presentCount === 0) emptied.add(slab);
      }
    }
    if (this.#closed) return;
    await Promise.all([...emptied].map((slab) => this.#freeIfEmpty(slab)));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#mover.settled();
    await Promise.allSettled(
      this.#endpoints.filter((ep) => ep.live).map((ep) => ep.conn!.request(MsgType.RESET)),
    );
    await this.#shutdownConnections();
    this.#slabs.clear();
  }

  health(): StoreHealth {
    let pages = 0;
    let deficit = 0;
    const perEndpoint = new Map<Endpoint, number>();
    for (const slab of this.#slabs.values()) {
      pages += slab.presentCount;
      const good = slab.replicas.filter((ep) => ep.state === "up").length;
      if (good < this.#opts.replicas) deficit += slab.presentCount;
      else deficit += slab.laggingPages;
      for (const ep of slab.replicas) {
        perEndpoint.set(ep, (perEndpoint.get(ep) ?? 0) + slab.presentCount);
      }
    }
    const endpoints = this.#endpoints.map((ep) =>
      ep.latency.health(ep.target.address, ep.live ? ep.state : "down", perEndpoint.get(ep) ?? 0)
    );
    return {
      pages, // lost keys are held nowhere, but they are the worst deficit of all
      replicationDeficit: deficit + this.#lost.size,
      endpoints,
    };
  }

  // ------------------------------------------------------------- data path

  #groupBySlab(keys: Uint32Array): Map<number, number[]> {
    const groups = new Map<number, number[]>();
    for (let i = 0; i < keys.length; i++) {
      const s = Math.floor(keys[i] / this.#slabPages);
      let g = groups.get(s);
      if (!g) groups.set(s, g = []);
      g.push(i);
    }
    return groups;
  }

  async #putSlab(
    slabIndex: number,
    idx: number[],
    keys: Uint32Array,
    pages: Uint8Array,
  ): Promise<void> {
    for (let attempt = 0;; attempt++) {
      const slab = await this.#place(slabIndex);
      const ok = await slab.locked(async () => {
        if (this.#slabs.get(slabIndex) !== slab) return false; // lost while we waited
        for (let at = 0; at < idx.length; at += MAX_PAGES_PER_REQUEST) {
          const chunk = idx.slice(at, at + MAX_PAGES_PER_REQUEST);
          const offsets = u32s(...chunk.map((i) => keys[i] % this.#slabPages));
          const data = new Uint8Array(chunk.length * PAGE_SIZE);
          chunk.forEach((i, j) =>
            data.set(pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), j * PAGE_SIZE)
          );
          const head = u32s(slab.id, chunk.length);
          const targets = [...slab.replicas, ...slab.syncing];
          const writes = targets.map((ep) => this.#call(ep, MsgType.WRITE, head, offsets, data));
          // The write completes once one replica confirmed and the others had
          // their hedge delay more: a frozen peer costs it milliseconds, not the
          // request timeout. A late replica serves no read of these pages until
          // it confirms (or fails, and is dropped), so it never serves them stale.
          const graceMs = Math.max(...targets.map((ep) => ep.hedgeDelayMs()));
          const results = await allOnTime(writes, graceMs);
          results.forEach((r, j) => {
            if (r.status === "rejected") {
              this.#dropReplica(slab, targets[j], (r.reason as Error).message);
            } else if (r.status === "late") {
              const ep = targets[j];
              this.#suspect(ep, "a write");
              const offs = chunk.map((i) => keys[i] % this.#slabPages);
              slab.markLagging(ep, offs, writes[j], (e) => {
                this.#dropReplica(slab, ep, (e as Error).message);
              });
            }
          });
          if (
            !results.some((r, j) => r.status === "fulfilled" && slab.replicas.includes(targets[j]))
          ) {
            return false;
          }
          for (const i of chunk) {
            const off = keys[i] % this.#slabPages;
            this.#lost.delete(keys[i]);
            if (slab.present[off] === 0) {
              slab.present[off] = 1;
              slab.presentCount++;
            }
          }
        }
        return true;
      });
      if (ok) return;
      if (attempt >= 2) {
        throw new StoreUnavailableError(
          `no peer confirmed the write to slab ${slabIndex}: peers are down or full`,
        );
      }
    }
  }

  async #getSlab(
    slabIndex: number,
    idx: number[],
    keys: Uint32Array,
    into: Uint8Array,
  ): Promise<void> {
    for (let at = 0; at < idx.length; at += MAX_PAGES_PER_REQUEST) {
      const chunk = idx.slice(at, at + MAX_PAGES_PER_REQUEST);
      const offsets = u32s(...chunk.map((i) => keys[i] % this.#slabPages));
      const data = await this.#readFromAny(slabIndex, offsets, chunk.map((i) => keys[i]));
      chunk.forEach((i, j) =>
        into.set(data.subarray(j * PAGE_SIZE, (j + 1) * PAGE_SIZE), i * PAGE_SIZE)
      );
    }
  }

  /**
   * Reads from one replica, hedged: when it is late or fails, the next one is
   * asked too and the first answer wins. PageLostError if none can answer.
   */
  async #readFromAny(slabIndex: number, offsets: Uint8Array, keys: number[]): Promise<Uint8Array> {
    const tried = new Set<Endpoint>();
    for (;;) {
      const slab = this.#slabs.get(slabIndex);
      const offs = keys.map((k) => k % this.#slabPages);
      const candidates = slab
        ? this.#readOrder(
          slab.replicas.filter((ep) => !tried.has(ep) && !slab.isLagging(ep, offs)),
        )
        : [];
      if (slab && candidates.length === 0) {
        // Only a replica that was late with the newest write can tell: wait for it.
        const lagging = slab.replicas.find((ep) => !tried.has(ep) && ep.live);
        if (lagging) {
          await slab.caughtUp(lagging);
          continue;
        }
      }
      if (!slab || candidates.length === 0) {
        const lost = keys.filter((k) => this.#lost.has(k) || !slab);
        throw new PageLostError(
          Uint32Array.from(lost.length > 0 ? lost : keys),
          `every replica of slab ${slabIndex} failed`,
        );
      }
      for (const ep of candidates) tried.add(ep);
      const head = u32s(slab.id, keys.length);
      const ask = (ep: Endpoint) =>
        this.#call(ep, MsgType.READ, head, offsets).then((data) => {
          checkReadReply(ep, keys.length, data);
          return data;
        });
      if (candidates.length === 1) {
        // Nobody to hedge with: no timer, no race (the fault path of --replicas 1).
        try {
          return await ask(candidates[0]);
        } catch (e) {
          this.#dropReplica(slab, candidates[0], (e as Error).message);
          continue;
        }
      }
      try {
        return await firstAnswer(
          candidates,
          ask,
          (ep) => ep.hedgeDelayMs(),
          {
            onLate: (ep) => this.#suspect(ep, "a read"),
            onFailure: (ep, e) => this.#dropReplica(slab, ep, (e as Error).message),
          },
        );
      } catch {
        // Every one of them failed (and was dropped): ask replicas added meanwhile, if any.
      }
    }
  }

  /** Live replicas, trusted before suspect, the first choice rotated to spread reads. */
  #readOrder(replicas: Endpoint[]): Endpoint[] {
    const live = replicas.filter((ep) => ep.live);
    const trusted = live.filter((ep) => !ep.suspect);
    if (trusted.length > 1) {
      const first = this.#readRotation++ % trusted.length;
      trusted.push(...trusted.splice(0, first));
    }
    return [...trusted, ...live.filter((ep) => ep.suspect)];
  }

  /** Marks `ep` late: reads ask it last and placements avoid it until it answers again. */
  #suspect(ep: Endpoint, what: string): void {
    if (ep.suspect || ep.state === "down") return;
    ep.suspect = true;
    log.debug("peer {peer} is late answering {what}: asking other replicas first", {
      peer: ep.target.address,
      what,
    });
  }

  /** One request with latency accounting; a lost connection marks the peer down. */
  async #call(ep: Endpoint, type: number, ...parts: Uint8Array[]): Promise<Uint8Array> {
    const conn = ep.conn;
    if (!conn || !conn.alive) {
      throw new ConnectionError("closed", `peer ${ep.target.address} is down`);
    }
    const start = performance.now();
    try {
      const reply = await conn.request(type, ...parts);
      ep.latency.record((performance.now() - start) * 1000);
      if (ep.suspect) {
        ep.suspect = false;
        log.debug("peer {peer} answers again", { peer: ep.target.address });
      }
      return reply;
    } catch (e) {
      if (e instanceof ConnectionError) this.#markDown(ep, e.message);
      throw e;
    }
  }

  /**
   * Frees an empty slab on its peers. Under the slab's lock, so no write is
   * half done; it leaves the slab map before FREE is sent, so a later put
   * places a new slab, whose ALLOC reaches each peer after this FREE.
   */
  #freeIfEmpty(slab: Slab): Promise<void> {
    return slab.locked(async () => {
      if (slab.presentCount !== 0 || this.#slabs.get(slab.index) !== slab || this.#closed) return;
      this.#slabs.delete(slab.index);
      const holders = [...slab.replicas, ...slab.syncing].filter((ep) => ep.live);
      slab.replicas = [];
      slab.syncing = [];
      await Promise.allSettled(holders.map((ep) => this.#call(ep, MsgType.FREE, u32s(slab.id))));
    });
  }

  // ------------------------------------------------------------- placement

  #place(slabIndex: number): Promise<Slab> {
    const existing = this.#slabs.get(slabIndex);
    if (existing) return Promise.resolve(existing);
    let placing = this.#placing.get(slabIndex);
    if (!placing) {
      placing = this.#allocate(slabIndex).finally(() => this.#placing.delete(slabIndex));
      this.#placing.set(slabIndex, placing);
    }
    return placing;
  }

  async #allocate(slabIndex: number): Promise<Slab> {
    const slab = new Slab(slabIndex, this.#nextSlabId++, this.#slabPages);
    const excluded = new Set<Endpoint>();
    while (slab.replicas.length < this.#opts.replicas) {
      const ep = this.#pickPeer(excluded);
      if (!ep) break;
      excluded.add(ep);
      if (await this.#allocOn(ep, slab)) slab.replicas.push(ep);
    }
    if (slab.replicas.length === 0) {
      throw new StoreUnavailableError(
        `no live peer has room for a new slab (${this.#slabPages} pages)`,
      );
    }
    if (slab.replicas.length < this.#opts.replicas) {
      log.warn("slab {slab} placed on {n} peer(s), fewer than --replicas {r}", {
        slab: slabIndex,
        n: slab.replicas.length,
        r: this.#opts.replicas,
      });
      this.#mover.schedule();
    }
    this.#slabs.set(slabIndex, slab);
    return slab;
  }

  /** Where a new replica goes (see {@linkcode pickPeer}). */
  #pickPeer(excluded: Set<Endpoint>): Endpoint | null {
    return pickPeer(this.#endpoints, excluded);
  }

  async #allocOn(ep: Endpoint, slab: Slab): Promise<boolean> {
    const slabId = slab.id;
    // Counted before the first await: the next pick, even in this same tick, sees it.
    // Requests on one connection are answered in order, so a reply's free bytes
    // include this slab and the ones before it, not those still in flight.
    const bytes = this.#slabPages * PAGE_SIZE;
    ep.pendingBytes += bytes;
    try {
      const generation = ++this.#allocGeneration;
      const reply = await this.#call(
        ep,
        MsgType.ALLOC,
        u32s(slabId, this.#slabPages, slab.index, generation),
      );
      ep.freeBytes = decodeStat(reply).freeBytes;
      return true;
    } catch (e) {
      if (e instanceof PeerRequestError) {
        if (e.code === ErrCode.NO_CAPACITY || e.code === ErrCode.QUOTA) ep.freeBytes = 0;
        if (e.code === ErrCode.DRAINING) ep.state = "draining";
        log.warn("peer {peer} refused slab {slab}: {error}", {
          peer: ep.target.address,
          slab: slabId,
          error: e.message,
        });
      }
      return false;
    } finally {
      ep.pendingBytes -= bytes;
    }
  }

  // ------------------------------------------------------ failure handling

  /** Forgets `ep` as a replica of `slab` (a failed write or read there means its copy is unusable). */
  #dropReplica(slab: Slab, ep: Endpoint, reason: string): void {
    const wasReplica = slab.replicas.includes(ep);
    slab.forget(ep);
    if (!wasReplica) return;
    if (ep.live) void this.#call(ep, MsgType.FREE, u32s(slab.id)).catch(() => {});
    if (slab.replicas.length === 0) {
      this.#loseSlab(slab, `its last replica ${ep.target.address} failed: ${reason}`);
    } else this.#mover.schedule();
  }

  #loseSlab(slab: Slab, reason: string): void {
    this.#slabs.delete(slab.index);
    const keys: number[] = [];
    const base = slab.index * this.#slabPages;
    for (let off = 0; off < slab.present.length; off++) {
      if (slab.present[off] === 1) keys.push(base + off);
    }
    if (keys.length === 0) return;
    for (const k of keys) this.#lost.add(k);
    log.error("{n} page(s) of slab {slab} lost: {reason}", {
      n: keys.length,
      slab: slab.index,
      reason,
    });
    try {
      this.#opts.onLoss?.(Uint32Array.from(keys));
    } catch (e) {
      log.error("onLoss callback threw: {error}", { error: (e as Error).message });
    }
  }

  #markDown(ep: Endpoint, reason: string): void {
    if (ep.state === "down" && !ep.conn) return;
    const conn = ep.conn;
    ep.conn = null;
    ep.state = "down";
    ep.lastError = reason;
    if (this.#closed) return;
    void conn?.close();
    log.warn("peer {peer} is down ({reason}); serving from other replicas and re-replicating", {
      peer: ep.target.address,
      reason,
    });
    for (const slab of [...this.#slabs.values()]) {
      if (slab.replicas.includes(ep) || slab.syncing.includes(ep)) {
        this.#dropReplica(slab, ep, reason);
      }
    }
    this.#scheduleReconnect(ep);
  }

  async #connect(ep: Endpoint): Promise<void> {
    let conn: PeerConnection;
    try {
      conn = await PeerConnection.open(
        ep.target,
        this.#token,
        this.#sessionName,
        this.#opts.connection,
      );
    } catch (e) {
      ep.lastError = (e as Error).message;
      throw e;
    }
    if (this.#closed) {
      await conn.close();
      return;
    }
    ep.conn = conn;
    ep.freeBytes = conn.stat.freeBytes;
    ep.state = conn.stat.draining ? "draining" : "up";
    conn.onLost = (reason) => this.#markDown(ep, reason);
    conn.onEvict = () => this.#onDrain(ep);
    conn.onReclaim = (ids) => this.#onReclaim(ep, ids);
    conn.onProbe = (stat) => {
      ep.freeBytes = stat.freeBytes;
    };
    if (conn.stat.sessionSlabs > 0) {
      // Slabs left from before a disconnect: we already gave them up (their
      // copies may be stale), so free them rather than wait for the grace time.
      const held = [...this.#slabs.values()].some((s) => s.replicas.includes(ep));
      if (!held && !this.#resuming) await conn.request(MsgType.RESET).catch(() => {});
    }
    if (ep.state === "draining") this.#onDrain(ep);
  }

  #scheduleReconnect(ep: Endpoint): void {
    if (this.#closed || ep.reconnectTimer !== null) return;
    ep.reconnectTimer = setTimeout(async () => {
      ep.reconnectTimer = null;
      if (this.#closed) return;
      try {
        await this.#connect(ep);
        if (this.#closed) return;
        log.info("peer {peer} is back ({state})", { peer: ep.target.address, state: ep.state });
        this.#mover.schedule();
      } catch {
        // Say once why a peer stays refused (e.g. an impostor on its address), not every retry.
        if (ep.lastError !== ep.reportedError) {
          ep.reportedError = ep.lastError;
          log.warn("peer {peer} cannot be used: {error}", {
            peer: ep.target.address,
            error: ep.lastError,
          });
        }
        this.#scheduleReconnect(ep);
      }
    }, this.#opts.reconnectMs ?? 1000);
  }

  #onDrain(ep: Endpoint): void {
    if (ep.state === "up") {
      log.info("peer {peer} is draining: moving our slabs away", { peer: ep.target.address });
    }
    if (ep.state !== "down") ep.state = "draining";
    this.#mover.schedule();
  }

  /** A partial drain: `ep` wants the slabs `ids` back and keeps lending the rest. */
  #onReclaim(ep: Endpoint, ids: number[]): void {
    const wanted = new Set(ids);
    let n = 0;
    for (const slab of this.#slabs.values()) {
      if (wanted.has(slab.id) && slab.replicas.includes(ep)) {
        slab.leaving.add(ep);
        n++;
      }
    }
    log.info("peer {peer} asked for {n} slab(s) back: moving them to other peers", {
      peer: ep.target.address,
      n,
    });
    this.#mover.schedule();
  }

  // ------------------------------------------------------------- lifecycle

  /** Sets how pages of a slab nobody else can hold go home (see {@linkcode PageStore.setPullHome}). */
  setPullHome(pull: (keys: Uint32Array) => Promise<void>): void {
    this.#mover.pullHome = pull;
  }

  #checkOpen(): void {
    if (this.#closed) throw new StoreUnavailableError("the peer store is closed");
  }

  async #shutdownConnections(): Promise<void> {
    this.#closed = true;
    this.#mover.stop();
    for (const ep of this.#endpoints) {
      if (ep.reconnectTimer !== null) clearTimeout(ep.reconnectTimer);
      ep.reconnectTimer = null;
    }
    await Promise.allSettled(this.#endpoints.map((ep) => ep.conn?.close()));
    for (const ep of this.#endpoints) {
      ep.conn = null;
      ep.state = "down";
    }
  }
}
