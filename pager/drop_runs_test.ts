/**
 * Unit tests of matching REMOVE events to the runs of a drop under way.
 *
 * @module
 */
import { assert, assertEquals } from "../test/helpers/assert.ts";
import { DropRuns } from "./drop_runs.ts";

Deno.test("a drop's REMOVE events are matched by containment, each byte once; others are the target's", () => {
  const runs = new DropRuns();
  runs.set([0x1000, 0x10000, 0x20000], [0x3000, 0x1000, 0x2000], 1, 2);
  assertEquals(runs.runs(), [[0x10000, 0x1000], [0x20000, 0x2000]]);
  assert(runs.ownRemove(0x20000, 0x21000), "the first VMA piece of a run");
  assert(runs.ownRemove(0x21000, 0x22000), "the second piece");
  assert(!runs.ownRemove(0x20000, 0x21000), "a run's bytes are reported once");
  assert(!runs.ownRemove(0x1000, 0x2000), "not in this drop (outside the slice)");
  assert(!runs.ownRemove(0x10000, 0x12000), "longer than the run");
  assert(runs.contains(0x10fff) && !runs.contains(0x11000), "contains is by address");
  runs.clear();
  assert(!runs.ownRemove(0x10000, 0x11000), "nothing after the drop");
});
