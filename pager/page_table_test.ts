import assert from "node:assert/strict";
import {
  DIRTIED,
  DROPPING,
  HAS_COPY,
  IllegalTransition,
  Kind,
  KIND_MASK,
  PAGE,
  PageBook,
  PageTable,
  QUEUED,
  REFERENCED,
  Region,
} from "./page_table.ts";
import { Verdict } from "./policy.ts";

const kind = (r: Region, i: number) => r.state[i] & KIND_MASK;

Deno.test("a page's round trip keeps the resident and remote counts", () => {
  const book = new PageBook(true);
  const r = new Region(0x10000, 2);
  book.zeroFilled(r, 0);
  assert.equal(kind(r, 0), Kind.RESIDENT);
  assert.deepEqual([book.resident, book.remote], [1, 0]);
  book.beginEviction(r, 0);
  book.dropping(r, 0);
  assert.ok(r.state[0] & DROPPING && r.state[0] & HAS_COPY);
  book.evicted(r, 0);
  assert.equal(kind(r, 0), Kind.REMOTE);
  assert.equal(r.state[0] & (DROPPING | QUEUED | REFERENCED | DIRTIED), 0);
  assert.deepEqual([book.resident, book.remote], [0, 1]);
  book.beginFetch(r, 0);
  book.fetched(r, 0, true);
  assert.equal(kind(r, 0), Kind.RESIDENT);
  assert.ok(r.state[0] & HAS_COPY, "a clean fetch keeps its copy");
  book.written(r, 0);
  assert.equal(r.state[0] & HAS_COPY, 0, "a write makes the copy stale");
  assert.deepEqual([book.resident, book.remote], [1, 0]);
  assert.equal(book.forget(r, 0), true);
  assert.equal(book.forget(r, 1), false, "an empty page held nothing");
  assert.deepEqual([book.resident, book.remote], [0, 0]);
});

Deno.test("a shared file's fetches count as incoming until placed or deferred", () => {
  const book = new PageBook(true);
  const r = new Region(0x10000, 2, { fd: 3, offset: 0 });
  for (const i of [0, 1]) {
    book.foundResident(r, i);
    book.beginEviction(r, i);
    book.stored(r, i);
    book.evicted(r, i);
    book.beginFetch(r, i);
  }
  assert.equal(book.incoming, 2);
  book.fetched(r, 0, false);
  book.fetchDeferred(r, 1);
  assert.equal(book.incoming, 0);
  assert.equal(kind(r, 1), Kind.REMOTE);
  assert.deepEqual([book.resident, book.remote], [1, 1]);
});

Deno.test("a write during eviction cancels it; a page dropped mid-fault is fetched back", () => {
  const book = new PageBook(true);
  const r = new Region(0x10000, 2);
  book.foundResident(r, 0);
  book.beginEviction(r, 0);
  book.dirtied(r, 0);
  assert.ok(r.state[0] & DIRTIED);
  book.cancelEviction(r, 0);
  assert.equal(kind(r, 0), Kind.RESIDENT);
  assert.equal(r.state[0] & (DIRTIED | HAS_COPY), 0);
  book.foundResident(r, 1);
  book.beginEviction(r, 1);
  book.dropping(r, 1);
  book.fetchDropped(r, 1);
  assert.equal(kind(r, 1), Kind.FETCHING);
  assert.deepEqual([book.resident, book.remote], [1, 1]);
});

Deno.test("dirtied leaves a page that is no longer being evicted alone", () => {
  const book = new PageBook(true);
  const r = new Region(0x10000, 1);
  book.dirtied(r, 0);
  assert.equal(r.state[0], Kind.EMPTY);
});

Deno.test("an illegal move throws in a strict book and is reported once otherwise", () => {
  const strict = new PageBook(true);
  const r = new Region(0x10000, 1);
  assert.throws(() => strict.evicted(r, 0), IllegalTransition);
  assert.throws(() => strict.fetched(r, 0, false), /illegal page-state move fetched/);
  const seen: string[] = [];
  const lax = new PageBook(false, (e) => seen.push(e.message));
  lax.beginFetch(r, 0);
  lax.beginFetch(r, 0);
  assert.equal(seen.length, 1, "reported once per move");
  assert.match(seen[0], /beginFetch from state 0x/);
});

Deno.test("second chance: a referenced page goes round once, then is a victim", () => {
  const book = new PageBook(true);
  const r = new Region(0x10000, 2);
  book.foundResident(r, 0);
  assert.equal(book.enqueue(r, 0), true, "new in the queue");
  assert.equal(book.enqueue(r, 0), false, "used again: only marked");
  assert.equal(book.secondChance(r, 0), Verdict.REFERENCED);
  assert.equal(book.secondChance(r, 0), Verdict.VICTIM);
  assert.equal(book.secondChance(r, 0), Verdict.STALE, "no longer queued");
  assert.equal(book.secondChance(r, 1), Verdict.STALE, "not resident");
});

Deno.test("PageTable finds, cuts and reports gaps across regions", () => {
  const t = new PageTable();
  t.add(new Region(0x20000, 4));
  t.add(new Region(0x10000, 2));
  assert.equal(t.find(0x10000 + PAGE)?.start, 0x10000);
  assert.equal(t.find(0x18000), null);
  assert.deepEqual(t.gaps(0x10000, 0x30000), [[0x12000, 0x20000], [0x24000, 0x30000]]);
  const cut = t.cut(0x21000, 0x23000);
  assert.deepEqual(cut.map((r) => [r.start, r.pages]), [[0x21000, 2]]);
  assert.deepEqual(t.regions.map((r) => [r.start, r.pages]), [[0x10000, 2], [0x20000, 1], [
    0x23000,
    1,
  ]]);
  assert.equal(t.pages, 4);
});
