/**
 * Requests to replicas that do not wait for the slowest one: hedged reads
 * (a second replica is asked when the first is late, the first answer wins)
 * and writes that complete on the replicas that answered in time. A frozen
 * peer (a GC pause, a stopped VM) then costs a read one hedge delay and a
 * write one grace period, not the request timeout that declares it dead.
 *
 * @module
 */

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
    let lastError: unknown = new Error("no replica to ask");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const askNext = (): void => {
      clearTimeout(timer);
      if (settled) return;
      if (next >= replicas.length) {
        if (outstanding === 0) {
          settled = true;
          reject(lastError);
        }
        return;
      }
      const replica = replicas[next++];
      outstanding++;
      ask(replica).then((value) => {
        outstanding--;
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(value);
      }, (e) => {
        outstanding--;
        lastError = e;
        on.onFailure(replica, e);
        askNext();
      });
      if (next < replicas.length) {
        timer = setTimeout(() => {
          if (settled) return;
          on.onLate(replica);
          askNext();
        }, delayMs(replica));
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
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = () => {
      clearTimeout(timer);
      resolve(outcomes.map((o) => o ?? { status: "late" }));
    };
    if (left === 0) return finish();
    requests.forEach((request, i) => {
      request.then((value) => {
        if (outcomes[i] !== undefined || left === -1) return;
        outcomes[i] = { status: "fulfilled", value };
        if (--left === 0) return finish();
        timer ??= setTimeout(() => {
          left = -1;
          finish();
        }, graceMs);
      }, (reason) => {
        if (left === -1) return;
        outcomes[i] = { status: "rejected", reason };
        if (--left === 0) finish();
      });
    });
  });
}
