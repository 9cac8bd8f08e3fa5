/**
 * Renders a {@linkcode PagerStats} snapshot in the Prometheus text exposition
 * format, version 0.0.4.
 *
 * Every family gets `# HELP` and `# TYPE` lines; counters end in `_total`,
 * units are in the names (`_seconds`, `_bytes`, `_pages`) and values are in
 * base units (seconds, bytes), as Prometheus conventions ask, even though the
 * pager itself counts microseconds.
 *
 * @module
 */

import { COUNTERS, type PagerStats } from "../pager/stats.ts";
import { PAGE_SIZE } from "../transport/store.ts";

/** The `Content-Type` of {@linkcode formatPrometheus} output. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Record<string, string>;
type Sample = { suffix?: string; labels?: Labels; value: number };

/** Escapes a label value: backslash, double quote and newline, per the format. */
function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** Escapes HELP text: only backslash and newline are special there. */
function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

/** Formats a sample value the way Prometheus parses it (Go float syntax). */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function formatLabels(labels: Labels | undefined): string {
  if (!labels) return "";
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

/** Accumulates metric families in order, one HELP/TYPE header per family. */
class Exposition {
  #lines: string[] = [];

  family(
    name: string,
    type: "counter" | "gauge" | "histogram",
    help: string,
    samples: Sample[],
  ): void {
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`);
    this.#lines.push(`# TYPE ${name} ${type}`);
    for (const s of samples) {
      this.#lines.push(`${name}${s.suffix ?? ""}${formatLabels(s.labels)} ${formatValue(s.value)}`);
    }
  }

  toString(): string {
    // The format requires a final line feed.
    return this.#lines.join("\n") + "\n";
  }
}

/**
 * Renders `stats` as Prometheus text (format 0.0.4).
 *
 * @param stats A snapshot from {@linkcode PagerControl.stats}.
 * @returns The exposition, ending in a line feed.
 */
export function formatPrometheus(stats: PagerStats): string {
  const x = new Exposition();
  x.family("remora_info", "gauge", "Constant 1; labels describe the pager.", [
    { labels: { backend: stats.backend }, value: 1 },
  ]);
  x.family("remora_uptime_seconds", "gauge", "Seconds since the pager attached.", [
    { value: stats.uptimeSeconds },
  ]);
  x.family("remora_processes", "gauge", "Processes currently paged (target and children).", [
    { value: stats.pids.length },
  ]);
  x.family("remora_page_size_bytes", "gauge", "Size of one page.", [{ value: PAGE_SIZE }]);
  x.family("remora_managed_bytes", "gauge", "Registered (managed) address space.", [
    { value: stats.managedBytes },
  ]);
  x.family("remora_budget_pages", "gauge", "Local memory budget (--local), in pages.", [
    { value: stats.budgetPages },
  ]);
  x.family("remora_resident_pages", "gauge", "Pages resident in the targets.", [
    { value: stats.residentPages },
  ]);
  x.family("remora_remote_pages", "gauge", "Pages whose only copy is in the backend.", [
    { value: stats.remotePages },
  ]);

  for (const c of COUNTERS) {
    x.family(c.prometheus, "counter", c.help, [{ value: stats.counters[c.name] ?? 0 }]);
  }

  // Buckets: the pager keeps per-bucket counts in microseconds; Prometheus
  // wants cumulative counts with `le` in seconds and a final +Inf bucket.
  const h = stats.faultLatency;
  const buckets: Sample[] = [];
  let cumulative = 0;
  for (let i = 0; i < h.counts.length; i++) {
    cumulative += h.counts[i];
    const le = i < h.boundsUs.length ? formatValue(h.boundsUs[i] / 1e6) : "+Inf";
    buckets.push({ suffix: "_bucket", labels: { le }, value: cumulative });
  }
  // A snapshot whose counts array lacks the overflow bucket still needs +Inf.
  if (h.counts.length <= h.boundsUs.length) {
    buckets.push({ suffix: "_bucket", labels: { le: "+Inf" }, value: h.count });
  }
  buckets.push({ suffix: "_sum", value: h.sumUs / 1e6 });
  buckets.push({ suffix: "_count", value: h.count });
  x.family(
    "remora_fault_latency_seconds",
    "histogram",
    "Fault service time, from reading the fault to the page being mapped.",
    buckets,
  );

  const store = stats.store;
  x.family("remora_store_pages", "gauge", "Pages held by the backend (each key once).", [
    { value: store.pages },
  ]);
  x.family(
    "remora_replication_deficit_pages",
    "gauge",
    "Pages that currently have fewer live copies than requested replicas.",
    [{ value: store.replicationDeficit }],
  );
  const eps = store.endpoints;
  x.family(
    "remora_backend_up",
    "gauge",
    "1 if the backend endpoint is up, 0 if it is down or draining.",
    eps.map((e) => ({ labels: { endpoint: e.address }, value: e.state === "up" ? 1 : 0 })),
  );
  x.family(
    "remora_backend_state",
    "gauge",
    "1 for the current state of each backend endpoint (up, down, draining), else 0.",
    eps.flatMap((e) =>
      (["up", "down", "draining"] as const).map((state) => ({
        labels: { endpoint: e.address, state },
        value: e.state === state ? 1 : 0,
      }))
    ),
  );
  x.family(
    "remora_backend_requests_total",
    "counter",
    "Requests completed by each backend endpoint.",
    eps.map((e) => ({ labels: { endpoint: e.address }, value: e.requests })),
  );
  x.family(
    "remora_backend_request_latency_seconds",
    "gauge",
    "Median backend request latency over the recent window, per endpoint.",
    eps.map((e) => ({ labels: { endpoint: e.address }, value: e.medianLatencyUs / 1e6 })),
  );
  x.family(
    "remora_backend_pages",
    "gauge",
    "Pages this session holds on each backend endpoint.",
    eps.map((e) => ({ labels: { endpoint: e.address }, value: e.pages })),
  );
  return x.toString();
}
