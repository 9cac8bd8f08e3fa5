/**
 * Unit tests of the consistent-hash ring: the same ring in every pager,
 * distinct replicas, an even spread, and only the lost server's keys moving
 * when a server goes.
 *
 * @module
 */

import assert from "node:assert/strict";
import { fmix32, HashRing, hashString } from "./hashring.ts";

const SERVERS = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211", "10.0.0.4:11211"];
const KEYS = 40_000;

/** The servers (by name) holding `key`'s `count` copies, primary first. */
function placeOf(ring: HashRing, names: string[], key: number, count: number): string[] {
  const out = new Uint16Array(count);
  const n = ring.place(key, count, out);
  return [...out.subarray(0, n)].map((i) => names[i]);
}

Deno.test("hashes are deterministic 32-bit values", () => {
  assert.equal(hashString("a"), hashString("a"));
  assert.notEqual(hashString("a"), hashString("b"));
  for (const s of ["", "x", "10.0.0.1:11211#159"]) {
    const h = hashString(s);
    assert.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 32);
  }
  assert.equal(fmix32(0), 0, "the finalizer is a bijection that fixes 0");
  assert.notEqual(fmix32(1), 1);
});

Deno.test("the same names and seed give the same placement; another seed another one", () => {
  const a = new HashRing(SERVERS, "tenant-a");
  const b = new HashRing([...SERVERS], "tenant-a");
  const c = new HashRing(SERVERS, "tenant-b");
  let differs = 0;
  for (let key = 0; key < 1000; key++) {
    assert.deepEqual(placeOf(a, SERVERS, key, 2), placeOf(b, SERVERS, key, 2));
    if (placeOf(a, SERVERS, key, 1)[0] !== placeOf(c, SERVERS, key, 1)[0]) differs++;
  }
  assert.ok(differs > 500, `tenants start on different servers (${differs} of 1000 keys)`);
});

Deno.test("replicas are distinct servers, and never more than there are servers", () => {
  const ring = new HashRing(SERVERS, "ns");
  for (let key = 0; key < 2000; key++) {
    const three = placeOf(ring, SERVERS, key, 3);
    assert.equal(new Set(three).size, 3);
    assert.deepEqual(placeOf(ring, SERVERS, key, 1), three.slice(0, 1), "primary first");
  }
  assert.equal(placeOf(ring, SERVERS, 7, 10).length, SERVERS.length);
  const single = new HashRing(["only:1"], "ns");
  assert.deepEqual(placeOf(single, ["only:1"], 123, 3), ["only:1"]);
});

Deno.test("keys spread evenly over the servers", () => {
  const ring = new HashRing(SERVERS, "ns");
  const count = new Map<string, number>();
  for (let key = 0; key < KEYS; key++) {
    const [primary] = placeOf(ring, SERVERS, key, 1);
    count.set(primary, (count.get(primary) ?? 0) + 1);
  }
  const mean = KEYS / SERVERS.length;
  for (const name of SERVERS) {
    const share = (count.get(name) ?? 0) / mean;
    assert.ok(share > 0.75 && share < 1.25, `${name} holds ${share.toFixed(2)} of a fair share`);
  }
});

Deno.test("removing a server moves only its keys, spread over the rest", () => {
  const before = new HashRing(SERVERS, "ns");
  const lost = SERVERS[1];
  const rest = SERVERS.filter((s) => s !== lost);
  const after = new HashRing(rest, "ns");
  const movedTo = new Map<string, number>();
  let moved = 0;
  for (let key = 0; key < KEYS; key++) {
    const [was] = placeOf(before, SERVERS, key, 1);
    const [now] = placeOf(after, rest, key, 1);
    if (was !== lost) {
      assert.equal(now, was, `key ${key} stayed where it was`);
      continue;
    }
    moved++;
    movedTo.set(now, (movedTo.get(now) ?? 0) + 1);
  }
  assert.ok(moved > 0);
  for (const name of rest) {
    const share = (movedTo.get(name) ?? 0) / (moved / rest.length);
    assert.ok(share > 0.5 && share < 1.5, `${name} took ${share.toFixed(2)} of a fair share`);
  }
});

Deno.test("replica sets that did not include the removed server are unchanged", () => {
  const before = new HashRing(SERVERS, "ns");
  const lost = SERVERS[2];
  const rest = SERVERS.filter((s) => s !== lost);
  const after = new HashRing(rest, "ns");
  for (let key = 0; key < 5000; key++) {
    const was = placeOf(before, SERVERS, key, 2);
    const now = placeOf(after, rest, key, 2);
    if (!was.includes(lost)) assert.deepEqual(now, was);
    else assert.deepEqual(now.slice(0, 1), was.filter((s) => s !== lost).slice(0, 1));
  }
});
