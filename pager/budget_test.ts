import assert from "node:assert/strict";
import { Budget, budgetPagesFor, MIN_BUDGET_PAGES } from "./budget.ts";
import { PageBook } from "./page_table.ts";

Deno.test("a budget is whole pages and never below the minimum", () => {
  assert.equal(budgetPagesFor(8 << 20), 2048);
  assert.equal(budgetPagesFor(4097), MIN_BUDGET_PAGES);
  const b = new Budget(64 << 20);
  b.resize(1 << 20);
  assert.equal(b.pages, 256);
});

Deno.test("anonymous memory: eviction is due over budget, down to a quarter below it", () => {
  const b = new Budget(16 << 20); // 4096 pages
  const book = new PageBook();
  book.resident = 4096;
  assert.equal(b.evictionDue(book, 0), false, "at the budget");
  assert.equal(b.evictionDue(book, 1), true, "a fault waits for room");
  book.resident = 4097;
  assert.equal(b.evictionDue(book, 0), true);
  assert.equal(b.headroom(), 512, "a quarter, capped at one batch");
  assert.equal(b.lowWatermark(), 4096 - 512);
  book.resident = 4096 + 511;
  assert.equal(b.anonymousFull(book), false);
  book.resident = 4096 + 512;
  assert.equal(b.anonymousFull(book), true, "faults past budget plus a batch wait");
});

Deno.test("a shared file keeps room ahead and counts pages being fetched", () => {
  const b = new Budget(720 << 10); // 180 pages
  b.sharedPaging = true;
  const book = new PageBook();
  assert.equal(b.headroom(), 22);
  book.resident = 170;
  assert.equal(b.evictionDue(book, 0), true, "within half the headroom of the top");
  book.resident = 168;
  assert.equal(b.evictionDue(book, 0), false);
  book.incoming = 12;
  assert.equal(b.fileFull(book), true);
});
