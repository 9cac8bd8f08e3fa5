/**
 * Loads the native shim (build/libremora_shim.so): a read of the target's
 * pages on a thread of its own that signals an eventfd. (Waiting on fds is
 * libc's `poll` through FFI: see `poll.ts`.)
 *
 * @module
 */

/** Where `deno task build` puts the shim. */
export const SHIM_PATH: string = new URL("../build/libremora_shim.so", import.meta.url).pathname;

/** `REMORA_SHIM` overrides the path when the environment may be read (e.g. a system install). */
function shimPath(): string {
  try {
    return Deno.env.get("REMORA_SHIM") ?? SHIM_PATH;
  } catch {
    return SHIM_PATH; // no --allow-env: the default is right
  }
}

/** The shim is missing; the message says what to run. */
export class ShimMissingError extends Error {
  /** Builds the error. */
  constructor(detail: string) {
    super(
      `the native shim is not built (${detail}): run \`deno task build\` first (needs a C compiler)`,
    );
    this.name = "ShimMissingError";
  }
}

type ShimSymbols = {
  remora_read_start: {
    parameters: ["i32", "buffer", "u64", "buffer", "u64", "buffer", "i32"];
    result: "i32";
  };
  remora_shim_version: { parameters: []; result: "i32" };
};

let shim: Deno.DynamicLibrary<ShimSymbols> | null = null;

/** Loads the shim, or throws {@linkcode ShimMissingError}. */
export function loadShim(): void {
  if (shim !== null) return;
  try {
    shim = Deno.dlopen<ShimSymbols>(shimPath(), {
      remora_read_start: {
        parameters: ["i32", "buffer", "u64", "buffer", "u64", "buffer", "i32"],
        result: "i32",
      },
      remora_shim_version: { parameters: [], result: "i32" },
    });
  } catch (e) {
    throw new ShimMissingError(e instanceof Error ? e.message.split("\n")[0] : String(e));
  }
}

/**
 * Starts `process_vm_readv(pid, local, remote)` on a thread of its own and
 * returns at once: 0, or `-errno` if nothing was started. When the read is
 * done, `result[0]` holds the bytes read or `-errno`, and the eventfd
 * `doneFd` turns readable. Every buffer (the iovec arrays and the memory they
 * point at) must stay alive until then. For reads that may raise a userfault
 * the caller itself has to serve: it waits for `doneFd` in the same poll as
 * its faults.
 *
 * @example
 * ```ts
 * declare const pid: number, doneFd: number, local: Uint8Array, remote: Uint8Array;
 * const result = new BigInt64Array(1);
 * if (startRead(pid, local, 1, remote, 1, result, doneFd) === 0) {
 *   // ... poll doneFd (serving faults), then read result[0]
 * }
 * ```
 */
export function startRead(
  pid: number,
  local: Uint8Array,
  localCount: number,
  remote: Uint8Array,
  remoteCount: number,
  result: BigInt64Array,
  doneFd: number,
): number {
  loadShim();
  return shim!.symbols.remora_read_start(
    pid,
    local,
    BigInt(localCount),
    remote,
    BigInt(remoteCount),
    new Uint8Array(result.buffer, result.byteOffset, 8),
    doneFd,
  );
}
