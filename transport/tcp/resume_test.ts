/**
 * Unit tests of rebuilding a killed client's peer session from LIST replies:
 * the oldest copy of a slab wins (a move left half done), the others are to
 * be freed, recorded keys are marked present, and keys no peer holds counted.
 *
 * @module
 */

import assert from "node:assert/strict";
import { u32s } from "./protocol.ts";
import { Endpoint } from "./replicas.ts";
import { parseList, rebuildSession } from "./resume.ts";

const peer = (port: number) =>
  new Endpoint({ address: `tcp://127.0.0.1:${port}`, hostname: "127.0.0.1", port, tls: false });

Deno.test("LIST replies parse; a reply of the wrong length is refused", () => {
  const body = u32s(2, 7, 64, 0, 1, 9, 64, 3, 4);
  assert.deepEqual(parseList(body), [
    { id: 7, pages: 64, index: 0, generation: 1 },
    { id: 9, pages: 64, index: 3, generation: 4 },
  ]);
  assert.throws(() => parseList(body.subarray(0, 20)), /malformed/);
  assert.throws(() => parseList(new Uint8Array(0)), /malformed/);
});

Deno.test("the oldest copy of a slab is kept, the rest freed; keys are marked; missing ones counted", () => {
  const a = peer(1), b = peer(2);
  const r = rebuildSession(
    [
      { ep: a, slabs: [{ id: 5, pages: 64, index: 0, generation: 2 }] },
      {
        ep: b,
        slabs: [
          { id: 5, pages: 64, index: 0, generation: 9 }, // the copy of a move under way
          { id: 6, pages: 64, index: 1, generation: 3 },
          { id: 8, pages: 32, index: 2, generation: 4 }, // another slab size: not ours now
        ],
      },
    ],
    Uint32Array.of(1, 2, 65, 64 * 5),
    64,
  );
  assert.equal(r.slabs.get(0)!.replicas[0], a);
  assert.equal(r.slabs.get(1)!.replicas[0], b);
  assert.deepEqual(r.extra.map((e) => [e.ep, e.id]), [[b, 5], [b, 8]]);
  assert.equal(r.slabs.get(0)!.presentCount, 2);
  assert.equal(r.slabs.get(1)!.present[1], 1);
  assert.equal(r.missing, 1);
  assert.equal(r.nextId, 9);
  assert.equal(r.nextGeneration, 10);
});
