/**
 * Issue #18: a QEMU guest shrunk to 128 pages still accepts SSH logins.
 *
 * The guest (cloud kernel, busybox, dropbear; `testing/guest/build.sh`'s
 * initramfs-ssh.gz) runs under TCG with virtio-net on QEMU user networking;
 * the host logs in with Debian's openssh-client through `hostfwd`. Two cases:
 *
 * - guest RAM in a shared memfd, pager at `--local 512K` (128 pages): three
 *   logins in a row, each within 120 s, while the memfd's resident pages,
 *   measured from outside every 50 ms (st_blocks and a SEEK_DATA walk of
 *   /proc/QEMU/fd/N), never exceed 128, and the guest's background memverify
 *   keeps completing rounds;
 * - plain `-m` RAM (private anonymous memory of QEMU) at `--local 16M`: the
 *   budget then covers all of QEMU's private memory (guest RAM, the TCG code
 *   buffer, QEMU's heap), so the guest RAM mapping's smaps Rss is checked
 *   against it.
 *
 * Login times are printed, not asserted beyond the issue's 120 s bound.
 * Needs root, qemu-system-x86, busybox-static, dropbear-bin and openssh-client.
 * Set REMORA_SKIP_QEMU=1 to skip.
 *
 * @module
 */

import { PATIENCE_MS, test, waitUntil } from "../testing/harness.ts";
import {
  anonGuestRamRssPages,
  backgroundStatus,
  bootGuest,
  type Guest,
  type GuestRamProbe,
  openGuestRamProbe,
  PAGE_SIZE,
} from "../testing/guest/qemu.ts";
import { type PagerProc, parseSize, startHttpPager } from "../testing/guest/http_pager.ts";
import { type SshKey, sshKeyPair, sshLogin } from "../testing/guest/ssh.ts";
import assert from "node:assert/strict";

const skip = Deno.env.get("REMORA_SKIP_QEMU") === "1";
const RAM_MIB = 128;
/** The budget: 128 pages of guest RAM. */
const SMALL = "512K";
const SMALL_PAGES = parseSize(SMALL) / PAGE_SIZE;
/** Plain -m: the budget covers QEMU's private memory too (see the module doc). */
const ANON = "16M";
const ANON_PAGES = parseSize(ANON) / PAGE_SIZE;
/** The bound on one login under TCG, enforced by ssh's timeouts. */
const LOGIN_S = 120;
const LOGINS = 3;
const COMMAND = "uname -r; cat /proc/meminfo | head -n 2; echo ok";
/** Residency is sampled this often (the issue asks for at least every 250 ms). */
const SAMPLE_MS = 50;

const t0 = performance.now();
function step(msg: string): void {
  console.log(`  [${((performance.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Samples `measure()` every {@link SAMPLE_MS} until stopped; keeps the maximum. */
function sampler(measure: () => Promise<number>) {
  let max = 0;
  let samples = 0;
  let maxGapMs = 0;
  let stop = false;
  const started = performance.now();
  const done = (async () => {
    let last = performance.now();
    while (!stop) {
      try {
        max = Math.max(max, await measure());
      } catch {
        return; // QEMU gone: the login and verifier checks report it
      }
      samples++;
      const now = performance.now();
      maxGapMs = Math.max(maxGapMs, now - last);
      last = now;
      await delay(SAMPLE_MS);
    }
  })();
  return {
    async stop() {
      stop = true;
      await done;
      return { max, samples, maxGapMs, ms: performance.now() - started };
    },
  };
}

/**
 * The memfd's resident pages: its allocated blocks, which the kernel changes
 * as each page is added or punched, so one fstat is a snapshot. The
 * SEEK_DATA walk is not one: under a full budget it can pass a page that is
 * punched a moment later and then find the page placed in its stead (129 of
 * 128 pages, seen once in CI while the pager refilled at once).
 */
function memfdPages(probe: GuestRamProbe): number {
  return probe.sample().blocks;
}

/** Waits for the background memverify to complete a round past `after`; returns it. */
async function expectBackground(guest: Guest, when: string, after: number): Promise<number> {
  const t = performance.now();
  for (;;) {
    const s = await backgroundStatus(guest);
    const started = s.line !== "no-status"; // no status before its first fill
    assert.ok(s.ok || !started, `${when}: background memverify reports '${s.line}'`);
    if (s.round > after) {
      step(`${when}: background memverify at round ${s.round}`);
      return s.round;
    }
    if (performance.now() - t > PATIENCE_MS) {
      throw new Error(`${when}: background memverify stuck at round ${s.round}`);
    }
    await delay(250);
  }
}

/** One login that must succeed within {@link LOGIN_S} and print what the command prints. */
async function expectLogin(guest: Guest, key: SshKey, when: string): Promise<number> {
  const r = await sshLogin(guest.sshPort, key, COMMAND, { timeoutS: LOGIN_S });
  const out = r.stdout.trim().split("\n");
  assert.ok(
    r.ok,
    `${when}: ssh failed (exit ${r.code} after ${(r.ms / 1000).toFixed(1)} s): ${r.stderr}\n` +
      `QEMU alive: ${guest.alive()}\n${guest.diagnostics()}`,
  );
  assert.ok(
    out.length === 4 && /^MemTotal:/.test(out[1]) && /^MemFree:/.test(out[2]) && out[3] === "ok",
    `${when}: unexpected output: ${JSON.stringify(r.stdout)}`,
  );
  assert.ok(r.ms <= LOGIN_S * 1000, `${when}: login took ${r.ms} ms`);
  step(`${when}: login ok in ${(r.ms / 1000).toFixed(1)} s (kernel ${out[0]}, ${out[1]})`);
  return r.ms;
}

/**
 * Waits until the freshly booted guest answers SSH: QEMU's user networking
 * accepts on the forwarded port at once and resets the connection while the
 * guest's network or dropbear is still coming up.
 */
async function waitSshReady(guest: Guest, key: SshKey, ram: string): Promise<void> {
  let last = "";
  await waitUntil(() => `${ram}: the guest to answer SSH (last: ${last})`, async () => {
    const r = await sshLogin(guest.sshPort, key, "true", { timeoutS: LOGIN_S });
    last = `exit ${r.code}: ${r.stderr.trim().split("\n").pop()}`;
    if (!r.ok && !guest.alive()) throw new Error(`QEMU exited\n${guest.diagnostics()}`);
    return r.ok;
  });
}

/** Three logins in a row, the verifier checked after each; returns the times. */
async function loginRounds(guest: Guest, key: SshKey, label: string, round: number) {
  const times: number[] = [];
  for (let i = 1; i <= LOGINS; i++) {
    times.push(await expectLogin(guest, key, `${label}: login ${i}`));
    round = await expectBackground(guest, `${label}: after login ${i}`, round);
  }
  step(`${label}: login times ${times.map((t) => (t / 1000).toFixed(1)).join(", ")} s`);
  return round;
}

/** Boots the SSH guest and checks one login and one verifier round before the pager. */
async function bootSshGuest(key: SshKey, ram: "memfd" | "anon") {
  const guest = await bootGuest({
    ramMiB: RAM_MIB,
    verifyMiB: 1,
    ram,
    sshPublicKey: key.publicKey,
  });
  step(
    `booted in ${guest.bootMs.toFixed(0)} ms (QEMU pid ${guest.pid}, ssh port ${guest.sshPort})`,
  );
  await waitSshReady(guest, key, ram);
  await expectLogin(guest, key, `${ram}: before attach`);
  const round = await expectBackground(guest, `${ram}: before attach`, 0);
  return { guest, round };
}

/** Detaches with SIGTERM and logs in once more: every page must be back. */
async function detachAndLogin(guest: Guest, pager: PagerProc, key: SshKey, label: string) {
  const code = await pager.terminate();
  assert.equal(code, 0, `${label}: pager exit code after SIGTERM\n${pager.output()}`);
  await expectLogin(guest, key, `${label}: after detach`);
  assert.ok(guest.alive(), `${label}: QEMU exited after detach\n${guest.diagnostics()}`);
}

test({
  name: `ssh guest (RAM in a memfd) under remora at ${SMALL} (${SMALL_PAGES} pages): ` +
    `${LOGINS} logins`,
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const key = await sshKeyPair();
    const { guest, round: r0 } = await bootSshGuest(key, "memfd");
    let pager: PagerProc | undefined;
    const probe = await openGuestRamProbe(guest.pid);
    try {
      pager = await startHttpPager({ pid: guest.pid, local: SMALL });
      assert.equal((await pager.stats()).budgetPages, SMALL_PAGES);
      const t = performance.now();
      let now = Infinity;
      while (now > SMALL_PAGES && performance.now() - t < PATIENCE_MS) {
        now = memfdPages(probe);
        if (now > SMALL_PAGES) await delay(100);
      }
      assert.ok(now <= SMALL_PAGES, `memfd still holds ${now} pages after attach`);
      step(`memfd: attached; guest RAM down to ${now} pages`);
      let walkMax = 0; // the SEEK_DATA walk, for the log (see memfdPages)
      const s = sampler(() => {
        const { blocks, data } = probe.sample();
        walkMax = Math.max(walkMax, data);
        return Promise.resolve(blocks);
      });
      await loginRounds(guest, key, `memfd ${SMALL}`, r0);
      const res = await s.stop();
      step(
        `memfd ${SMALL}: max ${res.max} resident pages over ${res.samples} samples ` +
          `(${(res.ms / 1000).toFixed(1)} s, largest gap ${res.maxGapMs.toFixed(0)} ms; ` +
          `SEEK_DATA walk max ${walkMax})`,
      );
      assert.ok(res.max <= SMALL_PAGES, `guest RAM reached ${res.max} pages (${SMALL_PAGES})`);
      // At least one sample per 250 ms on average, whatever the host's load.
      assert.ok(res.samples >= res.ms / 250, `only ${res.samples} samples in ${res.ms} ms`);
      const st = await pager.stats();
      step(`memfd ${SMALL}: pager counters ${JSON.stringify(st.counters ?? {})}`);
      await detachAndLogin(guest, pager, key, `memfd ${SMALL}`);
    } finally {
      probe.close();
      if (pager) await pager.dispose();
      await guest.kill();
      await key.remove();
    }
  },
});

test({
  name: `ssh guest with plain -m RAM (private anonymous) under remora at ${ANON}: ` +
    `${LOGINS} logins`,
  ignore: skip,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const key = await sshKeyPair();
    const { guest, round: r0 } = await bootSshGuest(key, "anon");
    let pager: PagerProc | undefined;
    try {
      pager = await startHttpPager({ pid: guest.pid, local: ANON });
      assert.equal((await pager.stats()).budgetPages, ANON_PAGES);
      // The pager evicts QEMU's whole private memory down to the budget first;
      // the samples count from when the guest RAM mapping is within it.
      let rss = 0;
      await waitUntil(
        () => `anon: guest RAM within ${ANON_PAGES} pages after attach (now ${rss})`,
        async () => (rss = await anonGuestRamRssPages(guest.pid, guest.ramBytes)) <= ANON_PAGES,
      );
      const s = sampler(() => anonGuestRamRssPages(guest.pid, guest.ramBytes));
      await loginRounds(guest, key, `anon ${ANON}`, r0);
      const res = await s.stop();
      const st = await pager.stats();
      step(
        `anon ${ANON}: guest RAM mapping max ${res.max} resident pages over ${res.samples} ` +
          `samples (largest gap ${res.maxGapMs.toFixed(0)} ms); pager holds ` +
          `${st.residentPages} of ${st.budgetPages} pages of QEMU's private memory`,
      );
      assert.ok(res.max <= ANON_PAGES, `guest RAM reached ${res.max} pages (${ANON_PAGES})`);
      await detachAndLogin(guest, pager, key, `anon ${ANON}`);
    } finally {
      if (pager) await pager.dispose();
      await guest.kill();
      await key.remove();
    }
  },
});
