/**
 * Loads the native shim (build/libremora_shim.so): a read of the target's
 * pages on a thread of its own that signals an eventfd, and a thread that
 * touches new slab memory ahead of its use. (Waiting on fds is libc's `poll`
 * through FFI: see `poll.ts`.)
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
  remora_set_helper_cpus: { parameters: ["buffer", "u64"]; result: "void" };
  remora_prefault_start: { parameters: ["pointer", "u64"]; result: "pointer" };
  remora_prefault_stop: { parameters: ["pointer"]; result: "void" };
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
      remora_set_helper_cpus: { parameters: ["buffer", "u64"], result: "void" },
      remora_prefault_start: { parameters: ["pointer", "u64"], result: "pointer" },
      remora_prefault_stop: { parameters: ["pointer"], result: "void" },
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

/**
 * Lets the shim's threads started from now on (reads, prefaults) run on the
 * CPUs of `mask` (a `sched_setaffinity` mask); null: wherever the calling
 * thread may run, which they inherit. For a loop narrowed to one CPU whose
 * helpers belong elsewhere.
 *
 * @example
 * ```ts
 * import { onlyCpu } from "./libc.ts";
 * setHelperCpus(onlyCpu(1)); // reads and prefaults run on CPU 1
 * setHelperCpus(null);
 * ```
 */
export function setHelperCpus(mask: BigUint64Array | null): void {
  loadShim();
  const bytes = mask === null
    ? new Uint8Array(8)
    : new Uint8Array(mask.buffer, mask.byteOffset, mask.byteLength);
  shim!.symbols.remora_set_helper_cpus(bytes, BigInt(mask === null ? 0 : bytes.length));
}

/** A prefault under way (see {@linkcode startPrefault}). */
export interface Prefault {
  /** Stops it at its next page and waits for its thread; then the memory may be unmapped. */
  stop(): void;
}

/**
 * Starts reading a byte of every page of `memory` on a thread of the shim,
 * so that the caller's first write to each finds it mapped: where page
 * tables are shadowed (a virtual machine), a first touch costs 10-15 us a
 * page, here paid on another CPU ahead of need. Only for memory a read cannot
 * change (a shared file mapping), kept mapped until `stop()` returns. Null if
 * no thread could start (nothing is lost: the caller touches it itself).
 *
 * @example
 * ```ts
 * declare const chunk: Uint8Array; // a MAP_SHARED mapping of a file
 * const warming = startPrefault(chunk);
 * // ... use chunk; before unmapping it:
 * warming?.stop();
 * ```
 */
export function startPrefault(memory: Uint8Array): Prefault | null {
  loadShim();
  const at = Deno.UnsafePointer.of(memory);
  const handle = shim!.symbols.remora_prefault_start(at, BigInt(memory.byteLength));
  if (handle === null) return null;
  let stopped = false;
  return {
    stop: () => {
      if (stopped) return;
      stopped = true;
      shim!.symbols.remora_prefault_stop(handle);
    },
  };
}
