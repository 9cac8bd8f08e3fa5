/**
 * remora: a userspace memory-disaggregation pager for Linux.
 *
 * It attaches to an unmodified running process by pid (or starts one), takes
 * over its page faults with userfaultfd, and keeps at most a local budget of
 * its memory resident; the rest lives in a {@linkcode PageStore}: the pager's
 * own memory, slabs on peer machines, memcached or Redis.
 *
 * ```ts
 * import { openStore, Pager } from "./mod.ts";
 *
 * const store = await openStore(["embedded"], { replicas: 1, namespace: "demo" });
 * const pager = await Pager.attach(4242, { budgetBytes: 32 << 20, store });
 * console.log(pager.stats().residentPages);
 * await pager.resize(16 << 20); // shrink, live
 * await pager.detach(); // every page back in the target
 * ```
 *
 * Needs root (userfaultfd and ptrace of another process), `--allow-ffi`, and
 * the native shim built by `deno task build`.
 *
 * @module
 */

export { AttachError, MIN_BUDGET_PAGES, Pager } from "./pager/pager.ts";
export type { PagerEnd, PagerOptions } from "./pager/pager.ts";
export { FifoSecondChance, Verdict } from "./pager/policy.ts";
export type { EvictionPolicy, Inspect } from "./pager/policy.ts";
export { Counters, LATENCY_BOUNDS_US, LatencyHistogram } from "./pager/stats.ts";
export type { HistogramSnapshot, PagerControl, PagerStats } from "./pager/stats.ts";
export { formatSize, parseSize } from "./pager/size.ts";
export { PAGE_SIZE, PageLostError, StoreUnavailableError } from "./transport/store.ts";
export type { EndpointHealth, PageStore, StoreHealth, StoreOptions } from "./transport/store.ts";
export { EmbeddedStore } from "./transport/embedded.ts";
export { openStore } from "./transport/open.ts";
export type { OpenOptions } from "./transport/open.ts";
export { serveControl } from "./control/http.ts";
export type { ControlServer, HttpAddress, ServeControlOptions } from "./control/http.ts";
export { formatPrometheus } from "./control/metrics.ts";
