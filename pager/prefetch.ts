/**
 * Which pages to bring back with a missing fault before they are touched. A
 * policy sees the missing faults of a stream (a target, or one thread of it)
 * and proposes page numbers; the pager fetches those that are remote in the
 * same store batch as the faulting page and tells the policy, page by page,
 * whether a proposal was used (a hit) or evicted untouched (waste).
 *
 * @module
 */

/**
 * Thread ids fit in 22 bits (the kernel's PID_MAX_LIMIT is 2^22), so a target
 * number and a thread id fold into one exact integer below 2^53.
 */
const TID_SPAN = 2 ** 22;

/**
 * The stream id of thread `tid` of target `target` (a small integer); `tid` 0
 * when faults carry no thread id (then the whole target is one stream).
 *
 * @example
 * ```ts
 * const stream = streamOf(3, 4242); // target 3, thread 4242
 * ```
 */
export function streamOf(target: number, tid: number): number {
  return target * TID_SPAN + (tid % TID_SPAN);
}

/**
 * The target number of stream `stream` (see {@linkcode streamOf}).
 *
 * @example
 * ```ts
 * targetOfStream(streamOf(3, 4242)); // 3
 * ```
 */
export function targetOfStream(stream: number): number {
  return Math.floor(stream / TID_SPAN);
}

/**
 * A prefetch policy: proposes pages to fetch along with a missing fault.
 *
 * @example
 * ```ts
 * declare const policy: PrefetchPolicy, target: number, tid: number, addr: number;
 * const out = new Float64Array(policy.maxDepth); // once, not per fault
 * const n = policy.onFault(streamOf(target, tid), addr / 4096, out);
 * for (let k = 0; k < n; k++) console.log("also fetch", out[k] * 4096);
 * ```
 */
export interface PrefetchPolicy {
  /**
   * A missing fault of `stream` (see {@linkcode streamOf}) at page number
   * `page` (address / 4096). Writes the page numbers to prefetch (never
   * `page` itself, never negative) into `out` from index 0 and returns how
   * many. The caller fetches only those that are remote in a known mapping.
   */
  onFault(stream: number, page: number, out: Float64Array): number;
  /** A page proposed for `stream` was touched before it was evicted. */
  hit(stream: number): void;
  /** A page proposed for `stream` was evicted without being touched. */
  wasted(stream: number): void;
  /**
   * Page number `page` lies in the window `stream`'s newest fault proposed:
   * the stream has not faulted past it yet, so it may well be touched next.
   */
  pending(stream: number, page: number): boolean;
  /**
   * The newest fault of `stream` fetched only its first `taken` proposals
   * (no room under the budget): the window is that long, and the next fault,
   * inside what was proposed, does not shrink the depth.
   */
  cut(stream: number, taken: number): void;
  /** Forgets one stream (a thread exited). */
  forget(stream: number): void;
  /** Forgets every stream of target `target` (the target exited). */
  forgetTarget(target: number): void;
  /** Most pages one fault may propose: the length `out` needs. */
  readonly maxDepth: number;
  /**
   * After an `onFault`: pages of the stream's previous window it passed
   * without faulting (touched prefetches: hits), and the trend they lie
   * along (they are `page - trend`, `page - 2 * trend`, ...). 0 if none.
   */
  readonly lastStepped: number;
  /** After an `onFault`: the trend of {@linkcode lastStepped} (0 if none). */
  readonly lastTrend: number;
  /** Name for `--prefetch` and logs. */
  readonly name: string;
}

/**
 * `--prefetch off`: every page comes back through its own fault.
 *
 * @example
 * ```ts
 * const p: PrefetchPolicy = new NoPrefetch();
 * p.onFault(streamOf(0, 0), 100, new Float64Array(1)); // 0
 * ```
 */
export class NoPrefetch implements PrefetchPolicy {
  /** Name for `--prefetch`. */
  readonly name = "off";
  /** Proposes nothing, so needs no room. */
  readonly maxDepth = 0;
  /** Never any. */
  readonly lastStepped = 0;
  /** Never any. */
  readonly lastTrend = 0;
  /** Proposes nothing. */
  onFault(_stream: number, _page: number, _out: Float64Array): number {
    return 0;
  }
  /** Nothing to learn. */
  hit(_stream: number): void {}
  /** Nothing to learn. */
  wasted(_stream: number): void {}
  /** Never proposed anything. */
  pending(_stream: number, _page: number): boolean {
    return false;
  }
  /** Never proposes anything. */
  cut(_stream: number, _taken: number): void {}
  /** Nothing kept. */
  forget(_stream: number): void {}
  /** Nothing kept. */
  forgetTarget(_target: number): void {}
}

/**
 * Sizes of a {@linkcode LeapPrefetcher}.
 *
 * @example
 * ```ts
 * const opts: LeapOptions = { history: 32, maxDepth: 128, streams: 1024 };
 * const leap = new LeapPrefetcher(opts);
 * ```
 */
export interface LeapOptions {
  /** Deltas remembered per stream; a power of two, at least 4 (default 32). */
  history?: number;
  /** Most pages proposed per fault (default 64). */
  maxDepth?: number;
  /** Streams tracked at once; the least recently faulting one makes room (default 256). */
  streams?: number;
}

/** Smallest power of two >= `n` (n >= 1). */
function pow2ceil(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/** Free slot marker in the stream-id arrays (stream ids are >= 0). */
const NO_STREAM = -1;

/**
 * Leap's trend prefetcher (Al Maruf and Chowdhury, ATC'20), per stream.
 *
 * Each stream keeps a ring of the page deltas between its consecutive missing
 * faults. The trend is the majority delta (Boyer-Moore vote, verified by a
 * count) of the newest quarter of the ring, of the newest half when that has
 * none, then of the whole ring. On a trend `d` it proposes `page + d`,
 * `page + 2d`, ... up to the depth: `hits + 2` rounded up to a power of two,
 * never below half the previous depth, capped; a quarter of the previous depth
 * when more proposals were wasted than hit since the last fault. No trend, no
 * proposal.
 *
 * Prefetched pages that are touched raise no fault, so a sweep under prefetch
 * faults once per window: at `page + (n+1)d` after proposing n pages at `page`.
 * Such a fault (or one inside the window) records the delta `d`, not the jump,
 * and counts the `k - 1` pages stepped over as hits, which makes the depth
 * grow as soon as the window is used, before the pager's own hit reports
 * (which may come as late as eviction) arrive. The two counts are not added:
 * the larger is used.
 *
 * Hot-path work is a hash probe and at most two passes over 32 deltas per
 * window size, on typed arrays: no allocation per fault.
 *
 * @example
 * ```ts
 * const leap = new LeapPrefetcher();
 * const out = new Float64Array(leap.maxDepth);
 * const s = streamOf(0, 0);
 * leap.onFault(s, 10, out);
 * leap.onFault(s, 11, out);
 * const n = leap.onFault(s, 12, out); // 2: out[0] = 13, out[1] = 14
 * ```
 */
export class LeapPrefetcher implements PrefetchPolicy {
  /** Name for `--prefetch`. */
  readonly name = "leap";
  /** Most pages one fault may propose. */
  readonly maxDepth: number;
  /** Pages of the previous window the last fault passed without faulting. */
  lastStepped = 0;
  /** The trend those pages lie along. */
  lastTrend = 0;
  readonly #h: number;
  // Per slot: the ring of deltas (slot * h ...), its write position and fill.
  readonly #deltas: Float64Array;
  readonly #head: Int32Array;
  readonly #filled: Int32Array;
  // Per slot: last faulting page, the trend and pages proposed at it, depth.
  readonly #last: Float64Array;
  readonly #trend: Float64Array;
  readonly #span: Int32Array;
  readonly #depth: Int32Array;
  readonly #hits: Int32Array;
  readonly #waste: Int32Array;
  /** Per slot: 1 if the newest window was cut for room (see {@linkcode cut}). */
  readonly #held: Uint8Array;
  readonly #map: StreamMap;

  /** A prefetcher with the given sizes. */
  constructor(opts: LeapOptions = {}) {
    const h = opts.history ?? 32;
    if (h < 4 || pow2ceil(h) !== h) throw new RangeError(`history ${h}: a power of two >= 4`);
    const streams = opts.streams ?? 256;
    this.#h = h;
    this.maxDepth = Math.max(0, Math.floor(opts.maxDepth ?? 64));
    this.#deltas = new Float64Array(streams * h);
    this.#head = new Int32Array(streams);
    this.#filled = new Int32Array(streams);
    this.#last = new Float64Array(streams);
    this.#trend = new Float64Array(streams);
    this.#span = new Int32Array(streams);
    this.#depth = new Int32Array(streams);
    this.#hits = new Int32Array(streams);
    this.#waste = new Int32Array(streams);
    this.#held = new Uint8Array(streams);
    this.#map = new StreamMap(streams);
  }

  /** Streams currently tracked. */
  get streams(): number {
    return this.#map.size;
  }

  /** Bytes of state held (fixed at construction). */
  get bytes(): number {
    return this.#deltas.byteLength + this.#map.bytes + this.#head.length * 40;
  }

  /** Records the fault, finds the trend and writes the proposals into `out`. */
  onFault(stream: number, page: number, out: Float64Array): number {
    this.lastStepped = this.lastTrend = 0;
    let s = this.#map.get(stream);
    if (s < 0) {
      s = this.#map.claim(stream);
      this.#reset(s, page);
      return 0;
    }
    this.#map.touch(s);
    const prev = this.#last[s];
    // The same page again (a retry, two threads of one stream): nothing new.
    if (page === prev) return 0;
    this.#last[s] = page;
    const trend = this.#trend[s], span = this.#span[s];
    const stepped = this.#record(s, page - prev);
    // A fault inside the window (a page evicted or not fetched) leaves the
    // pages proposed past it proposed: the stream passes them next.
    const along = trend !== 0 ? (page - prev) / trend : 0;
    const unpassed = Number.isInteger(along) && along >= 1 && along < span ? span - along : 0;
    if (stepped > 0) {
      this.lastStepped = stepped;
      this.lastTrend = trend;
    }
    const d = this.#majority(s);
    if (d === 0) {
      // Lost the trend: the depth decays as it would without hits.
      this.#depth[s] >>= 1;
      this.#hits[s] = this.#waste[s] = this.#held[s] = 0;
      this.#trend[s] = 0;
      this.#span[s] = 0;
      return 0;
    }
    const n = this.#decide(s, stepped);
    let k = 0;
    const lim = Math.min(n, out.length);
    for (let p = page + d; k < lim && p >= 0; p += d) out[k++] = p;
    this.#trend[s] = d;
    this.#span[s] = d === trend ? Math.max(k, unpassed) : k;
    return k;
  }

  /** One more hit for the stream's next depth decision. */
  hit(stream: number): void {
    const s = this.#map.get(stream);
    if (s >= 0 && this.#hits[s] < 0x3fffffff) this.#hits[s]++;
  }

  /** One more wasted page for the stream's next depth decision. */
  wasted(stream: number): void {
    const s = this.#map.get(stream);
    if (s >= 0 && this.#waste[s] < 0x3fffffff) this.#waste[s]++;
  }

  /** `page` is one of the pages the stream's newest fault proposed (along its trend). */
  pending(stream: number, page: number): boolean {
    const s = this.#map.get(stream);
    if (s < 0 || this.#span[s] === 0) return false;
    const steps = (page - this.#last[s]) / this.#trend[s];
    return Number.isInteger(steps) && steps >= 1 && steps <= this.#span[s];
  }

  /** The window was cut to `taken` pages for room: keep the depth for the next fault. */
  cut(stream: number, taken: number): void {
    const s = this.#map.get(stream);
    if (s < 0) return;
    this.#span[s] = Math.min(this.#span[s], taken);
    this.#held[s] = 1;
  }

  /** Drops the stream's history. */
  forget(stream: number): void {
    const s = this.#map.get(stream);
    if (s >= 0) this.#map.release(s);
  }

  /** Drops the history of every stream of `target`. */
  forgetTarget(target: number): void {
    this.#map.releaseWhere((id) => targetOfStream(id) === target);
  }

  #reset(s: number, page: number): void {
    this.#head[s] = this.#filled[s] = 0;
    this.#last[s] = page;
    this.#trend[s] = 0;
    this.#held[s] = 0;
    this.#span[s] =
      this.#depth[s] =
      this.#hits[s] =
      this.#waste[s] =
        0;
  }

  /**
   * Appends a delta to the ring. A fault `k` steps along the last trend, at
   * most one past the pages proposed, records the trend itself: the pages in
   * between were touched without faulting. Returns those `k - 1` pages.
   */
  #record(s: number, delta: number): number {
    const t = this.#trend[s];
    let stepped = 0;
    if (t !== 0) {
      const k = delta / t;
      if (Number.isInteger(k) && k >= 1 && k <= this.#span[s] + 1) {
        stepped = k - 1;
        delta = t;
      }
    }
    const h = this.#h;
    this.#deltas[s * h + this.#head[s]] = delta;
    this.#head[s] = (this.#head[s] + 1) & (h - 1);
    if (this.#filled[s] < h) this.#filled[s]++;
    return stepped;
  }

  /** The majority delta of the newest quarter, half or whole ring; 0 if none. */
  #majority(s: number): number {
    const filled = this.#filled[s];
    if (filled < 2) return 0;
    let w = Math.min(this.#h >> 2, filled);
    for (;;) {
      const d = this.#vote(s, w);
      if (d !== 0 || w >= filled) return d;
      w = Math.min(w * 2, filled);
    }
  }

  /**
   * Boyer-Moore vote over the newest `w` deltas, then a count: the candidate
   * wins with more than half of them, and at least two (one delta is no trend).
   */
  #vote(s: number, w: number): number {
    const h = this.#h, base = s * h, head = this.#head[s], ring = this.#deltas;
    let cand = 0, votes = 0;
    for (let j = 1; j <= w; j++) {
      const d = ring[base + ((head - j) & (h - 1))];
      if (votes === 0) {
        cand = d;
        votes = 1;
      } else votes += d === cand ? 1 : -1;
    }
    let count = 0;
    for (let j = 1; j <= w; j++) if (ring[base + ((head - j) & (h - 1))] === cand) count++;
    return count * 2 > w && count >= 2 ? cand : 0;
  }

  /** Depth for this fault from the hits and waste since the last one. */
  #decide(s: number, stepped: number): number {
    const hits = Math.max(this.#hits[s], stepped);
    const waste = this.#waste[s];
    const prev = this.#depth[s];
    const held = this.#held[s];
    this.#hits[s] = this.#waste[s] = this.#held[s] = 0;
    if (held && waste <= hits) return prev;
    const n = waste > hits ? prev >> 2 : Math.max(pow2ceil(hits + 2), prev >> 1);
    return this.#depth[s] = Math.min(n, this.maxDepth);
  }
}

/**
 * Stream id to slot: open addressing with linear probing over typed arrays
 * (no allocation per lookup), at most half full; a full set of slots gives up
 * the least recently used one.
 */
class StreamMap {
  readonly #keys: Float64Array;
  readonly #vals: Int32Array; // slot + 1; 0 = empty bucket
  readonly #mask: number;
  readonly #ids: Float64Array; // per slot
  readonly #used: Float64Array; // per slot: clock of its last fault
  readonly #free: Int32Array;
  #nfree: number;
  #clock = 0;

  constructor(slots: number) {
    const buckets = pow2ceil(slots * 2);
    this.#keys = new Float64Array(buckets);
    this.#vals = new Int32Array(buckets);
    this.#mask = buckets - 1;
    this.#ids = new Float64Array(slots).fill(NO_STREAM);
    this.#used = new Float64Array(slots);
    this.#free = new Int32Array(slots);
    for (let i = 0; i < slots; i++) this.#free[i] = slots - 1 - i;
    this.#nfree = slots;
  }

  get size(): number {
    return this.#ids.length - this.#nfree;
  }

  get bytes(): number {
    return this.#keys.byteLength + this.#vals.byteLength + this.#ids.length * 20;
  }

  #bucket(id: number): number {
    const lo = id >>> 0, hi = Math.floor(id / 4294967296) | 0;
    let x = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
    x ^= x >>> 15;
    return x & this.#mask;
  }

  /** The slot of `id`, or -1. */
  get(id: number): number {
    for (let b = this.#bucket(id); this.#vals[b] !== 0; b = (b + 1) & this.#mask) {
      if (this.#keys[b] === id) return this.#vals[b] - 1;
    }
    return -1;
  }

  /** Marks the slot as just used. */
  touch(slot: number): void {
    this.#used[slot] = ++this.#clock;
  }

  /** A slot for `id` (not present): a free one, else the least recently used. */
  claim(id: number): number {
    let slot: number;
    if (this.#nfree > 0) slot = this.#free[--this.#nfree];
    else {
      slot = 0;
      for (let i = 1; i < this.#used.length; i++) if (this.#used[i] < this.#used[slot]) slot = i;
      this.#unlink(this.#ids[slot]);
    }
    let b = this.#bucket(id);
    while (this.#vals[b] !== 0) b = (b + 1) & this.#mask;
    this.#keys[b] = id;
    this.#vals[b] = slot + 1;
    this.#ids[slot] = id;
    this.touch(slot);
    return slot;
  }

  /** Frees a slot in use. */
  release(slot: number): void {
    this.#unlink(this.#ids[slot]);
    this.#ids[slot] = NO_STREAM;
    this.#free[this.#nfree++] = slot;
  }

  /** Frees every slot whose stream id satisfies `pred` (not on the fault path). */
  releaseWhere(pred: (id: number) => boolean): void {
    for (let s = 0; s < this.#ids.length; s++) {
      if (this.#ids[s] !== NO_STREAM && pred(this.#ids[s])) this.release(s);
    }
  }

  /** Removes `id` from the table, shifting back later entries of its probe run. */
  #unlink(id: number): void {
    const m = this.#mask;
    let i = this.#bucket(id);
    while (this.#vals[i] !== 0 && this.#keys[i] !== id) i = (i + 1) & m;
    if (this.#vals[i] === 0) return;
    this.#vals[i] = 0;
    for (let j = (i + 1) & m; this.#vals[j] !== 0; j = (j + 1) & m) {
      const home = this.#bucket(this.#keys[j]);
      // Entry j may move to the hole at i unless its home lies in (i, j] (cyclically).
      const stays = i <= j ? home > i && home <= j : home > i || home <= j;
      if (stays) continue;
      this.#keys[i] = this.#keys[j];
      this.#vals[i] = this.#vals[j];
      this.#vals[j] = 0;
      i = j;
    }
  }
}
