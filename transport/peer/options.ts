/**
 * The peer daemon's numeric options, checked against what the runtime can
 * hold: a duration longer than the longest timer (2^31-1 ms, 24.8 days) would
 * fire at once, and a size past 2^53 would not be exact.
 *
 * @module
 */

import { parseSize } from "../../pager/size.ts";
import type { PeerServerOptions } from "./server.ts";

/** A bad option value; the message is one line for the user. */
export class UsageError extends Error {
  /** Builds the error with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The longest delay `setTimeout` honours; a longer one fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** Largest capacity or session bound taken as meant (1 PiB): beyond is surely a typo. */
const MAX_MEMORY = 2 ** 50;
/** Largest slab: one ArrayBuffer, allocated on the first write into it. */
const MAX_SLAB = 2 ** 30;
/** Most connections of any kind a limit may name. */
const MAX_COUNT = 1_000_000;

/** Parses SECONDS (decimal, fractions allowed) into milliseconds a timer can hold. */
export function parseSeconds(text: string, option: string, minMs = 0): number {
  if (!/^\d+(\.\d+)?$/.test(text.trim())) {
    throw new UsageError(`${option} must be a number of seconds, e.g. 30 or 0.5 (got "${text}")`);
  }
  const ms = Math.round(Number(text) * 1000);
  if (ms > MAX_TIMER_MS) {
    throw new UsageError(
      `${option} must be at most ${Math.floor(MAX_TIMER_MS / 1000)} seconds (24.8 days, ` +
        `the longest timer the runtime holds; got ${text})`,
    );
  }
  if (ms < minMs) {
    throw new UsageError(`${option} must be at least ${minMs / 1000} s (got ${text})`);
  }
  return ms;
}

/** Parses a SIZE option between `min` and `max` bytes. */
export function parseBytes(text: string, option: string, min: number, max: number): number {
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (e) {
    throw new UsageError(`${option}: ${(e as Error).message}`);
  }
  if (bytes < min || bytes > max) {
    throw new UsageError(`${option} must be between ${human(min)} and ${human(max)} (got ${text})`);
  }
  return bytes;
}

/** Parses a decimal count between 1 and a million. */
export function parseCount(text: string, option: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1 || n > MAX_COUNT) {
    throw new UsageError(`${option} must be a whole number from 1 to ${MAX_COUNT} (got "${text}")`);
  }
  return n;
}

/** The daemon's option values as parsed by `parseArgs` (all strings). */
export interface DaemonOptionText {
  capacity: string;
  "slab-size": string;
  "max-session-memory"?: string;
  "max-session-connections": string;
  "max-connections": string;
  "max-unauthenticated": string;
  "max-unauthenticated-per-host": string;
  "max-queued": string;
  grace?: string;
  /** The same as `grace`, under the name the issue of leases gave it. */
  lease?: string;
  "auth-timeout": string;
}

/**
 * How long a disconnected session's slabs are kept by default: long enough
 * for a supervisor to restart a killed pager, which then takes them over.
 */
export const DEFAULT_GRACE_SECONDS = "300";

/** The limits of a peer daemon, from its command line; throws {@linkcode UsageError}. */
export function parseDaemonLimits(
  v: DaemonOptionText,
): Omit<PeerServerOptions, "hostname" | "port" | "token" | "tls"> {
  const capacityBytes = parseBytes(v.capacity, "--capacity", 4096, MAX_MEMORY);
  const slabBytes = parseBytes(v["slab-size"], "--slab-size", 4096, MAX_SLAB);
  if (slabBytes % 4096 !== 0) throw new UsageError("--slab-size must be a multiple of 4K");
  return {
    capacityBytes,
    slabBytes,
    maxSessionBytes: v["max-session-memory"]
      ? parseBytes(v["max-session-memory"], "--max-session-memory", 4096, MAX_MEMORY)
      : capacityBytes,
    maxSessionConnections: parseCount(v["max-session-connections"], "--max-session-connections"),
    maxConnections: parseCount(v["max-connections"], "--max-connections"),
    maxUnauthenticated: parseCount(v["max-unauthenticated"], "--max-unauthenticated"),
    maxUnauthenticatedPerHost: parseCount(
      v["max-unauthenticated-per-host"],
      "--max-unauthenticated-per-host",
    ),
    maxQueuedBytes: parseBytes(v["max-queued"], "--max-queued", 64 * 1024, MAX_SLAB),
    graceMs: parseSeconds(
      v.grace ?? v.lease ?? DEFAULT_GRACE_SECONDS,
      v.grace ? "--grace" : "--lease",
    ),
    handshakeTimeoutMs: parseSeconds(v["auth-timeout"], "--auth-timeout", 100),
  };
}

function human(bytes: number): string {
  for (const [unit, scale] of [["P", 2 ** 50], ["T", 2 ** 40], ["G", 2 ** 30], ["M", 2 ** 20]]) {
    if (bytes >= (scale as number) && bytes % (scale as number) === 0) {
      return `${bytes / (scale as number)}${unit}`;
    }
  }
  return bytes % 1024 === 0 ? `${bytes / 1024}K` : `${bytes}`;
}
