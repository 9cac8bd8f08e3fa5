/**
 * Tests of the control endpoint, in two groups:
 *
 * - Unit and HTTP-layer tests (run anywhere): the Prometheus formatter parsed
 *   with a strict exposition-format parser, size and address parsing, the
 *   HTTP routes, auth and error answers driven through `serveControl` with a
 *   simulated `PagerControl`, the CLI subcommands, logging and progress.
 * - `[real pager]` tests: start `pager.ts --local 16M --http ... -- target`
 *   on a small C program that fills 64 MiB with a pattern and verifies it in
 *   a loop, then check /metrics, resize (the target's RSS follows) and detach
 *   (every page comes back, the target keeps verifying).
 *   `REMORA_REAL_PAGER=0` skips this group.
 *
 * @module
 */

import { PATIENCE_MS, test, track, waitUntil, withPatience } from "../testing/harness.ts";
import { buildTarget, ROOT } from "../testing/procs.ts";
import { freePort } from "../testing/servers.ts";
import { getLogger } from "@logtape/logtape";
import { detachCommand, parseSize, resizeCommand, statusCommand } from "../control/cli.ts";
import { FakePager } from "../control/fake.ts";
import {
  type ControlServer,
  httpBase,
  isLoopback,
  parseHttpAddress,
  serveControl,
} from "../control/http.ts";
import { setupLogging } from "../control/logging.ts";
import { formatPrometheus } from "../control/metrics.ts";
import { Progress } from "../control/progress.ts";
import {
  LATENCY_BOUNDS_US,
  LatencyHistogram,
  type PagerStats,
  zeroCounters,
} from "../pager/stats.ts";
import { DEFAULT_EVICT_BATCH } from "../pager/budget.ts";
import { PAGE_SIZE } from "../transport/store.ts";
import { assert, assertSameJson } from "./helpers/assert.ts";

// ---------------------------------------------------------------- helpers

function assertThrows(fn: () => unknown, match: RegExp): void {
  try {
    fn();
  } catch (e) {
    const m = (e as Error).message;
    if (!match.test(m)) throw new Error(`error "${m}" does not match ${match}`);
    return;
  }
  throw new Error(`expected an error matching ${match}`);
}

async function assertRejects(fn: () => Promise<unknown>, match: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const m = (e as Error).message;
    if (!match.test(m)) throw new Error(`error "${m}" does not match ${match}`);
    return;
  }
  throw new Error(`expected a rejection matching ${match}`);
}

// ------------------------------------------- strict Prometheus text parser

/** One sample of an exposition. */
interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** One metric family of an exposition. */
interface PromFamily {
  name: string;
  type: string;
  help?: string;
  samples: PromSample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf|NaN)$/;

function parseFloatStrict(text: string, where: string): number {
  if (!FLOAT.test(text)) throw new Error(`${where}: bad value "${text}"`);
  if (/Inf$/.test(text)) return text.startsWith("-") ? -Infinity : Infinity;
  return Number(text);
}

/** Parses a label set `{a="x",b="y"}` starting at `s[i] === "{"`; returns labels and end index. */
function parseLabels(s: string, i: number, where: string): [Record<string, string>, number] {
  const labels: Record<string, string> = {};
  i++; // "{"
  while (s[i] !== "}") {
    const m = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(s.slice(i));
    if (!m) throw new Error(`${where}: bad label name at column ${i}`);
    const name = m[0];
    i += name.length;
    if (s[i] !== "=" || s[i + 1] !== '"') throw new Error(`${where}: expected =" after ${name}`);
    i += 2;
    let v = "";
    for (;;) {
      const ch = s[i];
      if (ch === undefined) throw new Error(`${where}: unterminated label value`);
      if (ch === '"') break;
      if (ch === "\n") throw new Error(`${where}: raw newline in label value`);
      if (ch === "\\") {
        const nx = s[i + 1];
        if (nx === "\\") v += "\\";
        else if (nx === '"') v += '"';
        else if (nx === "n") v += "\n";
        else throw new Error(`${where}: bad escape \\${nx} in label value`);
        i += 2;
        continue;
      }
      v += ch;
      i++;
    }
    i++; // closing quote
    if (name in labels) throw new Error(`${where}: duplicate label ${name}`);
    if (!LABEL_NAME.test(name) || name.startsWith("__")) {
      throw new Error(`${where}: reserved label ${name}`);
    }
    labels[name] = v;
    if (s[i] === ",") i++;
    else if (s[i] !== "}") throw new Error(`${where}: expected , or } after label ${name}`);
  }
  return [labels, i + 1];
}

/**
 * Parses Prometheus text format 0.0.4 strictly: TYPE before samples, one
 * TYPE and HELP per family, families contiguous, no duplicate series,
 * valid names, escapes and values, histograms well-formed, final newline.
 */
function parsePrometheus(text: string): Map<string, PromFamily> {
  assert(text.endsWith("\n"), "exposition must end with a newline");
  const families = new Map<string, PromFamily>();
  const seen = new Set<string>();
  let current: PromFamily | undefined;
  const familyOf = (sample: string): string => {
    for (const suf of ["_bucket", "_sum", "_count"]) {
      const base = sample.slice(0, -suf.length);
      if (sample.endsWith(suf) && families.get(base)?.type === "histogram") return base;
    }
    return sample;
  };
  const lines = text.slice(0, -1).split("\n");
  lines.forEach((line, n) => {
    const where = `line ${n + 1} "${line}"`;
    if (line !== line.trimEnd()) throw new Error(`${where}: trailing whitespace`);
    if (line === "") throw new Error(`${where}: empty line`);
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest] = m;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name`);
      let f = families.get(name);
      if (!f) {
        f = { name, type: "untyped", samples: [] };
        families.set(name, f);
      } else if (f !== current) {
        throw new Error(`${where}: family ${name} is not contiguous`);
      }
      current = f;
      if (kind === "TYPE") {
        if (f.type !== "untyped" || f.samples.length) {
          throw new Error(`${where}: TYPE repeated or after samples`);
        }
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest)) {
          throw new Error(`${where}: unknown type`);
        }
        f.type = rest;
      } else {
        if (f.help !== undefined) throw new Error(`${where}: HELP repeated`);
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ""))) {
          throw new Error(`${where}: bad HELP escape`);
        }
        f.help = rest;
      }
      return;
    }
    const nm = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
    if (!nm) throw new Error(`${where}: bad sample name`);
    const name = nm[0];
    let i = name.length;
    let labels: Record<string, string> = {};
    if (line[i] === "{") [labels, i] = parseLabels(line, i, where);
    if (line[i] !== " ") throw new Error(`${where}: expected a space before the value`);
    const parts = line.slice(i + 1).split(" ");
    if (parts.length > 2) throw new Error(`${where}: too many fields`);
    const value = parseFloatStrict(parts[0], where);
    if (parts[1] !== undefined && !/^-?\d+$/.test(parts[1])) {
      throw new Error(`${where}: bad timestamp`);
    }
    const fam = familyOf(name);
    const f = families.get(fam);
    if (!f || f.type === "untyped") throw new Error(`${where}: sample before its # TYPE`);
    if (f !== current) throw new Error(`${where}: family ${fam} is not contiguous`);
    const key = name + JSON.stringify(Object.entries(labels).sort());
    if (seen.has(key)) throw new Error(`${where}: duplicate series`);
    seen.add(key);
    f.samples.push({ name, labels, value });
  });
  for (const f of families.values()) {
    if (f.type === "counter") {
      assert(f.name.endsWith("_total"), `counter ${f.name} must end in _total`);
      for (const s of f.samples) assert(s.value >= 0, `counter ${s.name} is negative`);
    }
    if (f.type === "histogram") checkHistogram(f);
  }
  return families;
}

/** Buckets cumulative and sorted, +Inf last and equal to _count, _sum present (per label set). */
function checkHistogram(f: PromFamily): void {
  const groups = new Map<string, PromSample[]>();
  for (const s of f.samples) {
    const { le: _le, ...rest } = s.labels;
    const k = JSON.stringify(rest);
    groups.set(k, [...(groups.get(k) ?? []), s]);
  }
  assert(groups.size > 0, `histogram ${f.name} has no samples`);
  for (const samples of groups.values()) {
    const buckets = samples.filter((s) => s.name === `${f.name}_bucket`);
    const sum = samples.filter((s) => s.name === `${f.name}_sum`);
    const count = samples.filter((s) => s.name === `${f.name}_count`);
    assert(buckets.length >= 1 && sum.length === 1 && count.length === 1, `${f.name}: incomplete`);
    let prevLe = -Infinity;
    let prevCount = 0;
    for (const b of buckets) {
      assert(b.labels.le !== undefined, `${f.name}_bucket without le`);
      const le = parseFloatStrict(b.labels.le, `${f.name} le`);
      assert(le > prevLe, `${f.name}: le not increasing at ${b.labels.le}`);
      assert(b.value >= prevCount, `${f.name}: buckets not cumulative at le=${b.labels.le}`);
      prevLe = le;
      prevCount = b.value;
    }
    assert(buckets[buckets.length - 1].labels.le === "+Inf", `${f.name}: last bucket is not +Inf`);
    assertSameJson(count[0].value, prevCount, `${f.name}_count vs +Inf bucket`);
  }
}

function value(fams: Map<string, PromFamily>, name: string, labels: Record<string, string> = {}) {
  const fam = fams.get(name.replace(/_(bucket|sum|count)$/, "")) ?? fams.get(name);
  const s = fam?.samples.find((x) =>
    x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)
  );
  if (!s) throw new Error(`no sample ${name}${JSON.stringify(labels)}`);
  return s.value;
}

// ------------------------------------------------------ formatter (no pager)

function sampleStats(): PagerStats {
  const counts = LATENCY_BOUNDS_US.map((_, i) => (i % 3) + i);
  counts.push(2);
  const count = counts.reduce((a, b) => a + b, 0);
  return {
    uptimeSeconds: 12.5,
    pids: [100, 101],
    budgetPages: 4096,
    residentPages: 4000,
    remotePages: 12384,
    managedBytes: 64 << 20,
    backend: "peers",
    counters: {
      ...zeroCounters(),
      faults: 1000,
      missingFaults: 800,
      wpFaults: 200,
      zeroFills: 10,
      pagesFetched: 790,
      pagesEvicted: 900,
      pagesWritten: 500,
      writesAvoided: 400,
      evictionsCancelled: 3,
      spuriousFaults: 2,
      retries: 1,
      pagesFreed: 0,
      pagesRestored: 0,
    },
    faultLatency: {
      ...new LatencyHistogram().snapshot(),
      counts,
      sumUs: 123456,
      count,
      p50Us: 14,
      p99Us: 90,
    },
    evictLatency: new LatencyHistogram().snapshot(),
    metadataBytesPerPage: 5,
    store: {
      pages: 12384,
      replicationDeficit: 7,
      endpoints: [
        {
          address: "tcp://10.0.0.2:7070",
          state: "up",
          requests: 55,
          medianLatencyUs: 42,
          pages: 6000,
        },
        {
          address: 'weird "peer"\\with\nnewline',
          state: "draining",
          requests: 3,
          medianLatencyUs: 1500,
          pages: 6384,
        },
        {
          address: "tcp://10.0.0.4:7070",
          state: "down",
          requests: 0,
          medianLatencyUs: 0,
          pages: 0,
        },
      ],
    },
  };
}

test("formatPrometheus output parses strictly and carries the snapshot", () => {
  const stats = sampleStats();
  const text = formatPrometheus(stats);
  const fams = parsePrometheus(text);
  for (const f of fams.values()) {
    assert(f.help && f.help.length > 5, `${f.name} lacks HELP`);
    assert(f.name.startsWith("remora_"), `${f.name} lacks the remora_ prefix`);
  }
  assertSameJson(value(fams, "remora_resident_pages"), 4000);
  assertSameJson(value(fams, "remora_remote_pages"), 12384);
  assertSameJson(value(fams, "remora_budget_pages"), 4096);
  assertSameJson(value(fams, "remora_managed_bytes"), 64 << 20);
  assertSameJson(value(fams, "remora_faults_total"), 1000);
  assertSameJson(value(fams, "remora_pages_fetched_total"), 790);
  assertSameJson(value(fams, "remora_fault_retries_total"), 1);
  assertSameJson(value(fams, "remora_replication_deficit_pages"), 7);
  assertSameJson(value(fams, "remora_info", { backend: "peers" }), 1);
  assertSameJson(fams.get("remora_fault_latency_seconds")?.type, "histogram");
  // Buckets in seconds, cumulative, +Inf last.
  const buckets = fams.get("remora_fault_latency_seconds")!.samples.filter((s) =>
    s.name.endsWith("_bucket")
  );
  assertSameJson(buckets.length, LATENCY_BOUNDS_US.length + 1);
  assertSameJson(buckets[0].labels.le, "0.000001");
  assertSameJson(buckets[LATENCY_BOUNDS_US.length - 1].labels.le, "0.1");
  assertSameJson(
    buckets[2].value,
    stats.faultLatency.counts[0] + stats.faultLatency.counts[1] +
      stats.faultLatency.counts[2],
  );
  assertSameJson(value(fams, "remora_fault_latency_seconds_count"), stats.faultLatency.count);
  assertSameJson(value(fams, "remora_fault_latency_seconds_sum"), 0.123456);
  // Per-endpoint series, with the label value escaped and read back intact.
  const weird = 'weird "peer"\\with\nnewline';
  assertSameJson(value(fams, "remora_backend_up", { endpoint: "tcp://10.0.0.2:7070" }), 1);
  assertSameJson(value(fams, "remora_backend_up", { endpoint: weird }), 0);
  assertSameJson(value(fams, "remora_backend_state", { endpoint: weird, state: "draining" }), 1);
  assertSameJson(value(fams, "remora_backend_state", { endpoint: weird, state: "up" }), 0);
  assertSameJson(value(fams, "remora_backend_requests_total", { endpoint: weird }), 3);
  assertSameJson(
    value(fams, "remora_backend_request_latency_seconds", { endpoint: "tcp://10.0.0.2:7070" }),
    0.000042,
  );
  assertSameJson(value(fams, "remora_backend_pages", { endpoint: "tcp://10.0.0.4:7070" }), 0);
});

test("formatPrometheus handles an empty store and no faults", () => {
  const s = sampleStats();
  s.store = { pages: 0, replicationDeficit: 0, endpoints: [] };
  s.faultLatency = {
    ...s.faultLatency,
    counts: s.faultLatency.counts.map(() => 0),
    sumUs: 0,
    count: 0,
  };
  const fams = parsePrometheus(formatPrometheus(s));
  assertSameJson(value(fams, "remora_fault_latency_seconds_bucket", { le: "+Inf" }), 0);
  assertSameJson(fams.get("remora_backend_up")?.samples.length, 0);
});

test("the strict parser itself rejects malformed expositions", () => {
  const bad = [
    "remora_x 1\n", // no TYPE
    "# TYPE a gauge\na 1", // no final newline
    '# TYPE a gauge\na{b="x\\q"} 1\n', // bad escape
    "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // not contiguous
    "# TYPE a gauge\na 1\na 2\n", // duplicate series
    "# TYPE a counter\na 1\n", // counter without _total
    "# TYPE a gauge\na one\n", // bad value
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_sum 1\nh_count 2\n', // no +Inf
  ];
  for (const text of bad) assertThrows(() => parsePrometheus(text), /./);
});

// ------------------------------------------------------------- parsing

test("parseSize accepts binary suffixes and plain bytes, and explains refusals", () => {
  const ok: [string, number][] = [
    ["4096", 4096],
    ["0", 0],
    ["16M", 16 << 20],
    ["16m", 16 << 20],
    ["16MiB", 16 << 20],
    ["16mib", 16 << 20],
    ["512K", 512 << 10],
    ["512KiB", 512 << 10],
    ["2G", 2 * 1024 ** 3],
    ["2GiB", 2 * 1024 ** 3],
    ["1.5G", 1.5 * 1024 ** 3],
    ["1T", 1024 ** 4],
    [" 8M ", 8 << 20],
    ["100B", 100],
  ];
  for (const [text, bytes] of ok) assertSameJson(parseSize(text), bytes, text);
  assertSameJson(parseSize("16MB"), 16 << 20, "MB is binary too, like --local");
  assertSameJson(parseSize("2gb"), 2 * 1024 ** 3);
  assertThrows(() => parseSize("16X"), /unknown unit "X"/);
  assertThrows(() => parseSize(""), /invalid size "": use a number/);
  assertThrows(() => parseSize("-1M"), /invalid size/);
  assertThrows(() => parseSize("M"), /invalid size/);
  assertThrows(() => parseSize("0.3K"), /not a whole number of bytes/);
  assertThrows(() => parseSize("99999999T"), /too large/);
});

test("parseHttpAddress and isLoopback", () => {
  assertSameJson(parseHttpAddress("127.0.0.1:9477"), { hostname: "127.0.0.1", port: 9477 });
  assertSameJson(parseHttpAddress("localhost:80"), { hostname: "localhost", port: 80 });
  assertSameJson(parseHttpAddress(":9500"), { hostname: "127.0.0.1", port: 9500 });
  assertSameJson(parseHttpAddress("9500"), { hostname: "127.0.0.1", port: 9500 });
  assertSameJson(parseHttpAddress("[::1]:9500"), { hostname: "::1", port: 9500 });
  assertSameJson(parseHttpAddress("http://10.1.2.3:9/"), { hostname: "10.1.2.3", port: 9 });
  assertSameJson(parseHttpAddress("example.org"), { hostname: "example.org", port: 9477 });
  assertThrows(() => parseHttpAddress("::1:9477"), /brackets/);
  assertThrows(() => parseHttpAddress("host:99999"), /bad port/);
  assertThrows(() => parseHttpAddress(""), /empty/);
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "LOCALHOST"]) {
    assert(isLoopback(h), h);
  }
  for (const h of ["0.0.0.0", "10.0.0.1", "::", "127.0.0.256", "example.org", "128.0.0.1"]) {
    assert(!isLoopback(h), h);
  }
});

// ------------------------------------------------------ HTTP layer (fake)

async function withServer(
  fake: FakePager,
  fn: (base: string, server: ControlServer) => Promise<void>,
  token?: string,
): Promise<void> {
  const server = await serveControl(fake, { hostname: "127.0.0.1", port: 0, token });
  try {
    await fn(httpBase(server.addr), server);
  } finally {
    await server.shutdown();
  }
}

async function getJson(res: Response): Promise<Record<string, unknown>> {
  const text = await res.text();
  assert(text.endsWith("\n") && text.indexOf("\n") === text.length - 1, `not one line: ${text}`);
  return JSON.parse(text);
}

test("a non-loopback address without a token is refused with a clear error", async () => {
  const fake = new FakePager();
  for (const hostname of ["0.0.0.0", "10.0.0.1", "::"]) {
    await assertRejects(
      () => serveControl(fake, { hostname, port: 0 }),
      /refusing to serve the control endpoint on .* without a token.*--http-token/,
    );
  }
  await assertRejects(
    () => serveControl(fake, { hostname: "0.0.0.0", port: 0, token: "" }),
    /without a token/,
  );
});

test("binding a busy port fails with a clear error", async () => {
  const fake = new FakePager();
  await withServer(fake, async (_base, server) => {
    await assertRejects(
      () => serveControl(fake, { hostname: "127.0.0.1", port: server.addr.port }),
      /cannot listen on http:\/\/127\.0\.0\.1:\d+: address already in use/,
    );
  });
});

test("GET /stats, /metrics, / and HEAD through serveControl", async () => {
  const fake = new FakePager();
  let listened: unknown;
  const server = await serveControl(fake, {
    hostname: "127.0.0.1",
    port: 0,
    onListen: (a) => listened = a,
  });
  try {
    assertSameJson(listened, server.addr);
    assert(server.addr.port > 0);
    const base = httpBase(server.addr);
    const stats = await fetch(`${base}/stats`);
    assertSameJson(stats.status, 200);
    assertSameJson(stats.headers.get("content-type"), "application/json");
    const s = (await stats.json()) as PagerStats;
    assertSameJson(s.budgetPages, 4096);
    assertSameJson(Object.keys(s).sort(), Object.keys(fake.stats()).sort());

    const metrics = await fetch(`${base}/metrics`);
    assertSameJson(metrics.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const fams = parsePrometheus(await metrics.text());
    assertSameJson(value(fams, "remora_budget_pages"), 4096);

    const page = await fetch(`${base}/`);
    assertSameJson(page.status, 200);
    assert(page.headers.get("content-type")!.startsWith("text/html"));
    assert(page.headers.get("content-security-policy")!.includes("default-src 'none'"));
    const html = await page.text();
    assert(html.includes('id="chart-memory"') && !/https?:\/\//.test(html), "self-contained page");

    const head = await fetch(`${base}/stats`, { method: "HEAD" });
    assertSameJson(head.status, 200);
    assertSameJson(await head.text(), "");
    // HEAD /events must not leave a stream (and its timer) running.
    const headEvents = await fetch(`${base}/events`, { method: "HEAD" });
    assertSameJson(headEvents.headers.get("content-type"), "text/event-stream");
    assertSameJson(await headEvents.text(), "");
  } finally {
    await server.shutdown();
    await server.shutdown(); // idempotent
  }
});

test("POST /resize accepts bytes or local and refuses bad bodies with 400", async () => {
  const fake = new FakePager();
  await withServer(fake, async (base) => {
    const post = (body: string, headers: Record<string, string> = {}) =>
      fetch(`${base}/resize`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body,
      });
    let res = await post(JSON.stringify({ local: "8M" }));
    assertSameJson(res.status, 200);
    assertSameJson(((await res.json()) as PagerStats).budgetPages, 2048);
    res = await post(JSON.stringify({ bytes: 32 << 20 }));
    assertSameJson(((await res.json()) as PagerStats).budgetPages, 8192);
    res = await post(JSON.stringify({ local: 65536 }));
    assertSameJson(res.status, 200);
    await res.body?.cancel();
    assertSameJson(fake.resizes, [8 << 20, 32 << 20, 65536]);

    const bad: [string, RegExp][] = [
      ["not json", /not JSON/],
      ["[1]", /must be an object/],
      ["{}", /exactly one of/],
      [JSON.stringify({ bytes: 1, local: "1M" }), /exactly one of/],
      [JSON.stringify({ bytes: "1M" }), /whole number/],
      [JSON.stringify({ bytes: 1.5 }), /whole number/],
      [JSON.stringify({ bytes: 0 }), /minimum of 65536 bytes/],
      [JSON.stringify({ bytes: -4096 }), /minimum of 65536 bytes/],
      [JSON.stringify({ local: "16XB" }), /unknown unit "XB"/],
      [JSON.stringify({ local: true }), /size such as/],
      [JSON.stringify({ size: 1 }), /unknown field "size"/],
    ];
    for (const [body, match] of bad) {
      const r = await post(body);
      assertSameJson(r.status, 400, body);
      const j = await getJson(r);
      assert(match.test(String(j.error)), `${body}: ${j.error}`);
    }
    assertSameJson(fake.resizes.length, 3, "bad bodies never reach the pager");

    const big = await post(JSON.stringify({ local: "x".repeat(10_000) }));
    assertSameJson(big.status, 413);
    await big.body?.cancel();

    fake.failNextResize = new RangeError("budget below the pinned pages");
    let r = await post(JSON.stringify({ local: "64K" }));
    assertSameJson(r.status, 400);
    assertSameJson((await getJson(r)).error, "resize failed: budget below the pinned pages");
    fake.failNextResize = new Error("backend\nis gone");
    r = await post(JSON.stringify({ local: "64K" }));
    assertSameJson(r.status, 500);
    assertSameJson((await getJson(r)).error, "resize failed: backend");

    r = await fetch(`${base}/resize`);
    assertSameJson(r.status, 405);
    assertSameJson(r.headers.get("allow"), "POST");
    await r.body?.cancel();
    r = await fetch(`${base}/stats`, { method: "POST", body: "{}" });
    assertSameJson(r.status, 405);
    await r.body?.cancel();
    r = await fetch(`${base}/nope`);
    assertSameJson(r.status, 404);
    assert(/no such endpoint/.test(String((await getJson(r)).error)));
  });
});

test("POST /detach answers the final stats once; a concurrent detach gets 409", async () => {
  const fake = new FakePager();
  const gate = Promise.withResolvers<void>();
  fake.detachGate = gate.promise;
  await withServer(fake, async (base) => {
    const first = fetch(`${base}/detach`, { method: "POST" });
    await waitUntil("the first detach to reach the pager", () => fake.detaches === 1);
    const second = await fetch(`${base}/detach`, { method: "POST" });
    assertSameJson(second.status, 409);
    await second.body?.cancel();
    const resize = await fetch(`${base}/resize`, {
      method: "POST",
      body: JSON.stringify({ local: "8M" }),
    });
    assertSameJson(resize.status, 409);
    await resize.body?.cancel();
    gate.resolve();
    const res = await first;
    assertSameJson(res.status, 200);
    const s = (await res.json()) as PagerStats;
    assertSameJson(s.remotePages, 0);
    assert(s.counters.pagesRestored > 0 || s.uptimeSeconds < 0.01);
    assertSameJson(fake.detaches, 1);
  });
});

test("GET /events streams stats, and shutdown ends open streams", async () => {
  const fake = new FakePager();
  const server = await serveControl(fake, { hostname: "127.0.0.1", port: 0 });
  const res = await fetch(`${httpBase(server.addr)}/events`);
  assertSameJson(res.headers.get("content-type"), "text/event-stream");
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const events: PagerStats[] = [];
  while (events.length < 2) {
    const { value: chunk, done } = await reader.read();
    assert(!done, "stream ended early");
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (ev.startsWith("data: ")) events.push(JSON.parse(ev.slice(6)));
    }
  }
  // Paced, not a flood: the snapshots' own clock says they were taken apart
  // (a lower bound only: a busy machine may send them later, never sooner).
  const dt = events[1].uptimeSeconds - events[0].uptimeSeconds;
  assert(dt >= 0.3, `second snapshot ${dt} s after the first`);
  assert(events[1].counters.faults > events[0].counters.faults, "numbers move");
  await withPatience("shutdown to end the open stream", server.shutdown());
  for (;;) if ((await reader.read()).done) break;
});

/** Sends a raw HTTP/1.1 request, so that Host can be anything. */
async function rawRequest(port: number, head: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(head));
  let out = "";
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
  }
  conn.close();
  return out;
}

test("without a token: foreign Host and cross-origin POST are refused", async () => {
  const fake = new FakePager();
  await withServer(fake, async (base, server) => {
    const rebind = await rawRequest(
      server.addr.port,
      "GET /stats HTTP/1.1\r\nHost: attacker.example:9477\r\nConnection: close\r\n\r\n",
    );
    assert(rebind.startsWith("HTTP/1.1 403"), rebind.split("\r\n")[0]);
    assert(rebind.includes("DNS rebinding"));
    const ok = await rawRequest(
      server.addr.port,
      "GET /stats HTTP/1.1\r\nHost: localhost:9477\r\nConnection: close\r\n\r\n",
    );
    assert(ok.startsWith("HTTP/1.1 200"), ok.split("\r\n")[0]);

    const cross = await fetch(`${base}/detach`, {
      method: "POST",
      headers: { origin: "http://attacker.example" },
    });
    assertSameJson(cross.status, 403);
    await cross.body?.cancel();
    assertSameJson(fake.detaches, 0);
    const same = await fetch(`${base}/resize`, {
      method: "POST",
      headers: { origin: base, "content-type": "application/json" },
      body: JSON.stringify({ local: "8M" }),
    });
    assertSameJson(same.status, 200);
    await same.body?.cancel();
  });
});

test("with a token: every request needs Bearer (or Basic with the token)", async () => {
  const fake = new FakePager();
  await withServer(fake, async (base) => {
    let r = await fetch(`${base}/stats`);
    assertSameJson(r.status, 401);
    assertSameJson(r.headers.get("www-authenticate"), 'Bearer realm="remora"');
    assert(/missing token/.test(String((await getJson(r)).error)));
    r = await fetch(`${base}/`);
    assertSameJson(r.status, 401);
    assert(r.headers.get("www-authenticate")!.startsWith("Basic"));
    await r.body?.cancel();
    r = await fetch(`${base}/stats`, { headers: { authorization: "Bearer s3cre" } });
    assertSameJson(r.status, 401);
    assertSameJson((await getJson(r)).error, "wrong token");
    r = await fetch(`${base}/detach`, {
      method: "POST",
      headers: { authorization: "Bearer nope" },
    });
    assertSameJson(r.status, 401);
    await r.body?.cancel();
    assertSameJson(fake.detaches, 0);
    r = await fetch(`${base}/metrics`, { headers: { authorization: "Bearer s3cret" } });
    assertSameJson(r.status, 200);
    parsePrometheus(await r.text());
    r = await fetch(`${base}/stats`, { headers: { authorization: `Basic ${btoa("me:s3cret")}` } });
    assertSameJson(r.status, 200);
    await r.body?.cancel();
    r = await fetch(`${base}/stats`, { headers: { authorization: `Basic ${btoa("s3cret")}` } });
    assertSameJson(r.status, 401);
    await r.body?.cancel();
  }, "s3cret");
});

// ------------------------------------------------------------ subcommands

function collector() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) }, out, err };
}

test("status, resize and detach subcommands against a served fake", async () => {
  const fake = new FakePager({
    endpoints: [
      { address: "tcp://10.0.0.2:7070", state: "up", requests: 1, medianLatencyUs: 40, pages: 10 },
    ],
  });
  await withServer(fake, async (_base, server) => {
    const http = `127.0.0.1:${server.addr.port}`;
    let c = collector();
    assertSameJson(await statusCommand(["--http", http], c.io), 0);
    assert(c.out[0].startsWith(`remora pager at http://${http}: up`), c.out[0]);
    assert(c.out.some((l) => l.includes("resident") && l.includes("budget 16.0 MiB (4096 pages)")));
    assert(c.out.some((l) => l.includes("tcp://10.0.0.2:7070") && l.includes("up")));

    c = collector();
    assertSameJson(await statusCommand([`--http=${http}`, "--json"], c.io), 0);
    assertSameJson((JSON.parse(c.out.join("\n")) as PagerStats).budgetPages, 4096);

    c = collector();
    assertSameJson(await resizeCommand(["8M", "--http", http], c.io), 0);
    assertSameJson(fake.resizes, [8 << 20]);
    assert(/local budget is now 8\.00 MiB \(2048 pages\)/.test(c.out[0]), c.out[0]);

    c = collector();
    assertSameJson(await resizeCommand(["16Q", "--http", http], c.io), 2);
    assert(/unknown unit "Q"/.test(c.err[0]) && c.err.length === 1, c.err.join("|"));
    c = collector();
    assertSameJson(await resizeCommand(["--http", http], c.io), 2);
    assert(/missing SIZE/.test(c.err[0]));
    c = collector();
    assertSameJson(await resizeCommand(["1M", "2M", "--http", http], c.io), 2);
    c = collector();
    assertSameJson(await statusCommand(["--bogus"], c.io), 2);
    assert(/remora status: Unknown option '--bogus'/.test(c.err[0]), c.err[0]);

    c = collector();
    assertSameJson(await detachCommand(["--http", http], c.io), 0);
    assert(
      /detached from (pid [\d ]+|the target); \d+ pages restored, 0 left remote/.test(c.out[0]),
      c.out[0],
    );
  });
});

test("subcommands: unreachable pager, token errors and --help", async () => {
  // A port that was free a moment ago: nothing listens there now.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  let c = collector();
  assertSameJson(await statusCommand(["--http", `127.0.0.1:${port}`], c.io), 1);
  assertSameJson(c.err.length, 1);
  assertSameJson(
    c.err[0],
    `remora status: no pager reachable at http://127.0.0.1:${port} (connection refused); ` +
      `is one running with --http 127.0.0.1:${port}?`,
  );
  c = collector();
  assertSameJson(await detachCommand(["--http", `127.0.0.1:${port}`], c.io), 1);
  assert(/^remora detach: no pager reachable/.test(c.err[0]));

  const fake = new FakePager();
  await withServer(fake, async (_b, server) => {
    const http = `127.0.0.1:${server.addr.port}`;
    c = collector();
    assertSameJson(await statusCommand(["--http", http], c.io), 1);
    assert(/refused: missing token.*pass --http-token/.test(c.err[0]), c.err[0]);
    c = collector();
    assertSameJson(await statusCommand(["--http", http, "--http-token", "tok"], c.io), 0);
    Deno.env.set("REMORA_HTTP_TOKEN", "tok");
    try {
      c = collector();
      assertSameJson(await statusCommand(["--http", http], c.io), 0, "token from the environment");
    } finally {
      Deno.env.delete("REMORA_HTTP_TOKEN");
    }
  }, "tok");

  for (const cmd of [statusCommand, resizeCommand, detachCommand]) {
    c = collector();
    assertSameJson(await cmd(["--help"], c.io), 0);
    const help = c.out.join("\n");
    assert(/^Usage: pager\.ts (status|resize|detach)/.test(help), help);
    assert(help.includes("Examples:") && help.includes("--http-token"), help);
  }
});

// -------------------------------------------------------- logging, progress

test("setupLogging writes text or JSON lines for remora categories", async () => {
  const lines: string[] = [];
  const writer = {
    writeSync(p: Uint8Array) {
      lines.push(new TextDecoder().decode(p));
      return p.length;
    },
  };
  await setupLogging({ level: "info", json: true, writer });
  const log = getLogger(["remora", "test"]);
  log.debug("hidden");
  log.info("attached to {pid}", { pid: 42 });
  getLogger(["other"]).error("not ours");
  assertSameJson(lines.length, 1);
  const rec = JSON.parse(lines[0]);
  assertSameJson(rec.level, "INFO");
  assertSameJson(rec.logger, "remora.test");
  assertSameJson(rec.message, "attached to 42");
  assertSameJson(rec.pid, 42);

  lines.length = 0;
  await setupLogging({ level: "debug", json: false, writer, color: false });
  log.debug("path {path}", { path: "/tmp/x" });
  assertSameJson(lines.length, 1);
  assert(/^\d\d:\d\d:\d\d\.\d{3} \[DBG\] remora\.test: path \/tmp\/x\n$/.test(lines[0]), lines[0]);
  await setupLogging({ level: "warning", json: false, writer, color: false });
  log.info("quiet");
  assertSameJson(lines.length, 1);
});

test("Progress draws in place when enabled, and nothing when not", () => {
  let out = "";
  const writer = {
    writeSync(p: Uint8Array) {
      out += new TextDecoder().decode(p);
      return p.length;
    },
  };
  const p = new Progress("restoring", {
    total: 200,
    unit: "pages",
    enabled: true,
    writer,
    columns: 100,
    intervalMs: 0,
  });
  p.update(100, "12 k/s");
  assert(out.startsWith("\r\x1b[2Krestoring  [##########..........]   50%  100/200 pages"), out);
  assert(out.includes("12 k/s"));
  p.finish("done");
  assert(out.endsWith("\r\x1b[2Krestoring: done\n"), JSON.stringify(out));
  p.update(150);
  assert(out.endsWith("done\n"), "no drawing after finish");

  out = "";
  const q = new Progress("scan", { enabled: false, writer });
  q.update(5);
  q.finish("x");
  assertSameJson(out, "");
  assert(/^scan {2}[|/\\-] {2}5 {2}\d/.test(q.render()), q.render());
});

// ------------------------------------------------------------ real pager

const PAGER_TS = new URL("../pager.ts", import.meta.url).pathname;
/**
 * The target (`testing/targets/fill_verify.c`): maps SIZE MiB, fills it, and
 * each round verifies the last round's pattern ("round N ok", or MISMATCH).
 */
const TARGET_BIN = `${ROOT}build/test/fill_verify`;

/** Anonymous resident memory of a process, in bytes (what paging moves). */
async function rssAnon(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(status);
  if (!m) throw new Error(`no RssAnon for pid ${pid}`);
  return Number(m[1]) * 1024;
}

function alive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT");
    return true;
  } catch {
    return false;
  }
}

/** A pager running a fill/verify target, with its output collected. */
class RealPager {
  readonly base: string;
  readonly lines: string[] = [];
  stderr = "";
  targetPid = 0;
  readonly proc: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  #readers: Promise<void>[] = [];

  constructor(local: string, targetArgs: string[]) {
    const port = freePort();
    this.base = `http://127.0.0.1:${port}`;
    const proc = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        PAGER_TS,
        "--local",
        local,
        "--http",
        `127.0.0.1:${port}`,
        "--",
        TARGET_BIN,
        ...targetArgs,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.proc = proc;
    this.status = proc.status;
    track("pager", proc, () => [...this.lines.slice(-25), this.stderr].join("\n"));
    this.#readers.push(
      (async () => {
        let buf = "";
        for await (const chunk of proc.stdout.pipeThrough(new TextDecoderStream())) {
          buf += chunk;
          let i;
          while ((i = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            this.lines.push(line);
            const m = /^target pid (\d+)/.exec(line);
            if (m) this.targetPid = Number(m[1]);
          }
        }
      })(),
      (async () => {
        for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) {
          this.stderr += chunk;
        }
      })(),
    );
  }

  rounds(): number {
    return this.lines.filter((l) => /^round \d+ ok$/.test(l)).length;
  }

  mismatch(): string | undefined {
    return this.lines.find((l) => l.startsWith("MISMATCH"));
  }

  /** Waits until `/stats` answers and the target has started; fails fast if the pager exits. */
  async ready(timeoutMs = PATIENCE_MS): Promise<PagerStats> {
    let exited: Deno.CommandStatus | undefined;
    this.status.then((s) => exited = s);
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      if (exited) {
        await new Promise((r) => setTimeout(r, 100));
        throw new Error(
          `the pager exited with code ${exited.code} before serving /stats: ${this.stderr.trim()}`,
        );
      }
      try {
        const r = await fetch(`${this.base}/stats`, { signal: AbortSignal.timeout(PATIENCE_MS) });
        if (r.ok && this.targetPid) return (await r.json()) as PagerStats;
        await r.body?.cancel();
      } catch { /* not listening yet */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`the pager did not serve /stats within ${timeoutMs} ms: ${this.stderr.trim()}`);
  }

  /** Waits for `n` more verified rounds of the target. */
  async moreRounds(n: number, timeoutMs = PATIENCE_MS): Promise<void> {
    const want = this.rounds() + n;
    const deadline = performance.now() + timeoutMs;
    while (this.rounds() < want) {
      const bad = this.mismatch();
      if (bad) throw new Error(`target saw corrupted memory: ${bad}`);
      if (performance.now() > deadline) {
        throw new Error(
          `target did not finish ${n} rounds in ${timeoutMs} ms; stderr: ${this.stderr}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async metrics(): Promise<Map<string, PromFamily>> {
    const r = await fetch(`${this.base}/metrics`);
    assertSameJson(r.status, 200, "/metrics status");
    return parsePrometheus(await r.text());
  }

  async post(path: string, body: unknown): Promise<PagerStats> {
    const r = await fetch(`${this.base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const j = await r.json();
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}: ${j.error}`);
    return j as PagerStats;
  }

  /** Kills whatever is left (pager and target) and waits for the output readers. */
  async stop(): Promise<void> {
    // The target may not have printed its pid yet: find the pager's children
    // before the pager dies and they are reparented out of sight.
    const pids = new Set<number>(this.targetPid ? [this.targetPid] : []);
    try {
      for (const task of Deno.readDirSync(`/proc/${this.proc.pid}/task`)) {
        const kids = Deno.readTextFileSync(`/proc/${this.proc.pid}/task/${task.name}/children`);
        for (const k of kids.trim().split(/\s+/)) if (k) pids.add(Number(k));
      }
    } catch { /* the pager already exited */ }
    try {
      this.proc.kill("SIGKILL");
    } catch { /* already gone */ }
    for (const pid of pids) {
      if (!alive(pid)) continue;
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* raced with its exit */ }
    }
    await this.status;
    // A grandchild could still hold the pipes open; do not hang the suite on it.
    await withPatience("the output pipes to close", Promise.all(this.#readers)).catch(() => {});
  }
}

const MiB = 1 << 20;
/** `REMORA_REAL_PAGER=0` skips the real-pager tests (deno test cannot filter tests out by name). */
const SKIP_REAL = Deno.env.get("REMORA_REAL_PAGER") === "0";
const realTest = (name: string, fn: () => Promise<void>) =>
  test({
    name: `[real pager] ${name}`,
    ignore: SKIP_REAL,
    sanitizeResources: false,
    sanitizeOps: false,
    fn,
  });

/**
 * Starts the pager (`--local 16M`) on fill_verify with `targetArgs`, waits
 * until it serves and the target verified `rounds` rounds, runs `fn`, and
 * stops the pager whatever happens.
 */
async function withRealPager(
  targetArgs: string[],
  rounds: number,
  fn: (pager: RealPager) => Promise<void>,
): Promise<void> {
  await buildTarget("fill_verify");
  const pager = new RealPager("16M", targetArgs);
  try {
    await pager.ready();
    await pager.moreRounds(rounds);
    await fn(pager);
  } finally {
    await pager.stop();
  }
}

realTest("/metrics parses strictly and its counters move while the target runs", async () => {
  await withRealPager(["64", "0", "90", "20"], 1, async (pager) => {
    const a = await pager.metrics();
    await pager.moreRounds(2);
    const b = await pager.metrics();
    const budget = value(b, "remora_budget_pages");
    assertSameJson(budget, (16 * MiB) / PAGE_SIZE, "budget pages");
    assert(
      value(b, "remora_faults_total") > value(a, "remora_faults_total"),
      "faults_total did not move",
    );
    assert(
      value(b, "remora_pages_fetched_total") > value(a, "remora_pages_fetched_total"),
      "pages_fetched_total did not move",
    );
    assert(value(b, "remora_pages_evicted_total") > 0, "nothing evicted with a 64 MiB target");
    // Anonymous faults that outrun eviction may hold up to one eviction batch
    // above the budget for a moment (pager/faults.ts); never more.
    const resident = value(b, "remora_resident_pages");
    assert(
      resident <= budget + DEFAULT_EVICT_BATCH,
      `resident ${resident} pages above the budget ${budget} + one batch`,
    );
    assert(value(b, "remora_remote_pages") > 0, "no remote pages with a 64 MiB target");
    assert(
      value(b, "remora_fault_latency_seconds_count") >
        value(a, "remora_fault_latency_seconds_count"),
      "latency histogram did not move",
    );
    assert(pager.targetPid > 0 && (await rssAnon(pager.targetPid)) <= 20 * MiB, "RSS over budget");
    assert(!pager.mismatch(), pager.mismatch());
  });
});

realTest("resize changes the target's RSS both ways", async () => {
  await withRealPager(["64", "0", "120", "20"], 2, async (pager) => {
    const pid = pager.targetPid;
    const before = await rssAnon(pid);
    assert(before <= 20 * MiB, `RSS ${before / MiB} MiB with a 16 MiB budget`);

    const grown = await pager.post("/resize", { local: "48M" });
    assertSameJson(grown.budgetPages, (48 * MiB) / PAGE_SIZE, "budget after growing");
    await pager.moreRounds(3);
    const big = await rssAnon(pid);
    assert(big >= 32 * MiB, `RSS ${big / MiB} MiB after growing to 48 MiB`);
    assert(big <= 52 * MiB, `RSS ${big / MiB} MiB above the 48 MiB budget`);

    const shrunk = await pager.post("/resize", { bytes: 8 * MiB });
    assertSameJson(shrunk.budgetPages, (8 * MiB) / PAGE_SIZE, "budget after shrinking");
    assert(shrunk.residentPages <= shrunk.budgetPages, "resize answered before applying");
    const small = await rssAnon(pid);
    assert(small <= 12 * MiB, `RSS ${small / MiB} MiB right after shrinking to 8 MiB`);
    await pager.moreRounds(2);
    assert((await rssAnon(pid)) <= 12 * MiB, "RSS grew back above the 8 MiB budget");
    assert(!pager.mismatch(), pager.mismatch());
  });
});

realTest("detach restores every page; the pager exits and the target keeps verifying", async () => {
  await withRealPager(["64", "0", "120", "20"], 2, async (pager) => {
    const pid = pager.targetPid;
    const s = await pager.post("/detach", {});
    assertSameJson(s.remotePages, 0, "remote pages after detach");
    assert(s.counters.pagesRestored > 0, "detach restored no page");
    // Every page is back in the target before the answer, not lazily later.
    const rss = await rssAnon(pid);
    assert(rss >= 62 * MiB, `RSS ${rss / MiB} MiB right after detach, want the whole 64 MiB`);
    const exit = await withPatience("the pager to exit after detach", pager.status);
    assertSameJson(exit.code, 0, `pager exit code; stderr: ${pager.stderr}`);
    assert(alive(pid), "the target died with the pager");
    await pager.moreRounds(2);
    assert(!pager.mismatch(), pager.mismatch());
  });
});

realTest("the pager exits when the program exits", async () => {
  await buildTarget("fill_verify");
  const pager = new RealPager("16M", ["64", "3", "60", "0"]);
  try {
    const exit = await withPatience("the pager to exit after its program did", pager.status);
    assertSameJson(exit.code, 0, `pager exit code; stderr: ${pager.stderr}`);
    assertSameJson(pager.rounds(), 3, "rounds verified");
    assert(pager.lines.includes("done"), "target did not finish");
  } finally {
    await pager.stop();
  }
});
