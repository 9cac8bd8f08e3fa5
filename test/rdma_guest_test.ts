/**
 * remora's one-sided RDMA data path on a real verbs provider: soft-RoCE
 * (rdma_rxe) in a QEMU guest running Debian's generic kernel, with libibverbs,
 * librxe, Deno and this repository taken from the host's root over 9p.
 * `testing/guest/rdma_scenario.sh` runs inside and reports each check; this
 * file boots the guest, prints the evidence lines and asserts every check.
 *
 * Slow under TCG (minutes): the figures show the path works, not its speed.
 * `deno task test:rdma` runs this file alone.
 *
 * @module
 */

import { assert } from "./helpers/assert.ts";
import { test } from "../testing/harness.ts";
import { buildRdmaGuest, runRdmaGuest } from "../testing/guest/rdma_qemu.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const CHECKS = ["devinfo", "one-sided", "peer-killed", "memlock"];

test({
  name: "soft-RoCE guest: pages move by one-sided READ/WRITE, the target verifies every word, " +
    "SIGTERM puts every page back; a killed replica peer; ulimit -l too low is one line",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await buildRdmaGuest();
    const started = Date.now();
    const run = await runRdmaGuest(`${ROOT}/testing/guest/rdma_scenario.sh`, ROOT, (line) => {
      // The evidence goes to the test log as it comes: counters, not timings.
      if (/^rdma-(evidence|check)|^remora-rdma-guest:/.test(line)) console.log(line);
    });
    console.log(`guest run: ${Math.round((Date.now() - started) / 1000)} s under TCG`);
    const tail = run.console.split("\n").slice(-40).join("\n");
    for (const name of CHECKS) {
      const line = new RegExp(`^rdma-check ${name} .*$`, "m").exec(run.console)?.[0];
      assert(line !== undefined, `check ${name} never ran:\n${tail}`);
      assert(line === `rdma-check ${name} ok`, `${line}\n${tail}`);
    }
    assert(run.rc === 0, `the guest scenario exited with ${run.rc}:\n${tail}`);
  },
});
