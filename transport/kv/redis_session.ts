/**
 * Setting up one Redis connection before it carries pages: `AUTH`, `SELECT`,
 * and the eviction check (a server that may evict is refused: an evicted page
 * would be silent data loss). Error replies are told apart by their code.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import { StoreUnavailableError } from "../store.ts";
import type { PipeConn } from "./pipe.ts";
import { encodeCommand, type Resp, RespError, respToJs } from "./resp.ts";
import type { RedisTarget } from "./redis_url.ts";

const log = getLogger(["remora", "transport", "redis"]);

/**
 * Sends one command and returns its reply with bulk strings copied out as text.
 *
 * @example
 * ```ts
 * const policy = await call(conn, ["CONFIG", "GET", "maxmemory-policy"]);
 * ```
 */
export async function call(conn: PipeConn<Resp>, args: string[]): Promise<Resp> {
  let out: Resp = null;
  await conn.send(encodeCommand(args), 1, (_, r) => out = respToJs(r) as Resp);
  return out;
}

/**
 * Authenticates, selects the database and checks the eviction policy of a
 * fresh connection to the server `label`, as `t` asks.
 *
 * @throws {StoreUnavailableError} One line: authentication refused, a bad
 * database, or a policy other than `noeviction` (or unreadable, unless
 * `t.assumeNoEviction`).
 * @example
 * ```ts
 * await prepareSession(conn, "Redis at 127.0.0.1:6379", parseRedisUrls(["redis://127.0.0.1"]));
 * ```
 */
export async function prepareSession(
  conn: PipeConn<Resp>,
  label: string,
  t: RedisTarget,
): Promise<void> {
  if (t.pass !== "" || t.user !== "") {
    const r = await call(conn, t.user ? ["AUTH", t.user, t.pass] : ["AUTH", t.pass]);
    if (r instanceof RespError) {
      throw new StoreUnavailableError(`${label} refused authentication (${r.message})`);
    }
  }
  if (t.db !== 0) {
    const r = await call(conn, ["SELECT", String(t.db)]);
    if (r instanceof RespError) {
      throw new StoreUnavailableError(`${label}: SELECT ${t.db}: ${r.message}`);
    }
  }
  await checkEviction(conn, label, t);
}

async function checkEviction(conn: PipeConn<Resp>, label: string, t: RedisTarget): Promise<void> {
  const r = await call(conn, ["CONFIG", "GET", "maxmemory-policy"]);
  if (r instanceof RespError) {
    if (r.code === "NOAUTH") {
      throw new StoreUnavailableError(
        `${label} needs a password: use redis://user:pass@host:port or --token-file`,
      );
    }
    if (t.assumeNoEviction) {
      log.warn("{node}: cannot read maxmemory-policy ({err}); trusting assume-noeviction", {
        node: label,
        err: r.message,
      });
      return;
    }
    throw new StoreUnavailableError(
      `${label} does not allow CONFIG GET (${r.message}), so remora cannot verify that ` +
        `maxmemory-policy is noeviction: make sure it is, then add ?assume-noeviction=1 to the URL`,
    );
  }
  const policy = Array.isArray(r) && r.length === 2 ? String(r[1]) : undefined;
  if (policy !== "noeviction") {
    throw new StoreUnavailableError(
      `${label} has maxmemory-policy ${policy ?? "unknown"}, which may evict pages: set ` +
        `maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf)`,
    );
  }
}
