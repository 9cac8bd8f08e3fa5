/**
 * `rdma://host:port`: pages live in slabs of peers' memory that this process
 * reads and writes with one-sided RDMA (no remote CPU on the data path), in the
 * manner of Infiniswap. Each peer lends slabs over the TCP control connection
 * (see `rdma/handshake.ts`); the key -> (slab, page) map lives here only.
 *
 * Data path: a page moves through a registered staging buffer; `get` posts
 * RDMA READs into it and `put` copies into it then posts RDMA WRITEs, many
 * work requests per `ibv_post_send` and many in flight, and one completion
 * queue shared by all peers is polled in batches, sleeping on its completion
 * channel when empty. Any error completion means the queue pair is in the
 * error state: that peer is failed as a whole and its pages count as gone
 * from it (other replicas keep serving).
 *
 * Tested on soft-RoCE (rdma_rxe) in a QEMU guest (`test/rdma_guest_test.ts`),
 * never on RDMA hardware. On machines without a device, the store's logic
 * (batching, flow control, replicas, peer failure, slab requests and drains)
 * is also tested against a simulated provider called through the same ops
 * table (`test/rdma_test.ts`).
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  addr,
  IBV,
  IBV_SEND_WR,
  IBV_SGE,
  IBV_WC,
  type MemoryRegion,
  type Ptr,
  ptr,
} from "../ffi/verbs.ts";
import {
  closeRdmaDevice,
  deviceVerbs,
  mapAnonymous,
  openRdmaDevice,
  randomPsn,
  RdmaUnavailable,
  type StoreVerbs,
  unmap,
} from "./rdma/device.ts";
import { controlConnector } from "./rdma/control.ts";
import { readSecretFile } from "./token.ts";
import { RDMA_ERROR, type RdmaControlChannel, type SlabGrant } from "./rdma/handshake.ts";
import { LatencyWindow } from "./kit.ts";
import {
  PAGE_SIZE,
  PageLostError,
  type PageStore,
  type StoreHealth,
  type StoreOptions,
  StoreUnavailableError,
} from "./store.ts";

const log = getLogger(["remora", "rdma"]);

/** Options of {@linkcode openRdmaStore}. */
export interface RdmaStoreOptions extends StoreOptions {
  /** `required`: fail when RDMA cannot be used; `auto`: fall back to TCP with a notice. */
  rdma: "required" | "auto";
  /** Opens the TCP store for the same peers (`tcp://` URLs) when falling back. */
  tcpFallback: (urls: string[]) => Promise<PageStore>;
  /**
   * Opens the authenticated control connection to a peer. Default: the TCP
   * peer protocol to the same host:port, authenticated with `tokenFile`
   * (`rdma/control.ts`); tests pass their own.
   */
  connectControl?: (url: string) => Promise<RdmaControlChannel>;
  /** Local device name, or `auto` (default): the first with an active port. */
  device?: string;
  /** Local port (default 1). */
  port?: number;
  /** GID index for RoCE (default 0). */
  gidIndex?: number;
  /** Slabs asked of each peer at connect time (default 4). */
  initialSlabs?: number;
}

/** Rewrites `rdma://host:port` to `tcp://host:port`. */
export function rdmaToTcp(url: string): string {
  return url.replace(/^rdma:\/\//, "tcp://");
}

/**
 * Opens an RDMA store over `urls` (`rdma://host:port` each). With no usable
 * RDMA (no kernel support, no device, a peer without a device, no control
 * plane) it rejects with a one-line {@linkcode StoreUnavailableError} naming
 * the cause, or in `auto` mode logs a notice and returns
 * `tcpFallback(urls with rdma:// -> tcp://)`.
 */
export async function openRdmaStore(
  urls: string[],
  opts: RdmaStoreOptions,
): Promise<PageStore> {
  for (const u of urls) {
    if (!/^rdma:\/\/[^/\s]+:\d+$/.test(u)) {
      throw new StoreUnavailableError(`"${u}" is not rdma://host:port`);
    }
  }
  if (urls.length === 0) throw new StoreUnavailableError("rdma:// needs at least one peer");
  if (opts.replicas > urls.length) {
    throw new StoreUnavailableError(
      `--replicas ${opts.replicas} needs at least ${opts.replicas} peers, got ${urls.length}`,
    );
  }
  const unavailable = (cause: string): Promise<PageStore> => {
    const tcp = urls.map(rdmaToTcp);
    if (opts.rdma === "auto") {
      log.warn(`RDMA unavailable: ${cause}; falling back to ${tcp.join(",")}`);
      return opts.tcpFallback(tcp);
    }
    throw new StoreUnavailableError(
      `RDMA unavailable: ${cause}; use ${tcp.join(",")} instead (or --rdma auto)`,
    );
  };
  let dev;
  try {
    dev = openRdmaDevice({
      device: opts.device ?? "auto",
      port: opts.port,
      gidIndex: opts.gidIndex,
    });
  } catch (e) {
    if (e instanceof RdmaUnavailable) return unavailable(e.message);
    throw e;
  }
  let connectControl = opts.connectControl;
  if (!connectControl) {
    try {
      const token = opts.tokenFile ? await readSecretFile(opts.tokenFile) : null;
      connectControl = controlConnector(token, opts.namespace);
    } catch (e) {
      closeRdmaDevice(dev);
      throw new StoreUnavailableError(e instanceof Error ? e.message : String(e));
    }
  }
  try {
    return await connectRdmaStore(urls, opts, deviceVerbs(dev), connectControl);
  } catch (e) {
    if (e instanceof PeerLacksRdma) return unavailable(e.message);
    throw e;
  }
}

/**
 * Connects an RDMA store to every peer over an explicit verbs backend: the
 * real device ({@linkcode openRdmaStore} does this), or a simulated provider
 * in tests. Rejects with {@linkcode StoreUnavailableError}; owns `verbs`
 * from here on (closes it on failure).
 */
export async function connectRdmaStore(
  urls: string[],
  opts: StoreOptions & { initialSlabs?: number },
  verbs: StoreVerbs,
  connectControl: (url: string) => Promise<RdmaControlChannel>,
): Promise<PageStore> {
  const store = new RdmaStore(verbs, urls, opts);
  try {
    await store.connect(connectControl);
  } catch (e) {
    await store.close();
    if (e instanceof PeerLacksRdma || e instanceof StoreUnavailableError) throw e;
    throw new StoreUnavailableError(
      `RDMA connect failed: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  return store;
}

/** A peer answered HELLO with NO_DEVICE. */
class PeerLacksRdma extends Error {}

/** How many pages the staging buffer holds (the most pages in flight at once). */
const STAGING_PAGES = 512;
/** Most work requests chained into one `ibv_post_send`. */
const POST_BATCH = 64;
/** Most completions taken per `poll_cq`. */
const POLL_BATCH = 32;
/** Send queue depth per peer (capped by the device). */
const SQ_DEPTH = 256;
/** How long a peer may take to answer HELLO or a slab request. */
const CONTROL_TIMEOUT_MS = 10_000;

interface Slab {
  peer: Peer;
  id: number;
  addr: bigint;
  rkey: number;
  free: number[];
  /** page index -> key stored there, to know what to move when draining. */
  owners: Map<number, number>;
  draining: boolean;
}

interface Loc {
  slab: Slab;
  page: number;
}

/** One RDMA READ or WRITE of one page, from posting to completion. */
interface Work {
  id: number;
  peer: Peer;
  opcode: number;
  local: number;
  remote: bigint;
  rkey: number;
  posted: number;
  done: (ok: boolean) => void;
}

interface Peer {
  url: string;
  state: "up" | "down" | "draining";
  channel: RdmaControlChannel;
  qp?: Ptr;
  sqDepth: number;
  inflight: number;
  queue: Work[];
  slabs: Slab[];
  latency: LatencyWindow;
  grantWaiter?: (slabs: SlabGrant[] | null) => void;
  slabRequest?: Promise<boolean>;
}

class RdmaStore implements PageStore {
  readonly name: string;
  readonly #v: StoreVerbs;
  readonly #opts: StoreOptions & { initialSlabs?: number };
  readonly #peers: Peer[];
  readonly #keys = new Map<number, Loc[]>();
  /** Bumped on every put, so that a slab move never installs stale bytes. */
  readonly #versions = new Map<number, number>();
  readonly #lost = new Set<number>();
  #channel?: Ptr;
  #cq?: Ptr;
  #staging?: MemoryRegion;
  #stagingBytes?: Uint8Array;
  readonly #freeSlots: number[] = [];
  readonly #slotWaiters: ((slot: number) => void)[] = [];
  readonly #pending = new Map<number, Work>();
  #nextId = 1;
  /** True while the completion loop runs; set and cleared synchronously. */
  #pumping = false;
  /** Settles when the current completion loop ends (close waits for it). */
  #pumpDone: Promise<void> = Promise.resolve();
  #flushScheduled = false;
  #closed = false;
  // Scratch for post_send and poll_cq: native-addressable, never moved by V8.
  // The provider turns the WR chain into WQEs inside post_send and keeps no
  // pointer to it (the usual idiom posts WRs from the stack), so one chain is
  // reused for every post. The DATA buffers are another matter: ibv_post_send(3)
  // says they may be reused only after the completion is polled, which is why
  // a staging slot is released only when its work completes.
  readonly #wrs = new Uint8Array(POST_BATCH * IBV_SEND_WR.size);
  readonly #sges = new Uint8Array(POST_BATCH * IBV_SGE.size);
  readonly #wcs = new Uint8Array(POLL_BATCH * IBV_WC.size);
  readonly #badWr = new Uint8Array(8);

  constructor(verbs: StoreVerbs, urls: string[], opts: StoreOptions & { initialSlabs?: number }) {
    this.name = urls.join(",");
    this.#v = verbs;
    this.#opts = opts;
    const sqDepth = Math.min(SQ_DEPTH, verbs.maxQpWr);
    this.#peers = urls.map((url) => ({
      url,
      state: "down",
      channel: { send: () => Promise.resolve(), receive: () => Promise.resolve(null), close() {} },
      sqDepth,
      inflight: 0,
      queue: [],
      slabs: [],
      latency: new LatencyWindow(),
    }));
  }

  /** Creates the local resources, then one QP per peer through its control channel. */
  async connect(connectControl: (url: string) => Promise<RdmaControlChannel>): Promise<void> {
    const v = this.#v;
    const bytes = STAGING_PAGES * PAGE_SIZE;
    const base = mapAnonymous(bytes);
    try {
      // LOCAL_WRITE: RDMA READ responses land in this buffer.
      this.#staging = v.regMr(base, bytes, IBV.IBV_ACCESS_LOCAL_WRITE);
    } catch (e) {
      unmap(base, bytes);
      throw e;
    }
    this.#stagingBytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr(base), bytes));
    for (let i = STAGING_PAGES - 1; i >= 0; i--) this.#freeSlots.push(i);
    this.#channel = v.createCompChannel();
    // Every WR is signaled and at most sqDepth are outstanding per QP, so the
    // CQ can never overrun (an overrun makes it unusable: ibv_poll_cq(3)).
    const cqe = Math.min(v.maxCqe, this.#peers.reduce((n, p) => n + p.sqDepth, 0));
    this.#cq = v.createCq(cqe, this.#channel);
    await Promise.all(this.#peers.map((p) => this.#connectPeer(p, connectControl)));
  }

  async #connectPeer(
    p: Peer,
    connectControl: (url: string) => Promise<RdmaControlChannel>,
  ): Promise<void> {
    const v = this.#v;
    p.channel = await connectControl(p.url);
    const q = v.createRcQp(this.#cq!, { maxSendWr: p.sqDepth, maxRecvWr: 1 });
    p.qp = q.qp;
    // The client only initiates: nobody may READ or WRITE its memory.
    v.qpToInit(q.qp);
    const psn = randomPsn();
    await p.channel.send({
      type: "hello",
      qp: v.localEndpoint(q.qpNum, psn),
      slabsWanted: this.#opts.initialSlabs ?? 4,
      namespace: this.#opts.namespace,
    });
    const m = await withTimeout(p.channel.receive(), `${p.url} did not answer the RDMA hello`);
    if (m === null) throw new StoreUnavailableError(`${p.url} closed the RDMA control connection`);
    if (m.type === "error") {
      if (m.code === RDMA_ERROR.NO_DEVICE) {
        throw new PeerLacksRdma(`peer ${p.url} has no RDMA device (${m.message})`);
      }
      throw new StoreUnavailableError(`${p.url} refused RDMA: ${m.message}`);
    }
    if (m.type !== "accept") throw new StoreUnavailableError(`${p.url} sent ${m.type}, not accept`);
    v.qpToRtr(q.qp, m.qp);
    v.qpToRts(q.qp, psn, m.qp);
    this.#addSlabs(p, m.slabs);
    p.state = "up";
    this.#controlLoop(p);
  }

  #addSlabs(p: Peer, grants: SlabGrant[]): void {
    for (const g of grants) {
      const pages = g.length / PAGE_SIZE;
      const free: number[] = [];
      for (let i = pages - 1; i >= 0; i--) free.push(i);
      p.slabs.push({
        peer: p,
        id: g.slabId,
        addr: g.addr,
        rkey: g.rkey,
        free,
        owners: new Map(),
        draining: false,
      });
    }
  }

  /** Reads control messages from one peer until it closes: grants and drains. */
  async #controlLoop(p: Peer): Promise<void> {
    try {
      for (;;) {
        const m = await p.channel.receive();
        if (m === null) break;
        if (m.type === "slab-grant") {
          p.grantWaiter?.(m.slabs);
        } else if (m.type === "slab-drain") {
          this.#drainSlab(p, m.slabId).catch((e) =>
            log.error(`draining slab ${m.slabId} of ${p.url} failed: ${e}`)
          );
        } else if (m.type === "error") {
          log.warn(`${p.url}: ${m.message}`);
        } else {
          throw new Error(`unexpected ${m.type}`);
        }
      }
      if (!this.#closed) this.#failPeer(p, "control connection closed");
    } catch (e) {
      if (!this.#closed) {
        this.#failPeer(p, `control connection: ${e instanceof Error ? e.message : e}`);
      }
    }
  }

  // ---- the data path -------------------------------------------------------

  /** Posts one page READ or WRITE; resolves true on IBV_WC_SUCCESS. */
  #rdma(loc: Loc, opcode: number, slot: number): Promise<boolean> {
    const peer = loc.slab.peer;
    if (peer.state === "down") return Promise.resolve(false);
    return new Promise((done) => {
      peer.queue.push({
        id: this.#nextId++,
        peer,
        opcode,
        local: this.#staging!.addr + slot * PAGE_SIZE,
        remote: loc.slab.addr + BigInt(loc.page * PAGE_SIZE),
        rkey: loc.slab.rkey,
        posted: 0,
        done,
      });
      if (!this.#flushScheduled) {
        // Everything a get/put enqueues in one turn goes out in few post_sends.
        this.#flushScheduled = true;
        queueMicrotask(() => {
          this.#flushScheduled = false;
          for (const q of this.#peers) this.#flush(q);
        });
      }
    });
  }

  /** Posts queued work as chains of up to POST_BATCH, within the send queue depth. */
  #flush(p: Peer): void {
    const ops = this.#v.ops;
    const wrBase = addr(Deno.UnsafePointer.of(this.#wrs)!);
    const sgeBase = addr(Deno.UnsafePointer.of(this.#sges)!);
    const wr = new DataView(this.#wrs.buffer);
    const sge = new DataView(this.#sges.buffer);
    const W = IBV_SEND_WR.fields;
    const S = IBV_SGE.fields;
    while (p.state !== "down" && p.queue.length > 0 && p.inflight < p.sqDepth) {
      const n = Math.min(POST_BATCH, p.queue.length, p.sqDepth - p.inflight);
      const batch = p.queue.splice(0, n);
      for (let i = 0; i < n; i++) {
        const w = batch[i];
        const o = i * IBV_SEND_WR.size;
        const s = i * IBV_SGE.size;
        sge.setBigUint64(s + S.addr[0], BigInt(w.local), true);
        sge.setUint32(s + S.length[0], PAGE_SIZE, true);
        sge.setUint32(s + S.lkey[0], this.#staging!.lkey, true);
        wr.setBigUint64(o + W.wr_id[0], BigInt(w.id), true);
        wr.setBigUint64(
          o + W.next[0],
          i + 1 < n ? BigInt(wrBase + o + IBV_SEND_WR.size) : 0n,
          true,
        );
        wr.setBigUint64(o + W.sg_list[0], BigInt(sgeBase + s), true);
        wr.setInt32(o + W.num_sge[0], 1, true);
        wr.setUint32(o + W.opcode[0], w.opcode, true);
        // Every WR signaled: each page settles on its own completion, and an
        // error completion names exactly the page that failed.
        wr.setUint32(o + W.send_flags[0], IBV.IBV_SEND_SIGNALED, true);
        wr.setBigUint64(o + W["wr.rdma.remote_addr"][0], w.remote, true);
        wr.setUint32(o + W["wr.rdma.rkey"][0], w.rkey, true);
      }
      const now = performance.now();
      const bad = new DataView(this.#badWr.buffer);
      bad.setBigUint64(0, BigInt(wrBase), true); // "nothing posted" unless the provider says more
      const rc = ops.postSend(p.qp!, ptr(wrBase), this.#badWr);
      // On failure WRs before *bad_wr were posted and will complete; the rest were not.
      const badIndex = Math.round((Number(bad.getBigUint64(0, true)) - wrBase) / IBV_SEND_WR.size);
      const posted = rc === 0 ? n : Math.max(0, Math.min(n, badIndex));
      for (let i = 0; i < posted; i++) {
        batch[i].posted = now;
        this.#pending.set(batch[i].id, batch[i]);
      }
      p.inflight += posted;
      if (rc !== 0) {
        for (let i = posted; i < n; i++) batch[i].done(false);
        this.#failPeer(p, `ibv_post_send failed: errno ${rc}`);
      }
      if (posted > 0) this.#pump();
    }
  }

  /**
   * Starts the completion loop if it is not running. Exactly one loop may
   * exist: two would both sleep in ibv_get_cq_event, and a one-shot arm wakes
   * only one of them.
   */
  #pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    this.#pumpDone = this.#pumpLoop().catch((e) => {
      // The completion channel broke: nothing outstanding can complete now.
      for (const p of this.#peers) this.#failPeer(p, `completion channel: ${e}`);
      for (const w of this.#pending.values()) w.done(false);
      this.#pending.clear();
    });
  }

  /**
   * Polls the CQ in batches; when it is empty but work is outstanding, arms
   * it (req_notify_cq), polls once more to close the race with a completion
   * that arrived before arming, then sleeps on the channel (ibv_poll_cq(3),
   * ibv_req_notify_cq(3), ibv_get_cq_event(3)).
   */
  async #pumpLoop(): Promise<void> {
    const cq = this.#cq!;
    const ops = this.#v.ops;
    try {
      while (this.#pending.size > 0) {
        if (this.#drainCq() > 0) continue;
        const rc = ops.reqNotifyCq(cq, 0);
        if (rc !== 0) throw new Error(`ibv_req_notify_cq failed: errno ${rc}`);
        if (this.#drainCq() > 0) continue;
        const fired = await this.#v.getCqEvent(this.#channel!);
        this.#v.ackCqEvents(fired, 1);
      }
    } finally {
      // Cleared in the same turn as the last check of #pending, so that work
      // posted afterwards always finds no loop running and starts one.
      this.#pumping = false;
    }
  }

  /** Takes every available completion; returns how many. */
  #drainCq(): number {
    const ops = this.#v.ops;
    const wcPtr = Deno.UnsafePointer.of(this.#wcs)!;
    const dv = new DataView(this.#wcs.buffer);
    const C = IBV_WC.fields;
    let total = 0;
    for (;;) {
      const n = ops.pollCq(this.#cq!, POLL_BATCH, wcPtr);
      if (n < 0) {
        for (const p of this.#peers) this.#failPeer(p, `ibv_poll_cq failed (${n})`);
        // A broken CQ completes nothing more: settle everything outstanding.
        for (const w of this.#pending.values()) w.done(false);
        this.#pending.clear();
        return total + 1;
      }
      const now = performance.now();
      for (let i = 0; i < n; i++) {
        const o = i * IBV_WC.size;
        const id = Number(dv.getBigUint64(o + C.wr_id[0], true));
        const status = dv.getUint32(o + C.status[0], true);
        const w = this.#pending.get(id);
        if (!w) continue;
        this.#pending.delete(id);
        w.peer.inflight--;
        if (status === IBV.IBV_WC_SUCCESS) {
          w.peer.latency.record((now - w.posted) * 1000);
          w.done(true);
        } else {
          if (status !== IBV.IBV_WC_WR_FLUSH_ERR) {
            this.#failPeer(
              w.peer,
              `work completion: ${this.#v.wcStatusStr(status)} (status ${status})`,
            );
          }
          w.done(false);
        }
      }
      total += n;
      if (n < POLL_BATCH) break;
    }
    for (const p of this.#peers) if (p.queue.length > 0) this.#flush(p);
    return total;
  }

  /**
   * A QP error is a peer failure: move the QP to ERR so outstanding work
   * flushes, drop every location there, and report keys left with no copy.
   */
  #failPeer(p: Peer, reason: string): void {
    if (p.state === "down") return;
    p.state = "down";
    log.error(`RDMA peer ${p.url} failed: ${reason}`);
    if (p.qp) this.#v.qpToErr(p.qp);
    for (const w of p.queue.splice(0)) w.done(false);
    p.channel.close();
    const lost: number[] = [];
    for (const [key, locs] of this.#keys) {
      const live = locs.filter((l) => l.slab.peer !== p);
      if (live.length === locs.length) continue;
      if (live.length === 0) {
        this.#keys.delete(key);
        this.#lost.add(key);
        lost.push(key);
      } else {
        this.#keys.set(key, live);
      }
    }
    p.slabs = [];
    if (lost.length > 0) this.#opts.onLoss?.(Uint32Array.from(lost));
  }

  async #slot(): Promise<number> {
    const s = this.#freeSlots.pop();
    if (s !== undefined) return s;
    return await new Promise((resolve) => this.#slotWaiters.push(resolve));
  }

  #release(slot: number): void {
    const waiter = this.#slotWaiters.shift();
    if (waiter) waiter(slot);
    else this.#freeSlots.push(slot);
  }

  #slotBytes(slot: number): Uint8Array {
    return this.#stagingBytes!.subarray(slot * PAGE_SIZE, (slot + 1) * PAGE_SIZE);
  }

  // ---- placement -----------------------------------------------------------

  /** A free page on an up peer not in `exclude`, asking peers for slabs when all are full. */
  async #allocate(key: number, exclude: Set<Peer>): Promise<Loc | null> {
    // Ends: every round either finds a page or gets a slab from a peer, and
    // peers have finite capacity (they answer an empty grant when full).
    for (;;) {
      let best: Slab | undefined;
      let bestFree = 0;
      for (const p of this.#peers) {
        if (p.state !== "up" || exclude.has(p)) continue;
        for (const s of p.slabs) {
          if (!s.draining && s.free.length > bestFree) [best, bestFree] = [s, s.free.length];
        }
      }
      if (best) {
        const page = best.free.pop()!;
        best.owners.set(page, key);
        return { slab: best, page };
      }
      // Ask the least loaded peer first, the next one only if it is full.
      const used = (p: Peer) => p.slabs.reduce((n, s) => n + s.owners.size, 0);
      const asks = this.#peers.filter((p) => p.state === "up" && !exclude.has(p))
        .sort((a, b) => used(a) - used(b));
      let granted = false;
      for (const p of asks) if ((granted = await this.#requestSlab(p))) break;
      if (!granted) return null;
    }
  }

  /** One SLAB_REQUEST at a time per peer; resolves whether a slab came. */
  #requestSlab(p: Peer): Promise<boolean> {
    p.slabRequest ??= (async () => {
      const answer = new Promise<SlabGrant[] | null>((resolve) => p.grantWaiter = resolve);
      await p.channel.send({ type: "slab-request", count: 1 });
      const slabs = await withTimeout(answer, `${p.url} did not answer a slab request`)
        .catch(() => null);
      p.grantWaiter = undefined;
      if (!slabs || slabs.length === 0 || p.state !== "up") return false;
      this.#addSlabs(p, slabs);
      return true;
    })().catch(() => false).finally(() => p.slabRequest = undefined);
    return p.slabRequest;
  }

  #freeLoc(l: Loc): void {
    l.slab.owners.delete(l.page);
    l.slab.free.push(l.page);
  }

  /** Moves every page off a slab the peer wants back, then releases it. */
  async #drainSlab(p: Peer, slabId: number): Promise<void> {
    const slab = p.slabs.find((s) => s.id === slabId);
    if (!slab) {
      await p.channel.send({ type: "slab-released", slabId });
      return;
    }
    slab.draining = true; // no new pages go there from now on
    let stuck = 0;
    for (const [page, key] of [...slab.owners]) {
      const old = this.#keys.get(key)?.find((l) => l.slab === slab && l.page === page);
      if (old && !(await this.#move(key, old))) stuck++;
    }
    if (p.state === "down") return;
    if (slab.owners.size > 0) {
      // Nowhere to put them: keep the slab (usable again) and tell the peer,
      // which must then not revoke it.
      slab.draining = false;
      log.warn(`${p.url} asked for slab ${slabId} back; ${stuck} page(s) have nowhere else to go`);
      await p.channel.send({ type: "slab-kept", slabId });
      return;
    }
    p.slabs = p.slabs.filter((s) => s !== slab);
    // Only now may the peer revoke the registration.
    await p.channel.send({ type: "slab-released", slabId });
  }

  /**
   * Copies one page to a new location; retried if a put races with it.
   * Returns false only when no page is free anywhere (the old copy stays).
   */
  async #move(key: number, old: Loc): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const version = this.#versions.get(key) ?? 0;
      const slot = await this.#slot();
      try {
        if (!(await this.#rdma(old, IBV.IBV_WR_RDMA_READ, slot))) return true; // peer failed
        const others = new Set(
          (this.#keys.get(key) ?? []).filter((l) => l !== old).map((l) => l.slab.peer),
        );
        const dst = await this.#allocate(key, others);
        if (!dst) return false;
        if (!(await this.#rdma(dst, IBV.IBV_WR_RDMA_WRITE, slot))) {
          this.#freeLoc(dst);
          continue;
        }
        const locs = this.#keys.get(key);
        if (!locs || !locs.includes(old) || (this.#versions.get(key) ?? 0) !== version) {
          this.#freeLoc(dst); // deleted or rewritten meanwhile
          if (!locs || !locs.includes(old)) return true;
          continue;
        }
        locs[locs.indexOf(old)] = dst;
        this.#freeLoc(old);
        return true;
      } finally {
        this.#release(slot);
      }
    }
    return false; // rewritten on every try: leave it where it is this time
  }

  // ---- PageStore -----------------------------------------------------------

  async put(keys: Uint32Array, pages: Uint8Array): Promise<void> {
    this.#checkOpen();
    // allSettled, not all: the caller may reuse `pages` once we settle, so no
    // page of this batch may still be waiting to be copied out of it.
    const results = await Promise.allSettled(
      Array.from(
        keys,
        (key, i) => this.#putOne(key, pages.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)),
      ),
    );
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  async #putOne(key: number, page: Uint8Array): Promise<void> {
    this.#versions.set(key, (this.#versions.get(key) ?? 0) + 1);
    let locs = this.#keys.get(key);
    const fresh = !locs;
    if (!locs) {
      locs = [];
      const used = new Set<Peer>();
      for (let r = 0; r < this.#opts.replicas; r++) {
        const l = await this.#allocate(key, used);
        if (!l) break;
        used.add(l.slab.peer);
        locs.push(l);
      }
      if (locs.length === 0) {
        throw new StoreUnavailableError("no RDMA peer has room or is up: cannot store pages");
      }
    }
    const slot = await this.#slot();
    try {
      this.#slotBytes(slot).set(page);
      const ok = await Promise.all(locs.map((l) => this.#rdma(l, IBV.IBV_WR_RDMA_WRITE, slot)));
      const live = locs.filter((_, i) => ok[i]);
      if (fresh) {
        locs.filter((_, i) => !ok[i]).forEach((l) => this.#freeLoc(l));
        if (live.length === 0) {
          throw new StoreUnavailableError(`every RDMA replica failed while storing key ${key}`);
        }
        this.#keys.set(key, live);
        this.#lost.delete(key);
      } else if (live.length === 0) {
        throw new StoreUnavailableError(`every RDMA replica failed while storing key ${key}`);
      }
    } finally {
      this.#release(slot);
    }
  }

  async get(keys: Uint32Array, into: Uint8Array): Promise<void> {
    this.#checkOpen();
    const ok = await Promise.all(
      Array.from(
        keys,
        (key, i) => this.#getOne(key, into.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)),
      ),
    );
    const lost = keys.filter((_, i) => !ok[i]);
    if (lost.length > 0) {
      throw new PageLostError(lost, "no live RDMA replica holds them");
    }
  }

  async #getOne(key: number, into: Uint8Array): Promise<boolean> {
    // A bounded number of tries: each failure takes a replica (or a moved
    // location) away, so the list shrinks or changes.
    for (let attempt = 0; attempt < this.#opts.replicas + 3; attempt++) {
      const loc = this.#keys.get(key)?.find((l) => l.slab.peer.state !== "down");
      if (!loc) return false;
      const slot = await this.#slot();
      try {
        const ok = await this.#rdma(loc, IBV.IBV_WR_RDMA_READ, slot);
        // The location must still be this key's after the READ: a slab move
        // may have freed it and a put reused it for another key meanwhile.
        if (ok && this.#keys.get(key)?.includes(loc)) {
          into.set(this.#slotBytes(slot));
          return true;
        }
      } finally {
        this.#release(slot);
      }
    }
    return false;
  }

  delete(keys: Uint32Array): Promise<void> {
    for (const key of keys) {
      for (const l of this.#keys.get(key) ?? []) this.#freeLoc(l);
      this.#keys.delete(key);
      this.#versions.delete(key);
      this.#lost.delete(key);
    }
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#peers) {
      p.state = "down"; // nothing more is posted
      if (p.qp) this.#v.qpToErr(p.qp);
      for (const w of p.queue.splice(0)) w.done(false);
    }
    // Flushed completions wake and end the pump; only then may the CQ go.
    await this.#pumpDone;
    for (const p of this.#peers) {
      if (p.qp) this.#v.destroyQp(p.qp);
      p.qp = undefined;
      p.channel.close(); // the peer frees this session's slabs
    }
    if (this.#cq) this.#v.destroyCq(this.#cq);
    if (this.#channel) this.#v.destroyCompChannel(this.#channel);
    if (this.#staging) {
      this.#v.deregMr(this.#staging);
      unmap(this.#staging.addr, this.#staging.length);
    }
    try {
      this.#v.close();
    } catch (e) {
      // A PD still busy means a leaked MR or QP: worth a line, not a failed detach.
      log.warn(`closing the RDMA device: ${e instanceof Error ? e.message : e}`);
    }
  }

  health(): StoreHealth {
    let deficit = 0;
    for (const locs of this.#keys.values()) if (locs.length < this.#opts.replicas) deficit++;
    const endpoints = this.#peers.map((p) =>
      p.latency.health(p.url, p.state, p.slabs.reduce((n, s) => n + s.owners.size, 0))
    );
    return { pages: this.#keys.size, replicationDeficit: deficit + this.#lost.size, endpoints };
  }

  #checkOpen(): void {
    if (this.#closed) throw new StoreUnavailableError("RDMA store is closed");
  }
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StoreUnavailableError(what)), CONTROL_TIMEOUT_MS);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
