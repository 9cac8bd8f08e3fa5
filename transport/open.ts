/**
 * Opens the store a `--backend` list names. Each scheme maps to one module;
 * all of them return the same {@linkcode PageStore}. Modules are loaded on
 * demand, so a pager with the embedded store needs no network permission.
 *
 * @module
 */

import { EmbeddedStore } from "./embedded.ts";
import { type PageStore, type StoreOptions, StoreUnavailableError } from "./store.ts";

/** Options for {@linkcode openStore}: the common ones plus per-backend extras. */
export interface OpenOptions extends StoreOptions {
  /** CA certificate file trusted for `tcps://` peers. */
  tlsCaFile?: string;
  /** Pages per slab for `tcp://` peers (see `PeerStoreOptions.slabPages`). */
  slabPages?: number;
  /** For `rdma://`: `required` (default), `auto` (fall back to TCP), or a device name. */
  rdma?: string;
}

const SCHEMES = "embedded, tcp://, tcps://, rdma://, memcached://, redis://, redis-cluster://";

/** Opens the store for `urls` (empty or `embedded`: the embedded store). */
export async function openStore(urls: string[], opts: OpenOptions): Promise<PageStore> {
  if (urls.length === 0 || (urls.length === 1 && urls[0] === "embedded")) {
    return new EmbeddedStore();
  }
  const schemes = new Set(urls.map((u) => u.includes("://") ? u.split("://")[0] : u));
  if (schemes.size > 1) {
    throw new StoreUnavailableError(
      `--backend mixes ${[...schemes].join(" and ")}: use one kind of backend`,
    );
  }
  const scheme = [...schemes][0];
  switch (scheme) {
    case "tcp":
    case "tcps": {
      const { openPeerStore } = await import("./tcp.ts");
      return openPeerStore(urls, opts);
    }
    case "rdma": {
      const { openRdmaStore } = await import("./rdma.ts");
      const mode = opts.rdma ?? "required";
      return openRdmaStore(urls, {
        ...opts,
        rdma: mode === "auto" ? "auto" : "required",
        device: mode === "auto" || mode === "required" ? "auto" : mode,
        tcpFallback: (tcp) => openStore(tcp, opts),
      });
    }
    case "memcached": {
      const { openMemcachedStore } = await import("./memcached.ts");
      return openMemcachedStore(urls, opts);
    }
    case "redis":
    case "rediss":
    case "redis-cluster": {
      const { openRedisStore } = await import("./redis.ts");
      return openRedisStore(urls, opts);
    }
    default:
      throw new StoreUnavailableError(`unknown backend "${scheme}": use one of ${SCHEMES}`);
  }
}
