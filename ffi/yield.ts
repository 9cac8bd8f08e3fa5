/**
 * One turn of the event loop, cheaply: a MessageChannel round (a macrotask,
 * about 10 us), so that sockets and timers run, unlike a microtask.
 *
 * @module
 */

let channel: MessageChannel | null = null;
const waiters: Array<() => void> = [];

function port(): MessagePort {
  if (channel === null) {
    channel = new MessageChannel();
    channel.port1.onmessage = () => waiters.shift()?.();
    // The channel must not keep the process alive on its own.
    (channel.port1 as unknown as { unref?: () => void }).unref?.();
  }
  return channel.port2;
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
