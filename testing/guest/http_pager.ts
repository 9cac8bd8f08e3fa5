/**
 * Runs `pager.ts` as a separate process against a pid and drives it over its
 * HTTP control endpoint, following the CLI contract:
 *
 *   deno run --allow-all pager.ts --pid PID --local 720K --http 127.0.0.1:PORT
 *   GET  /stats                 -> PagerStats JSON (residentPages, budgetPages, counters...)
 *   POST /resize {"bytes": N}   -> applies a new local budget live
 *   POST /detach                -> puts every page back and detaches
 *   SIGTERM                     -> same as /detach, then exit 0
 *
 * @module
 */

import { PATIENCE_MS, track } from "../harness.ts";
import { freePort } from "../servers.ts";

/** The pager entry point; `REMORA_PAGER` overrides it (e.g. to dry-run the harness). */
const PAGER = Deno.env.get("REMORA_PAGER") ?? new URL("../../pager.ts", import.meta.url).pathname;

/** The subset of the pager's `/stats` answer the tests read. */
export interface StatsView {
  /** Local budget in pages. */
  budgetPages: number;
  /** Pages resident in the targets, as the pager counts them. */
  residentPages: number;
  /** Everything else the pager reports. */
  [key: string]: unknown;
}

/** A pager process and its control endpoint. */
export interface PagerProc {
  /** The pager child process. */
  proc: Deno.ChildProcess;
  /** Base URL of its HTTP endpoint, e.g. `http://127.0.0.1:4567`. */
  url: string;
  /** Milliseconds from spawn until `/stats` first answered (attach done). */
  attachMs: number;
  /** GET /stats. */
  stats(): Promise<StatsView>;
  /** POST /resize with `{"bytes": bytes}`; resolves with the answer body (parsed if JSON). */
  resize(bytes: number): Promise<unknown>;
  /** Sends SIGTERM and waits (up to `timeoutMs`) for the exit code. */
  terminate(timeoutMs?: number): Promise<number>;
  /** Resolves with the exit code. */
  exited: Promise<number>;
  /** True while the pager runs. */
  alive(): boolean;
  /** Last lines of the pager's stdout+stderr. */
  output(lines?: number): string;
  /** Kills the pager if still running (SIGKILL) and releases its pipes. */
  dispose(): Promise<void>;
}

/** Options of {@link startHttpPager}. */
export interface PagerOptions {
  /** Pid to attach to (QEMU). */
  pid: number;
  /** `--local` value, e.g. `720K`. */
  local: string;
  /** Give up if `/stats` does not answer within this time. Default 30 s. */
  attachTimeoutMs?: number;
  /** Extra pager arguments. */
  extraArgs?: string[];
}

/**
 * Starts `pager.ts --pid PID --local L --http 127.0.0.1:PORT` and waits until
 * `/stats` answers. Throws a message that says which step failed (the pager
 * exiting early, or its endpoint never answering) with the pager's output.
 */
export async function startHttpPager(opts: PagerOptions): Promise<PagerProc> {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = [
    "run",
    "--allow-all",
    PAGER,
    "--pid",
    String(opts.pid),
    "--local",
    opts.local,
    "--http",
    `127.0.0.1:${port}`,
    ...(opts.extraArgs ?? []),
  ];
  const t0 = performance.now();
  const proc = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const c of s) out = (out + dec.decode(c, { stream: true })).slice(-20_000);
  };
  const pumps = Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  track("pager", proc, () => out, pumps);
  let running = true;
  const exited = proc.status.then((s) => {
    running = false;
    return s.code;
  });
  const output = (lines = 20) => out.trimEnd().split("\n").slice(-lines).join("\n");

  const get = async (path: string): Promise<Response> => {
    return await fetch(url + path, { signal: AbortSignal.timeout(PATIENCE_MS) });
  };
  const json = async (r: Response, what: string): Promise<unknown> => {
    const text = await r.text();
    if (!r.ok) throw new Error(`pager ${what}: HTTP ${r.status}: ${text}`);
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  };
  const dispose = async () => {
    if (running) {
      try {
        proc.kill("SIGKILL");
      } catch {
        // exited meanwhile
      }
    }
    await exited;
    await pumps;
  };

  const timeout = opts.attachTimeoutMs ?? PATIENCE_MS;
  for (;;) {
    if (!running) {
      const code = await exited;
      await pumps;
      throw new Error(
        `ATTACH FAILED: 'deno ${args.join(" ")}' exited with code ${code} before its ` +
          `HTTP endpoint answered (is the pager built and does it accept --pid/--local/--http?).\n` +
          `--- pager output ---\n${output(30) || "(empty)"}`,
      );
    }
    if (performance.now() - t0 > timeout) {
      await dispose();
      throw new Error(
        `ATTACH FAILED: pager still running but GET ${url}/stats did not answer within ` +
          `${timeout} ms.\n--- pager output ---\n${output(30) || "(empty)"}`,
      );
    }
    try {
      const r = await fetch(url + "/stats", { signal: AbortSignal.timeout(2000) });
      await r.body?.cancel();
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const attachMs = performance.now() - t0;

  return {
    proc,
    url,
    attachMs,
    exited,
    alive: () => running,
    output,
    dispose,
    stats: async () => (await json(await get("/stats"), "GET /stats")) as StatsView,
    resize: async (bytes: number) =>
      await json(
        await fetch(url + "/resize", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ bytes }),
          signal: AbortSignal.timeout(PATIENCE_MS),
        }),
        `POST /resize ${bytes}`,
      ),
    terminate: async (timeoutMs = PATIENCE_MS) => {
      if (running) proc.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const code = await Promise.race([
        exited,
        new Promise<null>((r) => timer = setTimeout(() => r(null), timeoutMs)),
      ]);
      clearTimeout(timer);
      if (code === null) {
        throw new Error(
          `DETACH FAILED: pager did not exit within ${timeoutMs} ms of SIGTERM.\n` +
            `--- pager output ---\n${output(30)}`,
        );
      }
      await pumps;
      return code;
    },
  };
}

/** Parses a size like `720K`, `64M`, `1G` or a plain byte count. */
export function parseSize(s: string): number {
  const m = /^(\d+)([KMG]?)i?B?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size: ${s}`);
  const mult = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase()] ?? 1;
  return Number(m[1]) * mult;
}
