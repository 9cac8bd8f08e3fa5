/**
 * remora command line.
 *
 * ```
 * deno run --allow-ffi pager.ts --pid 4242 --local 32M
 * deno run --allow-ffi pager.ts --local 32M -- ./my-program args
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { getLogger } from "@logtape/logtape";
import { SUBCOMMANDS, tokenFromEnv } from "./control/cli.ts";
import { parseHttpAddress } from "./control/http.ts";
import { parseLogLevelName, setupLogging } from "./control/logging.ts";
import { Progress } from "./control/progress.ts";
import type { ControlServer } from "./control/http.ts";
import { MIN_BUDGET_PAGES } from "./pager/budget.ts";
import type { Pager, PagerEnd } from "./pager/pager.ts";
import { formatSize, parseBudget, parseSize } from "./pager/size.ts";
import type { PagerControl, PagerStats } from "./pager/stats.ts";
import { PAGE_SIZE, type PageStore, StoreUnavailableError } from "./transport/store.ts";

const HELP = `remora: page a running process's memory out to remote memory and back.

Usage:
  pager.ts --pid PID [options]           attach to a running process
  pager.ts [options] -- PROGRAM [ARGS]   start PROGRAM under the pager
  pager.ts peer [options]                lend this machine's memory to pagers (see peer --help)
  pager.ts status|resize SIZE|detach     talk to a running pager's --http endpoint (see --help of each)

Options:
  --pid PID            process to attach to, in decimal (any process you may ptrace; run as root)
  --local SIZE         local budget: at most SIZE of the target's anonymous memory stays
                       resident (e.g. 32M, 720K, 1G; default 64M; a whole number of 4K
                       pages, minimum ${MIN_BUDGET_PAGES * 4}K, maximum 16T)
  --backend URLS       where evicted pages go, comma-separated (default: embedded, i.e. the
                       pager's own memory)
  --replicas N         copies of each page on distinct remote endpoints (default 1)
  --token-file FILE    shared secret for authenticating to peers (tcp://, rdma://), or the
                       password file for redis://
  --tls-ca FILE        CA certificate trusted for tcps:// peers
  --slab-size SIZE     for tcp:// peers: pages placed together on the same peers (default 64M,
                       at most the peers' --slab-size); smaller slabs spread and drain finer
  --rdma MODE          for rdma:// backends: required (default; fail if RDMA cannot be used),
                       auto (fall back to tcp:// with a notice), or a device name (e.g. mlx5_0)
  --http ADDR          serve /metrics (Prometheus), /stats (JSON), a live dashboard at /, and
                       POST /resize and /detach on ADDR (e.g. 127.0.0.1:9477; needs --allow-net).
                       Loopback unless told otherwise; another address needs --http-token
  --http-token TOKEN   bearer token required on every HTTP request (or $REMORA_HTTP_TOKEN
                       with --allow-env)
  --stats-json FILE    write the final statistics as JSON to FILE, mode 0600, never through
                       a symbolic link (needs --allow-write); a failure to write it is
                       reported on stderr and does not change the exit status
  --log-level LEVEL    debug, info, warning or error (default info)
  --log-json           log one JSON object per line
  --quiet              print only errors and the final summary
  --prefetch MODE      leap (default): a missing fault also fetches the pages its thread's
                       recent faults trend towards (Leap's majority vote), in the same store
                       request; off: every page comes back through its own fault
  --colocate MODE      auto (default): while the target has one thread, it and the pager's
                       loop run on one CPU (no cross-CPU wake-up per fault; its own CPUs
                       come back when it starts a thread or at detach); off: never
  --detach-only        with --pid of a target whose remora pager was killed: take it over,
                       put every page back and detach at once, instead of paging on
  --strict-pages       debugging: an illegal page-state move stops the pager with an error
                       (it is otherwise logged once and the move made as asked)
  -h, --help           this help

Ctrl-C or SIGTERM puts every page back into the target, detaches, and exits 0;
the target keeps running with all its data. If the pager is killed outright,
the target blocks on its next access to a paged-out page instead of reading
wrong data, and "pager.ts --pid N" with the same backend takes it over again
(the embedded store keeps its pages in /dev/shm, or $REMORA_STATE_DIR, for that).

Exit status: 0 after a detach or when the target exits (with "--", the
program's own status); 1 when attaching fails; 2 on bad usage; 3 when pages
were lost (the target is stopped with SIGSTOP), or a killed pager's files are
gone or damaged (the target stays blocked).

Examples:
  deno run --allow-ffi pager.ts --pid 4242 --local 32M
  deno run --allow-ffi pager.ts --local 32M -- ./my-program --size 256
  deno run --allow-ffi --allow-net --allow-read pager.ts --pid 4242 --local 64M \\
      --backend tcp://10.0.0.2:7070,tcp://10.0.0.3:7070 --replicas 2 --token-file /etc/remora/token
  deno run --allow-ffi --allow-net pager.ts --pid 4242 --local 64M --backend memcached://10.0.0.5:11211
  deno run --allow-ffi --allow-net pager.ts --pid 4242 --local 64M --http 127.0.0.1:9477
  deno run --allow-net pager.ts resize 16M --http 127.0.0.1:9477
`;

const log = getLogger(["remora"]);

/** What the command line asks for, checked. */
interface PagerRequest {
  /** The pid to attach to, or 0 with `program`. */
  pid: number;
  /** The program to start under the pager (after `--`), or empty. */
  program: string[];
  budgetBytes: number;
  backends: string[];
  replicas: number;
  /** Pages per peer slab, if not the default. */
  slabPages?: number;
  tokenFile?: string;
  tlsCaFile?: string;
  rdma?: string;
  http?: { hostname: string; port: number };
  httpToken?: string;
  statsJson?: string;
  strictPages: boolean;
  /** Take over a killed pager's target and detach at once. */
  detachOnly: boolean;
  prefetch: "leap" | "off";
  colocate: boolean;
}

/** Runs the command line; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  if (argv[0] === "peer") {
    const { peerCommand } = await import("./transport/peer/cli.ts");
    return await peerCommand(argv.slice(1));
  }
  if (argv[0] in SUBCOMMANDS) return await SUBCOMMANDS[argv[0]](argv.slice(1));
  const request = await parseRequest(argv);
  return typeof request === "number" ? request : await runPager(request);
}

/** The pager's own options (before `--`), as `parseArgs` reads them. */
function parseOptions(own: string[]) {
  return parseArgs({
    args: own,
    options: {
      pid: { type: "string" },
      local: { type: "string", default: "64M" },
      backend: { type: "string", default: "embedded" },
      replicas: { type: "string", default: "1" },
      "token-file": { type: "string" },
      "tls-ca": { type: "string" },
      "slab-size": { type: "string" },
      rdma: { type: "string" },
      "stats-json": { type: "string" },
      http: { type: "string" },
      "http-token": { type: "string" },
      "log-level": { type: "string", default: "info" },
      "log-json": { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      "strict-pages": { type: "boolean", default: false },
      "detach-only": { type: "boolean", default: false },
      prefetch: { type: "string", default: "leap" },
      colocate: { type: "string", default: "auto" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  }).values;
}

/**
 * Reads and checks the command line and sets up logging. Returns the request,
 * or the exit code when there is nothing to run (`--help`, bad usage).
 */
async function parseRequest(argv: string[]): Promise<PagerRequest | number> {
  const dash = argv.indexOf("--");
  const program = dash < 0 ? [] : argv.slice(dash + 1);
  let values;
  try {
    values = parseOptions(dash < 0 ? argv : argv.slice(0, dash));
  } catch (e) {
    return usage(e instanceof Error ? e.message : String(e));
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  let level, http, budgetBytes;
  try {
    level = values.quiet ? "error" : parseLogLevelName(values["log-level"]);
    http = values.http === undefined ? undefined : parseHttpAddress(values.http);
  } catch (e) {
    return usage((e as Error).message);
  }
  await setupLogging({ level, json: values["log-json"] });
  if ((values.pid === undefined) === (program.length === 0)) {
    return usage("give either --pid PID or -- PROGRAM [ARGS]");
  }
  const pid = values.pid === undefined ? 0 : parsePid(values.pid);
  if (pid < 0) return usage(`--pid must be a process id in decimal, not "${values.pid}"`);
  try {
    budgetBytes = parseBudget(values.local);
  } catch (e) {
    return usage(`--local: ${(e as Error).message}`);
  }
  const statsJson = values["stats-json"];
  if (statsJson !== undefined && !writePermitted(statsJson)) {
    return usage(`--stats-json ${statsJson} needs --allow-write (for that file)`);
  }
  if (values.prefetch !== "leap" && values.prefetch !== "off") {
    return usage(`--prefetch must be leap or off, not "${values.prefetch}"`);
  }
  if (values.colocate !== "auto" && values.colocate !== "off") {
    return usage(`--colocate must be auto or off, not "${values.colocate}"`);
  }
  const replicas = Number(values.replicas);
  if (!Number.isInteger(replicas) || replicas < 1) {
    return usage("--replicas must be a whole number >= 1");
  }
  let slabPages: number | undefined;
  if (values["slab-size"] !== undefined) {
    let bytes = NaN;
    try {
      bytes = parseSize(values["slab-size"]);
    } catch { /* said below */ }
    if (!(bytes >= PAGE_SIZE) || bytes % PAGE_SIZE !== 0 || bytes > 2 ** 40) {
      return usage(
        `--slab-size must be a whole number of 4K pages up to 1T, not "${values["slab-size"]}"`,
      );
    }
    slabPages = bytes / PAGE_SIZE;
  }
  return {
    pid,
    program,
    budgetBytes,
    backends: values.backend.split(",").filter((u) => u !== ""),
    replicas,
    slabPages,
    tokenFile: values["token-file"],
    tlsCaFile: values["tls-ca"],
    rdma: values.rdma,
    http,
    httpToken: values["http-token"] ?? tokenFromEnv(),
    statsJson,
    strictPages: values["strict-pages"],
    detachOnly: values["detach-only"],
    prefetch: values.prefetch,
    colocate: values.colocate === "auto",
  };
}

/** A decimal pid, or -1: Number() would take 0x10 as 16 and attach to the wrong process. */
function parsePid(text: string): number {
  const pid = /^[1-9][0-9]{0,9}$/.test(text) ? Number(text) : -1;
  return pid > 0x7fffffff ? -1 : pid;
}

/**
 * Attaches (or starts the program), pages it until it exits, is detached or
 * fails, and returns the exit code. The FFI modules load here, so that
 * `--help` and bad usage load none.
 */
async function runPager(req: PagerRequest): Promise<number> {
  const problem = await nativeProblem();
  if (problem !== null) return fail(problem);
  const { openStore } = await import("./transport/open.ts");
  let store: PageStore;
  const recorded = await recordedNamespace(req.pid);
  try {
    store = await openStore(req.backends, {
      replicas: req.replicas,
      slabPages: req.slabPages,
      namespace: recorded ?? await storeNamespace(),
      resumed: recorded !== null,
      tokenFile: req.tokenFile,
      tlsCaFile: req.tlsCaFile,
      rdma: req.rdma,
    });
  } catch (e) {
    if (e instanceof StoreUnavailableError) return fail(e.message);
    throw e;
  }
  // The control endpoint is up before the target is touched: a busy port
  // or a refused address fails here, with the target unharmed.
  const ref: { pager?: Pager } = {};
  let server: ControlServer | undefined;
  try {
    server = await startControl(req, ref);
  } catch (e) {
    await store.close();
    return fail(e instanceof Error ? e.message : String(e));
  }
  const attached = await attachTarget(req, store);
  if ("failure" in attached) {
    // Not after a failed take-over (exit 3): the store may hold a killed
    // pager's pages by now, which close() would delete.
    if (attached.code !== 3) await store.close();
    await server?.shutdown();
    return fail(attached.failure, attached.code);
  }
  ref.pager = attached.pager;
  return await pageUntilEnd(req, attached, store, server);
}

/** Why this process cannot page anything (privilege, native shim), or null. */
async function nativeProblem(): Promise<string | null> {
  const { geteuid, readSmallFile } = await import("./ffi/libc.ts");
  const { loadShim, ShimMissingError } = await import("./ffi/shim.ts");
  if (geteuid() !== 0) {
    const unpriv = readSmallFile("/proc/sys/vm/unprivileged_userfaultfd")?.trim();
    if (unpriv !== "1") {
      return "remora must run as root here (vm.unprivileged_userfaultfd=0 and ptrace needs privilege): use sudo";
    }
  }
  try {
    loadShim();
  } catch (e) {
    if (e instanceof ShimMissingError) return e.message;
    throw e;
  }
  return null;
}

/**
 * The namespace a killed pager of `pid` kept its pages under in memcached or
 * Redis (from the record it left), so that this pager finds them; or null.
 */
async function recordedNamespace(pid: number): Promise<string | null> {
  if (pid <= 0) return null;
  const { SessionRecord, StoreKind, stateDir } = await import("./pager/record.ts");
  try {
    const rec = SessionRecord.peek(stateDir(), pid);
    return rec !== null && rec.store === StoreKind.KEYED && rec.namespace !== ""
      ? rec.namespace
      : null;
  } catch {
    return null; // unreadable: the attach says why
  }
}

/** This pager's store namespace: host, pid and a random part, so that no two pagers share keys. */
async function storeNamespace(): Promise<string> {
  const { readSmallFile } = await import("./ffi/libc.ts");
  const host = readSmallFile("/proc/sys/kernel/hostname")?.trim() ?? "host";
  return `remora:${host}:${Deno.pid}:${crypto.randomUUID().slice(0, 8)}`;
}

/** Starts `--http` (if asked) over whichever pager `ref` holds by then. */
async function startControl(
  req: PagerRequest,
  ref: { pager?: Pager },
): Promise<ControlServer | undefined> {
  if (req.http === undefined) return undefined;
  const { serveControl } = await import("./control/http.ts");
  const notYet = () => new Error("the pager is still attaching; try again in a moment");
  const control: PagerControl = {
    stats: () => {
      if (ref.pager === undefined) throw notYet();
      return ref.pager.stats();
    },
    resize: (bytes) => ref.pager?.resize(bytes) ?? Promise.reject(notYet()),
    detach: () => ref.pager?.detach() ?? Promise.reject(notYet()),
  };
  return await serveControl(control, { ...req.http, token: req.httpToken });
}

/** The attached pager, the pid it pages and the child it started (0 with --pid). */
interface Attached {
  pager: Pager;
  pid: number;
  child: number;
}

/** Attaches to `--pid` or starts the program under the pager; or says why not, with the exit code. */
async function attachTarget(
  req: PagerRequest,
  store: PageStore,
): Promise<Attached | { failure: string; code: number }> {
  const { releaseSpawned, spawnStoppedAtExec } = await import("./ffi/spawn.ts");
  const { AttachError, Pager, UnrecoverableError } = await import("./pager/pager.ts");
  const skips: string[] = [];
  const opts = {
    budgetBytes: req.budgetBytes,
    store,
    onSkip: (line: string) => skips.push(line),
    strictPages: req.strictPages,
    prefetch: req.prefetch,
    colocate: req.colocate,
  };
  let pid = req.pid;
  let child = 0;
  let pager: Pager;
  try {
    if (req.program.length > 0) {
      pid = child = spawnStoppedAtExec(req.program);
      try {
        pager = await Pager.attachAtExec(child, opts);
      } catch (e) {
        releaseSpawned(child);
        throw e;
      }
    } else {
      pager = await Pager.attach(pid, opts);
    }
  } catch (e) {
    if (e instanceof UnrecoverableError) return { failure: e.message, code: 3 };
    if (e instanceof AttachError) return { failure: e.message, code: 1 };
    return {
      failure: `attaching to pid ${pid} failed: ${e instanceof Error ? e.message : e}`,
      code: 1,
    };
  }
  announce(pager, pid, store, skips);
  if (req.detachOnly) {
    log.info("detaching (--detach-only): putting every page back");
    pager.detach();
  }
  return { pager, pid, child };
}

/** The attach line, and the mappings left alone. */
function announce(pager: Pager, pid: number, store: PageStore, skips: string[]): void {
  const st = pager.stats();
  const found = pager.recovered;
  if (found !== null) {
    log.info(
      `took over pid ${pid} from a killed pager: ${found.resident} pages resident, ` +
        `${found.remote} in the store, ${found.freed} unreferenced keys freed (from ${found.from})`,
    );
  }
  log.info(
    `attached to pid ${pid}: ${formatSize(st.managedBytes)} managed, ${
      formatSize(st.residentPages * PAGE_SIZE)
    } resident, local budget ${formatSize(pager.budgetPages * PAGE_SIZE)}, backend ${store.name}`,
  );
  for (const line of skips) log.debug(`skipped ${line}`);
  if (skips.length > 0) {
    log.info(
      `skipped ${skips.length} mapping(s) that cannot be paged (--log-level debug lists them)`,
    );
  }
}

/** Pages until the target exits or is detached (SIGINT, SIGTERM, HTTP); returns the exit code. */
async function pageUntilEnd(
  req: PagerRequest,
  { pager, child }: Attached,
  store: PageStore,
  server: ControlServer | undefined,
): Promise<number> {
  const onSignal = () => {
    log.info("detaching: putting every page back");
    showRestore(pager);
    pager.detach();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const end = await pager.done();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  // After a detach through HTTP, this still delivers its answer.
  await server?.shutdown();
  // A detach closed the store already; after an exit, free what it holds for
  // us (peers' slabs, store connections). Lost pages stay where they are.
  if (end.kind === "exited") await store.close().catch(() => {});
  const final = pager.stats();
  console.error(summary(final, end));
  if (req.statsJson) await writeStatsJson(req.statsJson, final);
  switch (end.kind) {
    case "detached":
      return 0;
    case "exited": {
      const { reapChild } = await import("./ffi/spawn.ts");
      return child > 0 ? reapChild(child) : 0;
    }
    case "lost":
      console.error(`remora: ${end.message}`);
      return 3;
    case "failed":
      console.error(`remora: ${end.message}`);
      return 1;
  }
}

/** Whether Deno lets this process write `path` (without prompting). */
function writePermitted(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "write", path }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * Writes the final statistics, mode 0600, never through a symbolic link.
 * A failure is one line on stderr and leaves the exit status alone: the
 * detach or exit it reports on has already happened.
 */
async function writeStatsJson(path: string, stats: PagerStats): Promise<void> {
  try {
    // Loaded here: `--help` and `peer` load no FFI.
    const { writePrivateFile } = await import("./ffi/private_file.ts");
    writePrivateFile(path, new TextEncoder().encode(JSON.stringify(stats, null, 2) + "\n"));
  } catch (e) {
    console.error(`remora: --stats-json not written: ${(e as Error).message}`);
  }
}

/** A progress line (on a terminal only) while a detach brings the remote pages back. */
function showRestore(pager: Pager): void {
  const total = pager.stats().remotePages;
  if (total === 0) return;
  const progress = new Progress("restoring", { total, unit: "pages" });
  const timer = setInterval(() => progress.update(total - pager.stats().remotePages), 100);
  pager.done().then(() => {
    clearInterval(timer);
    progress.finish();
  });
}

/** The counters printed at exit. */
export function summary(s: PagerStats, end: PagerEnd): string {
  const c = s.counters;
  const how = end.kind === "detached"
    ? "detached; every page is back in the target"
    : end.kind === "exited"
    ? `pid ${end.pid} exited; its pages were freed`
    : end.kind;
  return [
    `remora: ${how}`,
    `  faults ${c.faults} (missing ${c.missingFaults}, write-protect ${c.wpFaults}), zero fills ${c.zeroFills}`,
    `  pages fetched ${c.pagesFetched}, evicted ${c.pagesEvicted}, written ${c.pagesWritten}, ` +
    `writes avoided ${c.writesAvoided}, restored ${c.pagesRestored}`,
    `  resident ${s.residentPages} pages, remote ${s.remotePages} pages`,
    `  fault latency median ${s.faultLatency.p50Us.toFixed(1)} us, p99 ${
      s.faultLatency.p99Us.toFixed(1)
    } us over ${s.faultLatency.count} faults`,
  ].join("\n");
}

function usage(message: string): number {
  console.error(`remora: ${message} (see --help)`);
  return 2;
}

function fail(message: string, code = 1): number {
  console.error(`remora: ${message}`);
  return code;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
