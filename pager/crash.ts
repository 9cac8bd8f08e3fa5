/**
 * Named points where a test can make the pager die outright, to check that a
 * kill between any two steps of an eviction or a fetch loses nothing: with
 * `REMORA_CRASH_AT=stored:3` the pager sends itself SIGKILL the third time it
 * reaches the point `stored`. Read once, at the first point reached; without
 * the variable (or without `--allow-env`) every point is a no-op.
 *
 * @module
 */

import { getpid, kill, Signal } from "../ffi/libc.ts";

/** The points, in the order an eviction and then a fetch pass them. */
export const CRASH_POINTS = [
  /** The store confirmed an eviction's copies; the record does not say so yet. */
  "stored",
  /** The record says where the copies are; nothing is dropped yet. */
  "recorded",
  /** Guard markers are installed over the batch (single-threaded target); not removed. */
  "guarded",
  /** The drop inside the target is done; the page states do not say so yet. */
  "dropped",
  /** A fetched page is placed in the target; the page state does not say so yet. */
  "placed",
] as const;

/** One of {@linkcode CRASH_POINTS}. */
export type CrashPoint = typeof CRASH_POINTS[number];

let armed: { point: string; left: number } | null | undefined;

/**
 * Dies here (SIGKILL to itself, no cleanup) if `REMORA_CRASH_AT` names this
 * point and this is the time it counts.
 *
 * @example
 * ```ts
 * crashPoint("stored"); // a no-op unless REMORA_CRASH_AT=stored[:N]
 * ```
 */
export function crashPoint(point: CrashPoint): void {
  if (armed === undefined) armed = readCrashAt();
  if (armed === null || armed.point !== point) return;
  if (--armed.left > 0) return;
  kill(getpid(), Signal.SIGKILL);
}

function readCrashAt(): { point: string; left: number } | null {
  let spec: string | undefined;
  try {
    spec = Deno.env.get("REMORA_CRASH_AT");
  } catch {
    return null; // no --allow-env
  }
  const m = /^([a-z]+)(?::(\d+))?$/.exec(spec ?? "");
  return m === null ? null : { point: m[1], left: Number(m[2] ?? 1) };
}
