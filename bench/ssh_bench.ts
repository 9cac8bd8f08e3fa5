/**
 * SSH login time into a QEMU guest (TCG, RAM in a shared memfd) with no
 * pager, under remora at 1 MiB (256 pages) and at 512 KiB (128 pages, issue
 * #18; FluidMem's figure is 180 pages). Each login runs
 * `uname -r; cat /proc/meminfo | head -n 2; echo ok` with Debian's ssh client.
 *
 *   deno run --allow-all bench/ssh_bench.ts [--logins 3] [--json FILE]
 *
 * Prints one line per budget; with --json writes the rows for bench/run.ts.
 * Needs root, qemu-system-x86, busybox-static, dropbear-bin, openssh-client.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { bootGuest, type Guest, openGuestRamProbe, PAGE_SIZE } from "../testing/guest/qemu.ts";
import { type PagerProc, parseSize, startHttpPager } from "../testing/guest/http_pager.ts";
import { type SshKey, sshKeyPair, sshLogin } from "../testing/guest/ssh.ts";

/** One budget's logins. */
export interface SshRow {
  /** `unlimited`, `1M` or `512K`. */
  budget: string;
  /** Budget in pages (0: no pager). */
  pages: number;
  /** Wall time of each successful login, ms. */
  loginMs: number[];
  /** Most guest RAM pages resident in the memfd during the logins (sampled every 50 ms). */
  maxResident: number;
  /** Failed logins (ssh's stderr), if any. */
  errors: string[];
}

const COMMAND = "uname -r; cat /proc/meminfo | head -n 2; echo ok";

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The median of `xs` (NaN when empty). */
export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function logins(guest: Guest, key: SshKey, budget: string, n: number): Promise<SshRow> {
  const row: SshRow = {
    budget,
    pages: budget === "unlimited" ? 0 : parseSize(budget) / PAGE_SIZE,
    loginMs: [],
    maxResident: 0,
    errors: [],
  };
  const probe = await openGuestRamProbe(guest.pid);
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      row.maxResident = Math.max(row.maxResident, probe.sample().blocks);
      await delay(50);
    }
  })();
  for (let i = 0; i < n; i++) {
    const r = await sshLogin(guest.sshPort, key, COMMAND, { timeoutS: 120 });
    if (r.ok && r.stdout.trim().endsWith("ok")) row.loginMs.push(r.ms);
    else row.errors.push(`exit ${r.code}: ${r.stderr.trim()}`);
  }
  sampling = false;
  await sampler;
  probe.close();
  console.log(
    `${budget.padEnd(10)} ssh login: median ${(median(row.loginMs) / 1000).toFixed(1)} s ` +
      `(${row.loginMs.map((t) => (t / 1000).toFixed(1)).join(", ")}), at most ` +
      `${row.maxResident} pages resident${row.errors.length ? `, errors: ${row.errors}` : ""}`,
  );
  return row;
}

/** Boots the SSH guest and times logins without a pager, at 1M and at 512K. */
export async function sshBench(n: number): Promise<SshRow[]> {
  const key = await sshKeyPair();
  const guest = await bootGuest({ ramMiB: 128, verifyMiB: 1, sshPublicKey: key.publicKey });
  let pager: PagerProc | undefined;
  const rows: SshRow[] = [];
  try {
    await sshLogin(guest.sshPort, key, "true"); // first login warms dropbear's pages
    rows.push(await logins(guest, key, "unlimited", n));
    pager = await startHttpPager({ pid: guest.pid, local: "1M" });
    await delay(1000); // evicting down to the budget
    rows.push(await logins(guest, key, "1M", n));
    await pager.resize(parseSize("512K"));
    await delay(1000);
    rows.push(await logins(guest, key, "512K", n));
    await pager.terminate(60_000);
  } finally {
    if (pager) await pager.dispose();
    await guest.kill();
    await key.remove();
  }
  return rows;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: { logins: { type: "string", default: "3" }, json: { type: "string" } },
  });
  const rows = await sshBench(Number(values.logins));
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(rows) + "\n");
}
