/**
 * Consistent hashing with virtual nodes, for spreading pages over several
 * memcached servers: adding or losing one server moves only its share of
 * keys, and the replicas of a key are the next distinct servers clockwise.
 *
 * @module
 */

/** 32-bit FNV-1a of a string, then a murmur3 finalizer so nearby names spread. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

/** murmur3's 32-bit finalizer: a cheap, well-mixing bijection. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A ring of `nodes` servers, each at `vnodes` points. */
export class HashRing {
  /** Number of servers. */
  readonly nodes: number;
  #points: Uint32Array;
  #owner: Uint16Array;
  #seed: number;

  /**
   * Builds the ring for servers named `names` (their addresses: the same
   * names give the same ring in every pager); `seed` mixes into key hashes
   * (the namespace), so tenants do not all load the same server first.
   */
  constructor(names: string[], seed: string, vnodes = 160) {
    this.nodes = names.length;
    const pts: [number, number][] = [];
    names.forEach((name, n) => {
      for (let v = 0; v < vnodes; v++) pts.push([hashString(`${name}#${v}`), n]);
    });
    pts.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    this.#points = Uint32Array.from(pts, (p) => p[0]);
    this.#owner = Uint16Array.from(pts, (p) => p[1]);
    this.#seed = hashString(seed);
  }

  /**
   * The first `count` distinct servers clockwise from `key`'s point, written
   * into `out` (primary first). Returns how many were written (at most the
   * number of servers).
   */
  place(key: number, count: number, out: Uint16Array): number {
    const h = fmix32((key ^ this.#seed) >>> 0);
    const pts = this.#points;
    let lo = 0, hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    const want = Math.min(count, this.nodes);
    let n = 0;
    for (let step = 0; step < pts.length && n < want; step++) {
      const owner = this.#owner[(lo + step) % pts.length];
      let seen = false;
      for (let j = 0; j < n; j++) if (out[j] === owner) seen = true;
      if (!seen) out[n++] = owner;
    }
    return n;
  }
}
