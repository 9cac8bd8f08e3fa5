/**
 * End-to-end: a tiny QEMU guest (TCG, RAM in a shared memfd) runs under the
 * pager, shrunk to 720 KiB (180 pages), grown to 64 MiB, shrunk again and
 * detached, while the guest keeps verifying its memory. Then the same at
 * 720 KiB with RAM in a /dev/shm file (memory-backend-file,share=on), and a
 * plain `-m` guest (private anonymous RAM, the pager's anonymous path).
 *
 * Needs root, qemu-system-x86 and busybox-static (see testing/guest/build.sh).
 * Set REMORA_SKIP_QEMU=1 to skip. REMORA_QEMU_SLACK=N allows N pages over the
 * 180-page budget in the residency check (default 0: the pager must never
 * exceed its budget, as measured from outside on the memfd).
 *
 * @module
 */

import { PATIENCE_MS, test, waitUntil } from "../testing/harness.ts";
import {
  backgroundStatus,
  bootGuest,
  type Guest,
  guestRamResidentPages,
  guestRamUsage,
  PAGE_SIZE,
  punchGuestRam,
  runVerify,
} from "../testing/guest/qemu.ts";
import { type PagerProc, parseSize, startHttpPager } from "../testing/guest/http_pager.ts";
import assert from "node:assert/strict";

const skip = Deno.env.get("REMORA_SKIP_QEMU") === "1";
const SLACK = Number(Deno.env.get("REMORA_QEMU_SLACK") ?? "0");
const RAM_MIB = 128;
const SMALL = "720K";
const SMALL_PAGES = parseSize(SMALL) / PAGE_SIZE; // 180
const BIG = "64M";
/** One-shot verification size at 720K: 512 pages, so it cannot fit in 180. */
const SMALL_VERIFY_MIB = 2;
/** One-shot verification size at 64M: fits in the budget. */
const BIG_VERIFY_MIB = 16;

const t0 = performance.now();
function step(msg: string): void {
  console.log(`  [${((performance.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Fails with the guest's console tail attached, so a dead guest explains itself. */
async function expectVerify(guest: Guest, mib: number, when: string, timeoutMs = PATIENCE_MS) {
  let r;
  try {
    r = await runVerify(guest, mib, timeoutMs);
  } catch (e) {
    throw new Error(
      `${when}: one-shot verification of ${mib} MiB got no answer: ${(e as Error).message}\n` +
        `QEMU alive: ${guest.alive()}\n${guest.diagnostics()}`,
    );
  }
  assert.ok(r.ok, `${when}: guest verification of ${mib} MiB failed: '${r.line}'`);
  step(`${when}: verify ${mib} MiB ok, guest ${r.ms} ms, wall ${r.wallMs.toFixed(0)} ms`);
  return r;
}

async function expectPing(guest: Guest, when: string, timeoutMs = PATIENCE_MS) {
  const t = performance.now();
  let a;
  try {
    a = await guest.serial.command("ping", timeoutMs);
  } catch (e) {
    throw new Error(
      `${when}: guest did not answer ping: ${(e as Error).message}\n` +
        `QEMU alive: ${guest.alive()}\n${guest.diagnostics()}`,
    );
  }
  assert.equal(a, "pong", `${when}: ping answered '${a}'`);
  step(`${when}: ping ok (${(performance.now() - t).toFixed(0)} ms)`);
}

/**
 * The background memverify must still pass rounds, and complete one past
 * `after`: that round checks data written before this phase began, so pages
 * evicted and fetched back under the current budget are verified.
 */
async function expectBackground(
  guest: Guest,
  when: string,
  after: number,
  timeoutMs = PATIENCE_MS,
) {
  const t = performance.now();
  for (;;) {
    const left = timeoutMs - (performance.now() - t);
    const s = await backgroundStatus(guest, Math.max(left, 1000));
    // Before its first round (the fill) is done, the verifier has no status yet.
    const started = s.line !== "no-status";
    assert.ok(s.ok || !started, `${when}: background memverify reports '${s.line}'`);
    if (s.round > after) {
      step(`${when}: background memverify at round ${s.round}`);
      return s.round;
    }
    if (left <= 0) {
      throw new Error(
        `${when}: background memverify stuck at round ${s.round} for ${timeoutMs} ms`,
      );
    }
    await delay(250);
  }
}

/**
 * Samples the memfd's allocated pages every `everyMs` until stopped; `max`
 * is what the "stays at or under 180 pages" requirement is checked against.
 */
function residencySampler(pid: number, everyMs = 50) {
  let max = 0;
  let n = 0;
  let stop = false;
  const done = (async () => {
    while (!stop) {
      try {
        const p = await guestRamResidentPages(pid);
        max = Math.max(max, p);
        n++;
      } catch {
        return; // QEMU gone: the guest checks report it
      }
      await delay(everyMs);
    }
  })();
  return {
    async stop() {
      stop = true;
      await done;
      return { max, samples: n };
    },
  };
}

/** Waits until the memfd holds at most `limit` pages (the pager evicts after attach/shrink). */
async function waitResidentAtMost(guest: Guest, pager: PagerProc, limit: number, when: string) {
  const t = performance.now();
  let now = 0;
  while (performance.now() - t < PATIENCE_MS) {
    now = await guestRamResidentPages(guest.pid);
    if (now <= limit) {
      step(`${when}: guest RAM down to ${now} pages in ${(performance.now() - t).toFixed(0)} ms`);
      return;
    }
    await delay(100);
  }
  let st = "";
  try {
    const s = await pager.stats();
    st = `pager says residentPages=${s.residentPages} budgetPages=${s.budgetPages}`;
  } catch (e) {
    st = `GET /stats failed: ${(e as Error).message}`;
  }
  throw new Error(
    `${when}: guest RAM memfd still holds ${now} pages after ${PATIENCE_MS / 1000} s ` +
      `(limit ${limit}); ${st}. ` +
      `Guest RAM is QEMU's shared mapping '/memfd:memory-backend-memfd (deleted)' (rw-s): ` +
      `the pager must register and evict it (fallocate PUNCH_HOLE on the memfd).\n` +
      `--- pager output ---\n${pager.output()}`,
  );
}

/** Waits until the pager reports at most its budget resident (a state, not a sample). */
async function waitWithinBudget(pager: PagerProc, when: string): Promise<void> {
  let last = "no stats yet";
  await waitUntil(() => `${when}: pager resident within its budget (last: ${last})`, async () => {
    const s = await pager.stats();
    last = `residentPages=${s.residentPages} budgetPages=${s.budgetPages}`;
    return s.residentPages <= s.budgetPages;
  });
  step(`${when}: pager ${last}`);
}

test({
  name: "qemu guest: boots without a pager, and dies when its RAM is punched (control)",
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const guest = await bootGuest({ ramMiB: RAM_MIB, verifyMiB: 1 });
    try {
      step(`booted in ${guest.bootMs.toFixed(0)} ms (QEMU pid ${guest.pid})`);
      const u = await guestRamUsage(guest.pid);
      step(`guest RAM after boot: ${u.allocatedPages}/${u.totalPages} pages allocated`);
      // The three measures agree on a shmem file when nothing is unmapped.
      if (u.dataPages !== null) assert.equal(u.dataPages, u.allocatedPages);
      await expectPing(guest, "control");
      await expectVerify(guest, BIG_VERIFY_MIB, "control");
      // Evicting without a pager must be fatal: this is what makes the
      // pager test able to fail when a page is not served back.
      await punchGuestRam(guest.pid, 0, guest.ramBytes);
      const outcome = await Promise.race([
        guest.exited.then(() => "exited"),
        guest.serial.command("run-verify 1", 20_000).then(
          (l) => `answered '${l}'`,
          () => "no answer",
        ),
      ]);
      step(`after punching all guest RAM: ${outcome}`);
      assert.ok(
        outcome === "exited" || outcome === "no answer" || outcome.includes("MISMATCH"),
        `a guest whose RAM was punched without a pager still works (${outcome}): ` +
          `the test could not detect a lost page`,
      );
    } finally {
      await guest.kill();
    }
  },
});

test({
  name: `qemu guest under remora: ${SMALL}, grow ${BIG}, shrink ${SMALL}, detach`,
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const guest = await bootGuest({ ramMiB: RAM_MIB, verifyMiB: 1, verifyPeriodMs: 1000 });
    let pager: PagerProc | undefined;
    try {
      step(`booted in ${guest.bootMs.toFixed(0)} ms (QEMU pid ${guest.pid})`);
      await expectPing(guest, "before attach");
      await expectVerify(guest, SMALL_VERIFY_MIB, "before attach");
      const before = await guestRamResidentPages(guest.pid);
      let round = await expectBackground(guest, "before attach", 0); // round 0 is the fill
      step(`guest RAM before attach: ${before} pages`);

      // --- attach at 720K -------------------------------------------------
      pager = await startHttpPager({ pid: guest.pid, local: SMALL });
      step(`pager attached in ${pager.attachMs.toFixed(0)} ms at ${pager.url}`);
      const s0 = await pager.stats();
      assert.equal(s0.budgetPages, SMALL_PAGES, `budgetPages after --local ${SMALL}`);
      await waitResidentAtMost(guest, pager, SMALL_PAGES + SLACK, `attach ${SMALL}`);
      let sampler = residencySampler(guest.pid);
      await expectPing(guest, `at ${SMALL}`);
      await expectVerify(guest, SMALL_VERIFY_MIB, `at ${SMALL}`);
      round = await expectBackground(guest, `at ${SMALL}`, round);
      let res = await sampler.stop();
      step(`at ${SMALL}: max ${res.max} resident pages over ${res.samples} samples`);
      assert.ok(
        res.max <= SMALL_PAGES + SLACK,
        `at ${SMALL}: guest RAM reached ${res.max} pages (budget ${SMALL_PAGES}, slack ${SLACK})`,
      );
      await waitWithinBudget(pager, `at ${SMALL}`);

      // --- grow to 64M --------------------------------------------------------
      await pager.resize(parseSize(BIG));
      const s2 = await pager.stats();
      assert.equal(s2.budgetPages, parseSize(BIG) / PAGE_SIZE, `budgetPages after resize ${BIG}`);
      await expectPing(guest, `at ${BIG}`);
      await expectVerify(guest, BIG_VERIFY_MIB, `at ${BIG}`);
      round = await expectBackground(guest, `at ${BIG}`, round);
      const grown = await guestRamResidentPages(guest.pid);
      step(`at ${BIG}: guest RAM ${grown} pages`);
      assert.ok(grown <= parseSize(BIG) / PAGE_SIZE + SLACK, `at ${BIG}: ${grown} pages resident`);

      // --- shrink to 720K again ----------------------------------------------
      await pager.resize(parseSize(SMALL));
      await waitResidentAtMost(guest, pager, SMALL_PAGES + SLACK, `shrink ${SMALL}`);
      sampler = residencySampler(guest.pid);
      await expectPing(guest, `shrunk ${SMALL}`);
      await expectVerify(guest, SMALL_VERIFY_MIB, `shrunk ${SMALL}`);
      round = await expectBackground(guest, `shrunk ${SMALL}`, round);
      res = await sampler.stop();
      step(`shrunk ${SMALL}: max ${res.max} resident pages over ${res.samples} samples`);
      assert.ok(
        res.max <= SMALL_PAGES + SLACK,
        `shrunk ${SMALL}: guest RAM reached ${res.max} pages (budget ${SMALL_PAGES})`,
      );
      const final = await pager.stats();

      // --- detach (SIGTERM) ---------------------------------------------------
      const code = await pager.terminate();
      assert.equal(code, 0, `pager exit code after SIGTERM\n${pager.output()}`);
      step(`pager detached, exit 0; last stats: ${JSON.stringify(final.counters ?? {})}`);
      const after = await guestRamResidentPages(guest.pid);
      step(`guest RAM after detach: ${after} pages (before attach: ${before})`);

      // --- the guest lives on without the pager ------------------------------
      // Any page the pager failed to put back now reads as zeros: the checks
      // below (and the background memverify's data, written before the detach)
      // catch it, or the guest crashes and QEMU exits (-no-reboot).
      await expectPing(guest, "after detach");
      await expectVerify(guest, BIG_VERIFY_MIB, "after detach");
      round = await expectBackground(guest, "after detach", round);
      await expectBackground(guest, "after detach, once more", round);
      assert.ok(guest.alive(), `QEMU exited after detach\n${guest.diagnostics()}`);
      step("done");
    } finally {
      if (pager) await pager.dispose();
      await guest.kill();
    }
  },
});

test({
  name:
    `qemu guest with RAM in a /dev/shm file (memory-backend-file) under remora: ${SMALL}, detach`,
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const guest = await bootGuest({ ramMiB: RAM_MIB, verifyMiB: 1, ram: "file" });
    let pager: PagerProc | undefined;
    try {
      step(
        `booted in ${guest.bootMs.toFixed(0)} ms (QEMU pid ${guest.pid}, RAM ${guest.memfdPath})`,
      );
      let round = await expectBackground(guest, "file: before attach", 0);
      pager = await startHttpPager({ pid: guest.pid, local: SMALL });
      await waitResidentAtMost(guest, pager, SMALL_PAGES + SLACK, `file: attach ${SMALL}`);
      const sampler = residencySampler(guest.pid);
      await expectPing(guest, `file: at ${SMALL}`);
      await expectVerify(guest, SMALL_VERIFY_MIB, `file: at ${SMALL}`);
      round = await expectBackground(guest, `file: at ${SMALL}`, round);
      const res = await sampler.stop();
      step(`file: at ${SMALL}: max ${res.max} resident pages over ${res.samples} samples`);
      assert.ok(res.max <= SMALL_PAGES + SLACK, `file: guest RAM reached ${res.max} pages`);
      const code = await pager.terminate();
      assert.equal(code, 0, `pager exit code after SIGTERM\n${pager.output()}`);
      await expectPing(guest, "file: after detach");
      await expectVerify(guest, BIG_VERIFY_MIB, "file: after detach");
      await expectBackground(guest, "file: after detach", round);
      assert.ok(guest.alive(), `QEMU exited after detach\n${guest.diagnostics()}`);
    } finally {
      if (pager) await pager.dispose();
      await guest.kill();
    }
  },
});

test({
  name: "qemu guest with plain -m RAM (private anonymous) under remora: 16M, detach",
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const guest = await bootGuest({ ramMiB: RAM_MIB, verifyMiB: 1, ram: "anon" });
    let pager: PagerProc | undefined;
    try {
      step(`booted in ${guest.bootMs.toFixed(0)} ms (QEMU pid ${guest.pid}, plain -m)`);
      let round = await expectBackground(guest, "anon: before attach", 0);
      // All of QEMU's private memory is paged here, guest RAM included.
      pager = await startHttpPager({ pid: guest.pid, local: "16M" });
      await expectPing(guest, "anon: at 16M");
      await expectVerify(guest, SMALL_VERIFY_MIB, "anon: at 16M");
      round = await expectBackground(guest, "anon: at 16M", round);
      // Faults that outrun eviction may hold one batch above the budget for a
      // moment; the pager must come back within it.
      await waitWithinBudget(pager, "anon: at 16M");
      const code = await pager.terminate();
      assert.equal(code, 0, `pager exit code after SIGTERM\n${pager.output()}`);
      await expectPing(guest, "anon: after detach");
      await expectVerify(guest, BIG_VERIFY_MIB, "anon: after detach");
      await expectBackground(guest, "anon: after detach", round);
      assert.ok(guest.alive(), `QEMU exited after detach\n${guest.diagnostics()}`);
    } finally {
      if (pager) await pager.dispose();
      await guest.kill();
    }
  },
});
