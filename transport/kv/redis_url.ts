/**
 * The Redis backend's addresses: `redis://`, `rediss://` and
 * `redis-cluster://` URLs parsed into one {@linkcode RedisTarget}.
 *
 * @module
 */

import { StoreUnavailableError } from "../store.ts";

/** What a set of `redis://` or `redis-cluster://` URLs asks for. */
export interface RedisTarget {
  /** A Redis Cluster (`redis-cluster://`), routed by hash slot. */
  cluster: boolean;
  /** TLS (`rediss://`). */
  tls: boolean;
  /** The servers given: the one server, or the cluster's seed nodes. */
  seeds: { hostname: string; port: number }[];
  /** ACL user, or empty. */
  user: string;
  /** Password, or empty. */
  pass: string;
  /** Database number (0 in a cluster). */
  db: number;
  /** `?assume-noeviction=1`: trust an eviction policy that cannot be read. */
  assumeNoEviction: boolean;
  /** `?ca-file=`: a PEM CA to trust for TLS, or empty. */
  caFile: string;
}

/**
 * Parses the Redis URLs of one `--backend`: `redis://[user:pass@]host[:port][/db]`,
 * `rediss://` for TLS, `redis-cluster://host:port[,...]` for a cluster.
 *
 * @throws {StoreUnavailableError} One line naming the bad address and the right form.
 * @example
 * ```ts
 * parseRedisUrls(["redis://:secret@10.0.0.5:6380/2"]).db; // 2
 * ```
 */
export function parseRedisUrls(urls: string[]): RedisTarget {
  const t: RedisTarget = {
    cluster: false,
    tls: false,
    seeds: [],
    user: "",
    pass: "",
    db: 0,
    assumeNoEviction: false,
    caFile: "",
  };
  const schemes = new Set<string>();
  for (const url of urls) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new StoreUnavailableError(
        `bad Redis address "${url}": use redis://[user:pass@]HOST:PORT`,
      );
    }
    const scheme = u.protocol.slice(0, -1);
    if (!["redis", "rediss", "redis-cluster", "rediss-cluster"].includes(scheme)) {
      throw new StoreUnavailableError(
        `bad Redis address "${url}": use redis://, rediss:// or redis-cluster://`,
      );
    }
    schemes.add(scheme);
    const hostname = u.hostname.replace(/^\[(.*)\]$/, "$1");
    if (hostname === "") throw new StoreUnavailableError(`Redis address "${url}" has no host`);
    t.seeds.push({ hostname, port: u.port === "" ? 6379 : Number(u.port) });
    if (u.username) t.user = decodeURIComponent(u.username);
    if (u.password) t.pass = decodeURIComponent(u.password);
    const db = u.pathname.replace(/^\//, "");
    if (db !== "") {
      if (!/^\d+$/.test(db)) {
        throw new StoreUnavailableError(`Redis address "${url}": database must be a number`);
      }
      t.db = Number(db);
    }
    const assume = u.searchParams.get("assume-noeviction");
    if (assume === "1" || assume === "true" || assume === "yes") t.assumeNoEviction = true;
    const ca = u.searchParams.get("ca-file");
    if (ca) t.caFile = ca;
  }
  if (schemes.size !== 1) {
    throw new StoreUnavailableError(`--backend mixes ${[...schemes].join(" and ")}`);
  }
  const scheme = [...schemes][0];
  t.cluster = scheme.endsWith("-cluster");
  t.tls = scheme.startsWith("rediss");
  if (!t.cluster && t.seeds.length > 1) {
    throw new StoreUnavailableError(
      "several redis:// servers given: use redis-cluster:// for a Redis Cluster (remora does not shard plain Redis)",
    );
  }
  if (t.cluster && t.db !== 0) throw new StoreUnavailableError("Redis Cluster has only database 0");
  return t;
}
