/**
 * Human sizes (`16M`, `1.5GiB`, `4096`) to bytes, and back for display.
 *
 * Suffixes are binary on purpose: a memory budget is counted in 4 KiB pages,
 * so `16M` meaning 16 000 000 bytes would never be a whole number of pages.
 *
 * @module
 */

import { MIN_BUDGET_PAGES } from "./budget.ts";
import { PAGE } from "./page_table.ts";

const UNITS: Record<string, number> = {
  "": 1,
  B: 1,
  K: 1024,
  KB: 1024,
  KIB: 1024,
  M: 1024 ** 2,
  MB: 1024 ** 2,
  MIB: 1024 ** 2,
  G: 1024 ** 3,
  GB: 1024 ** 3,
  GIB: 1024 ** 3,
  T: 1024 ** 4,
  TB: 1024 ** 4,
  TIB: 1024 ** 4,
};

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/;

/**
 * Parses a size such as `16M`, `16MiB`, `512k`, `1.5G` or `4096` into bytes.
 *
 * `K`/`M`/`G`/`T`, `KiB`/`MiB`/`GiB`/`TiB` and also `KB`/`MB`/`GB`/`TB` are
 * all powers of 1024, as in `java -Xmx` or `docker --memory` (case does not
 * matter); a bare number is bytes. A fraction must come out as whole bytes.
 *
 * @param text The size as the user typed it.
 * @returns The size in bytes (a safe, non-negative integer).
 * @throws {RangeError} With a one-line message meant for the user.
 *
 * @example
 * ```ts
 * parseSize("16M"); // 16777216
 * parseSize("4096"); // 4096
 * ```
 */
export function parseSize(text: string): number {
  const s = String(text).trim();
  const m = SIZE_RE.exec(s);
  const hint = "use a number with an optional K, M, G or T suffix (or KiB, MiB, GiB, TiB), " +
    "e.g. 16M or 1.5GiB";
  if (!m) throw new RangeError(`invalid size "${text}": ${hint}`);
  const unit = UNITS[m[2].toUpperCase()];
  if (unit === undefined) {
    throw new RangeError(`invalid size "${text}": unknown unit "${m[2]}"; ${hint}`);
  }
  const bytes = Number(m[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    throw new RangeError(
      Number.isFinite(bytes) && bytes < Number.MAX_SAFE_INTEGER
        ? `invalid size "${text}": not a whole number of bytes`
        : `invalid size "${text}": too large`,
    );
  }
  return bytes;
}

/** Bytes of one page: a budget is a whole number of them. */
/** Smallest budget the pager works with ({@linkcode MIN_BUDGET_PAGES} pages). */
export const MIN_BUDGET_BYTES = MIN_BUDGET_PAGES * PAGE;
/**
 * Largest budget: 2^32 pages (16 TiB), as many as the pager's 32-bit page
 * keys can name. Larger values are refused rather than silently meaning
 * "no limit".
 */
export const MAX_BUDGET_BYTES = 2 ** 32 * PAGE;

/**
 * The one check of a local memory budget, for `--local`, `pager.ts resize`
 * and `POST /resize` alike: a safe whole number of 4 KiB pages, at least
 * 64 KiB (16 pages) and at most 16 TiB. Nothing is rounded: a value that is
 * not a page multiple is refused with the two nearest that are.
 *
 * @param value A size as typed (`"16M"`) or a byte count.
 * @returns The budget in bytes.
 * @throws {RangeError} With a one-line reason meant for the user.
 */
export function parseBudget(value: string | number): number {
  let bytes: number;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) {
      throw new RangeError(`invalid budget ${value}: not a whole number of bytes`);
    }
    bytes = value;
  } else bytes = parseSize(value);
  const shown = typeof value === "number" ? `${value}` : `"${value}"`;
  if (bytes < MIN_BUDGET_BYTES) {
    throw new RangeError(
      `budget ${shown} is below the workable minimum of ${MIN_BUDGET_BYTES} bytes (64K, 16 pages)`,
    );
  }
  if (bytes > MAX_BUDGET_BYTES) {
    throw new RangeError(
      `budget ${shown} is above the maximum of ${MAX_BUDGET_BYTES} bytes (16T, 2^32 pages)`,
    );
  }
  if (bytes % PAGE !== 0) {
    const below = bytes - (bytes % PAGE);
    throw new RangeError(
      `budget ${shown} (${bytes} bytes) is not a whole number of 4 KiB pages: ` +
        `use ${below} or ${below + PAGE}`,
    );
  }
  return bytes;
}

/**
 * Formats bytes for people: `16.0 MiB`, `512 KiB`, `1.50 GiB`.
 *
 * @param bytes A byte count.
 * @returns A short string with a binary unit.
 */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.abs(bytes);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const sign = bytes < 0 ? "-" : "";
  if (i === 0) return `${sign}${v} B`;
  return `${sign}${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i]}`;
}

/** Formats bytes compactly, e.g. `32.0 MiB` (the same as {@linkcode formatBytes}). */
export const formatSize: (bytes: number) => string = formatBytes;
