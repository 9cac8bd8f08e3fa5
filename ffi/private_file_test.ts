/**
 * Unit tests of writePrivateFile: a regular file is replaced whole with mode
 * 0600, a symbolic link is refused, and a device or FIFO at the path gets the
 * data written into it, never replaced by a regular file.
 *
 * @module
 */

import assert from "node:assert/strict";
import { close, O_NONBLOCK, O_RDONLY, open, read } from "./libc.ts";
import { writePrivateFile } from "./private_file.ts";

const text = (s: string) => new TextEncoder().encode(s);

Deno.test("a regular file is replaced whole, readable by its owner only", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/stats.json`;
    Deno.writeTextFileSync(path, "old and longer than the new contents");
    Deno.chmodSync(path, 0o644);
    writePrivateFile(path, text("new"));
    assert.equal(Deno.readTextFileSync(path), "new");
    assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["stats.json"]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a symbolic link at the path is refused", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/target`, "keep");
    Deno.symlinkSync(`${dir}/target`, `${dir}/link`);
    assert.throws(() => writePrivateFile(`${dir}/link`, text("x")), /symbolic link/);
    assert.equal(Deno.readTextFileSync(`${dir}/target`), "keep");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a FIFO or a device at the path gets the data and stays what it is", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const fifo = `${dir}/fifo`;
    assert.ok((await new Deno.Command("mkfifo", { args: [fifo] }).output()).success);
    const reader = open(fifo, O_RDONLY | O_NONBLOCK);
    assert.ok(reader >= 0, "a reader on the FIFO");
    try {
      writePrivateFile(fifo, text("through the pipe"));
      const buf = new Uint8Array(64);
      const n = read(reader, buf, buf.length);
      assert.equal(new TextDecoder().decode(buf.subarray(0, Number(n))), "through the pipe");
    } finally {
      close(reader);
    }
    assert.ok(Deno.lstatSync(fifo).isFifo, "still a FIFO");
    // A null device of our own (root may mknod): written into, not replaced.
    const dev = `${dir}/null`;
    const made = await new Deno.Command("mknod", { args: ["-m", "666", dev, "c", "1", "3"] })
      .output();
    if (made.success) {
      writePrivateFile(dev, text("discarded"));
      assert.ok(Deno.lstatSync(dev).isCharDevice, "still a character device");
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
