/**
 * The one reader of secret files (`--token-file`): the peer daemon's token,
 * the pager's token for peers, and the password file of memcached and Redis
 * all go through {@linkcode readSecretFile}, so they follow one rule.
 *
 * Rules, as ssh applies to private keys: the file must be a regular file (a
 * FIFO would block the reader forever), not readable or writable by group or
 * others (the fix is printed: `chmod 600 FILE`), and hold a secret of at
 * least the stated length. The secret is the file's content without
 * surrounding whitespace (so `echo secret > file` works); a line break inside
 * it is refused, since it is unclear which line was meant.
 *
 * @module
 */

/** Shortest token a peer or a pager accepts for HMAC authentication. */
export const MIN_TOKEN_BYTES = 16;

/** Largest secret file read; anything bigger is not a token. */
const MAX_SECRET_FILE_BYTES = 64 * 1024;

/** What a secret file is for, which sets its minimum length in messages. */
export interface SecretFileOptions {
  /** Fewest bytes the secret may have (default {@linkcode MIN_TOKEN_BYTES}). */
  minBytes?: number;
  /** Names the file in messages (default "token file"). */
  what?: string;
}

/** A secret file was refused; the message is one line for the user. */
export class SecretFileError extends Error {
  /** Builds the error with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "SecretFileError";
  }
}

/**
 * Reads a secret file under the rules above.
 *
 * @param path The file the user named.
 * @param opts Minimum length and how to name the file in messages.
 * @returns The secret's bytes (UTF-8).
 * @throws {SecretFileError} With one line naming the file and the fix.
 */
export async function readSecretFile(
  path: string,
  opts: SecretFileOptions = {},
): Promise<Uint8Array> {
  const what = opts.what ?? "token file";
  const min = opts.minBytes ?? MIN_TOKEN_BYTES;
  // stat before open: opening a FIFO for reading blocks until a writer comes.
  checkSecretStat(path, what, await statOrThrow(path, what));
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new SecretFileError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
  let bytes: Uint8Array;
  try {
    // The file may have been swapped between stat and open: check what we opened.
    checkSecretStat(path, what, await file.stat());
    bytes = await readAll(file, path, what);
  } finally {
    file.close();
  }
  return secretFromBytes(bytes, path, what, min);
}

async function statOrThrow(path: string, what: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    throw new SecretFileError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

function checkSecretStat(path: string, what: string, st: Deno.FileInfo): void {
  if (!st.isFile) {
    const kind = st.isDirectory ? "a directory" : st.isFifo ? "a FIFO" : "not a regular file";
    throw new SecretFileError(`${what} ${path} is ${kind}: give a regular file`);
  }
  const mode = (st.mode ?? 0) & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new SecretFileError(
      `${what} ${path} is accessible by group or others (mode ${
        mode.toString(8).padStart(4, "0")
      }): run chmod 600 ${path}`,
    );
  }
  if (st.size > MAX_SECRET_FILE_BYTES) {
    throw new SecretFileError(`${what} ${path} is ${st.size} bytes: not a token file`);
  }
}

async function readAll(file: Deno.FsFile, path: string, what: string): Promise<Uint8Array> {
  const buf = new Uint8Array(MAX_SECRET_FILE_BYTES + 1);
  let n = 0;
  try {
    for (;;) {
      const r = await file.read(buf.subarray(n));
      if (r === null) break;
      n += r;
      if (n > MAX_SECRET_FILE_BYTES) {
        throw new SecretFileError(`${what} ${path} is larger than ${MAX_SECRET_FILE_BYTES} bytes`);
      }
    }
  } catch (e) {
    if (e instanceof SecretFileError) throw e;
    throw new SecretFileError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
  return buf.subarray(0, n);
}

/** Applies the trimming rule and the minimum length to a file's bytes. */
function secretFromBytes(bytes: Uint8Array, path: string, what: string, min: number): Uint8Array {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new SecretFileError(`${what} ${path} is not UTF-8 text`);
  }
  const secret = text.trim();
  if (secret.length === 0) throw new SecretFileError(`${what} ${path} is empty`);
  if (/[\r\n]/.test(secret)) {
    throw new SecretFileError(`${what} ${path} has more than one line: put the secret on one line`);
  }
  const out = new TextEncoder().encode(secret);
  if (out.length < min) {
    throw new SecretFileError(
      `${what} ${path} holds ${out.length} byte(s): use at least ${min} ` +
        `(e.g. umask 077; head -c 32 /dev/urandom | base64 > ${path})`,
    );
  }
  return out;
}
