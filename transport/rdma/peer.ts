/**
 * The peer's side of RDMA: lend registered slabs of this machine's memory to
 * clients that READ and WRITE them with one-sided verbs (no CPU here on the
 * data path). The TCP peer daemon owns the listening socket, authentication
 * and capacity policy; it hands each authenticated client that asks for RDMA
 * to {@linkcode RdmaPeerService.serve}.
 *
 * A slab belongs to exactly one client session (its own registration and
 * rkey), so a tenant can never address another tenant's memory. A slab is
 * deregistered and unmapped only when its client says it moved everything off
 * (`SLAB_RELEASED`) or when the session ends: revoking a registration the
 * client still uses would turn its next READ into a lost page.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import {
  allocPd,
  createCq,
  createRcQp,
  deallocPd,
  deregMr,
  destroyCq,
  destroyQp,
  IBV,
  type MemoryRegion,
  type Ptr,
  type QpCaps,
  qpToErr,
  qpToInit,
  qpToRtr,
  qpToRts,
  type QueuePair,
  regMr,
} from "../../ffi/verbs.ts";
import {
  closeRdmaDevice,
  type DeviceChoice,
  localEndpoint,
  mapAnonymous,
  openRdmaDevice,
  pathTo,
  randomPsn,
  type RdmaDevice,
  unmap,
} from "./device.ts";
import {
  MAX_SLABS_PER_MESSAGE,
  type QpEndpoint,
  RDMA_ERROR,
  type RdmaControlChannel,
  type RdmaMessage,
  type SlabGrant,
} from "./handshake.ts";

const log = getLogger(["remora", "rdma", "peer"]);

/**
 * The verbs the peer service uses, bound to one open device; a seam so that
 * the service can also run over a simulated provider in tests.
 */
export interface PeerVerbs {
  /** Kernel device name. */
  readonly deviceName: string;
  /** Creates a CQ without a channel. */
  createCq(cqe: number): Ptr;
  /** Destroys a CQ. */
  destroyCq(cq: Ptr): void;
  /** A protection domain of its own for one client session. */
  allocPd(): Ptr;
  /** Frees a session's PD (after its QP and MRs). */
  deallocPd(pd: Ptr): void;
  /** Creates an RC QP in `pd` on `cq`. */
  createRcQp(pd: Ptr, cq: Ptr, caps: QpCaps): QueuePair;
  /** Destroys a QP. */
  destroyQp(qp: Ptr): void;
  /** RESET -> INIT allowing `access` (remote READ/WRITE). */
  qpToInit(qp: Ptr, access: number): void;
  /** INIT -> RTR towards `remote`. */
  qpToRtr(qp: Ptr, remote: QpEndpoint): void;
  /** RTR -> RTS. */
  qpToRts(qp: Ptr, psn: number, remote: QpEndpoint): void;
  /** Any state -> ERR. */
  qpToErr(qp: Ptr): void;
  /** Registers memory in `pd`. */
  regMr(pd: Ptr, address: number, length: number, access: number): MemoryRegion;
  /** Deregisters: from now on the rkey is void. */
  deregMr(mr: MemoryRegion): void;
  /** The local end of `qpNum` for the handshake. */
  localEndpoint(qpNum: number, psn: number): QpEndpoint;
  /** Releases the PD and device. */
  close(): void;
}

/** {@linkcode PeerVerbs} over a real device. */
export function devicePeerVerbs(d: RdmaDevice): PeerVerbs {
  return {
    deviceName: d.context.name,
    createCq: (cqe) => createCq(d.context, cqe, null),
    destroyCq: (cq) => void destroyCq(cq),
    allocPd: () => allocPd(d.context),
    deallocPd: (pd) => void deallocPd(pd),
    createRcQp: (pd, cq, caps) => createRcQp(pd, cq, caps),
    destroyQp: (qp) => void destroyQp(qp),
    qpToInit: (qp, access) => qpToInit(qp, d.port, access),
    qpToRtr: (qp, remote) => qpToRtr(qp, remote, pathTo(d, remote)),
    qpToRts: (qp, psn, remote) => qpToRts(qp, psn, pathTo(d, remote)),
    qpToErr: (qp) => void qpToErr(qp),
    regMr: (pd, address, length, access) => regMr(pd, address, length, access),
    deregMr: (mr) => void deregMr(mr),
    localEndpoint: (qpNum, psn) => localEndpoint(d, qpNum, psn),
    close: () => closeRdmaDevice(d),
  };
}

/** Options of the peer's RDMA service (`--rdma DEV|auto`, `--capacity`). */
export interface RdmaPeerOptions extends DeviceChoice {
  /** Most bytes lent to all clients together. */
  capacityBytes: number;
  /** Size of one slab; default 64 MiB. Smaller slabs drain faster, larger ones cost fewer MRs. */
  slabBytes?: number;
}

interface Slab {
  id: number;
  address: number;
  length: number;
  mr: MemoryRegion;
  session: Session;
  /** Settles a pending {@linkcode RdmaPeerService.drain}: null when released. */
  drained?: (kept: Error | null) => void;
}

interface Session {
  channel: RdmaControlChannel;
  namespace: string;
  slabs: Map<number, Slab>;
  /**
   * The session's own protection domain. An rkey is only honoured on a QP of
   * the same PD, so one PD per client means a client that guesses another
   * tenant's rkey still cannot touch that tenant's slabs.
   */
  pd?: Ptr;
  /** Settles when serve() has released everything of this session. */
  ended: Promise<void>;
}

/** Registered-memory service of one peer daemon; one per process. */
export class RdmaPeerService {
  readonly #v: PeerVerbs;
  readonly #capacity: number;
  readonly #slabBytes: number;
  #used = 0;
  #granted = 0;
  #nextSlabId = 1;
  readonly #slabs = new Map<number, Slab>();
  readonly #sessions = new Set<Session>();

  private constructor(verbs: PeerVerbs, opts: Omit<RdmaPeerOptions, "device">) {
    this.#v = verbs;
    this.#capacity = opts.capacityBytes;
    this.#slabBytes = opts.slabBytes ?? 64 << 20;
  }

  /**
   * Opens the device (`auto`: the first with an active port). Throws
   * `RdmaUnavailable` (one line: why) when RDMA cannot be used here; a daemon
   * started with `--rdma auto` then serves TCP only and answers RDMA hellos
   * with {@linkcode refuseRdma}.
   */
  static open(opts: RdmaPeerOptions): RdmaPeerService {
    RdmaPeerService.#check(opts);
    return new RdmaPeerService(devicePeerVerbs(openRdmaDevice(opts)), opts);
  }

  /** A service over explicit verbs (a simulated provider in tests). */
  static withVerbs(verbs: PeerVerbs, opts: Omit<RdmaPeerOptions, "device">): RdmaPeerService {
    RdmaPeerService.#check(opts);
    return new RdmaPeerService(verbs, opts);
  }

  static #check(opts: Omit<RdmaPeerOptions, "device">): void {
    if (!(opts.capacityBytes > 0)) throw new RangeError("capacityBytes must be positive");
    const slab = opts.slabBytes ?? 64 << 20;
    if (slab <= 0 || slab % 4096 !== 0) {
      throw new RangeError("slabBytes must be a multiple of 4096");
    }
  }

  /** Bytes currently lent out. */
  get usedBytes(): number {
    return this.#used;
  }

  /** Bytes of registered slabs handed out since start (a counter: never goes down). */
  get grantedBytes(): number {
    return this.#granted;
  }

  /** Kernel name of the device, e.g. `mlx5_0`. */
  get deviceName(): string {
    return this.#v.deviceName;
  }

  /**
   * Serves one client after its `HELLO` (the daemon reads the first message,
   * sees `type === "hello"`, and calls this): brings the QP up, grants the
   * first slabs, then answers slab requests and releases until the channel
   * closes. Everything the session held is freed when it returns; it never
   * rejects (a session's failure is logged and ends that session only).
   */
  async serve(
    channel: RdmaControlChannel,
    hello: Extract<RdmaMessage, { type: "hello" }>,
  ): Promise<void> {
    const v = this.#v;
    let ended = () => {};
    const session: Session = {
      channel,
      namespace: hello.namespace,
      slabs: new Map(),
      ended: new Promise((resolve) => ended = resolve),
    };
    this.#sessions.add(session);
    let cq: Ptr | undefined;
    let qp: Ptr | undefined;
    try {
      try {
        session.pd = v.allocPd();
        // The peer posts nothing: the CQ exists only because a QP needs one.
        cq = v.createCq(16);
        const q = v.createRcQp(session.pd, cq, { maxSendWr: 1, maxRecvWr: 1 });
        qp = q.qp;
        const psn = randomPsn();
        v.qpToInit(qp, IBV.IBV_ACCESS_REMOTE_READ | IBV.IBV_ACCESS_REMOTE_WRITE);
        v.qpToRtr(qp, hello.qp);
        v.qpToRts(qp, psn, hello.qp);
        const slabs = this.#grant(session, Math.min(hello.slabsWanted, MAX_SLABS_PER_MESSAGE));
        await channel.send({ type: "accept", qp: v.localEndpoint(q.qpNum, psn), slabs });
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        log.warn(`RDMA session for ${hello.namespace} failed: ${message}`);
        await channel.send({ type: "error", code: RDMA_ERROR.QP_FAILED, message })
          .catch(() => {});
        return;
      }
      log.info(`RDMA session ${hello.namespace}: ${session.slabs.size} slab(s) granted`);
      for (;;) {
        const m = await channel.receive();
        if (m === null) break;
        if (m.type === "slab-request") {
          await channel.send({ type: "slab-grant", slabs: this.#grant(session, m.count) });
        } else if (m.type === "slab-released") {
          const s = session.slabs.get(m.slabId);
          if (s) this.#free(s);
        } else if (m.type === "slab-kept") {
          const s = session.slabs.get(m.slabId);
          s?.drained?.(
            new Error(`client ${session.namespace} kept slab ${m.slabId}: no room elsewhere`),
          );
          if (s) s.drained = undefined;
        } else {
          await channel.send({
            type: "error",
            code: RDMA_ERROR.PROTOCOL,
            message: `unexpected ${m.type}`,
          });
          break;
        }
      }
    } catch (e) {
      // A malformed message or a broken connection ends this session only.
      log.warn(`RDMA session ${hello.namespace} ended: ${e instanceof Error ? e.message : e}`);
    } finally {
      // Order matters: stop the QP before its memory disappears.
      if (qp) {
        v.qpToErr(qp);
        v.destroyQp(qp);
      }
      if (cq) v.destroyCq(cq);
      for (const s of [...session.slabs.values()]) this.#free(s);
      if (session.pd) v.deallocPd(session.pd);
      this.#sessions.delete(session);
      channel.close();
      ended();
    }
  }

  /**
   * Asks the owner of `slabId` to move its pages elsewhere (memory pressure
   * here); resolves once the client released it and the registration is gone
   * (or the client's session ended, which frees it too). Rejects if the client
   * answers that it had nowhere to move them: the slab then stays in use, and
   * revoking it anyway would fail every page of that client on this peer.
   */
  drain(slabId: number): Promise<void> {
    const s = this.#slabs.get(slabId);
    if (!s) return Promise.resolve();
    const done = new Promise<void>((resolve, reject) =>
      s.drained = (kept) => kept ? reject(kept) : resolve()
    );
    s.session.channel.send({ type: "slab-drain", slabId }).catch(() => {});
    return done;
  }

  /** Slabs currently lent, for a daemon's eviction policy: id, owner, bytes. */
  slabs(): { slabId: number; namespace: string; bytes: number }[] {
    return [...this.#slabs.values()].map((s) => ({
      slabId: s.id,
      namespace: s.session.namespace,
      bytes: s.length,
    }));
  }

  /** Ends every session (each frees its QP, slabs and PD), then closes the device. */
  async close(): Promise<void> {
    const sessions = [...this.#sessions];
    for (const session of sessions) session.channel.close();
    await Promise.all(sessions.map((session) => session.ended));
    this.#v.close();
  }

  #grant(session: Session, count: number): SlabGrant[] {
    const out: SlabGrant[] = [];
    while (out.length < count && this.#used + this.#slabBytes <= this.#capacity) {
      const length = this.#slabBytes;
      const address = mapAnonymous(length);
      let mr: MemoryRegion;
      try {
        mr = this.#v.regMr(
          session.pd!,
          address,
          length,
          IBV.IBV_ACCESS_LOCAL_WRITE | IBV.IBV_ACCESS_REMOTE_READ | IBV.IBV_ACCESS_REMOTE_WRITE,
        );
      } catch (e) {
        unmap(address, length);
        if (out.length > 0) break; // grant what we have; the client asks again later
        throw e;
      }
      const s: Slab = { id: this.#nextSlabId++, address, length, mr, session };
      this.#slabs.set(s.id, s);
      session.slabs.set(s.id, s);
      this.#used += length;
      this.#granted += length;
      out.push({ slabId: s.id, rkey: mr.rkey, addr: BigInt(address), length });
    }
    return out;
  }

  #free(s: Slab): void {
    this.#v.deregMr(s.mr);
    unmap(s.address, s.length);
    this.#slabs.delete(s.id);
    s.session.slabs.delete(s.id);
    this.#used -= s.length;
    s.drained?.(null);
  }
}

/**
 * Answers an RDMA `HELLO` on a daemon without a usable device, so that the
 * client reports (or, with `--rdma auto`, falls back to TCP) with the reason.
 */
export async function refuseRdma(channel: RdmaControlChannel, reason: string): Promise<void> {
  await channel.send({ type: "error", code: RDMA_ERROR.NO_DEVICE, message: reason });
}
