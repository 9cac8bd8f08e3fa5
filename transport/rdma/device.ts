/**
 * Opening an RDMA device for remora, shared by the client store and the peer:
 * pick the device, check its port is up, allocate the protection domain, and
 * describe the local end of a queue pair for the handshake.
 *
 * Every way of not having RDMA (no libibverbs, a kernel without the RDMA
 * subsystem, no device, an unknown name, a port that is down) comes out as
 * one sentence in {@linkcode RdmaUnavailable}, so that the user reads why and
 * what to do instead.
 *
 * @module
 */

import { mmapAnonymous, munmap } from "../../ffi/libc.ts";
import {
  ackCqEvents,
  allocPd,
  closeDevice,
  type Context,
  type ContextOps,
  createCompChannel,
  createCq,
  createRcQp,
  deallocPd,
  deregMr,
  destroyCompChannel,
  destroyCq,
  destroyQp,
  ENODEV,
  ENOSYS,
  errnoText,
  getCqEvent,
  getDeviceList,
  IBV,
  type MemoryRegion,
  openDevice,
  type PathParams,
  type PortAttr,
  type Ptr,
  type QpCaps,
  qpToErr,
  qpToInit,
  qpToRtr,
  qpToRts,
  queryDevice,
  queryGid,
  queryPort,
  type QueuePair,
  regMr,
  VerbsError,
  wcStatusStr,
} from "../../ffi/verbs.ts";
import type { QpEndpoint } from "./handshake.ts";

/** RDMA cannot be used on this machine; `message` says why in one line. */
export class RdmaUnavailable extends Error {
  /** Builds the error; `cause` is one clause such as "no RDMA device found". */
  constructor(cause: string) {
    super(cause);
    this.name = "RdmaUnavailable";
  }
}

/** Which device and port to use. */
export interface DeviceChoice {
  /** Kernel device name (e.g. `mlx5_0`), or `auto` for the first one with an active port. */
  device: string;
  /** Port number (1-based); default 1. */
  port?: number;
  /** GID index for RoCE paths; default: the first IPv4-mapped GID, else 0 (see `show_gids`). */
  gidIndex?: number;
}

/** An open device with its protection domain: everything QPs and MRs hang off. */
export interface RdmaDevice {
  /** The open context. */
  context: Context;
  /** Protection domain for every MR and QP of this process. */
  pd: Ptr;
  /** Port used. */
  port: number;
  /** Its attributes at open time. */
  portAttr: PortAttr;
  /** GID index used for routed (RoCE) paths. */
  gidIndex: number;
  /** This port's GID when the link layer needs one (Ethernet), else zeros. */
  gid: Uint8Array;
  /** Outstanding RDMA READs per QP, as initiator and as responder (device limits, capped). */
  maxRdAtomic: number;
  /** Largest CQ the device allows. */
  maxCqe: number;
  /** Largest send queue the device allows. */
  maxQpWr: number;
}

function describe(e: unknown): string {
  if (e instanceof VerbsError) {
    if (e.errno === ENOSYS) return `${e.message} (this kernel has no RDMA subsystem)`;
    if (e.errno === ENODEV) return `${e.message} (no RDMA device)`;
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

/**
 * Opens the chosen device and port and allocates a PD. Throws
 * {@linkcode RdmaUnavailable} (one line) when RDMA cannot be used here.
 */
export function openRdmaDevice(choice: DeviceChoice): RdmaDevice {
  const port = choice.port ?? 1;
  let list;
  try {
    list = getDeviceList();
  } catch (e) {
    throw new RdmaUnavailable(describe(e));
  }
  let context: Context | undefined;
  try {
    const names = list.devices.map((d) => d.name);
    if (names.length === 0) {
      throw new RdmaUnavailable("no RDMA device found (ibv_get_device_list returned none)");
    }
    const candidates = choice.device === "auto"
      ? list.devices
      : list.devices.filter((d) => d.name === choice.device);
    if (candidates.length === 0) {
      throw new RdmaUnavailable(
        `RDMA device "${choice.device}" not found (have: ${names.join(", ")})`,
      );
    }
    const down: string[] = [];
    for (const entry of candidates) {
      const c = openDevice(entry);
      let pa: PortAttr;
      try {
        pa = queryPort(c, port);
      } catch (e) {
        closeDevice(c);
        down.push(`${entry.name} port ${port}: ${describe(e)}`);
        continue;
      }
      if (pa.state !== IBV.IBV_PORT_ACTIVE) {
        closeDevice(c);
        down.push(`${entry.name} port ${port} is not active (state ${pa.state})`);
        continue;
      }
      context = c;
      break;
    }
    if (context === undefined) throw new RdmaUnavailable(down.join("; "));
  } catch (e) {
    if (e instanceof RdmaUnavailable) throw e;
    throw new RdmaUnavailable(describe(e));
  } finally {
    list.free();
  }
  try {
    const portAttr = queryPort(context, port);
    const attr = queryDevice(context);
    // InfiniBand within one subnet routes by LID and needs no GRH; RoCE has
    // no LIDs and addresses the peer by GID.
    const roce = portAttr.linkLayer === IBV.IBV_LINK_LAYER_ETHERNET;
    const gidIndex = choice.gidIndex ?? (roce ? ipv4GidIndex(context, port, portAttr) : 0);
    const gid = roce ? queryGid(context, port, gidIndex) : new Uint8Array(16);
    const pd = allocPd(context);
    return {
      context,
      pd,
      port,
      portAttr,
      gidIndex,
      gid,
      // Both sides of our QPs use the same device kind; 16 is what current
      // HCAs allow and keeps many page READs in flight.
      maxRdAtomic: Math.max(1, Math.min(attr.maxQpInitRdAtom, attr.maxQpRdAtom, 16)),
      maxCqe: attr.maxCqe,
      maxQpWr: attr.maxQpWr,
    };
  } catch (e) {
    closeDevice(context);
    throw new RdmaUnavailable(describe(e));
  }
}

/**
 * The first GID of the port that is an IPv4-mapped address (`::ffff:a.b.c.d`),
 * else 0. On RoCE, index 0 is the interface's IPv6 link-local GID; the IPv4
 * GID is what `show_gids` users pick by hand and what the soft-RoCE guest test
 * runs on, and both ends choosing it the same way agree on the RoCE version.
 */
function ipv4GidIndex(c: Context, port: number, pa: PortAttr): number {
  for (let i = 0; i < Math.min(pa.gidTblLen, 16); i++) {
    let g: Uint8Array;
    try {
      g = queryGid(c, port, i);
    } catch {
      continue; // an empty slot
    }
    const mapped = g.subarray(0, 10).every((b) => b === 0) && g[10] === 0xff && g[11] === 0xff;
    if (mapped && g.subarray(12).some((b) => b !== 0)) return i;
  }
  return 0;
}

/** Releases the PD and the device (after every QP, CQ and MR is gone). */
export function closeRdmaDevice(d: RdmaDevice): void {
  const rc = deallocPd(d.pd);
  if (rc !== 0) throw new VerbsError("ibv_dealloc_pd", rc);
  closeDevice(d.context);
}

/** A random 24-bit initial packet sequence number. */
export function randomPsn(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0] & 0xffffff;
}

/** The local end of a QP, as the handshake sends it. */
export function localEndpoint(d: RdmaDevice, qpNum: number, psn: number): QpEndpoint {
  return {
    qpNum,
    lid: d.portAttr.lid,
    psn,
    mtu: d.portAttr.activeMtu,
    rdAtomic: d.maxRdAtomic,
    gid: d.gid,
  };
}

/** Path parameters for a QP between this device and `remote`: the smaller MTU and READ depth. */
export function pathTo(d: RdmaDevice, remote: QpEndpoint): PathParams {
  return {
    port: d.port,
    gidIndex: d.gidIndex,
    mtu: Math.min(d.portAttr.activeMtu, remote.mtu),
    maxRdAtomic: Math.min(d.maxRdAtomic, remote.rdAtomic),
  };
}

/**
 * Anonymous memory for registration: page-aligned and never moved by the
 * JavaScript heap. Returns its address; throws on failure.
 */
export function mapAnonymous(length: number): number {
  const a = mmapAnonymous(length);
  if (a < 0) throw new VerbsError(`mmap(${length})`, -a);
  return a;
}

/** Unmaps memory from {@linkcode mapAnonymous} (after its MR is deregistered). */
export function unmap(address: number, length: number): void {
  munmap(address, length);
}

/** One-line errno name, re-exported for callers that format verbs errors. */
export { errnoText };

/**
 * The verbs a client store uses, bound to one open device. The store talks
 * only to this, so that its logic can also run over a simulated provider
 * (test/rdma_test.ts) on machines with no RDMA device.
 */
export interface StoreVerbs {
  /** Largest CQ. */
  readonly maxCqe: number;
  /** Largest send queue. */
  readonly maxQpWr: number;
  /** The provider's inline verbs (post_send, poll_cq, req_notify_cq). */
  readonly ops: ContextOps;
  /** Registers local memory in the store's PD. */
  regMr(address: number, length: number, access: number): MemoryRegion;
  /** Deregisters. */
  deregMr(mr: MemoryRegion): void;
  /** Creates the completion channel. */
  createCompChannel(): Ptr;
  /** Destroys it (after its CQ). */
  destroyCompChannel(channel: Ptr): void;
  /** Creates a CQ on `channel`. */
  createCq(cqe: number, channel: Ptr): Ptr;
  /** Destroys a CQ (every event acked, every QP on it gone). */
  destroyCq(cq: Ptr): void;
  /** Creates an RC QP whose completions go to `cq`. */
  createRcQp(cq: Ptr, caps: QpCaps): QueuePair;
  /** Destroys a QP. */
  destroyQp(qp: Ptr): void;
  /** RESET -> INIT with no remote access (the client only initiates). */
  qpToInit(qp: Ptr): void;
  /** INIT -> RTR towards `remote`. */
  qpToRtr(qp: Ptr, remote: QpEndpoint): void;
  /** RTR -> RTS with our initial PSN. */
  qpToRts(qp: Ptr, psn: number, remote: QpEndpoint): void;
  /** Any state -> ERR (outstanding work flushes). */
  qpToErr(qp: Ptr): void;
  /** The local end of `qpNum` for the handshake. */
  localEndpoint(qpNum: number, psn: number): QpEndpoint;
  /** Waits (off the event loop) for an armed CQ of `channel` to fire. */
  getCqEvent(channel: Ptr): Promise<Ptr>;
  /** Acknowledges CQ events. */
  ackCqEvents(cq: Ptr, n: number): void;
  /** Text of a work-completion status. */
  wcStatusStr(status: number): string;
  /** Releases the PD and the device. */
  close(): void;
}

/** {@linkcode StoreVerbs} over a real device. */
export function deviceVerbs(d: RdmaDevice): StoreVerbs {
  return {
    maxCqe: d.maxCqe,
    maxQpWr: d.maxQpWr,
    ops: d.context.ops,
    regMr: (address, length, access) => regMr(d.pd, address, length, access),
    deregMr: (mr) => void deregMr(mr),
    createCompChannel: () => createCompChannel(d.context),
    destroyCompChannel: (ch) => void destroyCompChannel(ch),
    createCq: (cqe, channel) => createCq(d.context, cqe, channel),
    destroyCq: (cq) => void destroyCq(cq),
    createRcQp: (cq, caps) => createRcQp(d.pd, cq, caps),
    destroyQp: (qp) => void destroyQp(qp),
    qpToInit: (qp) => qpToInit(qp, d.port, 0),
    qpToRtr: (qp, remote) => qpToRtr(qp, remote, pathTo(d, remote)),
    qpToRts: (qp, psn, remote) => qpToRts(qp, psn, pathTo(d, remote)),
    qpToErr: (qp) => void qpToErr(qp),
    localEndpoint: (qpNum, psn) => localEndpoint(d, qpNum, psn),
    getCqEvent,
    ackCqEvents,
    wcStatusStr,
    close: () => closeRdmaDevice(d),
  };
}
