/**
 * A verifying target (`testing/targets/memcheck.c`) under the pager CLI,
 * attached by pid, and the waits the backend tests make on it.
 *
 * @example
 * ```ts
 * import { assertVerified, moreRounds, startPaged } from "./paged.ts";
 * const run = await startPaged(["memcached://127.0.0.1:11211"]);
 * try {
 *   await moreRounds(run.target, 2);
 *   assertVerified(run.target);
 * } finally {
 *   await run.cleanup();
 * }
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import { PATIENCE_MS, waitUntil } from "../../testing/harness.ts";
import {
  buildTarget,
  Proc,
  REMOTE_PAGER_PERMS,
  runPager,
  startPager,
  waitHalted,
} from "../../testing/procs.ts";
import { freePort } from "../../testing/servers.ts";
import type { PagerStats } from "../../pager/stats.ts";

/** A verifying target (`testing/targets/memcheck.c`) running under the pager CLI, attached by pid. */
export interface PagedRun {
  /** The target: it checks every word of its memory each round and prints MISMATCH if one is wrong. */
  target: Proc;
  /** The pager CLI. */
  pager: Proc;
  /** The file the pager writes its final statistics to (`--stats-json`). */
  statsFile: string;
  /** Kills both (if alive) and removes the statistics file. */
  cleanup(): Promise<void>;
}

let memcheckBinary: Promise<string> | undefined;

/**
 * Starts memcheck (`mib` MiB, `rounds` rounds, 0 = forever, `sleepMs` between
 * rounds, default 20), lets it fill its memory (round 0), then attaches the pager to it with `--local 4M` and the
 * given backend URLs and extra arguments. Resolves once the pager attached.
 */
export async function startPaged(
  backend: string[],
  o: { mib?: number; rounds?: number; sleepMs?: number; extra?: string[] } = {},
): Promise<PagedRun> {
  memcheckBinary ??= buildTarget("memcheck");
  const bin = await memcheckBinary;
  const target = new Proc(bin, [
    String(o.mib ?? 12),
    String(o.rounds ?? 0),
    "1",
    "0",
    String(o.sleepMs ?? 20),
  ]);
  const statsFile = await Deno.makeTempFile({ suffix: ".json" });
  let pager: Proc | undefined;
  const cleanup = async () => {
    pager?.kill("SIGKILL");
    target.kill("SIGKILL");
    await Promise.allSettled([pager?.exit(), target.exit()]);
    await Deno.remove(statsFile).catch(() => {});
  };
  try {
    await target.waitFor(/round 0 ok/);
    pager = startPager(
      [
        "--pid",
        String(target.pid),
        "--local",
        "4M",
        "--stats-json",
        statsFile,
        "--backend",
        backend.join(","),
        ...(o.extra ?? []),
      ],
      { perms: [...REMOTE_PAGER_PERMS, "--allow-write"] },
    );
    await pager.waitFor(/attached to pid|^remora: /);
    if (!/attached to pid/.test(pager.text())) throw new Error(`pager failed:\n${pager.text()}`);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { target, pager, statsFile, cleanup };
}

/** Waits until the target has verified `n` more rounds than it had when called. */
export async function moreRounds(target: Proc, n: number, ms = PATIENCE_MS): Promise<void> {
  const now = target.count(/round \d+ ok/);
  await target.waitFor(new RegExp(`round ${now + n - 1} ok`), ms);
}

/** Fails if the target read a wrong byte (memcheck printed MISMATCH). */
export function assertVerified(p: Proc): void {
  if (/MISMATCH/.test(p.text())) throw new Error(`the target read wrong data:\n${p.text()}`);
}

/** Polls `probe` until it returns at least `min` (or `ms` pass); returns the last value. */
export async function waitAtLeast(
  probe: () => Promise<number>,
  min: number,
  ms = PATIENCE_MS,
): Promise<number> {
  let v = await probe();
  await waitUntil(`a value of at least ${min}`, async () => (v = await probe()) >= min, ms)
    .catch(() => {});
  return v;
}

/** The pager's error lines on stderr (those starting `remora:` that are not the summary). */
export function stderrLines(p: Proc): string[] {
  return p.err.filter((l) => l.trim() !== "");
}

/** The statistics the pager of `run` wrote when it exited (`--stats-json`). */
export async function readStats(run: PagedRun): Promise<PagerStats> {
  return JSON.parse(await Deno.readTextFile(run.statsFile));
}

/**
 * After the backend lost pages of `run`: the pager exits 3, the target is
 * stopped (SIGSTOP; or halted, see waitHalted) having read no wrong byte, and stderr holds one "could
 * not be read back" line, matching `why`, and no stack trace.
 */
export async function assertStoppedOnLoss(run: PagedRun, why: RegExp): Promise<void> {
  assert.equal(await run.pager.exit(), 3, run.pager.text());
  await waitHalted(run.target.pid, () => run.target.text());
  const lost = stderrLines(run.pager).filter((l) => /could not be read back/.test(l));
  assert.equal(lost.length, 1, run.pager.text());
  assert.match(lost[0], why);
  assert.ok(!/^\s+at /m.test(run.pager.text()), `no stack trace: ${run.pager.text()}`);
  assertVerified(run.target);
}

/**
 * The pager CLI refuses `backend` at start in one line matching `why`, with
 * exit status 1, and never starts the program.
 */
export async function assertRefusedAtStart(backend: string, why: RegExp): Promise<void> {
  const r = await runPager(["--backend", backend, "--", "/bin/echo", "ran"]);
  assert.equal(r.code, 1, r.p.text());
  assert.equal(stderrLines(r.p).length, 1, r.p.text());
  assert.match(r.p.err.join("\n"), why);
  assert.ok(!r.p.out.includes("ran"), "the program was not started");
}

/**
 * The pager CLI, given `scheme://127.0.0.1:<a free port>`, exits 1 with the
 * one line `remora: cannot reach <what> at ...: connection refused; is it running?`.
 */
export async function assertDownRefused(scheme: string, what: string): Promise<void> {
  const port = freePort();
  const down = await runPager(["--backend", `${scheme}://127.0.0.1:${port}`, "--", "/bin/true"]);
  assert.equal(down.code, 1, down.p.text());
  assert.deepEqual(stderrLines(down.p), [
    `remora: cannot reach ${what} at 127.0.0.1:${port}: connection refused; is it running?`,
  ]);
}

/** A store namespace no other test run uses: `remora:test:<pid>:<random>`. */
export function uniqueNamespace(): string {
  return `remora:test:${Deno.pid}:${crypto.randomUUID().slice(0, 8)}`;
}
