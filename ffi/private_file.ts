/**
 * Writing a file that only its owner may read, without following a symbolic
 * link an attacker may have planted at its path (a root pager writing into
 * /tmp could otherwise be redirected to overwrite any file).
 *
 * Deno's own file API has no `O_NOFOLLOW`, and its `rename` needs read
 * permission too, so this goes to the kernel directly (the pager holds FFI
 * anyway); callers check Deno's write permission first so that `--allow-write`
 * keeps its meaning.
 *
 * @module
 */

import {
  addressOf,
  close,
  cPath,
  Errno,
  errnoName,
  O_CREAT,
  O_EXCL,
  O_NOFOLLOW,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  open,
  SYS,
  syscall,
  unlink,
} from "./libc.ts";

const ELOOP = 40;

/**
 * Writes `data` to `path` with mode 0600: into a new temporary file in the
 * same directory (created exclusively, never through a link), then renamed
 * over `path`, so a reader sees the old or the new content, never half.
 *
 * @param path Where the file goes; refused if it is a symbolic link.
 * @param data The bytes to write.
 * @throws {Error} With one line saying what failed.
 */
export function writePrivateFile(path: string, data: Uint8Array): void {
  refuseSymlink(path);
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  const base = path.slice(slash + 1);
  const suffix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16))
    .join("");
  const tmp = `${dir}/.${base}.${suffix}.tmp`;
  const fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
  if (fd < 0) throw new Error(`cannot create a file in ${dir}: ${errnoName(-fd)}`);
  try {
    writeAll(fd, data, path);
  } catch (e) {
    close(fd);
    unlink(tmp);
    throw e;
  }
  close(fd);
  const r = syscall(SYS.rename, addressOf(cPath(tmp)), addressOf(cPath(path)));
  if (r < 0) {
    unlink(tmp);
    throw new Error(`cannot replace ${path}: ${errnoName(-r)}`);
  }
}

/** Throws if `path` is a symbolic link (whatever it points at); a missing path is fine. */
function refuseSymlink(path: string): void {
  // O_NONBLOCK: a FIFO at the path must not block this probe.
  const fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0) {
    close(fd);
    return;
  }
  if (-fd === ELOOP) {
    throw new Error(`${path} is a symbolic link: refusing to write through it`);
  }
  if (-fd !== Errno.ENOENT && -fd !== Errno.EACCES) {
    throw new Error(`cannot open ${path}: ${errnoName(-fd)}`);
  }
}

function writeAll(fd: number, data: Uint8Array, path: string): void {
  let at = 0;
  while (at < data.length) {
    const n = syscall(SYS.write, fd, addressOf(data.subarray(at)), data.length - at);
    if (n === -Errno.EINTR) continue;
    if (n <= 0) throw new Error(`cannot write ${path}: ${errnoName(-n)}`);
    at += n;
  }
}
