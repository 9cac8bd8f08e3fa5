/**
 * Requests to replicas that do not wait for the slowest one: hedged reads
 * (a second replica is asked when the first is late, the first answer wins)
 * and writes that complete on the replicas that answered in time. A frozen
 * peer (a GC pause, a stopped VM) then costs a read one hedge delay and a
 * write one grace period, not the request timeout that declares it dead.
 *
 * @module
 */

/** A deadline that may be called off. */
export interface Deadline {
  /** Calls it off: its action will not run. */
  cancel(): void;
}

interface Entry {
  at: number;
  action: () => void;
  cancelled: boolean;
}

/**
 * Many short deadlines on one timer. A hedged request that answers in time
 * (nearly all of them) costs an array slot, not a `setTimeout` and a
 * `clearTimeout`, which at tens of thousands of requests a second cost the
 * peer store a third of its single-page rate. The timer runs only while
 * deadlines are pending: an idle store uses no CPU.
 *
 * @example
 * ```ts
 * const deadlines = new Deadlines();
 * const d = deadlines.add(2, () => console.log("late"));
 * d.cancel(); // answered in time
 * ```
 */
export class Deadlines {
  #entries: Entry[] = [];
  /** Entries neither cancelled nor run: at 0 the timer stops. */
  #live = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #armedAt = Infinity;

  /** Runs `action` in `ms` unless cancelled first. */
  add(ms: number, action: () => void): Deadline {
    const entry: Entry = { at: performance.now() + ms, action, cancelled: false };
    this.#entries.push(entry);
    this.#live++;
    if (entry.at < this.#armedAt) this.#arm(entry.at);
    return {
      cancel: () => {
        if (entry.cancelled) return;
        entry.cancelled = true;
        if (--this.#live === 0) this.#stop();
      },
    };
  }

  /** Nothing pending: no timer (an idle store uses no CPU and keeps no process alive). */
  #stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#armedAt = Infinity;
    this.#entries = [];
  }

  #arm(at: number): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#armedAt = at;
    this.#timer = setTimeout(() => this.#fire(), Math.max(0, at - performance.now()));
  }

  #fire(): void {
    this.#timer = null;
    this.#armedAt = Infinity;
    const now = performance.now();
    const due: Entry[] = [];
    const rest: Entry[] = [];
    let next = Infinity;
    for (const e of this.#entries) {
      if (e.cancelled) continue;
      if (e.at <= now) {
        e.cancelled = true; // run once; a later cancel() is a no-op
        this.#live--;
        due.push(e);
      } else {
        rest.push(e);
        next = Math.min(next, e.at);
      }
    }
    this.#entries = rest;
    if (next < Infinity) this.#arm(next);
    for (const e of due) e.action();
  }
}

/** The deadlines of every peer store in this process (no timer until one is added). */
const shared = new Deadlines();

/**
 * Asks `replicas` in order for the same answer: the first at once, each next
 * one when the one before has not answered after its `delayMs`, or at once
 * when it failed. Resolves with the first answer; every failure, also one
 * that comes after the answer, goes to `onFailure`; a replica whose delay ran
 * out goes to `onLate`. Rejects with the last error if all of them fail.
 *
 * @example
 * ```ts
 * const data = await firstAnswer(["a", "b"], (r) => read(r), () => 2, {
 *   onLate: (r) => console.log(`${r} is late: asking the next replica`),
 *   onFailure: (r, e) => console.log(`${r} failed: ${e}`),
 * });
 * ```
 */
export function firstAnswer<R, T>(
  replicas: readonly R[],
  ask: (replica: R) => Promise<T>,
  delayMs: (replica: R) => number,
  on: { onLate(replica: R): void; onFailure(replica: R, error: unknown): void },
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let next = 0;
    let outstanding = 0;
    let settled = false;
    // Made only when needed: an Error captures a stack, which costs more than
    // the rest of a hedged read.
    let lastError: unknown = undefined;
    let timer: Deadline | undefined;
    const askNext = (): void => {
      timer?.cancel();
      if (settled) return;
      if (next >= replicas.length) {
        if (outstanding === 0) {
          settled = true;
          reject(lastError ?? new Error("no replica to ask"));
        }
        return;
      }
      const replica = replicas[next++];
      outstanding++;
      ask(replica).then((value) => {
        outstanding--;
        if (settled) return;
        settled = true;
        timer?.cancel();
        resolve(value);
      }, (e) => {
        outstanding--;
        lastError = e;
        on.onFailure(replica, e);
        askNext();
      });
      if (next < replicas.length) {
        timer = shared.add(delayMs(replica), () => {
          if (settled) return;
          on.onLate(replica);
          askNext();
        });
      }
    };
    askNext();
  });
}

/** How each request of {@linkcode allOnTime} ended. */
export type Outcome<T> =
  | { status: "fulfilled"; value: T }
  | { status: "rejected"; reason: unknown }
  | { status: "late" };

/**
 * Like `Promise.allSettled`, except that once one request succeeded, the
 * others get `graceMs` more and those still unanswered then count as `late`
 * (their promises go on; a late failure is for the caller's own handlers).
 *
 * @example
 * ```ts
 * const outcomes = await allOnTime([fast(), frozen()], 5);
 * // [{ status: "fulfilled", value: ... }, { status: "late" }]
 * ```
 */
export function allOnTime<T>(requests: Promise<T>[], graceMs: number): Promise<Outcome<T>[]> {
  return new Promise((resolve) => {
    const outcomes: (Outcome<T> | undefined)[] = requests.map(() => undefined);
    let left = requests.length;
    let timer: Deadline | undefined;
    const finish = () => {
      timer?.cancel();
      resolve(outcomes.map((o) => o ?? { status: "late" }));
    };
    if (left === 0) return finish();
    requests.forEach((request, i) => {
      request.then((value) => {
        if (outcomes[i] !== undefined || left === -1) return;
        outcomes[i] = { status: "fulfilled", value };
        if (--left === 0) return finish();
        timer ??= shared.add(graceMs, () => {
          left = -1;
          finish();
        });
      }, (reason) => {
        if (left === -1) return;
        outcomes[i] = { status: "rejected", reason };
        if (--left === 0) finish();
      });
    });
  });
}
