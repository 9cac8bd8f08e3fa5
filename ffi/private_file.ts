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
  O_WRONLY,
  open,
  SYS,
  syscall,
  unlink,
} from "./libc.ts";

const ELOOP = 40;
/** `st_mode` file-type mask and the type of a regular file. */
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

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
  const special = openSpecial(path);
  if (special >= 0) {
    try {
      writeAll(special, data, path);
    } finally {
      close(special);
    }
    return;
  }
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

/**
 * Opens `path` for writing if it is there and not a regular file (a device
 * such as /dev/null, a FIFO with a reader): the data goes into it as it is,
 * because the rename that replaces a regular file would put a regular file
 * in its place (a root pager given `--stats-json /dev/null` once left the
 * machine's /dev/null a 0600 file). Returns the fd, or -1 for a regular file
 * or a missing path. Throws if `path` is a symbolic link (whatever it points
 * at).
 */
function openSpecial(path: string): number {
  // O_NONBLOCK: a FIFO at the path must not block this probe.
  const fd = open(path, O_WRONLY | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0) {
    if (!isRegularFile(fd)) return fd;
    close(fd);
    return -1;
  }
  if (-fd === ELOOP) {
    throw new Error(`${path} is a symbolic link: refusing to write through it`);
  }
  if (-fd !== Errno.ENOENT && -fd !== Errno.EACCES) {
    throw new Error(`cannot open ${path}: ${errnoName(-fd)}`);
  }
  return -1;
}

/** Whether open file `fd` is a regular file (`st_mode` of `fstat`, at byte 24 on x86_64). */
function isRegularFile(fd: number): boolean {
  const st = new Uint32Array(36); // struct stat is 144 bytes
  if (syscall(SYS.fstat, fd, addressOf(st)) < 0) return true; // not known: the safe way (rename)
  return (st[6] & S_IFMT) === S_IFREG;
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
