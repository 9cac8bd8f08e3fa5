/**
 * The real pager on a verifying C target with real peer daemons as its
 * backend: memcheck verifies every page of the previous round before writing
 * the next and prints MISMATCH on any wrong byte. It runs forever (sleeping
 * 20 ms per round) until the test ends it; --local 1M keeps most of its
 * 6 MiB remote.
 *
 * @example
 * ```ts
 * import { roundsMore, withPagerRun } from "./pager_run.ts";
 * await withPagerRun(async (run) => {
 *   const peers = await run.peers(3);
 *   const { pager } = await run.pager(peers, "--replicas", "2");
 *   await roundsMore(pager, 2);
 * });
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import { PATIENCE_MS } from "./harness.ts";
import { buildTarget, killPid, type Proc, REMOTE_PAGER_PERMS, startPager } from "./procs.ts";
import { makeTokenFile, type PeerProcess, startPeer } from "./peers.ts";
import type { Host } from "./netns.ts";

/** memcheck's arguments: 6 MiB, forever, 20 ms between rounds. */
export const MEMCHECK_FOREVER = ["6", "0", "1", "0", "20"];

/** The target's pid, from memcheck's "ready pid N" line. */
export async function targetPid(pager: Proc): Promise<number> {
  return Number((await pager.waitFor(/ready pid (\d+)/))[1]);
}

/** The round memcheck reported last. */
export function lastRound(pager: Proc): number {
  const all = [...pager.output().matchAll(/parent round (\d+) ok/g)];
  return all.length === 0 ? -1 : Number(all[all.length - 1][1]);
}

/** Waits until memcheck completed `more` further rounds (each verifies every page). */
export async function roundsMore(pager: Proc, more: number, ms = PATIENCE_MS): Promise<void> {
  const target = lastRound(pager) + more;
  await pager.waitFor(new RegExp(`parent round ${target} ok`), ms);
}

/** Fails, with the pager's output, if memcheck ever saw a wrong byte. */
export function assertNoMismatch(pager: Proc): void {
  assert.doesNotMatch(pager.output(), /MISMATCH/, pager.output());
}

/** Starts `count` peers logging at debug level, on `hosts[i]` when given. */
/**
 * Detaches with SIGTERM: the pager exits 0 saying every page is back, and
 * the target verifies another round on its own.
 *
 * @example
 * ```ts ignore
 * await detachAndVerify(pager);
 * ```
 */
export async function detachAndVerify(pager: Proc): Promise<void> {
  pager.kill("SIGTERM");
  assert.equal((await pager.status).code, 0, pager.output());
  // The summary may trail the exit: the target still holds the output pipe.
  await pager.waitFor(/detached; every page is back/);
  await roundsMore(pager, 1);
  assertNoMismatch(pager);
}

export async function debugPeers(
  count: number,
  tokenFile: string,
  hosts: Host[] = [],
): Promise<PeerProcess[]> {
  const peers: PeerProcess[] = [];
  for (let i = 0; i < count; i++) {
    peers.push(await startPeer({ tokenFile, args: ["--log-level", "debug"], host: hosts[i] }));
  }
  return peers;
}

/** What a {@linkcode withPagerRun} body starts; everything is stopped when it ends. */
export interface PagerRun {
  /** The token file the peers and the pager share. */
  tokenFile: string;
  /** Starts `count` peers logging at debug level, with the run's token, on `hosts[i]` when given. */
  peers(count: number, hosts?: Host[]): Promise<PeerProcess[]>;
  /**
   * Starts the pager (`--local 1M`) on a memcheck target that runs until the
   * test ends it, with `peers` as its backend and `extra` options.
   */
  pager(peers: PeerProcess[], ...extra: string[]): Promise<{ pager: Proc; pid: number }>;
}

/** Runs `fn` with what it starts (see {@linkcode PagerRun}) and stops all of it after. */
export async function withPagerRun(fn: (run: PagerRun) => Promise<void>): Promise<void> {
  const memcheck = await buildTarget("memcheck");
  const tokenFile = await makeTokenFile();
  const pids: number[] = [];
  const pagers: Proc[] = [];
  const peers: PeerProcess[] = [];
  try {
    await fn({
      tokenFile,
      peers: async (count, hosts) => {
        const started = await debugPeers(count, tokenFile, hosts);
        peers.push(...started);
        return started;
      },
      pager: async (on, ...extra) => {
        const backend = on.map((p) => p.url).join(",");
        const pager = startPager(
          ["--local", "1M", "--backend", backend, ...extra, "--token-file", tokenFile],
          { perms: REMOTE_PAGER_PERMS, program: [memcheck, ...MEMCHECK_FOREVER] },
        );
        pagers.push(pager);
        const pid = await targetPid(pager);
        pids.push(pid);
        return { pager, pid };
      },
    });
  } finally {
    for (const pager of pagers) pager.kill("SIGKILL");
    await Promise.all(pagers.map((pager) => pager.status));
    await Promise.all(peers.map((p) => p.stop()));
    pids.forEach(killPid);
    await Deno.remove(tokenFile);
  }
}
