/**
 * The core pager against real processes: every test verifies the target's
 * memory contents (the targets check every word themselves and print
 * MISMATCH on the first wrong one).
 */
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { test, waitUntil } from "../testing/harness.ts";
import {
  buildTarget,
  cpusAllowed,
  Proc,
  processState,
  ROOT,
  rssAnonKiB,
  sleep,
  startPager,
} from "../testing/procs.ts";

const memcheck = await buildTarget("memcheck");
const churn = await buildTarget("churn");
const randwalk = await buildTarget("randwalk");

/**
 * A program started under the pager waits until the pager has registered its
 * memory (testing/targets/await_pager.h): paged from its first touch, on any
 * machine, instead of racing the pager's scan for new mappings.
 */
const AWAIT_PAGER = { REMORA_AWAIT_PAGER: "1" };

function assertVerified(p: Proc): void {
  assert(!/MISMATCH/.test(p.text()), `the target read wrong data:\n${p.text()}`);
}

/**
 * The highest RssAnon of `target`, sampled every 25 ms until `done` holds
 * (the target's own progress, so the window is counted in work, not time).
 */
async function worstRssWhile(target: Proc, done: () => boolean): Promise<number> {
  let worst = 0;
  await waitUntil("the target to make progress under the pager", async () => {
    worst = Math.max(worst, rssAnonKiB(target.pid));
    if (done()) return true;
    await sleep(25);
    return false;
  });
  return worst;
}

async function statsFile(): Promise<string> {
  return await Deno.makeTempFile({ suffix: ".json" });
}

test("a program started under the pager verifies 64 MiB in an 8 MiB budget, pages moving both ways", async () => {
  const stats = await statsFile();
  const p = startPager(["--local", "8M", "--stats-json", stats, "--", memcheck, "64", "4"], {
    perms: ["--allow-ffi", "--allow-write"],
    env: AWAIT_PAGER,
  });
  assertEquals(await p.exit(), 0, p.text());
  assertVerified(p);
  assertMatch(p.text(), /parent done/);
  const s = JSON.parse(await Deno.readTextFile(stats));
  assert(s.counters.pagesEvicted > 3 * 14000, `evicted ${s.counters.pagesEvicted}`);
  assert(s.counters.pagesFetched > 2 * 14000, `fetched ${s.counters.pagesFetched}`);
  // Pages first touched before the pager saw their mapping are found present
  // instead (how many depends on the machine's speed): only say zero fills happen.
  assert(s.counters.zeroFills > 0, `zero fills ${s.counters.zeroFills}`);
  // One thread, stopped for the drop: its pages go with guard markers (no REMOVE round trips).
  assert(s.counters.guardedDropRuns > 0, `guarded drop runs ${s.counters.guardedDropRuns}`);
  assertEquals(s.store.pages, 0, "the exited target's pages were freed in the store");
});

test("attached by pid, the target stays within its budget, and SIGTERM puts every page back", async () => {
  const target = new Proc(memcheck, ["64", "0", "1", "0", "20"]);
  try {
    await target.waitFor(/round 1 ok/);
    const before = rssAnonKiB(target.pid);
    assert(before > 60 * 1024, `target filled its memory (${before} KiB)`);
    const pager = startPager(["--pid", String(target.pid), "--local", "16M"]);
    await pager.waitFor(/attached to pid/);
    // The first eviction down to the budget takes a moment; then it must
    // hold while the target verifies four more rounds, however long they take.
    const attachedAt = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${attachedAt + 2} ok`));
    const rounds = target.count(/round \d+ ok/);
    const worst = await worstRssWhile(target, () => target.count(/round \d+ ok/) >= rounds + 4);
    assert(
      worst > 0 && worst <= 16 * 1024 + 4 * 1024,
      `RssAnon ${worst} KiB within 16 MiB + 4 MiB`,
    );
    pager.kill("SIGTERM");
    assertEquals(await pager.exit(), 0, pager.text());
    assertMatch(pager.text(), /detached; every page is back/);
    const afterDetach = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${afterDetach + 2} ok`));
    assert(rssAnonKiB(target.pid) > 60 * 1024, "every page is back in the target");
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a one-threaded target shares one CPU with the pager's loop, and has its own CPUs back at detach", async () => {
  const target = new Proc(memcheck, ["16", "0", "1", "0", "20"]);
  try {
    await target.waitFor(/round 1 ok/);
    const own = cpusAllowed(target.pid);
    const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await pager.waitFor(/attached to pid/);
    await waitUntil(
      `pid ${target.pid} narrowed to one CPU (it may run on ${cpusAllowed(target.pid)})`,
      () => /^\d+$/.test(cpusAllowed(target.pid)),
    );
    const cpu = cpusAllowed(target.pid);
    assertEquals(cpusAllowed(pager.pid), cpu, "the pager's loop runs on the target's CPU");
    const rounds = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${rounds + 2} ok`));
    pager.kill("SIGTERM");
    assertEquals(await pager.exit(), 0, pager.text());
    assertEquals(cpusAllowed(target.pid), own, "the target's own CPUs are back");
    const after = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${after + 1} ok`));
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a target that starts threads gets its own CPUs back, for good", async () => {
  // Four threads per round, started afresh each round: between rounds it has one.
  const target = new Proc(memcheck, ["16", "0", "4", "0", "20"]);
  try {
    await target.waitFor(/round 1 ok/);
    const own = cpusAllowed(target.pid);
    const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await pager.waitFor(/attached to pid/);
    const rounds = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${rounds + 4} ok`));
    // From here on, not one look may find it narrowed, between rounds or in one.
    const seen = new Set<string>();
    const until = target.count(/round \d+ ok/) + 2;
    while (target.count(/round \d+ ok/) < until) {
      seen.add(cpusAllowed(target.pid));
      await sleep(5);
    }
    assertEquals([...seen], [own], "the target keeps its own CPUs");
    pager.kill("SIGTERM");
    assertEquals(await pager.exit(), 0, pager.text());
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a one-threaded target that forks: parent and child both have their own CPUs back", async () => {
  const own = cpusAllowed(Deno.pid); // the program inherits the pager's, which inherits ours
  // It forks after 20 rounds (a second or more): time enough to see it narrowed first.
  const p = startPager(["--local", "4M", "--", memcheck, "16", "30", "1", "20", "50"], {
    env: AWAIT_PAGER,
  });
  let parent = 0, child = 0;
  try {
    await p.waitFor(/ready pid \d+/);
    parent = Number(/ready pid (\d+)/.exec(p.text())![1]);
    await waitUntil(
      `pid ${parent} narrowed to one CPU before it forks (it may run on ${cpusAllowed(parent)})`,
      () => /^\d+$/.test(cpusAllowed(parent)),
    );
    await p.waitFor(/child round 22 ok/);
    child = Number(Deno.readTextFileSync(`/proc/${parent}/task/${parent}/children`).trim());
    assert(child > 0, "the child is there");
    assertEquals(cpusAllowed(parent), own, "the parent's own CPUs are back");
    assertEquals(cpusAllowed(child), own, "the child's (inherited narrow) are its own again");
    assertEquals(await p.exit(), 0, p.text());
    assertVerified(p);
    assertMatch(p.text(), /parent done/);
  } finally {
    p.kill("SIGKILL");
    for (const pid of [child, parent]) {
      try {
        if (pid > 0) Deno.kill(pid, "SIGKILL"); // if a wait above failed; else long gone
      } catch { /* exited */ }
    }
    await p.exit();
  }
});

test("a target whose threads got lower ids than its main thread (pid space wrapped) attaches and verifies", async () => {
  // Start the target just below pid_max, so that its threads wrap around to
  // low ids: the pager must still inject into the main thread of the right process.
  const pidMax = Number(Deno.readTextFileSync("/proc/sys/kernel/pid_max").trim());
  Deno.writeTextFileSync("/proc/sys/kernel/ns_last_pid", String(pidMax - 2));
  const target = new Proc(memcheck, ["16", "0", "4"]);
  try {
    await target.waitFor(/round 1 ok/);
    const tids = [...Deno.readDirSync(`/proc/${target.pid}/task`)].map((e) => Number(e.name));
    const wrapped = tids.some((t) => t < target.pid);
    console.log(`target pid ${target.pid}, threads ${tids.join(" ")} (wrapped: ${wrapped})`);
    const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await pager.waitFor(/attached to pid/);
    await waitUntil(
      () => `the target's RssAnon under 8 MiB (now ${rssAnonKiB(target.pid)} KiB)`,
      () => rssAnonKiB(target.pid) < 8 * 1024,
    );
    const evictedAt = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${evictedAt + 2} ok`));
    pager.kill("SIGTERM");
    assertEquals(await pager.exit(), 0, pager.text());
    assertMatch(pager.text(), /pages fetched [1-9]/);
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a multithreaded target verifies under the pager, its pages moving both ways", async () => {
  const stats = await statsFile();
  const p = startPager(
    ["--local", "8M", "--stats-json", stats, "--", memcheck, "48", "5", "4", "0", "50"],
    { perms: ["--allow-ffi", "--allow-write"], env: AWAIT_PAGER },
  );
  assertEquals(await p.exit(), 0, p.text());
  assertVerified(p);
  assertMatch(p.text(), /parent done/);
  const s = JSON.parse(await Deno.readTextFile(stats));
  // 12288 pages in 2048 of budget: every round after the first fetches most of them.
  assert(s.counters.pagesFetched > 3 * 10000, `fetched ${s.counters.pagesFetched}`);
  assert(s.counters.wpFaults > 0, "threads wrote pages placed write-protected");
});

test("four threads faulting at random cannot push the target past its budget", async () => {
  // It would run ten minutes; the test ends it once it has seen enough.
  const target = new Proc(randwalk, ["64", "4", "600"]);
  try {
    await target.waitFor(/tick 2/);
    const stats = await statsFile();
    const pager = startPager(
      ["--pid", String(target.pid), "--local", "16M", "--stats-json", stats],
      {
        perms: ["--allow-ffi", "--allow-write"],
      },
    );
    await pager.waitFor(/attached to pid/);
    // The first shrink, from 64 MiB, takes a moment; from then on it must
    // hold over 30 more ticks of the four threads (each tick is 100 ms of
    // random faulting, on a slow machine far fewer faults than a fast one).
    await waitUntil(
      () => `RssAnon to fall to 16 MiB (now ${rssAnonKiB(target.pid)} KiB)`,
      () => rssAnonKiB(target.pid) <= 16 * 1024,
    );
    const ticks = target.count(/tick \d+/);
    const worst = await worstRssWhile(target, () => target.count(/tick \d+/) >= ticks + 30);
    assert(worst <= (16 + 4) * 1024, `RssAnon peaked at ${worst} KiB`);
    pager.kill("SIGTERM");
    assertEquals(await pager.exit(), 0, pager.text());
    assertMatch(pager.text(), /pages fetched [1-9]/);
    // Threads that run while one is stopped for a drop: a guarded page would be their SIGSEGV.
    const s = JSON.parse(await Deno.readTextFile(stats));
    assertEquals(
      s.counters.guardedDropRuns,
      0,
      "drops of a multithreaded target used guard markers",
    );
    const n = target.count(/tick \d+/);
    await target.waitFor(new RegExp(`tick ${n + 3}`));
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("after a fork, parent and child each see exactly their own data, evicted pages included", async () => {
  const p = startPager(["--local", "8M", "--", memcheck, "32", "6", "1", "3"], {
    env: AWAIT_PAGER,
  });
  assertEquals(await p.exit(), 0, p.text());
  assertVerified(p);
  assertMatch(p.text(), /child done/);
  assertMatch(p.text(), /parent done/);
  assertMatch(p.text(), /forked \d+: paging the child too/);
});

test("attached by pid to a multithreaded target that forks: both processes verify everything", async () => {
  // The fork waits for the pager (whenever it attaches), so the pager sees it.
  const target = new Proc(memcheck, ["32", "12", "4", "4", "100"], {
    env: { REMORA_AWAIT_PAGER_BEFORE_FORK: "1" },
  });
  try {
    await target.waitFor(/round 1 ok/);
    const pager = startPager(["--pid", String(target.pid), "--local", "8M"]);
    await pager.waitFor(/attached to pid/);
    assertEquals(await target.exit(), 0, target.text());
    assertEquals(await pager.exit(), 0, pager.text());
    assertVerified(target);
    assertMatch(target.text(), /child done/);
    assertMatch(target.text(), /parent done/);
    assertMatch(pager.text(), /forked \d+: paging the child too/);
    assertMatch(pager.text(), /pages fetched [1-9]/);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("freed, unmapped and moved memory reads as the program expects", async () => {
  const p = startPager(["--local", "4M", "--", churn, "24", "3"], { env: AWAIT_PAGER });
  assertEquals(await p.exit(), 0, p.text());
  assertVerified(p);
  assertMatch(p.text(), /^done$/m);
});

test("a transparent-huge-page area is paged 4 KiB at a time", async () => {
  const p = new Proc("deno", [
    "run",
    "--allow-ffi",
    `${ROOT}pager.ts`,
    "--local",
    "8M",
    "--",
    memcheck,
    "32",
    "4",
  ], { env: { MEMCHECK_THP: "1", ...AWAIT_PAGER } });
  assertEquals(await p.exit(), 0, p.text());
  assertVerified(p);
  assertMatch(p.text(), /parent done/);
});

test("if the pager is killed outright, the target blocks instead of reading wrong data", async () => {
  const target = new Proc(memcheck, ["32", "0", "1", "0", "10"]);
  try {
    await target.waitFor(/round 1 ok/);
    const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
    await pager.waitFor(/attached to pid/);
    const n = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${n + 1} ok`));
    pager.kill("SIGKILL");
    await pager.exit();
    await sleep(500);
    const stuck = target.count(/round \d+ ok/);
    await sleep(1500);
    assert(target.count(/round \d+ ok/) <= stuck + 1, "the target stopped making progress");
    assertVerified(target);
    assert(Deno.statSync(`/proc/${target.pid}`).isDirectory, "the target is still alive, blocked");
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a pager killed outright at random moments, 12 times, leaves its target alive and never reading a wrong word", async () => {
  // Each kill lands somewhere in the first eviction (28 MiB, many injected
  // process_madvise calls) or the paging after it: a thread stopped in the
  // middle of an injected call must be left blocked, not crashed.
  for (let kill = 1; kill <= 12; kill++) {
    const target = new Proc(memcheck, ["32", "0", "1", "0", "10"]);
    try {
      await target.waitFor(/round 1 ok/);
      const pager = startPager(["--pid", String(target.pid), "--local", "4M"]);
      await pager.waitFor(/attached to pid/);
      await sleep(Math.floor(Math.random() * 600));
      pager.kill("SIGKILL");
      await pager.exit();
      await sleep(1000);
      const state = processState(target.pid);
      assert(
        state !== null && state !== "Z",
        `kill ${kill}: the target died (state ${state}):\n${target.text()}`,
      );
      assertVerified(target);
    } finally {
      target.kill();
      await target.exit();
    }
  }
});

test("bad input gets one clear line and a non-zero exit", async () => {
  const cases: Array<[string[], number, RegExp]> = [
    [["--pid", "999999"], 1, /no process with pid 999999/],
    [["--pid", "2"], 1, /kernel thread/],
    [["--pid", "1", "--local", "lots"], 2, /invalid size "lots"/],
    [["--pid", "1", "--local", "1K"], 2, /below the workable minimum/],
    [["--local", "8M"], 2, /give either --pid PID or -- PROGRAM/],
    [["--pid", "1", "--backend", "gopher://x:1"], 1, /unknown backend "gopher"/],
    [["--pid", "1", "--colocate", "always"], 2, /--colocate must be auto or off/],
  ];
  for (const [args, code, message] of cases) {
    const p = startPager(args);
    assertEquals(await p.exit(), code, `${args.join(" ")}: ${p.text()}`);
    assertMatch(p.text(), message);
    assertEquals(p.err.filter((l) => l.trim() !== "").length, 1, `one line: ${p.text()}`);
    assert(!/ at /.test(p.text()), `no stack trace: ${p.text()}`);
  }
  // The pager's own pid: the shell execs deno, so $$ is the pager.
  const self = new Proc("sh", ["-c", `exec deno run --allow-ffi ${ROOT}pager.ts --pid $$`]);
  assertEquals(await self.exit(), 1, self.text());
  assertMatch(self.text(), /is the pager itself/);
});

test("a target already under another userfaultfd is refused and left unharmed", async () => {
  const target = new Proc(memcheck, ["16", "0", "1", "0", "20"]);
  try {
    await target.waitFor(/round 1 ok/);
    const first = startPager(["--pid", String(target.pid), "--local", "8M"]);
    await first.waitFor(/attached to pid/);
    const second = startPager(["--pid", String(target.pid), "--local", "8M"]);
    assertEquals(await second.exit(), 1, second.text());
    assertMatch(second.text(), /already under another userfaultfd/);
    const n = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${n + 2} ok`));
    first.kill("SIGTERM");
    assertEquals(await first.exit(), 0, first.text());
    const m = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${m + 1} ok`));
    assertVerified(target);
  } finally {
    target.kill();
    await target.exit();
  }
});

test("a missing native shim is reported with the command that builds it", async () => {
  const p = new Proc(
    "deno",
    ["run", "--allow-ffi", "--allow-env", `${ROOT}pager.ts`, "--pid", "1"],
    { env: { REMORA_SHIM: "/nonexistent/libremora_shim.so" } },
  );
  assertEquals(await p.exit(), 1, p.text());
  assertMatch(p.text(), /deno task build/);
});
