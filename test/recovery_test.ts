/**
 * A pager killed outright is replaced: the next `pager.ts --pid N` takes the
 * target over from the record the dead one left in /dev/shm, and the target
 * carries on verifying every word of its memory.
 */
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { test, waitUntil } from "../testing/harness.ts";
import {
  buildTarget,
  cpusAllowed,
  Proc,
  processState,
  REMOTE_PAGER_PERMS,
  sleep,
  startPager,
} from "../testing/procs.ts";
import { memcachedItems, redisCli, startMemcached, startRedis } from "../testing/servers.ts";
import { lentBytes, makeTokenFile, startPeer } from "../testing/peers.ts";

const memcheck = await buildTarget("memcheck");
const STATE_DIR = "/dev/shm";

function assertVerified(p: Proc): void {
  assert(!/MISMATCH/.test(p.text()), `the target read wrong data:\n${p.text()}`);
}

/** The record and page file names of `pid` in the state directory. */
function filesOf(pid: number): string[] {
  return [...Deno.readDirSync(STATE_DIR)]
    .map((e) => e.name)
    .filter((n) => n.startsWith(`remora-${pid}-`));
}

/** Rounds the target has verified so far. */
function rounds(target: Proc): number {
  return target.count(/round \d+ ok/);
}

/** Waits until the target has verified `more` rounds past what it had. */
async function progresses(target: Proc, more: number, what: string): Promise<void> {
  const from = rounds(target);
  await waitUntil(`${what}: ${more} more verified rounds (had ${from})`, () => {
    assertVerified(target);
    const state = processState(target.pid);
    assert(state !== null && state !== "Z", `${what}: the target died:\n${target.text()}`);
    return rounds(target) >= from + more;
  });
}

/**
 * Runs `fn` on a memcheck target started with `args` once it verified its
 * first round, and kills the target afterwards whatever happened.
 */
async function withTarget(args: string[], fn: (target: Proc) => Promise<void>): Promise<void> {
  const target = new Proc(memcheck, args);
  try {
    await target.waitFor(/round 1 ok/);
    await fn(target);
  } finally {
    target.kill();
    await target.exit();
  }
}

/**
 * Starts a pager on `target` (`--local 4M` and `extra`), lets the target
 * verify two rounds under it, and kills the pager outright.
 */
async function pageThenKill(target: Proc, extra: string[] = [], perms?: readonly string[]) {
  const first = startPager(["--pid", String(target.pid), "--local", "4M", ...extra], {
    perms: perms ? [...perms] : undefined,
  });
  await first.waitFor(/attached to pid/);
  await progresses(target, 2, "paged by the first pager");
  first.kill("SIGKILL");
  await first.exit();
}

for (const threads of ["1", "4"]) {
  test(`a pager killed outright at random moments, 10 times, is taken over each time (${threads} thread(s)); the target verifies every word; SIGTERM puts every page back and removes the record`, async () => {
    // 32 MiB in 4 MiB: each kill lands in an eviction (a drop under way, a
    // thread inside an injected call: guard markers with one thread, DONTNEED
    // and its REMOVE events with four) or in the paging between them.
    await withTarget(["32", "0", threads, "0", "10"], async (target) => {
      let pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
      await pager.waitFor(/attached to pid/);
      assertEquals(filesOf(target.pid).length, 2, `record and page file: ${filesOf(target.pid)}`);
      for (let kill = 1; kill <= 10; kill++) {
        await sleep(Math.floor(Math.random() * 800));
        pager.kill("SIGKILL");
        await pager.exit();
        const state = processState(target.pid);
        assert(state !== null && state !== "Z", `kill ${kill}: the target died:\n${target.text()}`);
        pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
        await pager.waitFor(
          /took over pid \d+ from a killed pager: \d+ pages resident, \d+ in the store/,
        );
        await progresses(target, 2, `after take-over ${kill}`);
      }
      assertMatch(pager.text(), /attached to pid/);
      pager.kill("SIGTERM");
      assertEquals(await pager.exit(), 0, pager.text());
      assertMatch(pager.text(), /every page is back/);
      await progresses(target, 2, "after the detach");
      assertEquals(filesOf(target.pid), [], "the detach removes the record and the page file");
    });
  });
}

test("--detach-only takes a killed pager's target over and gives every page back at once, and its own CPUs", async () => {
  await withTarget(["16", "0", "1", "0", "10"], async (target) => {
    const own = cpusAllowed(target.pid);
    const first = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await first.waitFor(/attached to pid/);
    // One thread: the first pager narrows it to its own CPU (pager/colocate.ts).
    await waitUntil(
      `pid ${target.pid} narrowed to one CPU`,
      () => /^\d+$/.test(cpusAllowed(target.pid)),
    );
    await progresses(target, 2, "paged by the first pager");
    first.kill("SIGKILL");
    await first.exit();
    const second = startPager(["--pid", String(target.pid), "--local", "4M", "--detach-only"]);
    assertEquals(await second.exit(), 0, second.text());
    assertMatch(second.text(), /took over pid/);
    assertMatch(second.text(), /every page is back/);
    await progresses(target, 3, "after the detach");
    assertEquals(cpusAllowed(target.pid), own, "the target's own CPUs are back");
    assertEquals(filesOf(target.pid), [], "no record left");
  });
});

test("the record of a target that exited while its pager was dead is removed by the next pager", async () => {
  const target = new Proc(memcheck, ["16", "0", "1", "0", "10"]);
  const pid = target.pid;
  try {
    await target.waitFor(/round 1 ok/);
    await pageThenKill(target);
  } finally {
    target.kill();
    await target.exit();
  }
  assertEquals(filesOf(pid).length, 2, "the dead pager's files stay while nobody looks");
  const next = startPager(["--pid", String(pid), "--local", "4M"]);
  assertEquals(await next.exit(), 1, next.text());
  assertMatch(next.text(), /no process with pid/);
  assertEquals(filesOf(pid), [], `removed: ${next.text()}`);
});

/**
 * Starts the pager on `pid` set to die at `point` (its `count`-th pass), waits
 * for that death, and checks that a new pager takes the target over, the
 * target verifies on, and a detach gives every page back.
 */
async function crashAndTakeOver(target: Proc, point: string, count: number): Promise<void> {
  const pid = String(target.pid);
  const doomed = startPager(["--pid", pid, "--local", "4M"], {
    perms: ["--allow-ffi", "--allow-env"],
    env: { REMORA_CRASH_AT: `${point}:${count}` },
  });
  const code = await doomed.exit();
  assert(
    code !== 0 && !/detached/.test(doomed.text()),
    `${point}: killed there:\n${doomed.text()}`,
  );
  const state = processState(target.pid);
  assert(state !== null && state !== "Z", `${point}: the target died:\n${target.text()}`);
  const next = startPager(["--pid", pid, "--local", "4M"]);
  await next.waitFor(/took over pid/);
  await progresses(target, 2, `after a crash at ${point}`);
  next.kill("SIGTERM");
  assertEquals(await next.exit(), 0, next.text());
  await progresses(target, 1, `after the detach that followed a crash at ${point}`);
  assertEquals(filesOf(target.pid), [], "no record left");
}

for (
  const [threads, points] of [["1", ["stored", "recorded", "guarded", "dropped", "placed"]], [
    "4",
    ["stored", "recorded", "dropped", "placed"],
  ]] as const
) {
  test(
    `a pager killed between any two steps of an eviction or a fetch (${threads} thread(s): ${
      points.join(", ")
    }) is taken over with no wrong word`,
    async () => {
      await withTarget(["16", "0", threads, "0", "10"], async (target) => {
        for (const point of points) {
          await crashAndTakeOver(target, point, point === "placed" ? 300 : 2);
        }
      });
    },
  );
}

test("a killed pager's page file gone: one line, exit 3, and the target stays blocked, never fed zeros", async () => {
  await withTarget(["16", "0", "1", "0", "10"], async (target) => {
    await pageThenKill(target);
    const pagesFile = filesOf(target.pid).find((n) => n.endsWith(".pages"));
    assert(pagesFile !== undefined, `a page file: ${filesOf(target.pid)}`);
    Deno.removeSync(`${STATE_DIR}/${pagesFile}`);
    const second = startPager(["--pid", String(target.pid), "--local", "4M"]);
    assertEquals(await second.exit(), 3, second.text());
    assertMatch(second.text(), /is missing, so \d+ of its pages cannot be recovered/);
    assertEquals(second.err.filter((l) => l.trim() !== "").length, 1, `one line: ${second.text()}`);
    await assertBlocked(target, "after the refused take-over");
    assertVerified(target);
  });
});

/** CPU time of `pid` so far, in clock ticks (utime + stime of /proc/PID/stat). */
function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/**
 * The target whose pager was killed is blocked: no round verified, and next
 * to no CPU used (a thread spinning on a page that cannot come would use a
 * whole CPU), over 1.5 s.
 */
async function assertBlocked(target: Proc, what: string): Promise<void> {
  await sleep(300); // a round under way runs into a page the dead pager held
  const rounds0 = rounds(target), ticks0 = cpuTicks(target.pid);
  await sleep(1500);
  const used = cpuTicks(target.pid) - ticks0;
  assertEquals(rounds(target), rounds0, `${what}: the target is blocked:\n${target.text()}`);
  assert(used < 30, `${what}: a blocked target used ${used} ticks of CPU in 1.5 s`);
}

/**
 * Kills the pager of `target` (started with `backend`), takes the target over
 * with the same options, lets it verify, detaches; returns the pager's output.
 */
async function killAndTakeOver(target: Proc, backend: string[]): Promise<string> {
  const args = ["--pid", String(target.pid), "--local", "4M", ...backend];
  await pageThenKill(target, backend, REMOTE_PAGER_PERMS);
  await assertBlocked(target, "with its pager killed");
  const second = startPager(args, { perms: REMOTE_PAGER_PERMS });
  await second.waitFor(
    /took over pid \d+ from a killed pager: \d+ pages resident, \d+ in the store/,
  );
  await progresses(target, 2, "after the take-over");
  second.kill("SIGTERM");
  assertEquals(await second.exit(), 0, second.text());
  await progresses(target, 1, "after the detach");
  assertEquals(filesOf(target.pid), [], "no record left");
  return second.text();
}

test("Redis: a killed pager is taken over under the same namespace; the detach leaves no key", async () => {
  const redis = await startRedis(["--maxmemory-policy", "noeviction"]);
  const target = new Proc(memcheck, ["16", "0", "1", "0", "10"]);
  try {
    await target.waitFor(/round 1 ok/);
    await killAndTakeOver(target, ["--backend", `redis://${redis.hostPort}`]);
    const keys = Number((await redisCli(["-p", String(redis.port), "DBSIZE"])).trim());
    assertEquals(keys, 0, "the detach deleted every page it stored, the dead pager's too");
  } finally {
    target.kill();
    await target.exit();
    await redis.stop();
  }
});

test("memcached: a killed pager is taken over; with --replicas 2 that is refused, one line, exit 3", async () => {
  const servers = [await startMemcached(), await startMemcached()];
  const target = new Proc(memcheck, ["16", "0", "1", "0", "10"]);
  try {
    await target.waitFor(/round 1 ok/);
    await killAndTakeOver(target, ["--backend", `memcached://${servers[0].hostPort}`]);
    assertEquals(await memcachedItems(servers[0].port), 0, "every page deleted at the detach");
    const replicated = [
      "--backend",
      servers.map((s) => `memcached://${s.hostPort}`).join(","),
      "--replicas",
      "2",
    ];
    await pageThenKill(target, replicated, REMOTE_PAGER_PERMS);
    const second = startPager(["--pid", String(target.pid), "--local", "4M", ...replicated], {
      perms: REMOTE_PAGER_PERMS,
    });
    assertEquals(await second.exit(), 3, second.text());
    assertMatch(second.text(), /--replicas above 1 cannot be recovered yet/);
    await assertBlocked(target, "after the refused take-over with replicas");
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
    for (const s of servers) await s.stop();
  }
});

test("peers: a killed pager's session is taken over within the peers' lease (LIST finds its slabs); the detach frees them", async () => {
  const tokenFile = await makeTokenFile();
  const peers = [await startPeer({ tokenFile }), await startPeer({ tokenFile })];
  const target = new Proc(memcheck, ["16", "0", "1", "0", "10"]);
  try {
    await target.waitFor(/round 1 ok/);
    const backend = [
      "--backend",
      peers.map((p) => p.url).join(","),
      "--token-file",
      tokenFile,
      "--slab-size",
      "1M",
    ];
    const out = await killAndTakeOver(target, backend);
    assertMatch(
      out,
      /took over pid \d+ from a killed pager: \d+ pages resident, [1-9]\d* in the store/,
    );
    for (const p of peers) {
      assertEquals(await lentBytes(p, tokenFile), 0, `${p.url} lends nothing after the detach`);
    }
  } finally {
    target.kill();
    await target.exit();
    for (const p of peers) await p.stop();
    await Deno.remove(tokenFile);
  }
});

test("a killed pager's record damaged: one line, exit 3, and the target stays blocked", async () => {
  await withTarget(["16", "0", "1", "0", "10"], async (target) => {
    await pageThenKill(target);
    const state = filesOf(target.pid).find((n) => n.endsWith(".state"))!;
    const f = Deno.openSync(`${STATE_DIR}/${state}`, { write: true });
    f.writeSync(new Uint8Array(16)); // the header's magic and version
    f.close();
    const second = startPager(["--pid", String(target.pid), "--local", "4M"]);
    assertEquals(await second.exit(), 3, second.text());
    assertMatch(second.text(), /is damaged .*, so the pages it listed cannot be recovered/);
    assertEquals(second.err.filter((l) => l.trim() !== "").length, 1, `one line: ${second.text()}`);
    await assertBlocked(target, "after the refused take-over");
    assertVerified(target);
  });
});

test("a target that forked under the pager: the take-over says its child is not taken over; the parent verifies on, neither reads a wrong word", async () => {
  // The fork comes at round 6, once the pager has registered the memory (the
  // pager sees it and pages the child too).
  const target = new Proc(memcheck, ["16", "0", "1", "6", "10"], {
    env: { REMORA_AWAIT_PAGER_BEFORE_FORK: "1" },
  });
  let child = 0;
  try {
    await target.waitFor(/round 1 ok/);
    const first = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await first.waitFor(/attached to pid/);
    await target.waitFor(/child round \d+ ok/);
    child = Number(Deno.readTextFileSync(`/proc/${target.pid}/task/${target.pid}/children`).trim());
    first.kill("SIGKILL");
    await first.exit();
    const second = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await second.waitFor(/took over pid/);
    assertMatch(second.text(), /had 1 forked child\(ren\) paged with it: they are not taken over/);
    const parentRounds = target.count(/parent round \d+ ok/);
    await waitUntil("the parent to verify 2 more rounds after the take-over", () => {
      assertVerified(target);
      return target.count(/parent round \d+ ok/) >= parentRounds + 2;
    });
    // The child runs on while its pages are present and blocks on the first
    // that is not: never a wrong word either way (assertVerified covers it).
    second.kill("SIGTERM");
    assertEquals(await second.exit(), 0, second.text());
  } finally {
    if (child > 0) Deno.kill(child, "SIGKILL");
    target.kill();
    await target.exit();
  }
});
