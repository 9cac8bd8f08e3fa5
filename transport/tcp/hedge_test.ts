/**
 * Unit tests of hedged reads and writes that complete on time: who is asked,
 * who is called late, which answer wins. Replicas are plain promises; one
 * that never settles stands for a frozen peer.
 *
 * @module
 */

import assert from "node:assert/strict";
import { allOnTime, Deadlines, firstAnswer } from "./hedge.ts";

const never = <T>() => new Promise<T>(() => {});

function recorder() {
  const late: string[] = [];
  const failed: string[] = [];
  return {
    late,
    failed,
    onLate: (r: string) => late.push(r),
    onFailure: (r: string) => failed.push(r),
  };
}

Deno.test("a replica that answers in time is the only one asked", async () => {
  const on = recorder();
  const asked: string[] = [];
  const v = await firstAnswer(
    ["a", "b"],
    (r) => {
      asked.push(r);
      return Promise.resolve(`from ${r}`);
    },
    () => 60_000,
    on,
  );
  assert.equal(v, "from a");
  assert.deepEqual(asked, ["a"]);
  assert.deepEqual(on.late, []);
});

Deno.test("a frozen first replica is called late and the next one answers", async () => {
  const on = recorder();
  const v = await firstAnswer(
    ["frozen", "b"],
    (r) => r === "frozen" ? never<string>() : Promise.resolve(r),
    () => 1,
    on,
  );
  assert.equal(v, "b");
  assert.deepEqual(on.late, ["frozen"]);
  assert.deepEqual(on.failed, []);
});

Deno.test("a failure asks the next replica at once, without waiting for the delay", async () => {
  const on = recorder();
  const v = await firstAnswer(
    ["bad", "good"],
    (r) => r === "bad" ? Promise.reject(new Error("reset")) : Promise.resolve(r),
    () => 60_000,
    on,
  );
  assert.equal(v, "good");
  assert.deepEqual(on.failed, ["bad"]);
  assert.deepEqual(on.late, []);
});

Deno.test("when every replica fails, the last error is the answer", async () => {
  const on = recorder();
  await assert.rejects(
    firstAnswer(["a", "b"], (r) => Promise.reject(new Error(`${r} down`)), () => 1, on),
    /b down/,
  );
  assert.deepEqual(on.failed, ["a", "b"]);
});

Deno.test("a late replica that answers first still wins, and a later failure is reported", async () => {
  const on = recorder();
  let failSlow!: (e: Error) => void;
  let answerLate!: (v: string) => void;
  const v = firstAnswer(
    ["slow", "frozen"],
    (r) =>
      r === "slow"
        ? new Promise<string>((resolve) => answerLate = resolve)
        : new Promise<string>((_, reject) => failSlow = reject),
    () => 1,
    on,
  );
  while (on.late.length === 0) await new Promise((r) => setTimeout(r, 1));
  answerLate("slow answered");
  assert.equal(await v, "slow answered");
  failSlow(new Error("timed out"));
  await Promise.resolve();
  assert.deepEqual(on.failed, ["frozen"]);
});

Deno.test("allOnTime: a request unanswered after the grace of the first success is late", async () => {
  const outcomes = await allOnTime([Promise.resolve(1), never<number>()], 1);
  assert.deepEqual(outcomes, [{ status: "fulfilled", value: 1 }, { status: "late" }]);
});

Deno.test("allOnTime: with no success yet it waits for every request", async () => {
  let answer!: (v: number) => void;
  const slow = new Promise<number>((resolve) => answer = resolve);
  const done = allOnTime([Promise.reject(new Error("down")), slow], 1);
  await new Promise((r) => setTimeout(r, 20));
  answer(2);
  const outcomes = await done;
  assert.equal(outcomes[0].status, "rejected");
  assert.deepEqual(outcomes[1], { status: "fulfilled", value: 2 });
});

Deno.test("allOnTime: no requests, no outcomes", async () => {
  assert.deepEqual(await allOnTime([], 1), []);
});

Deno.test("Deadlines: due actions run once, cancelled ones never, and no timer outlives them", async () => {
  const deadlines = new Deadlines();
  const ran: string[] = [];
  const a = deadlines.add(1, () => ran.push("a"));
  deadlines.add(60_000, () => ran.push("never")).cancel();
  const b = deadlines.add(5, () => ran.push("b"));
  while (ran.length < 2) await new Promise((r) => setTimeout(r, 1));
  a.cancel(); // after it ran: nothing
  b.cancel();
  assert.deepEqual(ran, ["a", "b"]);
  // The test's op sanitizer fails it if the 60 s timer were still armed.
});
