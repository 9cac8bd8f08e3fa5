/**
 * Tests of the shim's prefault: a warmed chunk of a shared file holds what is
 * written into it, and closing the file while its prefault runs is safe.
 *
 * @module
 */

import assert from "node:assert/strict";
import { cpuAffinity } from "./libc.ts";
import { MappedFile } from "./mapped_file.ts";
import { setHelperCpus, startPrefault } from "./shim.ts";

const CHUNK = 16 << 20;

function tempPath(): string {
  return `/dev/shm/remora-shim-test-${Deno.pid}-${crypto.randomUUID()}`;
}

Deno.test("prefault: a warmed chunk holds every page written into it", () => {
  const file = MappedFile.create(tempPath(), CHUNK);
  try {
    const chunk = file.chunk(0, true);
    for (let at = 0; at < CHUNK; at += 4096) chunk[at] = (at >> 12) & 0xff;
    for (let at = 0; at < CHUNK; at += 4096) assert.equal(chunk[at], (at >> 12) & 0xff);
  } finally {
    file.remove(); // stops the prefault before unmapping
  }
});

Deno.test("prefault: stopped at once, on the helper CPUs, then the memory may go", () => {
  const mine = cpuAffinity(0);
  assert.ok(mine !== null);
  setHelperCpus(mine);
  const file = MappedFile.create(tempPath(), CHUNK);
  try {
    const chunk = file.chunk(0);
    const warming = startPrefault(chunk);
    assert.ok(warming !== null, "a thread started");
    warming.stop();
    warming.stop(); // twice is harmless
  } finally {
    setHelperCpus(null);
    file.remove();
  }
});
