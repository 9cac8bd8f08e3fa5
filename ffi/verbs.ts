/**
 * libibverbs through Deno FFI: exactly what a one-sided RDMA data path needs,
 * and nothing else.
 *
 * Layouts and constants below are written out by hand for x86_64 and rdma-core
 * 44 (`/usr/include/infiniband/verbs.h`); `test/verbs_layout_test.ts` compiles
 * a C program generated from these very tables against the installed headers
 * and fails on any difference, so a table can never silently drift.
 *
 * `ibv_post_send`, `ibv_poll_cq` and `ibv_req_notify_cq` are `static inline`
 * in verbs.h: they are not exported, they are one indirect call through
 * `qp->context->ops.post_send` / `cq->context->ops.poll_cq` /
 * `...ops.req_notify_cq`. We make that same call with `Deno.UnsafeFnPointer`
 * on the pointer read from `struct ibv_context_ops`, rather than through a C
 * shim: the header's inline functions ARE the ABI, a shim would add a library
 * to build and ship and one more call on every page fault.
 *
 * This module knows C layouts and symbols; which remote bytes live where is
 * `transport/rdma.ts`'s business.
 *
 * @module
 */

import { errno } from "./libc.ts";

/** `[offset, size]` of one struct member, in bytes. */
export type Field = readonly [offset: number, size: number];

/** Size and member offsets of one C type, keyed by C member designator (`wr.rdma.rkey`). */
export interface StructLayout {
  /** The C type, e.g. `struct ibv_sge`, as the layout test spells it. */
  readonly c: string;
  /** `sizeof` the type. */
  readonly size: number;
  /** Members the bindings read or write. */
  readonly fields: Readonly<Record<string, Field>>;
}

/** Declares a layout while keeping its field names as literal types. */
function layout<F extends Record<string, Field>>(c: string, size: number, fields: F) {
  return { c, size, fields } as const satisfies StructLayout;
}

/** `union ibv_gid`: a 16-byte GID, raw or as subnet prefix + interface id. */
export const IBV_GID = layout("union ibv_gid", 16, {
  raw: [0, 16],
  "global.subnet_prefix": [0, 8],
  "global.interface_id": [8, 8],
});

/** `struct ibv_device`: only the name is read (the rest are sysfs paths). */
export const IBV_DEVICE = layout("struct ibv_device", 664, {
  node_type: [16, 4],
  transport_type: [20, 4],
  name: [24, 64],
});

/** `struct ibv_context_ops`: the provider's function table the inline verbs call through. */
export const IBV_CONTEXT_OPS = layout("struct ibv_context_ops", 256, {
  poll_cq: [88, 8],
  req_notify_cq: [96, 8],
  post_send: [200, 8],
  post_recv: [208, 8],
});

/** `struct ibv_context`: an open device; `ops` is embedded, not a pointer. */
export const IBV_CONTEXT = layout("struct ibv_context", 328, {
  device: [0, 8],
  ops: [8, 256],
  "ops.poll_cq": [96, 8],
  "ops.req_notify_cq": [104, 8],
  "ops.post_send": [208, 8],
  cmd_fd: [264, 4],
  async_fd: [268, 4],
  num_comp_vectors: [272, 4],
});

/** `struct ibv_device_attr` (ibv_query_device): limits we size queues by. */
export const IBV_DEVICE_ATTR = layout("struct ibv_device_attr", 232, {
  fw_ver: [0, 64],
  max_mr_size: [80, 8],
  max_qp_wr: [112, 4],
  max_sge: [120, 4],
  max_cqe: [132, 4],
  max_qp_rd_atom: [144, 4],
  max_qp_init_rd_atom: [156, 4],
  phys_port_cnt: [227, 1],
});

/**
 * `struct ibv_port_attr`. The exported `ibv_query_port` symbol (what the
 * header's `___ibv_query_port` falls back to) fills the older, shorter
 * `_compat_ibv_port_attr` prefix, which ends at `link_layer`: we read nothing
 * past it.
 */
export const IBV_PORT_ATTR = layout("struct ibv_port_attr", 52, {
  state: [0, 4],
  max_mtu: [4, 4],
  active_mtu: [8, 4],
  gid_tbl_len: [12, 4],
  lid: [34, 2],
  link_layer: [46, 1],
});

/** `struct ibv_pd`. */
export const IBV_PD = layout("struct ibv_pd", 16, { context: [0, 8], handle: [8, 4] });

/** `struct ibv_mr`: the registration's keys. */
export const IBV_MR = layout("struct ibv_mr", 48, {
  context: [0, 8],
  pd: [8, 8],
  addr: [16, 8],
  length: [24, 8],
  lkey: [36, 4],
  rkey: [40, 4],
});

/** `struct ibv_comp_channel`: `fd` is what `ibv_get_cq_event` blocks on. */
export const IBV_COMP_CHANNEL = layout("struct ibv_comp_channel", 16, {
  context: [0, 8],
  fd: [8, 4],
});

/** `struct ibv_cq`: `context` leads to the ops table, as in `ibv_poll_cq`. */
export const IBV_CQ = layout("struct ibv_cq", 128, {
  context: [0, 8],
  channel: [8, 8],
  cqe: [28, 4],
});

/** `struct ibv_qp`: `context` leads to the ops table, as in `ibv_post_send`. */
export const IBV_QP = layout("struct ibv_qp", 160, {
  context: [0, 8],
  qp_num: [52, 4],
  state: [56, 4],
});

/** `struct ibv_qp_cap`. */
export const IBV_QP_CAP = layout("struct ibv_qp_cap", 20, {
  max_send_wr: [0, 4],
  max_recv_wr: [4, 4],
  max_send_sge: [8, 4],
  max_recv_sge: [12, 4],
  max_inline_data: [16, 4],
});

/** `struct ibv_qp_init_attr` (ibv_create_qp). */
export const IBV_QP_INIT_ATTR = layout("struct ibv_qp_init_attr", 64, {
  qp_context: [0, 8],
  send_cq: [8, 8],
  recv_cq: [16, 8],
  srq: [24, 8],
  "cap.max_send_wr": [32, 4],
  "cap.max_recv_wr": [36, 4],
  "cap.max_send_sge": [40, 4],
  "cap.max_recv_sge": [44, 4],
  "cap.max_inline_data": [48, 4],
  qp_type: [52, 4],
  sq_sig_all: [56, 4],
});

/** `struct ibv_qp_attr` (ibv_modify_qp): only members our three transitions set. */
export const IBV_QP_ATTR = layout("struct ibv_qp_attr", 144, {
  qp_state: [0, 4],
  path_mtu: [8, 4],
  rq_psn: [20, 4],
  sq_psn: [24, 4],
  dest_qp_num: [28, 4],
  qp_access_flags: [32, 4],
  "ah_attr.grh.dgid": [56, 16],
  "ah_attr.grh.flow_label": [72, 4],
  "ah_attr.grh.sgid_index": [76, 1],
  "ah_attr.grh.hop_limit": [77, 1],
  "ah_attr.grh.traffic_class": [78, 1],
  "ah_attr.dlid": [80, 2],
  "ah_attr.sl": [82, 1],
  "ah_attr.src_path_bits": [83, 1],
  "ah_attr.static_rate": [84, 1],
  "ah_attr.is_global": [85, 1],
  "ah_attr.port_num": [86, 1],
  pkey_index: [120, 2],
  max_rd_atomic: [126, 1],
  max_dest_rd_atomic: [127, 1],
  min_rnr_timer: [128, 1],
  port_num: [129, 1],
  timeout: [130, 1],
  retry_cnt: [131, 1],
  rnr_retry: [132, 1],
});

/** `struct ibv_sge`: one local buffer of a work request. */
export const IBV_SGE = layout("struct ibv_sge", 16, {
  addr: [0, 8],
  length: [8, 4],
  lkey: [12, 4],
});

/** `struct ibv_send_wr`: RDMA READ/WRITE use `wr.rdma`. */
export const IBV_SEND_WR = layout("struct ibv_send_wr", 128, {
  wr_id: [0, 8],
  next: [8, 8],
  sg_list: [16, 8],
  num_sge: [24, 4],
  opcode: [28, 4],
  send_flags: [32, 4],
  imm_data: [36, 4],
  "wr.rdma.remote_addr": [40, 8],
  "wr.rdma.rkey": [48, 4],
});

/** `struct ibv_wc`: one work completion. */
export const IBV_WC = layout("struct ibv_wc", 48, {
  wr_id: [0, 8],
  status: [8, 4],
  opcode: [12, 4],
  vendor_err: [16, 4],
  byte_len: [20, 4],
  qp_num: [28, 4],
});

/** Every layout the bindings use; the layout test walks this list. */
export const LAYOUTS: readonly StructLayout[] = [
  IBV_GID,
  IBV_DEVICE,
  IBV_CONTEXT_OPS,
  IBV_CONTEXT,
  IBV_DEVICE_ATTR,
  IBV_PORT_ATTR,
  IBV_PD,
  IBV_MR,
  IBV_COMP_CHANNEL,
  IBV_CQ,
  IBV_QP,
  IBV_QP_CAP,
  IBV_QP_INIT_ATTR,
  IBV_QP_ATTR,
  IBV_SGE,
  IBV_SEND_WR,
  IBV_WC,
];

/** verbs.h enum values and mask bits the bindings use (names as in C). */
export const IBV = {
  IBV_QPT_RC: 2,
  IBV_QPS_RESET: 0,
  IBV_QPS_INIT: 1,
  IBV_QPS_RTR: 2,
  IBV_QPS_RTS: 3,
  IBV_QPS_ERR: 6,
  IBV_QP_STATE: 1 << 0,
  IBV_QP_ACCESS_FLAGS: 1 << 3,
  IBV_QP_PKEY_INDEX: 1 << 4,
  IBV_QP_PORT: 1 << 5,
  IBV_QP_AV: 1 << 7,
  IBV_QP_PATH_MTU: 1 << 8,
  IBV_QP_TIMEOUT: 1 << 9,
  IBV_QP_RETRY_CNT: 1 << 10,
  IBV_QP_RNR_RETRY: 1 << 11,
  IBV_QP_RQ_PSN: 1 << 12,
  IBV_QP_MAX_QP_RD_ATOMIC: 1 << 13,
  IBV_QP_MIN_RNR_TIMER: 1 << 15,
  IBV_QP_SQ_PSN: 1 << 16,
  IBV_QP_MAX_DEST_RD_ATOMIC: 1 << 17,
  IBV_QP_DEST_QPN: 1 << 20,
  IBV_ACCESS_LOCAL_WRITE: 1,
  IBV_ACCESS_REMOTE_WRITE: 1 << 1,
  IBV_ACCESS_REMOTE_READ: 1 << 2,
  IBV_ACCESS_OPTIONAL_RANGE: 0x3ff00000,
  IBV_WR_RDMA_WRITE: 0,
  IBV_WR_RDMA_READ: 4,
  IBV_SEND_SIGNALED: 1 << 1,
  IBV_WC_SUCCESS: 0,
  IBV_WC_WR_FLUSH_ERR: 5,
  IBV_WC_RDMA_WRITE: 1,
  IBV_WC_RDMA_READ: 2,
  IBV_MTU_256: 1,
  IBV_MTU_512: 2,
  IBV_MTU_1024: 3,
  IBV_MTU_2048: 4,
  IBV_MTU_4096: 5,
  IBV_PORT_ACTIVE: 4,
  IBV_LINK_LAYER_INFINIBAND: 1,
  IBV_LINK_LAYER_ETHERNET: 2,
  IBV_SYSFS_NAME_MAX: 64,
} as const;

/**
 * Exported libibverbs symbols, bound by their default (`@@`) version, which is
 * what `dlsym` returns and what a program built against this header links to.
 * `ibv_reg_mr` in verbs.h is a macro that, when `access` is not a compile-time
 * constant (always our case), calls `ibv_reg_mr_iova2(pd, addr, len,
 * (uintptr_t)addr, access)`; `ibv_query_port` is a macro over the inline
 * `___ibv_query_port`, which falls back to the exported `ibv_query_port`.
 */
export const VERBS_SYMBOLS = {
  ibv_get_device_list: { parameters: ["buffer"], result: "pointer" },
  ibv_free_device_list: { parameters: ["pointer"], result: "void" },
  ibv_get_device_name: { parameters: ["pointer"], result: "pointer" },
  ibv_open_device: { parameters: ["pointer"], result: "pointer" },
  ibv_close_device: { parameters: ["pointer"], result: "i32" },
  ibv_query_device: { parameters: ["pointer", "buffer"], result: "i32" },
  ibv_query_port: { parameters: ["pointer", "u8", "buffer"], result: "i32" },
  ibv_query_gid: { parameters: ["pointer", "u8", "i32", "buffer"], result: "i32" },
  ibv_alloc_pd: { parameters: ["pointer"], result: "pointer" },
  ibv_dealloc_pd: { parameters: ["pointer"], result: "i32" },
  ibv_reg_mr_iova2: {
    parameters: ["pointer", "pointer", "usize", "u64", "u32"],
    result: "pointer",
  },
  ibv_dereg_mr: { parameters: ["pointer"], result: "i32" },
  ibv_create_comp_channel: { parameters: ["pointer"], result: "pointer" },
  ibv_destroy_comp_channel: { parameters: ["pointer"], result: "i32" },
  ibv_create_cq: {
    parameters: ["pointer", "i32", "pointer", "pointer", "i32"],
    result: "pointer",
  },
  ibv_destroy_cq: { parameters: ["pointer"], result: "i32" },
  // Blocks in read(2) on the channel fd until the CQ is armed and gets an
  // entry: run on a worker thread so the pager's event loop keeps going.
  ibv_get_cq_event: {
    parameters: ["pointer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  ibv_ack_cq_events: { parameters: ["pointer", "u32"], result: "void" },
  ibv_create_qp: { parameters: ["pointer", "buffer"], result: "pointer" },
  ibv_modify_qp: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  ibv_destroy_qp: { parameters: ["pointer"], result: "i32" },
  ibv_wc_status_str: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The library file name bound (the SONAME, so that only the runtime package is needed). */
export const VERBS_LIBRARY = "libibverbs.so.1";

/** Signatures of the `ibv_context_ops` members we call (the inline verbs). */
const OPS = {
  post_send: { parameters: ["pointer", "pointer", "buffer"], result: "i32" },
  poll_cq: { parameters: ["pointer", "i32", "pointer"], result: "i32" },
  req_notify_cq: { parameters: ["pointer", "i32"], result: "i32" },
} as const satisfies Record<string, Deno.UnsafeCallbackDefinition>;

/** A verbs call failed; `errno` is 0 when the call reports no errno. */
export class VerbsError extends Error {
  /** The errno (or the positive error code a verb returned). */
  readonly errno: number;
  /** Builds the error for `what` failing with `code`. */
  constructor(what: string, code: number, hint = "") {
    super(`${what} failed: ${errnoText(code)}${hint}`);
    this.name = "VerbsError";
    this.errno = code;
  }
}

const ERRNO_TEXT: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  19: "ENODEV",
  22: "EINVAL",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
  110: "ETIMEDOUT",
};

/** `ENOSYS`: the kernel has no RDMA subsystem (ibv_get_device_list). */
export const ENOSYS = 38;
/** `ENODEV`: no such device. */
export const ENODEV = 19;

/** Symbolic errno, e.g. `ENOSYS`. */
export function errnoText(code: number): string {
  return ERRNO_TEXT[code] ?? `errno ${code}`;
}

type Lib = Deno.DynamicLibrary<typeof VERBS_SYMBOLS>["symbols"];
let lib: Lib | undefined;

/**
 * Loads libibverbs on first use (a machine without rdma-core must still be
 * able to run the pager with other backends). Throws {@linkcode VerbsError}
 * with errno ENOENT when the library is missing.
 */
export function verbs(): Lib {
  if (lib) return lib;
  try {
    lib = Deno.dlopen(VERBS_LIBRARY, VERBS_SYMBOLS).symbols;
  } catch (e) {
    throw new VerbsError(
      `loading ${VERBS_LIBRARY}`,
      2,
      ` (${(e as Error).message.split("\n")[0]}; install the libibverbs1 package)`,
    );
  }
  return lib;
}

/** A non-null native pointer. */
export type Ptr = Deno.PointerObject;

/** Absolute address of a native pointer, as a number (x86_64 user space is below 2^47). */
export function addr(p: Ptr): number {
  return Number(Deno.UnsafePointer.value(p));
}

/** A pointer from an absolute address. */
export function ptr(address: number | bigint): Ptr {
  const p = Deno.UnsafePointer.create(BigInt(address));
  if (p === null) throw new Error("null pointer");
  return p;
}

/** Reads a pointer-sized member at `off` of the struct at `p`. */
function readPtr(p: Ptr, off: number): Deno.PointerValue {
  return new Deno.UnsafePointerView(p).getPointer(off);
}

/** Reads a C string. */
function cstr(p: Deno.PointerValue): string {
  return p === null ? "" : Deno.UnsafePointerView.getCString(p);
}

/** One device in the list: its kernel name (e.g. `mlx5_0`) and handle. */
export interface DeviceEntry {
  /** Kernel name, e.g. `mlx5_0` or `rxe0`. */
  name: string;
  /** `struct ibv_device *`, valid until the list is freed. */
  device: Ptr;
}

/** Result of {@linkcode getDeviceList}: entries plus the list to free. */
export interface DeviceList {
  /** Devices found (may be empty). */
  devices: DeviceEntry[];
  /** Frees the list; open the devices you need first. */
  free(): void;
}

/**
 * `ibv_get_device_list`. Throws {@linkcode VerbsError} carrying errno when the
 * call returns NULL (ENOSYS: no RDMA subsystem in the kernel).
 */
export function getDeviceList(): DeviceList {
  const v = verbs();
  const count = new Int32Array(1);
  const list = v.ibv_get_device_list(count);
  if (list === null) throw new VerbsError("ibv_get_device_list", errno());
  const view = new Deno.UnsafePointerView(list);
  const devices: DeviceEntry[] = [];
  for (let i = 0; i < count[0]; i++) {
    const device = view.getPointer(i * 8);
    if (device === null) break;
    devices.push({ name: cstr(v.ibv_get_device_name(device)), device });
  }
  return { devices, free: () => v.ibv_free_device_list(list) };
}

/** The inline verbs of one context, bound once to the provider's function pointers. */
export interface ContextOps {
  /** `ops.post_send(qp, wr, &bad_wr)`: 0 or a positive errno. */
  postSend(qp: Ptr, wr: Ptr, badWr: Uint8Array): number;
  /** `ops.poll_cq(cq, n, wc)`: completions returned, or negative on error. */
  pollCq(cq: Ptr, n: number, wc: Ptr): number;
  /** `ops.req_notify_cq(cq, solicited_only)`: 0 or a positive errno. */
  reqNotifyCq(cq: Ptr, solicitedOnly: number): number;
}

/** An open device (`struct ibv_context *`). */
export interface Context {
  /** The context pointer. */
  ctx: Ptr;
  /** Kernel device name. */
  name: string;
  /** The provider's inline-verb entry points. */
  ops: ContextOps;
}

/**
 * Binds the inline verbs of the context at `ctx`: reads `ops.post_send`,
 * `ops.poll_cq` and `ops.req_notify_cq` out of its `struct ibv_context_ops`.
 * verbs.h reads `qp->context->ops.post_send` on every call; every QP and CQ
 * we create belongs to this one context and a provider fills the table once
 * in `ibv_open_device`, so reading it once is the same.
 */
export function bindContextOps(ctx: Ptr): ContextOps {
  const fn = <D extends Deno.UnsafeCallbackDefinition>(f: Field, def: D) => {
    const p = readPtr(ctx, f[0]);
    if (p === null) throw new VerbsError("provider ops table", 95, " (null entry)");
    return new Deno.UnsafeFnPointer(p as Deno.PointerObject<D>, def);
  };
  const post = fn(IBV_CONTEXT.fields["ops.post_send"], OPS.post_send);
  const poll = fn(IBV_CONTEXT.fields["ops.poll_cq"], OPS.poll_cq);
  const notify = fn(IBV_CONTEXT.fields["ops.req_notify_cq"], OPS.req_notify_cq);
  return {
    postSend: (qp, wr, badWr) => post.call(qp, wr, badWr) as number,
    pollCq: (cq, n, wc) => poll.call(cq, n, wc) as number,
    reqNotifyCq: (cq, s) => notify.call(cq, s) as number,
  };
}

/** `ibv_open_device`. */
export function openDevice(entry: DeviceEntry): Context {
  const ctx = verbs().ibv_open_device(entry.device);
  if (ctx === null) throw new VerbsError(`ibv_open_device(${entry.name})`, errno());
  return { ctx, name: entry.name, ops: bindContextOps(ctx) };
}

/** `ibv_close_device`. */
export function closeDevice(c: Context): void {
  verbs().ibv_close_device(c.ctx);
}

/** What we use of `ibv_query_device`. */
export interface DeviceAttr {
  /** Firmware version string. */
  fwVer: string;
  /** Largest work-queue depth. */
  maxQpWr: number;
  /** Largest CQ. */
  maxCqe: number;
  /** Outstanding RDMA READs a QP may have as initiator. */
  maxQpInitRdAtom: number;
  /** Outstanding RDMA READs a QP may serve as responder. */
  maxQpRdAtom: number;
  /** Number of physical ports. */
  physPortCnt: number;
}

/** Reads an unsigned little-endian integer member of `size` 1, 2 or 4 bytes. */
function u(dv: DataView, f: Field): number {
  switch (f[1]) {
    case 1:
      return dv.getUint8(f[0]);
    case 2:
      return dv.getUint16(f[0], true);
    default:
      return dv.getUint32(f[0], true);
  }
}

/** Writes an unsigned little-endian integer member of `size` 1, 2 or 4 bytes. */
function setU(dv: DataView, f: Field, value: number): void {
  switch (f[1]) {
    case 1:
      dv.setUint8(f[0], value);
      break;
    case 2:
      dv.setUint16(f[0], value, true);
      break;
    default:
      dv.setUint32(f[0], value >>> 0, true);
  }
}

/** `ibv_query_device`. */
export function queryDevice(c: Context): DeviceAttr {
  const buf = new Uint8Array(IBV_DEVICE_ATTR.size);
  const rc = verbs().ibv_query_device(c.ctx, buf);
  if (rc !== 0) throw new VerbsError("ibv_query_device", rc);
  const dv = new DataView(buf.buffer);
  const f = IBV_DEVICE_ATTR.fields;
  const fw = buf.subarray(f.fw_ver[0], f.fw_ver[0] + f.fw_ver[1]);
  return {
    fwVer: new TextDecoder().decode(fw.subarray(0, Math.max(0, fw.indexOf(0)))),
    maxQpWr: u(dv, f.max_qp_wr),
    maxCqe: u(dv, f.max_cqe),
    maxQpInitRdAtom: u(dv, f.max_qp_init_rd_atom),
    maxQpRdAtom: u(dv, f.max_qp_rd_atom),
    physPortCnt: u(dv, f.phys_port_cnt),
  };
}

/** What we use of `ibv_query_port`. */
export interface PortAttr {
  /** `IBV_PORT_*`; only ACTIVE can carry traffic. */
  state: number;
  /** Active path MTU (`IBV_MTU_*`). */
  activeMtu: number;
  /** Local identifier (InfiniBand; 0 on RoCE). */
  lid: number;
  /** `IBV_LINK_LAYER_*`. */
  linkLayer: number;
  /** GID table length. */
  gidTblLen: number;
}

/** `ibv_query_port` (exported symbol; see {@linkcode IBV_PORT_ATTR}). */
export function queryPort(c: Context, port: number): PortAttr {
  // Zeroed and full-size: the compat entry point writes only its prefix.
  const buf = new Uint8Array(IBV_PORT_ATTR.size);
  const rc = verbs().ibv_query_port(c.ctx, port, buf);
  if (rc !== 0) throw new VerbsError(`ibv_query_port(${c.name}, ${port})`, rc);
  const dv = new DataView(buf.buffer);
  const f = IBV_PORT_ATTR.fields;
  return {
    state: u(dv, f.state),
    activeMtu: u(dv, f.active_mtu),
    lid: u(dv, f.lid),
    linkLayer: u(dv, f.link_layer),
    gidTblLen: u(dv, f.gid_tbl_len),
  };
}

/** `ibv_query_gid`: the 16-byte GID at `index`. */
export function queryGid(c: Context, port: number, index: number): Uint8Array {
  const gid = new Uint8Array(IBV_GID.size);
  const rc = verbs().ibv_query_gid(c.ctx, port, index, gid);
  if (rc !== 0) throw new VerbsError(`ibv_query_gid(${c.name}, ${port}, ${index})`, rc);
  return gid;
}

/** `ibv_alloc_pd`. */
export function allocPd(c: Context): Ptr {
  const pd = verbs().ibv_alloc_pd(c.ctx);
  if (pd === null) throw new VerbsError("ibv_alloc_pd", errno());
  return pd;
}

/** `ibv_dealloc_pd`: 0 or errno (EBUSY while MRs/QPs still use it). */
export function deallocPd(pd: Ptr): number {
  return verbs().ibv_dealloc_pd(pd);
}

/** A registered memory region. */
export interface MemoryRegion {
  /** `struct ibv_mr *`. */
  mr: Ptr;
  /** Start address. */
  addr: number;
  /** Length in bytes. */
  length: number;
  /** Local key, for our own SGEs. */
  lkey: number;
  /** Remote key, handed to the peer that may READ/WRITE it. */
  rkey: number;
}

/** `ibv_reg_mr` (through `ibv_reg_mr_iova2`, as the header's macro does; iova = addr). */
export function regMr(pd: Ptr, address: number, length: number, access: number): MemoryRegion {
  const mr = verbs().ibv_reg_mr_iova2(pd, ptr(address), BigInt(length), BigInt(address), access);
  if (mr === null) {
    const code = errno();
    throw new VerbsError(`ibv_reg_mr(${length} bytes)`, code, code === 12 ? memlockHint() : "");
  }
  const v = new Deno.UnsafePointerView(mr);
  return {
    mr,
    addr: address,
    length,
    lkey: v.getUint32(IBV_MR.fields.lkey[0]),
    rkey: v.getUint32(IBV_MR.fields.rkey[0]),
  };
}

/**
 * Why a registration gets ENOMEM: the kernel pins registered pages and counts
 * them against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK. Names the
 * current limit when /proc says it (needs --allow-read).
 */
function memlockHint(): string {
  let now = "";
  try {
    const line = Deno.readTextFileSync("/proc/self/limits").split("\n")
      .find((l) => l.startsWith("Max locked memory"));
    const soft = line?.slice(26).trim().split(/\s+/)[0];
    if (soft) now = soft === "unlimited" ? " is unlimited" : ` is ${Number(soft) >> 10} KiB`;
  } catch { /* no /proc or no read permission: say it without the number */ }
  return ` (registered memory is pinned and limited by ulimit -l, which${
    now || " may be too low"
  }: raise it, e.g. ulimit -l unlimited or LimitMEMLOCK=infinity)`;
}

/** `ibv_dereg_mr`: 0 or errno. */
export function deregMr(m: MemoryRegion): number {
  return verbs().ibv_dereg_mr(m.mr);
}

/** `ibv_create_comp_channel`. */
export function createCompChannel(c: Context): Ptr {
  const ch = verbs().ibv_create_comp_channel(c.ctx);
  if (ch === null) throw new VerbsError("ibv_create_comp_channel", errno());
  return ch;
}

/** `ibv_destroy_comp_channel`. */
export function destroyCompChannel(ch: Ptr): number {
  return verbs().ibv_destroy_comp_channel(ch);
}

/** `ibv_create_cq(ctx, cqe, NULL, channel, 0)`. */
export function createCq(c: Context, cqe: number, channel: Ptr | null): Ptr {
  const cq = verbs().ibv_create_cq(c.ctx, cqe, null, channel, 0);
  if (cq === null) throw new VerbsError(`ibv_create_cq(${cqe})`, errno());
  return cq;
}

/** `ibv_destroy_cq` (waits for every got event to be acked). */
export function destroyCq(cq: Ptr): number {
  return verbs().ibv_destroy_cq(cq);
}

/**
 * `ibv_get_cq_event` on a worker thread; resolves to the CQ that fired.
 * Every event must later be acked with {@linkcode ackCqEvents}.
 */
export async function getCqEvent(channel: Ptr): Promise<Ptr> {
  const cqOut = new BigUint64Array(1);
  const ctxOut = new BigUint64Array(1);
  const rc = await verbs().ibv_get_cq_event(
    channel,
    new Uint8Array(cqOut.buffer),
    new Uint8Array(ctxOut.buffer),
  );
  if (rc !== 0) throw new VerbsError("ibv_get_cq_event", errno());
  return ptr(cqOut[0]);
}

/** `ibv_ack_cq_events`. */
export function ackCqEvents(cq: Ptr, n: number): void {
  verbs().ibv_ack_cq_events(cq, n);
}

/** Queue sizes for an RC QP. */
export interface QpCaps {
  /** Send queue depth (outstanding READ/WRITE work requests). */
  maxSendWr: number;
  /** Receive queue depth (one-sided verbs need none; 1 keeps providers happy). */
  maxRecvWr: number;
}

/** A created queue pair. */
export interface QueuePair {
  /** `struct ibv_qp *`. */
  qp: Ptr;
  /** Its number, sent to the other side. */
  qpNum: number;
}

/** `ibv_create_qp` for an RC QP whose send and receive completions go to `cq`. */
export function createRcQp(pd: Ptr, cq: Ptr, caps: QpCaps): QueuePair {
  const buf = new Uint8Array(IBV_QP_INIT_ATTR.size);
  const dv = new DataView(buf.buffer);
  const f = IBV_QP_INIT_ATTR.fields;
  dv.setBigUint64(f.send_cq[0], BigInt(addr(cq)), true);
  dv.setBigUint64(f.recv_cq[0], BigInt(addr(cq)), true);
  setU(dv, f["cap.max_send_wr"], caps.maxSendWr);
  setU(dv, f["cap.max_recv_wr"], caps.maxRecvWr);
  setU(dv, f["cap.max_send_sge"], 1);
  setU(dv, f["cap.max_recv_sge"], 1);
  setU(dv, f.qp_type, IBV.IBV_QPT_RC);
  // 0: only work requests posted with IBV_SEND_SIGNALED complete, so a batch
  // can signal its last WR only (RC completes in order).
  setU(dv, f.sq_sig_all, 0);
  const qp = verbs().ibv_create_qp(pd, buf);
  if (qp === null) throw new VerbsError("ibv_create_qp", errno());
  return { qp, qpNum: new Deno.UnsafePointerView(qp).getUint32(IBV_QP.fields.qp_num[0]) };
}

/** `ibv_destroy_qp`. */
export function destroyQp(qp: Ptr): number {
  return verbs().ibv_destroy_qp(qp);
}

/** Where the other end of an RC connection is. */
export interface RemoteQp {
  /** Remote QP number. */
  qpNum: number;
  /** Remote LID (InfiniBand). */
  lid: number;
  /** Remote GID (RoCE, or IB across subnets); all zeros when unused. */
  gid: Uint8Array;
  /** Remote initial packet sequence number (our RQ PSN). */
  psn: number;
}

/** Path parameters both transitions need. */
export interface PathParams {
  /** Local port number (1-based). */
  port: number;
  /** Local GID index, used when the remote GID is non-zero. */
  gidIndex: number;
  /** Path MTU (`IBV_MTU_*`): the smaller of both ports' active MTUs. */
  mtu: number;
  /** Outstanding RDMA READs we initiate / serve (device limits). */
  maxRdAtomic: number;
}

function modify(qp: Ptr, buf: Uint8Array, mask: number, what: string): void {
  const rc = verbs().ibv_modify_qp(qp, buf, mask);
  if (rc !== 0) throw new VerbsError(`ibv_modify_qp(${what})`, rc);
}

/**
 * RESET -> INIT. ibv_modify_qp(3): an RC QP needs STATE, PKEY_INDEX, PORT,
 * ACCESS_FLAGS. Access lets the peer READ and WRITE registered memory through
 * this QP (the MR's own access flags still apply).
 */
export function qpToInit(qp: Ptr, port: number, access: number): void {
  const buf = new Uint8Array(IBV_QP_ATTR.size);
  const dv = new DataView(buf.buffer);
  const f = IBV_QP_ATTR.fields;
  setU(dv, f.qp_state, IBV.IBV_QPS_INIT);
  setU(dv, f.pkey_index, 0);
  setU(dv, f.port_num, port);
  setU(dv, f.qp_access_flags, access);
  modify(
    qp,
    buf,
    IBV.IBV_QP_STATE | IBV.IBV_QP_PKEY_INDEX | IBV.IBV_QP_PORT | IBV.IBV_QP_ACCESS_FLAGS,
    "INIT",
  );
}

/**
 * INIT -> RTR. ibv_modify_qp(3): RC needs STATE, AV, PATH_MTU, DEST_QPN,
 * RQ_PSN, MAX_DEST_RD_ATOMIC, MIN_RNR_TIMER. A non-zero remote GID means a
 * routed (GRH) path, which RoCE always needs.
 */
export function qpToRtr(qp: Ptr, remote: RemoteQp, path: PathParams): void {
  const buf = new Uint8Array(IBV_QP_ATTR.size);
  const dv = new DataView(buf.buffer);
  const f = IBV_QP_ATTR.fields;
  setU(dv, f.qp_state, IBV.IBV_QPS_RTR);
  setU(dv, f.path_mtu, path.mtu);
  setU(dv, f.dest_qp_num, remote.qpNum);
  setU(dv, f.rq_psn, remote.psn);
  setU(dv, f.max_dest_rd_atomic, path.maxRdAtomic);
  setU(dv, f.min_rnr_timer, 12); // 0.64 ms; we post no receives, so RNR never happens
  setU(dv, f["ah_attr.dlid"], remote.lid);
  setU(dv, f["ah_attr.sl"], 0);
  setU(dv, f["ah_attr.src_path_bits"], 0);
  setU(dv, f["ah_attr.port_num"], path.port);
  if (remote.gid.some((b) => b !== 0)) {
    setU(dv, f["ah_attr.is_global"], 1);
    buf.set(remote.gid, f["ah_attr.grh.dgid"][0]);
    setU(dv, f["ah_attr.grh.sgid_index"], path.gidIndex);
    // 64 rather than rc_pingpong's 1, so that a routed RoCE v2 path works too.
    setU(dv, f["ah_attr.grh.hop_limit"], 64);
  }
  modify(
    qp,
    buf,
    IBV.IBV_QP_STATE | IBV.IBV_QP_AV | IBV.IBV_QP_PATH_MTU | IBV.IBV_QP_DEST_QPN |
      IBV.IBV_QP_RQ_PSN | IBV.IBV_QP_MAX_DEST_RD_ATOMIC | IBV.IBV_QP_MIN_RNR_TIMER,
    "RTR",
  );
}

/**
 * RTR -> RTS. ibv_modify_qp(3): RC needs STATE, TIMEOUT, RETRY_CNT,
 * RNR_RETRY, SQ_PSN, MAX_QP_RD_ATOMIC. timeout 14 = 4.096 us * 2^14 = 67 ms
 * per try, 7 tries: a dead peer surfaces as IBV_WC_RETRY_EXC_ERR in about 0.5 s.
 */
export function qpToRts(qp: Ptr, localPsn: number, path: PathParams): void {
  const buf = new Uint8Array(IBV_QP_ATTR.size);
  const dv = new DataView(buf.buffer);
  const f = IBV_QP_ATTR.fields;
  setU(dv, f.qp_state, IBV.IBV_QPS_RTS);
  setU(dv, f.timeout, 14);
  setU(dv, f.retry_cnt, 7);
  setU(dv, f.rnr_retry, 7);
  setU(dv, f.sq_psn, localPsn);
  setU(dv, f.max_rd_atomic, path.maxRdAtomic);
  modify(
    qp,
    buf,
    IBV.IBV_QP_STATE | IBV.IBV_QP_TIMEOUT | IBV.IBV_QP_RETRY_CNT | IBV.IBV_QP_RNR_RETRY |
      IBV.IBV_QP_SQ_PSN | IBV.IBV_QP_MAX_QP_RD_ATOMIC,
    "RTS",
  );
}

/** Moves a QP to ERR so that every outstanding work request is flushed. */
export function qpToErr(qp: Ptr): number {
  const buf = new Uint8Array(IBV_QP_ATTR.size);
  new DataView(buf.buffer).setUint32(IBV_QP_ATTR.fields.qp_state[0], IBV.IBV_QPS_ERR, true);
  return verbs().ibv_modify_qp(qp, buf, IBV.IBV_QP_STATE);
}

/** `ibv_wc_status_str`: e.g. `transport retry counter exceeded`. */
export function wcStatusStr(status: number): string {
  return cstr(verbs().ibv_wc_status_str(status));
}
