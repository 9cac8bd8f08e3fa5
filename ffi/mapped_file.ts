/**
 * A file of the pager's, mapped shared into its memory in fixed-size chunks:
 * what is written there is in the file at once, so it outlives the pager's
 * death (a kill -9 loses nothing written before it). On tmpfs (`/dev/shm`)
 * that is memory, not disk.
 *
 * Files are made mode 0600, exclusively, never through a symbolic link; the
 * space of each chunk is reserved with `fallocate` before it is mapped, so a
 * full tmpfs is an `ENOSPC` error here rather than a SIGBUS on a later write.
 *
 * @module
 */

import {
  addressOf,
  close,
  Errno,
  errnoName,
  fallocate,
  lseek,
  MAP_SHARED,
  O_CREAT,
  O_EXCL,
  O_NOFOLLOW,
  O_RDWR,
  open,
  PROT_READ_WRITE,
  SYS,
  syscall,
  unlink,
} from "./libc.ts";
import { type Prefault, startPrefault } from "./shim.ts";

const LOCK_EX = 2;
const LOCK_NB = 4;
const SEEK_END = 2;

/** A file mapped chunk by chunk, each chunk `chunkBytes` long from offset `chunk * chunkBytes`. */
export class MappedFile {
  /** Where it is. */
  readonly path: string;
  /** Bytes per chunk. */
  readonly chunkBytes: number;
  readonly #fd: number;
  readonly #chunks: (Uint8Array | undefined)[] = [];
  readonly #warming: Prefault[] = [];

  private constructor(path: string, fd: number, chunkBytes: number) {
    this.path = path;
    this.#fd = fd;
    this.chunkBytes = chunkBytes;
  }

  /**
   * Makes a new file at `path` (mode 0600; refused if anything is there) and
   * takes its lock.
   *
   * @example
   * ```ts
   * const f = MappedFile.create("/dev/shm/example", 1 << 20);
   * f.chunk(0)[0] = 1; // in the file now
   * f.remove();
   * ```
   */
  static create(path: string, chunkBytes: number): MappedFile {
    const fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    if (fd < 0) throw new Error(`cannot create ${path}: ${errnoName(-fd)}`);
    const f = new MappedFile(path, fd, chunkBytes);
    f.tryLock();
    return f;
  }

  /**
   * Opens the existing file at `path`, or returns null if there is none.
   * The lock is not taken: see {@linkcode tryLock}.
   *
   * @example
   * ```ts
   * const f = MappedFile.open("/dev/shm/example", 1 << 20);
   * if (f !== null && !f.tryLock()) console.log("another process holds it");
   * ```
   */
  static open(path: string, chunkBytes: number): MappedFile | null {
    const fd = open(path, O_RDWR | O_NOFOLLOW);
    if (fd === -Errno.ENOENT) return null;
    if (fd < 0) throw new Error(`cannot open ${path}: ${errnoName(-fd)}`);
    return new MappedFile(path, fd, chunkBytes);
  }

  /**
   * Takes the file's exclusive lock without waiting; false if another living
   * process holds it (the kernel drops a lock with its holder's last fd, so a
   * killed holder's lock is free).
   */
  tryLock(): boolean {
    return syscall(SYS.flock, this.#fd, LOCK_EX | LOCK_NB) === 0;
  }

  /** The file's size in bytes. */
  get size(): number {
    return lseek(this.#fd, 0, SEEK_END);
  }

  /** Chunks the file holds now (whole ones). */
  get chunks(): number {
    return Math.floor(this.size / this.chunkBytes);
  }

  /**
   * Chunk `n`, mapped read-write and shared; its space is reserved first if
   * the file is shorter. Throws with one line if the space is not there.
   * Newly mapped with `warm`, its pages are touched on a thread of the shim
   * meanwhile (see {@linkcode startPrefault}): for chunks about to be written
   * page by page.
   */
  chunk(n: number, warm = false): Uint8Array {
    const have = this.#chunks[n];
    if (have !== undefined) return have;
    const offset = n * this.chunkBytes;
    if (this.size < offset + this.chunkBytes) {
      const r = fallocate(this.#fd, 0, offset, this.chunkBytes);
      if (r < 0) {
        throw new Error(
          `no room for ${this.chunkBytes >> 20} MiB more in ${this.path}: ${errnoName(-r)}`,
        );
      }
    }
    const at = syscall(SYS.mmap, 0, this.chunkBytes, PROT_READ_WRITE, MAP_SHARED, this.#fd, offset);
    if (at < 0) throw new Error(`cannot map ${this.path}: ${errnoName(-at)}`);
    const view = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(
        Deno.UnsafePointer.create(BigInt(at))!,
        this.chunkBytes,
      ),
    );
    this.#chunks[n] = view;
    const warming = warm ? startPrefault(view) : null;
    if (warming !== null) this.#warming.push(warming);
    return view;
  }

  /** Unmaps every chunk and closes the file (it stays where it is). */
  close(): void {
    for (const w of this.#warming.splice(0)) w.stop();
    for (const c of this.#chunks) if (c !== undefined) syscall(SYS.munmap, addressOf(c), c.length);
    this.#chunks.length = 0;
    close(this.#fd);
  }

  /** Closes the file and deletes it. */
  remove(): void {
    removeFile(this.path);
    this.close();
  }
}

/** Deletes the file at `path`; a missing one is fine. */
export function removeFile(path: string): void {
  unlink(path);
}
