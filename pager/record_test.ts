/**
 * Unit tests of the record a killed pager leaves: the index and header survive
 * a reopen, a living holder's lock refuses a second pager, and records of
 * targets that are gone are cleaned up.
 */
import { assertEquals, assertMatch } from "../test/helpers/assert.ts";
import { pagesPathOf, recordPath, removeOrphans, SessionRecord, StoreKind } from "./record.ts";

function entriesOf(rec: SessionRecord): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  rec.entries((key, addr) => out.push([key, addr]));
  return out;
}

Deno.test("a record keeps its index, layout and borrowed registers for the next pager", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const rec = SessionRecord.create(dir, Deno.pid, StoreKind.EMBEDDED);
    assertEquals((Deno.statSync(rec.path).mode ?? 0) & 0o777, 0o600);
    rec.layout = {
      remoteUffd: 7,
      scratch: 0x7f0000000000,
      trampoline: 0x7f0000004000,
      vdsoSyscall: 1,
    };
    rec.stored(0, 0x10000);
    rec.stored(200_000, 0x7ffff000); // past the first chunk
    rec.stored(5, 0x20000);
    rec.released(5);
    rec.released(9_000_000); // never written: nothing to clear
    rec.keep(4242, BigInt64Array.from({ length: 27 }, (_, i) => BigInt(i) - 1n));
    rec.dropRuns = 3;
    rec.close();
    // Closed, so its lock is free again, as a killed pager's is.
    const again = SessionRecord.open(dir, Deno.pid)!;
    assertEquals(again.store, StoreKind.EMBEDDED);
    assertEquals(again.layout.remoteUffd, 7);
    assertEquals(again.layout.trampoline, 0x7f0000004000);
    assertEquals(entriesOf(again), [[0, 0x10000], [200_000, 0x7ffff000]]);
    const borrowed = again.borrowed()!;
    assertEquals(borrowed.tid, 4242);
    assertEquals(borrowed.regs[0], -1n);
    assertEquals(again.dropRuns, 3);
    again.done();
    assertEquals(again.borrowed(), null);
    again.remove();
    assertEquals([...Deno.readDirSync(dir)], []);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a record held by a living pager is refused with its pid; a late write after close lands nowhere", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const rec = SessionRecord.create(dir, Deno.pid, StoreKind.OTHER);
    // flock locks belong to the open file description: a second open in this
    // process conflicts as another process's would.
    let refusal = "";
    try {
      SessionRecord.open(dir, Deno.pid);
    } catch (e) {
      refusal = (e as Error).message;
    }
    assertMatch(refusal, new RegExp(`remora pager pid ${Deno.pid} is paging it`));
    rec.remove();
    rec.stored(1, 0x1000); // after the unmap: no fault
    assertEquals(SessionRecord.open(dir, Deno.pid), null);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("records and page files of targets that are gone are removed; living ones stay", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const mine = recordPath(dir, Deno.pid)!;
    const gone = `${dir}/remora-999999999-1.state`;
    const lonePages = `${dir}/remora-999999998-7.pages`; // its record went first
    for (
      const p of [mine, pagesPathOf(mine), gone, pagesPathOf(gone), lonePages, `${dir}/unrelated`]
    ) {
      Deno.writeTextFileSync(p, "");
    }
    assertEquals(removeOrphans(dir).sort(), [gone, pagesPathOf(gone), lonePages].sort());
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    const base = (p: string) => p.slice(dir.length + 1);
    assertEquals(left, [base(mine), base(pagesPathOf(mine)), "unrelated"].sort());
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
