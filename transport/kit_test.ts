/**
 * Unit tests of the transport toolkit: the latency window's ring and median,
 * `concat`, the two errors and their kinds, and `asUnavailable`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { asUnavailable, concat, ConnectionError, LatencyWindow, ProtocolError } from "./kit.ts";
import { StoreUnavailableError } from "./store.ts";

Deno.test("the latency window keeps the last 256 samples and reports their median", () => {
  const w = new LatencyWindow();
  assert.equal(w.median(), 0);
  for (const us of [30.4, 10, 20]) w.record(us);
  assert.equal(w.median(), 20);
  assert.equal(w.requests, 3);
  for (let i = 0; i < 256; i++) w.record(1000 + i);
  assert.equal(w.requests, 259);
  assert.equal(w.median(), 1128, "the first three samples have left the ring");
  assert.deepEqual(w.health("x://h:1", "up", 7), {
    address: "x://h:1",
    state: "up",
    requests: 259,
    medianLatencyUs: 1128,
    pages: 7,
  });
});

Deno.test("the latency window's quantile follows the samples and refreshes every 32 once warm", () => {
  const w = new LatencyWindow();
  assert.equal(w.quantile(0.99), 0);
  for (let us = 1; us <= 100; us++) w.record(us);
  assert.equal(w.quantile(0.99), 100);
  assert.equal(w.quantile(0), 1);
  for (let i = 0; i < 31; i++) w.record(5000);
  assert.equal(w.quantile(0.99), 100, "31 new samples: the sorted copy is kept");
  w.record(5000);
  assert.equal(w.quantile(0.99), 5000, "the 32nd refreshes it");
});

Deno.test("concat joins in order, empty parts included", () => {
  assert.deepEqual(concat(), new Uint8Array(0));
  assert.deepEqual(
    concat(Uint8Array.of(1, 2), new Uint8Array(0), Uint8Array.of(3)),
    Uint8Array.of(1, 2, 3),
  );
});

Deno.test("connection and protocol errors become one-line store errors; others pass through", () => {
  const lost = new ConnectionError("timeout", "Redis at h:1: no reply in 5000 ms");
  assert.equal(lost.kind, "timeout");
  const a = asUnavailable(lost);
  assert.ok(a instanceof StoreUnavailableError);
  assert.equal(a.message, lost.message);
  const bad = new ProtocolError("bad length field", Uint8Array.of(9));
  assert.deepEqual(bad.reply, Uint8Array.of(9));
  assert.ok(asUnavailable(bad) instanceof StoreUnavailableError);
  const other = new RangeError("caller bug");
  assert.equal(asUnavailable(other), other);
});
