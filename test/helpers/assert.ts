/**
 * The assertions the tests use, from `node:assert/strict` (JSR's @std/assert
 * cannot be fetched here).
 *
 * @module
 */
import nodeAssert from "node:assert/strict";

/** Fails with `message` unless `cond` holds. */
export function assert(cond: unknown, message = "assertion failed"): asserts cond {
  nodeAssert.ok(cond, message);
}

/** Fails unless `actual` deep-equals `expected`. */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  nodeAssert.deepEqual(actual, expected, message);
}

/** Fails unless `text` matches `re`. */
export function assertMatch(text: string, re: RegExp, message?: string): void {
  nodeAssert.match(text, re, message);
}

/**
 * Fails unless `actual` and `expected` serialise to the same JSON: the check
 * for values that went through JSON anyway (`/stats`, the dashboard's data).
 *
 * @example
 * ```ts
 * assertSameJson({ a: 1 }, { a: 1 }, "stats");
 * ```
 */
export function assertSameJson<T>(actual: T, expected: T, msg = ""): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${msg}${msg ? ": " : ""}expected ${e}, got ${a}`);
}
