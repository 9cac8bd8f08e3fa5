/**
 * The `status`, `resize` and `detach` subcommands: small HTTP clients of a
 * running pager's control endpoint (`pager.ts --http ...`).
 *
 * Each returns an exit code instead of exiting, so `pager.ts` stays in charge
 * of the process: 0 success, 1 the pager is unreachable or refused, 2 usage.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { PagerStats } from "../pager/stats.ts";
import { PAGE_SIZE } from "../transport/store.ts";
import { DEFAULT_HTTP_ADDRESS, httpBase, parseHttpAddress } from "./http.ts";
import { formatBytes, parseBudget } from "../pager/size.ts";

export { formatBytes, parseSize } from "../pager/size.ts";

/** Where a subcommand writes; the console by default, a collector in tests. */
export interface CommandIO {
  /** Writes one line of results (stdout). */
  out(line: string): void;
  /** Writes one line of diagnostics (stderr). */
  err(line: string): void;
}

const consoleIO: CommandIO = {
  out: (line) => console.log(line),
  err: (line) => console.error(line),
};

/** Environment variable read when `--http-token` is not given (keeps the secret out of `ps`). */
export const TOKEN_ENV = "REMORA_HTTP_TOKEN";

const COMMON_OPTIONS = `Options:
  --http HOST:PORT     control endpoint of the pager (default ${DEFAULT_HTTP_ADDRESS});
                       the same value the pager was started with
  --http-token TOKEN   token the pager was started with (default: $${TOKEN_ENV})
  --json               print the pager's JSON answer instead of a summary
  -h, --help           show this help`;

/** `pager.ts status --help`. */
export const STATUS_HELP = `Usage: pager.ts status [--http HOST:PORT] [--http-token TOKEN] [--json]

Shows a running pager's memory, faults, latency and backend health.

${COMMON_OPTIONS}

Examples:
  pager.ts status
  pager.ts status --http 127.0.0.1:9477 --json
  REMORA_HTTP_TOKEN=s3cret pager.ts status --http 10.0.0.5:9477

Exit status: 0 ok, 1 pager not reachable or refused, 2 bad usage.`;

/** `pager.ts resize --help`. */
export const RESIZE_HELP =
  `Usage: pager.ts resize SIZE [--http HOST:PORT] [--http-token TOKEN] [--json]

Sets a running pager's local memory budget (what --local set at start),
live: growing lets pages come back, shrinking evicts pages to the backend.
Returns once the new budget is applied.

SIZE is bytes with an optional binary suffix: K, M, G, T or KiB, MiB, GiB,
TiB (all powers of 1024), e.g. 16M, 512K, 1.5G, 65536: a whole number of
4 KiB pages, at least 64K and at most 16T (as for --local).

${COMMON_OPTIONS}

Examples:
  pager.ts resize 16M
  pager.ts resize 1G --http 127.0.0.1:9477
  pager.ts resize 256MiB --http [::1]:9500 --json

Exit status: 0 ok, 1 pager not reachable or refused, 2 bad usage.`;

/** `pager.ts detach --help`. */
export const DETACH_HELP = `Usage: pager.ts detach [--http HOST:PORT] [--http-token TOKEN] [--json]

Puts every page back into the target process(es), detaches, and makes the
pager exit; the target keeps running with all its memory local. Waits until
every page is restored (this can take a while for a large target).

${COMMON_OPTIONS}

Examples:
  pager.ts detach
  pager.ts detach --http 127.0.0.1:9477 --json

Exit status: 0 ok, 1 pager not reachable or refused, 2 bad usage.`;

/**
 * `$REMORA_HTTP_TOKEN` if set and readable. Asks the permission state first:
 * without `--allow-env`, `Deno.env.get` would prompt on a terminal.
 *
 * @returns The token, or undefined when unset, empty or not permitted.
 */
export function tokenFromEnv(): string | undefined {
  try {
    const perm = Deno.permissions.querySync({ name: "env", variable: TOKEN_ENV });
    if (perm.state !== "granted") return undefined;
    return Deno.env.get(TOKEN_ENV) || undefined;
  } catch {
    return undefined;
  }
}

interface Parsed {
  base: string;
  token?: string;
  json: boolean;
  positionals: string[];
}

class UsageError extends Error {}

function parse(argv: string[], positionals: number): Parsed | "help" {
  let values: Record<string, string | boolean | undefined>;
  let pos: string[];
  try {
    ({ values, positionals: pos } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        http: { type: "string" },
        "http-token": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    // node's messages are long and mention "args"; keep the first sentence.
    throw new UsageError(String((e as Error).message).split(". ")[0].replace(/\.$/, ""));
  }
  if (values.help) return "help";
  if (pos.length > positionals) throw new UsageError(`unexpected argument "${pos[positionals]}"`);
  let base: string;
  try {
    base = httpBase(parseHttpAddress((values.http as string | undefined) ?? DEFAULT_HTTP_ADDRESS));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const token = (values["http-token"] as string | undefined) ?? tokenFromEnv();
  return { base, token, json: values.json === true, positionals: pos };
}

/** An HTTP failure already phrased for the user. */
class ReachError extends Error {}

async function call(
  p: Parsed,
  method: "GET" | "POST",
  path: string,
  body: unknown,
  timeoutMs: number | undefined,
): Promise<PagerStats> {
  const url = `${p.base}${path}`;
  const headers: Record<string, string> = { accept: "application/json" };
  if (p.token) headers.authorization = `Bearer ${p.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined,
    });
  } catch (e) {
    // Deno puts the reason (refused, DNS) in `cause`; the message is just "fetch failed".
    const cause = (e as Error)?.cause as Error | undefined;
    const msg = `${(e as Error)?.message ?? e} ${cause?.message ?? ""}`.trim();
    const why = (e as Error)?.name === "TimeoutError"
      ? `no answer within ${timeoutMs! / 1000} s`
      : /refused/i.test(msg)
      ? "connection refused"
      : /dns|lookup|resolve/i.test(msg)
      ? "host name not found"
      : (cause?.message ?? msg).split(": ").pop()!.replace(/ \(os error \d+\)$/, "");
    throw new ReachError(
      `no pager reachable at ${p.base} (${why}); is one running with --http ${
        p.base.replace(/^http:\/\//, "")
      }?`,
    );
  }
  const text = await res.text();
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new ReachError(
      `${p.base} answered HTTP ${res.status} with something other than JSON; is it a remora pager?`,
    );
  }
  if (!res.ok) {
    const error = (data as { error?: string })?.error ?? `HTTP ${res.status}`;
    if (res.status === 401) {
      throw new ReachError(
        `the pager at ${p.base} refused: ${error}; pass --http-token or set ${TOKEN_ENV}`,
      );
    }
    throw new ReachError(`the pager at ${p.base} refused: ${error} (HTTP ${res.status})`);
  }
  return data as PagerStats;
}

const pages = (n: number) => `${formatBytes(n * PAGE_SIZE)} (${n} pages)`;

function fmtUs(us: number): string {
  if (!(us > 0)) return "0 µs";
  if (us < 1000) return `${us < 10 ? us.toFixed(1) : us.toFixed(0)} µs`;
  return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
}

function fmtUptime(s: number): string {
  if (s < 60) return `${s.toFixed(1)} s`;
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(sec).padStart(2, "0")}s`;
}

/**
 * A human summary of a stats snapshot, a few lines (what `status` prints).
 *
 * @param s The snapshot.
 * @param base The endpoint it came from, for the first line.
 */
export function summarizeStats(s: PagerStats, base: string): string[] {
  const c = s.counters;
  const lines = [
    `remora pager at ${base}: up ${fmtUptime(s.uptimeSeconds)}, backend ${s.backend}, ` +
    `pids ${s.pids.length ? s.pids.join(" ") : "none"}`,
    `  memory   resident ${pages(s.residentPages)} of budget ${pages(s.budgetPages)}`,
    `           remote ${pages(s.remotePages)}, managed ${formatBytes(s.managedBytes)}`,
    `  faults   ${c.faults} (missing ${c.missingFaults}, write-protect ${c.wpFaults}, ` +
    `zero-filled ${c.zeroFills}; ${c.zeroFillsAhead} more zero-filled ahead)`,
    `  pages    fetched ${c.pagesFetched}, evicted ${c.pagesEvicted}, written ${c.pagesWritten}, ` +
    `writes avoided ${c.writesAvoided}`,
    `  latency  p50 ${fmtUs(s.faultLatency.p50Us)}, p99 ${fmtUs(s.faultLatency.p99Us)} ` +
    `over ${s.faultLatency.count} faults`,
    `  store    ${s.store.pages} pages, replication deficit ${s.store.replicationDeficit} pages` +
    (s.store.endpoints.length ? `, ${s.store.endpoints.length} endpoint(s):` : ""),
  ];
  const w = Math.max(0, ...s.store.endpoints.map((e) => e.address.length));
  for (const e of s.store.endpoints) {
    lines.push(
      `    ${e.address.padEnd(w)}  ${e.state.padEnd(8)}  ${e.requests} requests, ` +
        `median ${fmtUs(e.medianLatencyUs)}, ${e.pages} pages`,
    );
  }
  return lines;
}

async function run(
  name: string,
  help: string,
  argv: string[],
  io: CommandIO,
  positionals: number,
  act: (p: Parsed) => Promise<string[]>,
): Promise<number> {
  let p: Parsed | "help";
  try {
    p = parse(argv, positionals);
  } catch (e) {
    io.err(`remora ${name}: ${(e as Error).message} (see pager.ts ${name} --help)`);
    return 2;
  }
  if (p === "help") {
    io.out(help);
    return 0;
  }
  try {
    for (const line of await act(p)) io.out(line);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`remora ${name}: ${e.message} (see pager.ts ${name} --help)`);
      return 2;
    }
    if (e instanceof ReachError) {
      io.err(`remora ${name}: ${e.message}`);
      return 1;
    }
    throw e;
  }
}

/**
 * `pager.ts status`: prints a summary (or the JSON with `--json`).
 *
 * @param argv Arguments after `status`.
 * @param io Output (the console by default).
 * @returns The exit code.
 */
export function statusCommand(argv: string[], io: CommandIO = consoleIO): Promise<number> {
  return run("status", STATUS_HELP, argv, io, 0, async (p) => {
    const s = await call(p, "GET", "/stats", undefined, 5000);
    return p.json ? [JSON.stringify(s, null, 2)] : summarizeStats(s, p.base);
  });
}

/**
 * `pager.ts resize SIZE`: sets the local budget and prints the result.
 *
 * @param argv Arguments after `resize`.
 * @param io Output (the console by default).
 * @returns The exit code.
 */
export function resizeCommand(argv: string[], io: CommandIO = consoleIO): Promise<number> {
  return run("resize", RESIZE_HELP, argv, io, 1, async (p) => {
    const sizeText = p.positionals[0];
    if (sizeText === undefined) throw new UsageError("missing SIZE, e.g. pager.ts resize 16M");
    let bytes: number;
    try {
      // The same check as --local and POST /resize.
      bytes = parseBudget(sizeText);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    // Shrinking evicts pages through the backend first; give it time.
    const s = await call(p, "POST", "/resize", { bytes }, 300_000);
    if (p.json) return [JSON.stringify(s, null, 2)];
    return [
      `remora: local budget is now ${pages(s.budgetPages)}; resident ${pages(s.residentPages)}, ` +
      `remote ${pages(s.remotePages)}`,
    ];
  });
}

/**
 * `pager.ts detach`: restores every page, detaches, and the pager exits.
 *
 * @param argv Arguments after `detach`.
 * @param io Output (the console by default).
 * @returns The exit code.
 */
export function detachCommand(argv: string[], io: CommandIO = consoleIO): Promise<number> {
  return run("detach", DETACH_HELP, argv, io, 0, async (p) => {
    // No timeout: restoring a large target takes as long as it takes.
    const s = await call(p, "POST", "/detach", {}, undefined);
    if (p.json) return [JSON.stringify(s, null, 2)];
    return [
      `remora: detached from ${s.pids.length ? `pid ${s.pids.join(" ")}` : "the target"}; ` +
      `${s.counters.pagesRestored} pages restored, ${s.remotePages} left remote; the pager exits`,
    ];
  });
}

/** The subcommands by name, for `pager.ts` to dispatch on `argv[0]`. */
export const SUBCOMMANDS: Record<string, (argv: string[], io?: CommandIO) => Promise<number>> = {
  status: statusCommand,
  resize: resizeCommand,
  detach: detachCommand,
};
