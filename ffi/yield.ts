/**
 * One turn of the event loop, cheaply: a MessageChannel round (a macrotask,
 * about 10-20 us), so that sockets and timers run, unlike a microtask.
 * (`setTimeout(0)` takes 1-2 ms when called in a loop: nested timers are
 * clamped.)
 *
 * A port that has carried messages keeps the process alive even after
 * `unref()` on this runtime, so the channel is closed once it has been idle
 * for {@linkcode IDLE_MS}: a program that is done exits.
 *
 * @module
 */

const IDLE_MS = 50;
let channel: MessageChannel | null = null;
let lastUse = 0;
let closer: ReturnType<typeof setTimeout> | null = null;
const waiters: Array<() => void> = [];

function port(): MessagePort {
  lastUse = performance.now();
  if (channel === null) {
    channel = new MessageChannel();
    channel.port1.onmessage = () => waiters.shift()?.();
  }
  closer ??= setTimeout(closeIfIdle, IDLE_MS);
  return channel.port2;
}

function closeIfIdle(): void {
  closer = null;
  if (channel === null) return;
  if (waiters.length > 0 || performance.now() - lastUse < IDLE_MS) {
    closer = setTimeout(closeIfIdle, IDLE_MS);
    return;
  }
  channel.port1.close();
  channel.port2.close();
  channel = null;
}

/**
 * Lets sockets and timers run once, then resolves.
 *
 * @example
 * ```ts
 * await yieldToEventLoop();
 * ```
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => {
    waiters.push(resolve);
    port().postMessage(0);
  });
}
