/**
 * What of the RDMA transport can run on a machine without an RDMA device:
 * the one-line refusal of `rdma://`, the `auto` fallback to TCP, the peer's
 * refusal, and the control-plane codec (including across two processes over
 * TCP). The data path itself (QP bring-up, READ/WRITE, completions) needs a
 * device and is NOT exercised here.
 *
 * @module
 */

import { test, track, waitUntil } from "../testing/harness.ts";
import { buildTarget, REMOTE_PAGER_PERMS, startPager } from "../testing/procs.ts";
import { makeTokenFile, startPeer } from "../testing/peers.ts";
import assert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { bindContextOps, IBV, IBV_CONTEXT, type Ptr, ptr } from "../ffi/verbs.ts";
import { connectRdmaStore, openRdmaStore } from "../transport/rdma.ts";
import { RdmaUnavailable, type StoreVerbs } from "../transport/rdma/device.ts";
import {
  decode,
  encode,
  HandshakeError,
  MAX_MESSAGE_BYTES,
  MAX_SLABS_PER_MESSAGE,
  RDMA_ERROR,
  type RdmaControlChannel,
  type RdmaMessage,
  readFrame,
  type SlabGrant,
  streamChannel,
  type TunnelChannel,
  tunnelChannel,
} from "../transport/rdma/handshake.ts";
import { type PeerVerbs, RdmaPeerService, refuseRdma } from "../transport/rdma/peer.ts";
import { EmbeddedStore } from "../transport/embedded.ts";
import {
  PAGE_SIZE,
  PageLostError,
  type PageStore,
  StoreUnavailableError,
} from "../transport/store.ts";

/** True where a device exists; the no-device tests then do not apply. */
function hasRdmaDevice(): boolean {
  try {
    return [...Deno.readDirSync("/sys/class/infiniband")].length > 0;
  } catch {
    return false;
  }
}
const noDevice = !hasRdmaDevice();

const baseOpts = {
  replicas: 1,
  namespace: "remora:test:1:abcd",
  tcpFallback: (_: string[]): Promise<PageStore> => {
    throw new Error("fallback must not be called");
  },
};

test({
  name: "rdma:// without a device fails with one line naming the cause and tcp://",
  ignore: !noDevice,
  async fn() {
    const err = await openRdmaStore(["rdma://10.0.0.2:7070", "rdma://10.0.0.3:7070"], {
      ...baseOpts,
      rdma: "required",
    }).then(() => null, (e) => e);
    assert.ok(err instanceof StoreUnavailableError, `got ${err}`);
    const msg = err.message;
    assert.ok(!msg.includes("\n"), `not one line: ${JSON.stringify(msg)}`);
    assert.match(msg, /^RDMA unavailable: /);
    assert.match(msg, /ENOSYS|no RDMA device/);
    assert.ok(msg.includes("tcp://10.0.0.2:7070,tcp://10.0.0.3:7070"), msg);
    console.log(`    message: ${msg}`);
  },
});

test({
  name: "rdma auto falls back to tcpFallback with tcp:// URLs and logs a notice",
  ignore: !noDevice,
  async fn() {
    const records: LogRecord[] = [];
    await configure({
      reset: true,
      sinks: { capture: (r) => records.push(r) },
      loggers: [
        { category: ["remora"], lowestLevel: "debug", sinks: ["capture"] },
        { category: ["logtape", "meta"], lowestLevel: "error", sinks: [] },
      ],
    });
    try {
      const calls: string[][] = [];
      const fallback = new EmbeddedStore();
      const store = await openRdmaStore(["rdma://10.0.0.2:7070", "rdma://10.0.0.3:7071"], {
        ...baseOpts,
        replicas: 2,
        rdma: "auto",
        tcpFallback: (urls) => {
          calls.push(urls);
          return Promise.resolve(fallback);
        },
      });
      assert.equal(store, fallback);
      assert.deepEqual(calls, [["tcp://10.0.0.2:7070", "tcp://10.0.0.3:7071"]]);
      const notices = records.filter((r) => r.level === "warning");
      assert.equal(notices.length, 1);
      const text = notices[0].message.join("");
      assert.match(text, /RDMA unavailable: .*(ENOSYS|no RDMA device)/);
      assert.match(text, /falling back to tcp:\/\/10\.0\.0\.2:7070,tcp:\/\/10\.0\.0\.3:7071/);
      await store.close();
    } finally {
      await reset();
    }
  },
});

test("rdma:// rejects malformed URLs and too few peers for --replicas", async () => {
  await assert.rejects(
    openRdmaStore(["rdma://nohostport"], { ...baseOpts, rdma: "required" }),
    (e: Error) => e instanceof StoreUnavailableError && /not rdma:\/\/host:port/.test(e.message),
  );
  await assert.rejects(
    openRdmaStore(["rdma://a:1"], { ...baseOpts, replicas: 2, rdma: "auto" }),
    (e: Error) => e instanceof StoreUnavailableError && /needs at least 2 peers/.test(e.message),
  );
});

test({
  name: "peer without a device: RdmaPeerService.open says why",
  ignore: !noDevice,
  fn() {
    assert.throws(
      () => RdmaPeerService.open({ device: "auto", capacityBytes: 1 << 30 }),
      (e: Error) => e instanceof RdmaUnavailable && /ENOSYS|no RDMA device/.test(e.message),
    );
  },
});

// ---- control-plane codec --------------------------------------------------

const gid = Uint8Array.from({ length: 16 }, (_, i) => (i * 17) & 0xff);
const qp = { qpNum: 0xabcdef, lid: 0x1234, psn: 0x00fedc, mtu: 5, rdAtomic: 16, gid };
const slab = (i: number) => ({
  slabId: i,
  rkey: 0xdeadbeef - i,
  addr: 0x7f00_0000_0000n + BigInt(i) * 0x400_0000n,
  length: 64 << 20,
});
const samples: RdmaMessage[] = [
  { type: "hello", qp, slabsWanted: 4, namespace: "remora:host:42:cafe" },
  { type: "accept", qp: { ...qp, gid: new Uint8Array(16) }, slabs: [slab(1), slab(2)] },
  { type: "accept", qp, slabs: [] },
  {
    type: "accept",
    qp,
    slabs: Array.from({ length: MAX_SLABS_PER_MESSAGE }, (_, i) => slab(i + 1)),
  },
  { type: "slab-request", count: 3 },
  { type: "slab-grant", slabs: [slab(9)] },
  { type: "slab-grant", slabs: [] },
  { type: "slab-drain", slabId: 0xffffffff },
  { type: "slab-released", slabId: 7 },
  { type: "slab-kept", slabId: 8 },
  { type: "error", code: RDMA_ERROR.NO_DEVICE, message: "no RDMA device: ENOSYS – ü" },
];

test("handshake codec round-trips every message type", () => {
  for (const m of samples) {
    const bytes = encode(m);
    assert.ok(bytes.length <= MAX_MESSAGE_BYTES);
    assert.deepEqual(decode(bytes), m);
  }
});

test("handshake codec rejects every truncation and any trailing byte", () => {
  for (const m of samples) {
    const bytes = encode(m);
    for (let n = 0; n < bytes.length; n++) {
      assert.throws(() => decode(bytes.subarray(0, n)), HandshakeError, `${m.type} cut at ${n}`);
    }
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    assert.throws(() => decode(longer), HandshakeError, `${m.type} plus one byte`);
  }
  assert.throws(() => decode(new Uint8Array(MAX_MESSAGE_BYTES + 1)), /longer than any message/);
});

test("handshake codec rejects bad headers and out-of-range fields", () => {
  const good = encode(samples[0]);
  for (
    const [at, value, why] of [[0, 0x53, /magic/], [1, 2, /version/], [2, 99, /unknown type/], [
      3,
      1,
      /reserved/,
    ]] as const
  ) {
    const b = good.slice();
    b[at] = value;
    assert.throws(() => decode(b), why);
  }
  // mtu byte of the hello's qp is at 4 + 10
  const badMtu = good.slice();
  badMtu[14] = 6;
  assert.throws(() => decode(badMtu), /mtu 6/);
  const badDepth = good.slice();
  badDepth[15] = 0;
  assert.throws(() => decode(badDepth), /rd_atomic 0/);
  const bad: [RdmaMessage, RegExp][] = [
    [{ type: "hello", qp: { ...qp, qpNum: 1 << 24 }, slabsWanted: 1, namespace: "n" }, /qp_num/],
    [{ type: "hello", qp: { ...qp, psn: -1 }, slabsWanted: 1, namespace: "n" }, /psn/],
    [{ type: "hello", qp: { ...qp, mtu: 0 }, slabsWanted: 1, namespace: "n" }, /mtu/],
    [
      { type: "hello", qp: { ...qp, gid: new Uint8Array(15) }, slabsWanted: 1, namespace: "n" },
      /gid/,
    ],
    [{ type: "hello", qp, slabsWanted: 1, namespace: "" }, /namespace/],
    [{ type: "hello", qp, slabsWanted: 1, namespace: "x".repeat(256) }, /namespace/],
    [{ type: "slab-grant", slabs: [{ ...slab(1), length: 4095 }] }, /multiple of 4096/],
    [{ type: "slab-grant", slabs: [{ ...slab(1), addr: 0n }] }, /address/],
    [
      { type: "slab-grant", slabs: [{ ...slab(1), addr: 2n ** 64n - 4096n, length: 8192 }] },
      /wraps/,
    ],
    [{
      type: "slab-grant",
      slabs: Array.from({ length: MAX_SLABS_PER_MESSAGE + 1 }, (_, i) => slab(i + 1)),
    }, /65 slabs/],
    [{ type: "slab-request", count: 0 }, /count/],
    [{ type: "slab-request", count: MAX_SLABS_PER_MESSAGE + 1 }, /count/],
    [{ type: "error", code: 1, message: "x".repeat(1025) }, /too long/],
  ];
  for (const [m, why] of bad) assert.throws(() => encode(m), why, JSON.stringify(m.type));
  // A slab count that promises more slabs than the bytes hold.
  const grant = encode({ type: "slab-grant", slabs: [slab(1)] });
  new DataView(grant.buffer).setUint16(4, 2);
  assert.throws(() => decode(grant), /truncated/);
});

test("readFrame refuses an oversized frame before reading its body", async () => {
  const head = new Uint8Array(4);
  new DataView(head.buffer).setUint32(0, MAX_MESSAGE_BYTES + 1);
  let reads = 0;
  const reader = {
    read(p: Uint8Array) {
      reads++;
      if (reads > 1) throw new Error("body must not be read");
      p.set(head);
      return Promise.resolve(4);
    },
  };
  await assert.rejects(readFrame(reader), /frame of \d+ bytes/);
});

// ---- across two processes over TCP ------------------------------------------

const FAKE_PEER = `
import { streamChannel } from ${
  JSON.stringify(new URL("../transport/rdma/handshake.ts", import.meta.url).href)
};
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.log(listener.addr.port);
const conn = await listener.accept();
listener.close();
const ch = streamChannel(conn);
const hello = await ch.receive();
if (hello?.type !== "hello") throw new Error("expected hello, got " + hello?.type);
const slab = (id) => ({ slabId: id, rkey: 1000 + id, addr: 0x7f0000000000n + BigInt(id) * 0x100000n, length: 1 << 20 });
await ch.send({ type: "accept", qp: { ...hello.qp, qpNum: hello.qp.qpNum + 1, psn: 77 },
  slabs: Array.from({ length: hello.slabsWanted }, (_, i) => slab(i + 1)) });
const req = await ch.receive();
if (req?.type !== "slab-request") throw new Error("expected slab-request");
await ch.send({ type: "slab-grant", slabs: [slab(100)] });
await ch.send({ type: "slab-drain", slabId: 1 });
const rel = await ch.receive();
if (rel?.type !== "slab-released" || rel.slabId !== 1) throw new Error("expected slab-released 1");
await ch.send({ type: "error", code: 1, message: "bye " + hello.namespace });
ch.close();
`;

test("control messages cross a real TCP connection between two Deno processes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "remora-rdma-" });
  const script = `${dir}/fake_peer.ts`;
  await Deno.writeTextFile(script, FAKE_PEER);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "--no-lock", "--allow-net", script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  track("fake rdma peer", child, () => "(its stdout is read by the test; stderr is inherited)");
  try {
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const { value } = await lines.read();
    const port = Number(value!.trim());
    const ch = streamChannel(await Deno.connect({ hostname: "127.0.0.1", port }));
    await ch.send({ type: "hello", qp, slabsWanted: 3, namespace: "remora:test:2:beef" });
    const accept = await ch.receive();
    assert.ok(accept?.type === "accept");
    assert.equal(accept.qp.qpNum, qp.qpNum + 1);
    assert.equal(accept.qp.psn, 77);
    assert.deepEqual(accept.qp.gid, gid);
    assert.deepEqual(accept.slabs.map((s) => s.slabId), [1, 2, 3]);
    assert.equal(accept.slabs[2].addr, 0x7f0000000000n + 3n * 0x100000n);
    await ch.send({ type: "slab-request", count: 1 });
    assert.deepEqual(await ch.receive(), {
      type: "slab-grant",
      slabs: [{
        slabId: 100,
        rkey: 1100,
        addr: 0x7f0000000000n + 100n * 0x100000n,
        length: 1 << 20,
      }],
    });
    assert.deepEqual(await ch.receive(), { type: "slab-drain", slabId: 1 });
    await ch.send({ type: "slab-released", slabId: 1 });
    assert.deepEqual(await ch.receive(), {
      type: "error",
      code: 1,
      message: "bye remora:test:2:beef",
    });
    assert.equal(await ch.receive(), null);
    ch.close();
    await lines.cancel();
    assert.equal((await child.status).code, 0);
  } finally {
    try {
      child.kill();
    } catch { /* already exited */ }
    await Deno.remove(dir, { recursive: true });
  }
});

test("a peer without RDMA refuses the hello with NO_DEVICE over the channel", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    const ch = streamChannel(await listener.accept());
    const hello = await ch.receive();
    assert.equal(hello?.type, "hello");
    await refuseRdma(ch, "ibv_get_device_list failed: ENOSYS");
    ch.close();
  })();
  const ch = streamChannel(
    await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
  );
  await ch.send({ type: "hello", qp, slabsWanted: 1, namespace: "n" });
  assert.deepEqual(await ch.receive(), {
    type: "error",
    code: RDMA_ERROR.NO_DEVICE,
    message: "ibv_get_device_list failed: ENOSYS",
  });
  ch.close();
  await served;
  listener.close();
});

// ---- the client store's logic over a simulated provider ---------------------
//
// A tiny C "provider" compiled against the real verbs.h fills a real
// `struct ibv_context` with post_send / poll_cq / req_notify_cq, so the store
// calls them exactly as it calls a device: through the ops table, with WR
// chains, SGEs and WCs laid out by ffi/verbs.ts and read by C with the real
// struct definitions. Like hardware, it completes work later (when the store
// sleeps on the armed CQ), moves bytes only then, and checks lkeys and rkeys
// against registered ranges. What this does NOT cover: libibverbs itself,
// QP state machines, the wire, real timing.

const SIM_C = String.raw`
#include <infiniband/verbs.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#define MAXQ 65536
struct region { uint64_t addr, len; uint32_t key; int live; uint64_t hits; void *pd; };
static struct region remote[1024]; static int nremote;
static struct region local;
struct work { uint64_t id, laddr, raddr; uint32_t len, lkey, rkey; int opcode, nsge, flags; struct ibv_qp *qp; };
static struct work queued[MAXQ]; static unsigned qhead, qtail;
static struct ibv_wc cqes[MAXQ]; static unsigned chead, ctail;
static int armed; static uint32_t dead[64]; static int ndead;
static uint64_t posts, wrs, longest, bad_access;
static struct ibv_qp *qps[4096]; static int nqps;
/* The responder QP a requester QP was connected to (RTR), if the sim created it. */
static struct ibv_qp *responder(struct ibv_qp *qp) {
  uint32_t want = (uint32_t)(uintptr_t)qp->qp_context;
  for (int i = 0; want && i < nqps; i++) if (qps[i]->qp_num == want - 1) return qps[i];
  return NULL;
}

static int sim_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
  uint64_t chain = 0;
  posts++;
  for (; wr; wr = wr->next) {
    if (qp->state != IBV_QPS_RTS && qp->state != IBV_QPS_ERR) { *bad = wr; return EINVAL; }
    if (qtail - qhead >= MAXQ) { *bad = wr; return ENOMEM; }
    struct work *w = &queued[qtail++ % MAXQ];
    /* Copy everything now: the caller may reuse the WR and SGE memory at once. */
    w->id = wr->wr_id; w->qp = qp; w->opcode = wr->opcode; w->nsge = wr->num_sge;
    w->flags = wr->send_flags; w->raddr = wr->wr.rdma.remote_addr; w->rkey = wr->wr.rdma.rkey;
    w->laddr = wr->sg_list[0].addr; w->len = wr->sg_list[0].length; w->lkey = wr->sg_list[0].lkey;
    chain++; wrs++;
  }
  if (chain > longest) longest = chain;
  return 0;
}
static int sim_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc) {
  int i = 0;
  (void)cq;
  while (i < n && chead != ctail) wc[i++] = cqes[chead++ % MAXQ];
  return i;
}
static int sim_req_notify_cq(struct ibv_cq *cq, int solicited) { (void)cq; (void)solicited; armed = 1; return 0; }
static struct region *find(uint32_t rkey, uint64_t a, uint64_t n) {
  for (int i = 0; i < nremote; i++) {
    struct region *r = &remote[i];
    if (r->live && r->key == rkey && a >= r->addr && a + n <= r->addr + r->len) return r;
  }
  return NULL;
}
static int is_dead(uint32_t qpn) { for (int i = 0; i < ndead; i++) if (dead[i] == qpn) return 1; return 0; }
/* The "hardware" runs: executes queued work in order and posts completions. */
int sim_process(void) {
  int was_armed = armed;
  armed = 0;
  while (qhead != qtail) {
    struct work *w = &queued[qhead++ % MAXQ];
    int st = IBV_WC_SUCCESS;
    if (w->qp->state == IBV_QPS_ERR) st = IBV_WC_WR_FLUSH_ERR;
    else if (is_dead(w->qp->qp_num)) st = IBV_WC_RETRY_EXC_ERR;
    else if (w->nsge != 1 || !(w->flags & IBV_SEND_SIGNALED) || w->len != 4096) st = IBV_WC_LOC_QP_OP_ERR;
    else if (w->lkey != local.key || w->laddr < local.addr || w->laddr + w->len > local.addr + local.len) st = IBV_WC_LOC_PROT_ERR;
    else {
      struct region *r = find(w->rkey, w->raddr, w->len);
      struct ibv_qp *resp = responder(w->qp);
      /* Like an HCA: an rkey is honoured only on a QP of the MR's own PD. */
      if (r && resp && r->pd != (void *)resp->pd) r = NULL;
      if (!r) { st = IBV_WC_REM_ACCESS_ERR; bad_access++; }
      else {
        r->hits++;
        if (w->opcode == IBV_WR_RDMA_READ) memcpy((void *)w->laddr, (void *)w->raddr, w->len);
        else if (w->opcode == IBV_WR_RDMA_WRITE) memcpy((void *)w->raddr, (void *)w->laddr, w->len);
        else st = IBV_WC_LOC_QP_OP_ERR;
      }
    }
    if (st != IBV_WC_SUCCESS) w->qp->state = IBV_QPS_ERR;
    struct ibv_wc *c = &cqes[ctail++ % MAXQ];
    memset(c, 0, sizeof *c);
    c->wr_id = w->id; c->status = st; c->qp_num = w->qp->qp_num; c->byte_len = w->len;
    c->opcode = w->opcode == IBV_WR_RDMA_READ ? IBV_WC_RDMA_READ : IBV_WC_RDMA_WRITE;
  }
  return was_armed;
}
void sim_init(struct ibv_context *ctx) {
  memset(ctx, 0, sizeof *ctx);
  ctx->ops.post_send = sim_post_send;
  ctx->ops.poll_cq = sim_poll_cq;
  ctx->ops.req_notify_cq = sim_req_notify_cq;
}
struct ibv_qp *sim_create_qp(uint32_t qpn) {
  struct ibv_qp *qp = calloc(1, sizeof *qp);
  qp->qp_num = qpn; qp->state = IBV_QPS_RESET; qp->qp_type = IBV_QPT_RC;
  if (nqps < 4096) qps[nqps++] = qp;
  return qp;
}
void sim_destroy_qp(struct ibv_qp *qp) {
  for (int i = 0; i < nqps; i++) if (qps[i] == qp) qps[i] = qps[--nqps];
  free(qp);
}
void sim_set_pd(struct ibv_qp *qp, void *pd) { qp->pd = pd; }
void sim_connect(struct ibv_qp *qp, uint32_t remote_qpn) { qp->qp_context = (void *)(uintptr_t)(remote_qpn + 1); }
void sim_set_remote_pd(uint32_t key, void *pd) { for (int i = 0; i < nremote; i++) if (remote[i].key == key) remote[i].pd = pd; }
/* Posts one forged READ of (raddr, rkey) on qp into the local buffer and runs it. */
int sim_forge_read(struct ibv_qp *qp, uint64_t raddr, uint32_t rkey) {
  struct ibv_sge sge = { local.addr, 4096, local.key };
  struct ibv_send_wr wr = { 0 }, *bad;
  wr.wr_id = 424242; wr.sg_list = &sge; wr.num_sge = 1; wr.opcode = IBV_WR_RDMA_READ;
  wr.send_flags = IBV_SEND_SIGNALED; wr.wr.rdma.remote_addr = raddr; wr.wr.rdma.rkey = rkey;
  if (sim_post_send(qp, &wr, &bad)) return -1;
  sim_process();
  struct ibv_wc wc;
  int st = -1;
  while (sim_poll_cq(NULL, 1, &wc) == 1) if (wc.wr_id == 424242) st = wc.status;
  return st;
}
int sim_set_state(struct ibv_qp *qp, int from, int to) {
  if (from >= 0 && (int)qp->state != from) return -1;
  qp->state = to; return 0;
}
void sim_set_local(uint64_t a, uint64_t n, uint32_t key) { local.addr = a; local.len = n; local.key = key; local.live = 1; }
void sim_add_remote(uint64_t a, uint64_t n, uint32_t key) { remote[nremote++] = (struct region){ a, n, key, 1, 0 }; }
void sim_remove_remote(uint32_t key) { for (int i = 0; i < nremote; i++) if (remote[i].key == key) remote[i].live = 0; }
void sim_kill_qpn(uint32_t qpn) { dead[ndead++] = qpn; }
uint64_t sim_stat(int which) {
  switch (which) { case 0: return posts; case 1: return wrs; case 2: return longest; default: return bad_access; }
}
`;

const SIM_SYMBOLS = {
  sim_init: { parameters: ["buffer"], result: "void" },
  sim_process: { parameters: [], result: "i32" },
  sim_create_qp: { parameters: ["u32"], result: "pointer" },
  sim_destroy_qp: { parameters: ["pointer"], result: "void" },
  sim_set_state: { parameters: ["pointer", "i32", "i32"], result: "i32" },
  sim_set_local: { parameters: ["u64", "u64", "u32"], result: "void" },
  sim_add_remote: { parameters: ["u64", "u64", "u32"], result: "void" },
  sim_remove_remote: { parameters: ["u32"], result: "void" },
  sim_kill_qpn: { parameters: ["u32"], result: "void" },
  sim_set_pd: { parameters: ["pointer", "pointer"], result: "void" },
  sim_connect: { parameters: ["pointer", "u32"], result: "void" },
  sim_set_remote_pd: { parameters: ["u32", "pointer"], result: "void" },
  sim_forge_read: { parameters: ["pointer", "u64", "u32"], result: "i32" },
  sim_stat: { parameters: ["i32"], result: "u64" },
} as const;

type Sim = Deno.DynamicLibrary<typeof SIM_SYMBOLS>["symbols"];

/** Compiles and loads a fresh simulated provider (fresh static state per test). */
async function loadSim(): Promise<{ sim: Sim; close: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "remora-sim-" });
  await Deno.writeTextFile(`${dir}/sim.c`, SIM_C);
  const out = await new Deno.Command("gcc", {
    args: ["-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o", `${dir}/sim.so`, `${dir}/sim.c`],
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  const lib = Deno.dlopen(`${dir}/sim.so`, SIM_SYMBOLS);
  return {
    sim: lib.symbols,
    // The library stays loaded: a store left open by a failing test may still
    // call into it, and unloading would turn the failure into a crash.
    close: () => Deno.remove(dir, { recursive: true }),
  };
}

/** StoreVerbs over the simulated provider; QP transitions are checked in order. */
function simVerbs(sim: Sim, maxQpWr: number): StoreVerbs & { qps: Map<number, Ptr> } {
  const ctx = new Uint8Array(IBV_CONTEXT.size);
  sim.sim_init(ctx);
  const ctxPtr = Deno.UnsafePointer.of(ctx)!;
  const cq = ptr(0x2000);
  let qpn = 100;
  const qps = new Map<number, Ptr>();
  const step = (qp: Ptr, from: number, to: number) => {
    if (sim.sim_set_state(qp, from, to) !== 0) throw new Error(`QP not in state ${from}`);
  };
  return {
    qps,
    maxCqe: 1 << 16,
    maxQpWr,
    ops: bindContextOps(ctxPtr),
    regMr: (address, length) => {
      sim.sim_set_local(BigInt(address), BigInt(length), 0x51);
      return { mr: ptr(address), addr: address, length, lkey: 0x51, rkey: 0 };
    },
    deregMr: () => {},
    createCompChannel: () => ptr(0x1000),
    destroyCompChannel: () => {},
    createCq: () => cq,
    destroyCq: () => {},
    createRcQp: () => {
      const n = qpn++;
      const qp = sim.sim_create_qp(n)!;
      qps.set(n, qp);
      return { qp, qpNum: n };
    },
    destroyQp: (qp) => sim.sim_destroy_qp(qp),
    qpToInit: (qp) => step(qp, IBV.IBV_QPS_RESET, IBV.IBV_QPS_INIT),
    qpToRtr: (qp, remote) => {
      step(qp, IBV.IBV_QPS_INIT, IBV.IBV_QPS_RTR);
      sim.sim_connect(qp, remote.qpNum);
    },
    qpToRts: (qp) => step(qp, IBV.IBV_QPS_RTR, IBV.IBV_QPS_RTS),
    qpToErr: (qp) => void sim.sim_set_state(qp, -1, IBV.IBV_QPS_ERR),
    localEndpoint: (qpNum, psn) => ({
      qpNum,
      lid: 1,
      psn,
      mtu: 5,
      rdAtomic: 16,
      gid: new Uint8Array(16),
    }),
    // The "hardware" runs only while the store sleeps on the CQ, and only if
    // it armed the CQ first (a missed arm would hang a real device).
    getCqEvent: async () => {
      await new Promise((r) => setTimeout(r, 0));
      if (sim.sim_process() !== 1) throw new Error("slept on a CQ that was not armed");
      return cq;
    },
    ackCqEvents: () => {},
    wcStatusStr: (s) => `wc status ${s}`,
    close: () => {},
  };
}

/** Two in-memory control channel ends, joined the way the peer protocol will carry them. */
function channelPair(): [RdmaControlChannel, RdmaControlChannel] {
  // Payloads cross as copies, like frames on a socket.
  const ends: TunnelChannel[] = [];
  const to = (i: number) => ends[i];
  ends.push(
    tunnelChannel((p) => Promise.resolve(to(1).deliver(p.slice())), () => to(1).deliver(null)),
  );
  ends.push(
    tunnelChannel((p) => Promise.resolve(to(0).deliver(p.slice())), () => to(0).deliver(null)),
  );
  return [ends[0].channel, ends[1].channel];
}

/** A peer daemon's RDMA side in miniature: slabs of JS memory, registered in the sim. */
class SimPeer {
  readonly memory = new Map<number, Uint8Array>();
  readonly rkeys = new Map<number, number>();
  readonly released: number[] = [];
  channel?: RdmaControlChannel;
  #next = 1;
  constructor(
    readonly sim: Sim,
    readonly index: number,
    readonly slabPages: number,
    readonly maxSlabs: number,
  ) {}
  #grant(n: number): SlabGrant[] {
    const out: SlabGrant[] = [];
    while (out.length < n && this.memory.size < this.maxSlabs) {
      const id = this.#next++;
      const buf = new Uint8Array(this.slabPages * PAGE_SIZE);
      const address = Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)!);
      const rkey = (this.index << 16) | id;
      this.sim.sim_add_remote(BigInt(address), BigInt(buf.length), rkey);
      this.memory.set(id, buf);
      this.rkeys.set(id, rkey);
      out.push({ slabId: id, rkey, addr: BigInt(address), length: buf.length });
    }
    return out;
  }
  async serve(ch: RdmaControlChannel): Promise<void> {
    this.channel = ch;
    for (;;) {
      const m = await ch.receive();
      if (m === null) return;
      if (m.type === "hello") {
        await ch.send({
          type: "accept",
          qp: { ...m.qp, qpNum: 9000 + this.index, psn: 5 },
          slabs: this.#grant(m.slabsWanted),
        });
      } else if (m.type === "slab-request") {
        await ch.send({ type: "slab-grant", slabs: this.#grant(m.count) });
      } else if (m.type === "slab-released") {
        // Revoke: from now on any access to it fails like a deregistered MR.
        this.sim.sim_remove_remote(this.rkeys.get(m.slabId)!);
        this.memory.delete(m.slabId);
        this.released.push(m.slabId);
      }
    }
  }
}

function randomPages(n: number): Uint8Array {
  const pages = new Uint8Array(n * PAGE_SIZE);
  for (let off = 0; off < pages.length; off += 65536) {
    crypto.getRandomValues(pages.subarray(off, Math.min(pages.length, off + 65536)));
  }
  return pages;
}

async function simStore(
  sim: Sim,
  peers: SimPeer[],
  replicas: number,
  extra: { onLoss?: (k: Uint32Array) => void; initialSlabs?: number; maxQpWr?: number } = {},
) {
  const verbs = simVerbs(sim, extra.maxQpWr ?? 128);
  const urls = peers.map((p) => `rdma://10.0.0.${p.index}:7070`);
  const store = await connectRdmaStore(
    urls,
    {
      replicas,
      namespace: "remora:sim:1:0",
      onLoss: extra.onLoss,
      initialSlabs: extra.initialSlabs,
    },
    verbs,
    (url) => {
      const [client, server] = channelPair();
      peers[urls.indexOf(url)].serve(server);
      return Promise.resolve(client);
    },
  );
  return { store, verbs };
}

test("simulated provider: put/get round trip, two replicas, batching, flow control", async () => {
  const { sim, close } = await loadSim();
  try {
    const peers = [new SimPeer(sim, 1, 256, 8), new SimPeer(sim, 2, 256, 8)];
    const { store } = await simStore(sim, peers, 2);
    const n = 700; // more than the staging buffer (512) and the send queue (128)
    const keys = Uint32Array.from({ length: n }, (_, i) => i * 7 + 3);
    const pages = randomPages(n);
    await store.put(keys, pages);
    const back = new Uint8Array(n * PAGE_SIZE);
    await store.get(keys, back);
    assert.ok(back.every((b, i) => b === pages[i]), "pages differ after the round trip");
    // Both replicas hold every page, byte for byte.
    for (const p of peers) {
      const held = new Set<string>();
      for (const buf of p.memory.values()) {
        for (let o = 0; o < buf.length; o += PAGE_SIZE) held.add(buf.subarray(o, o + 64).join());
      }
      for (let i = 0; i < n; i++) {
        assert.ok(
          held.has(pages.subarray(i * PAGE_SIZE, i * PAGE_SIZE + 64).join()),
          `peer ${p.index} page ${i}`,
        );
      }
    }
    const h = store.health();
    assert.equal(h.pages, n);
    assert.equal(h.replicationDeficit, 0);
    assert.deepEqual(h.endpoints.map((e) => [e.state, e.pages]), [["up", n], ["up", n]]);
    // Work went out in chains (not one post_send per page) and never past the depth.
    const posts = Number(sim.sim_stat(0));
    const wrs = Number(sim.sim_stat(1));
    assert.equal(wrs, n * 2 + n); // two WRITEs and one READ per page
    assert.ok(posts < wrs / 8, `${posts} post_send calls for ${wrs} WRs`);
    assert.ok(Number(sim.sim_stat(2)) <= 64, "chain longer than POST_BATCH");
    assert.equal(Number(sim.sim_stat(3)), 0);
    // Overwrite in place, then delete: a deleted key is not served.
    const again = randomPages(1);
    await store.put(keys.subarray(0, 1), again);
    const one = new Uint8Array(PAGE_SIZE);
    await store.get(keys.subarray(0, 1), one);
    assert.deepEqual(one, again);
    await store.delete(keys.subarray(0, 1));
    await assert.rejects(store.get(keys.subarray(0, 1), one), PageLostError);
    await store.close();
  } finally {
    await close();
  }
});

test("simulated provider: a QP error fails the peer; replicas serve, then loss is reported", async () => {
  const { sim, close } = await loadSim();
  try {
    const peers = [new SimPeer(sim, 1, 64, 4), new SimPeer(sim, 2, 64, 4)];
    const lost: number[] = [];
    const { store, verbs } = await simStore(sim, peers, 2, { onLoss: (k) => lost.push(...k) });
    const n = 50;
    const keys = Uint32Array.from({ length: n }, (_, i) => i);
    const pages = randomPages(n);
    await store.put(keys, pages);
    sim.sim_kill_qpn([...verbs.qps.keys()][0]); // peer 1 stops answering
    const back = new Uint8Array(n * PAGE_SIZE);
    await store.get(keys, back);
    assert.ok(back.every((b, i) => b === pages[i]));
    let h = store.health();
    assert.deepEqual(h.endpoints.map((e) => e.state), ["down", "up"]);
    assert.equal(h.replicationDeficit, n);
    assert.deepEqual(lost, []);
    sim.sim_kill_qpn([...verbs.qps.keys()][1]);
    const err = await store.get(keys, back).then(() => null, (e) => e);
    assert.ok(err instanceof PageLostError, `got ${err}`);
    assert.equal(err.keys.length, n);
    assert.deepEqual(lost.sort((a, b) => a - b), [...keys]);
    h = store.health();
    assert.deepEqual(h.endpoints.map((e) => e.state), ["down", "down"]);
    await assert.rejects(store.put(keys, pages), StoreUnavailableError);
    await store.close();
  } finally {
    await close();
  }
});

test("simulated provider: full slabs make the client ask for more", async () => {
  const { sim, close } = await loadSim();
  try {
    const peer = new SimPeer(sim, 1, 16, 4); // 4 slabs of 16 pages at most
    const { store } = await simStore(sim, [peer], 1, { initialSlabs: 1 });
    const keys = Uint32Array.from({ length: 60 }, (_, i) => 1000 + i);
    const pages = randomPages(60);
    await store.put(keys, pages);
    assert.equal(peer.memory.size, 4);
    const back = new Uint8Array(pages.length);
    await store.get(keys, back);
    assert.deepEqual(back, pages);
    await assert.rejects(
      store.put(Uint32Array.of(5000, 5001, 5002, 5003, 5004), randomPages(5)),
      /no RDMA peer has room/,
    );
    await store.close();
  } finally {
    await close();
  }
});

test("simulated provider: a drained slab is released only after its pages moved", async () => {
  const { sim, close } = await loadSim();
  try {
    const peers = [new SimPeer(sim, 1, 32, 4), new SimPeer(sim, 2, 32, 4)];
    const { store } = await simStore(sim, peers, 1, { initialSlabs: 2 });
    const n = 100;
    const keys = Uint32Array.from({ length: n }, (_, i) => i);
    const pages = randomPages(n);
    await store.put(keys, pages);
    const victim = [...peers[0].memory.keys()][0];
    const before = peers[0].memory.get(victim)!.slice();
    assert.ok(before.some((b) => b !== 0), "the drained slab held pages");
    await peers[0].channel!.send({ type: "slab-drain", slabId: victim });
    await waitUntil("the drained slab to be released", () => peers[0].released.includes(victim));
    assert.deepEqual(peers[0].released, [victim]);
    // The registration is revoked now: any READ of it would fail the peer.
    const back = new Uint8Array(n * PAGE_SIZE);
    await store.get(keys, back);
    assert.ok(back.every((b, i) => b === pages[i]));
    assert.equal(Number(sim.sim_stat(3)), 0, "something touched a revoked slab");
    assert.deepEqual(store.health().endpoints.map((e) => e.state), ["up", "up"]);
    await store.close();
  } finally {
    await close();
  }
});

/** PeerVerbs over the simulated provider: registrations become sim regions. */
function simPeerVerbs(sim: Sim): PeerVerbs & { mrs: { address: number; rkey: number }[] } {
  const mrs: { address: number; rkey: number }[] = [];
  let qpn = 5000;
  let rkey = 0x7000;
  let pds = 0;
  const step = (qp: Ptr, from: number, to: number) => {
    if (sim.sim_set_state(qp, from, to) !== 0) throw new Error(`QP not in state ${from}`);
  };
  return {
    mrs,
    deviceName: "sim0",
    createCq: () => ptr(0x3000),
    destroyCq: () => {},
    allocPd: () => ptr(0x4000 + pds++),
    deallocPd: () => {},
    createRcQp: (pd) => {
      const n = qpn++;
      const qp = sim.sim_create_qp(n)!;
      sim.sim_set_pd(qp, pd);
      return { qp, qpNum: n };
    },
    destroyQp: (qp) => sim.sim_destroy_qp(qp),
    qpToInit: (qp, access) => {
      assert.equal(access, IBV.IBV_ACCESS_REMOTE_READ | IBV.IBV_ACCESS_REMOTE_WRITE);
      step(qp, IBV.IBV_QPS_RESET, IBV.IBV_QPS_INIT);
    },
    qpToRtr: (qp) => step(qp, IBV.IBV_QPS_INIT, IBV.IBV_QPS_RTR),
    qpToRts: (qp) => step(qp, IBV.IBV_QPS_RTR, IBV.IBV_QPS_RTS),
    qpToErr: (qp) => void sim.sim_set_state(qp, -1, IBV.IBV_QPS_ERR),
    regMr: (pd, address, length) => {
      const key = rkey++;
      sim.sim_add_remote(BigInt(address), BigInt(length), key);
      sim.sim_set_remote_pd(key, pd);
      mrs.push({ address, rkey: key });
      return { mr: ptr(address), addr: address, length, lkey: key, rkey: key };
    },
    deregMr: (mr) => sim.sim_remove_remote(mr.rkey),
    localEndpoint: (qpNum, psn) => ({
      qpNum,
      lid: 2,
      psn,
      mtu: 5,
      rdAtomic: 16,
      gid: new Uint8Array(16),
    }),
    close: () => {},
  };
}

test("simulated provider: client store against the real peer service (grant, drain, session end)", async () => {
  const { sim, close } = await loadSim();
  try {
    const slabBytes = 16 * PAGE_SIZE;
    const service = RdmaPeerService.withVerbs(simPeerVerbs(sim), {
      capacityBytes: 6 * slabBytes,
      slabBytes,
    });
    const sessions: Promise<void>[] = [];
    const store = await connectRdmaStore(
      ["rdma://10.0.0.9:7070"],
      { replicas: 1, namespace: "remora:sim:2:0", initialSlabs: 2 },
      simVerbs(sim, 128),
      () => {
        const [client, server] = channelPair();
        sessions.push((async () => {
          const hello = await server.receive();
          assert.equal(hello?.type, "hello");
          if (hello?.type === "hello") await service.serve(server, hello);
        })());
        return Promise.resolve(client);
      },
    );
    const n = 50;
    const keys = Uint32Array.from({ length: n }, (_, i) => 77 + i);
    const pages = randomPages(n);
    await store.put(keys, pages);
    assert.equal(service.usedBytes, 4 * slabBytes); // 2 at hello, 2 more on demand
    assert.deepEqual(new Set(service.slabs().map((s) => s.namespace)), new Set(["remora:sim:2:0"]));
    const victim = service.slabs()[0].slabId;
    await service.drain(victim); // resolves only after SLAB_RELEASED and deregistration
    assert.ok(!service.slabs().some((s) => s.slabId === victim));
    const back = new Uint8Array(n * PAGE_SIZE);
    await store.get(keys, back);
    assert.ok(back.every((b, i) => b === pages[i]));
    assert.equal(Number(sim.sim_stat(3)), 0, "a revoked registration was accessed");
    // Fill the peer completely: a drain now has nowhere to go and is refused.
    const more = Uint32Array.from({ length: 96 }, (_, i) => 5000 + i);
    await store.put(more, randomPages(96)).catch(() => {});
    const full = service.slabs();
    assert.equal(full.length, 6);
    await assert.rejects(service.drain(full[0].slabId), /kept slab/);
    assert.equal(service.slabs().length, 6, "a kept slab stays registered");
    await store.get(keys, back);
    assert.ok(back.every((b, i) => b === pages[i]));
    await store.close();
    await Promise.all(sessions);
    assert.equal(service.usedBytes, 0, "session end frees every slab");
    await service.close();
  } finally {
    await close();
  }
});

test("simulated provider: each client session has its own PD, so a stolen rkey is refused", async () => {
  const { sim, close } = await loadSim();
  try {
    const peerVerbs = simPeerVerbs(sim);
    const service = RdmaPeerService.withVerbs(peerVerbs, {
      capacityBytes: 8 * 16 * PAGE_SIZE,
      slabBytes: 16 * PAGE_SIZE,
    });
    const open = async (namespace: string) => {
      const verbs = simVerbs(sim, 64);
      const store = await connectRdmaStore(
        ["rdma://10.0.0.9:7070"],
        { replicas: 1, namespace, initialSlabs: 1 },
        verbs,
        () => {
          const [client, server] = channelPair();
          (async () => {
            const hello = await server.receive();
            if (hello?.type === "hello") await service.serve(server, hello);
          })();
          return Promise.resolve(client);
        },
      );
      return { store, qp: [...verbs.qps.values()][0] };
    };
    const a = await open("remora:sim:a:0");
    await a.store.put(Uint32Array.of(1), randomPages(1));
    const b = await open("remora:sim:b:0");
    const slabOfA = peerVerbs.mrs[0];
    // A's own QP may read its slab; B's QP, holding A's address and rkey, may not.
    assert.equal(
      sim.sim_forge_read(a.qp, BigInt(slabOfA.address), slabOfA.rkey),
      IBV.IBV_WC_SUCCESS,
    );
    assert.equal(sim.sim_forge_read(b.qp, BigInt(slabOfA.address), slabOfA.rkey), 10); // IBV_WC_REM_ACCESS_ERR
    await a.store.close();
    await b.store.close();
    await service.close();
    assert.equal(service.usedBytes, 0);
  } finally {
    await close();
  }
});

// ---- through the pager CLI, with a real peer and a verifying target ---------

test({
  name: "pager.ts: rdma:// without a device is one clear line; --rdma auto falls back to TCP " +
    "and the target verifies",
  ignore: !noDevice,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const memcheck = await buildTarget("memcheck");
    const tokenFile = await makeTokenFile();
    const peer = await startPeer({ tokenFile });
    try {
      const url = `rdma://${peer.hostPort}`;
      const refused = startPager(
        ["--local", "1M", "--backend", url, "--token-file", tokenFile],
        { perms: REMOTE_PAGER_PERMS, program: [memcheck, "6", "2"] },
      );
      const code = await refused.exit(); // its whole output read, too
      assert.equal(code, 1, refused.output());
      const lines = refused.output().trim().split("\n");
      assert.equal(lines.length, 1, `one line: ${refused.output()}`);
      assert.match(lines[0], /RDMA unavailable/);
      assert.ok(lines[0].includes(`tcp://${peer.hostPort}`), lines[0]);
      assert.doesNotMatch(refused.output(), / at /, "no stack trace");

      const auto = startPager(
        ["--local", "1M", "--backend", url, "--rdma", "auto", "--token-file", tokenFile],
        {
          perms: REMOTE_PAGER_PERMS,
          program: [memcheck, "6", "8", "1", "0", "50"],
          env: { REMORA_AWAIT_PAGER: "1" }, // paged from its first touch, on any machine
        },
      );
      assert.equal(await auto.exit(), 0, auto.output());
      assert.match(auto.output(), /falling back|fall back|tcp:\/\//i);
      assert.match(auto.output(), /parent done/);
      assert.doesNotMatch(auto.output(), /MISMATCH/);
      const fetched = Number(/pages fetched (\d+)/.exec(auto.output())?.[1] ?? 0);
      assert.ok(fetched > 0, `pages went through the peer over TCP: ${auto.output()}`);
    } finally {
      await peer.stop();
      await Deno.remove(tokenFile);
    }
  },
});
