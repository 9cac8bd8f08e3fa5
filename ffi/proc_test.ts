import assert from "node:assert/strict";
import { listThreads, quietRuntimeHelpers } from "./proc.ts";
import { readSmallFile } from "./libc.ts";

/** Scheduling policy (field 41 of /proc/PID/task/TID/stat) and name of each thread of this process. */
function threadPolicies(): Array<{ comm: string; policy: number }> {
  return listThreads(Deno.pid).map((tid) => {
    const stat = readSmallFile(`/proc/${Deno.pid}/task/${tid}/stat`) ?? "";
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const comm = (readSmallFile(`/proc/${Deno.pid}/task/${tid}/comm`) ?? "").trim();
    return { comm, policy: Number(fields[41 - 3]) };
  });
}

Deno.test("quietRuntimeHelpers puts V8's helper threads at SCHED_IDLE and leaves the others alone", () => {
  const changed = quietRuntimeHelpers();
  const threads = threadPolicies();
  const helpers = threads.filter((t) => t.comm.startsWith("V8 "));
  assert.ok(helpers.length > 0, `no V8 helper thread among ${JSON.stringify(threads)}`);
  assert.equal(changed, helpers.length);
  for (const t of helpers) assert.equal(t.policy, 5, `${t.comm}: policy ${t.policy}`);
  const main = threads[0];
  assert.equal(main.policy, 0, `the main thread (${main.comm}) must keep SCHED_OTHER`);
});
