/**
 * SSH into the test guest from the host: a throwaway client key made with
 * Debian's `ssh-keygen` (openssh-client), and timed `ssh` logins to the port
 * QEMU forwards to the guest's dropbear (see `bootGuest({ sshPublicKey })` in
 * `testing/guest/qemu.ts`).
 *
 * @example
 * ```ts
 * import { bootGuest } from "./qemu.ts";
 * import { sshKeyPair, sshLogin } from "./ssh.ts";
 * const key = await sshKeyPair();
 * const guest = await bootGuest({ sshPublicKey: key.publicKey });
 * const r = await sshLogin(guest.sshPort, key, "echo ok");
 * console.log(r.ok, r.ms, r.stdout);
 * await guest.kill();
 * await key.remove();
 * ```
 *
 * @module
 */

import { track } from "../harness.ts";

/** A client key pair in a private temporary directory. */
export interface SshKey {
  /** Path of the private key (mode 600), for `ssh -i`. */
  privateKeyPath: string;
  /** The public key line, `ssh-ed25519 AAAA... comment`. */
  publicKey: string;
  /** Removes the key's directory. */
  remove(): Promise<void>;
}

/**
 * Makes an ed25519 key pair with `ssh-keygen` (no passphrase).
 *
 * @example
 * ```ts
 * const key = await sshKeyPair();
 * console.log(key.publicKey.split(" ")[0]); // ssh-ed25519
 * await key.remove();
 * ```
 */
export async function sshKeyPair(): Promise<SshKey> {
  const dir = await Deno.makeTempDir({ prefix: "remora-ssh-" });
  const path = `${dir}/id_ed25519`;
  const out = await new Deno.Command("ssh-keygen", {
    args: ["-q", "-t", "ed25519", "-N", "", "-C", "remora-test", "-f", path],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output().catch((e) => {
    throw new Error(`ssh-keygen could not run (apt-get install openssh-client): ${e}`);
  });
  if (!out.success) {
    throw new Error(`ssh-keygen failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return {
    privateKeyPath: path,
    publicKey: (await Deno.readTextFile(`${path}.pub`)).trim(),
    remove: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
  };
}

/** Result of one {@link sshLogin}. */
export interface SshResult {
  /** ssh exited 0. */
  ok: boolean;
  /** ssh's exit code (255: ssh's own failure, e.g. a timeout). */
  code: number;
  /** Wall time from spawning ssh to its exit, ms. */
  ms: number;
  /** What the remote command printed. */
  stdout: string;
  /** ssh's own messages (and the remote command's stderr). */
  stderr: string;
}

/**
 * Logs in as root on 127.0.0.1:`port` with `key` and runs `command`.
 *
 * The whole login is bounded by `timeoutS` (default 120): ssh's own
 * `ConnectTimeout` (TCP connect plus the SSH banner) and keep-alives
 * (`ServerAliveInterval` x `ServerAliveCountMax`), and a SIGKILL at
 * `timeoutS` should neither fire (then `ok` is false). Host
 * keys are neither checked nor remembered: the guest makes a new one at
 * each build.
 *
 * @example
 * ```ts
 * const r = await sshLogin(2222, key, "uname -r", { timeoutS: 120 });
 * if (!r.ok) console.log(r.stderr);
 * ```
 */
export async function sshLogin(
  port: number,
  key: SshKey,
  command: string,
  opts: { timeoutS?: number } = {},
): Promise<SshResult> {
  const timeoutS = opts.timeoutS ?? 120;
  const alive = 10;
  const args = [
    "-p",
    String(port),
    "-i",
    key.privateKeyPath,
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes", // never prompt: a refused key fails at once
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    `ConnectTimeout=${timeoutS}`,
    "-o",
    `ServerAliveInterval=${alive}`,
    "-o",
    `ServerAliveCountMax=${Math.max(1, Math.ceil(timeoutS / alive))}`,
    "root@127.0.0.1",
    command,
  ];
  const t0 = performance.now();
  const proc = new Deno.Command("ssh", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stdout = "";
  let stderr = "";
  const read = async (s: ReadableStream<Uint8Array>, add: (t: string) => void) => {
    const dec = new TextDecoder();
    for await (const c of s) add(dec.decode(c, { stream: true }));
  };
  const pumps = Promise.all([
    read(proc.stdout, (t) => stdout += t),
    read(proc.stderr, (t) => stderr += t),
  ]);
  track("ssh", proc, () => stdout + stderr, pumps);
  // The bound on the whole login, should ssh's timeouts not fire (e.g. a
  // server that answers keep-alives but never runs the command).
  const timer = setTimeout(() => {
    stderr += `\n(killed by sshLogin after ${timeoutS} s)`;
    try {
      proc.kill("SIGKILL");
    } catch {
      // exited meanwhile
    }
  }, timeoutS * 1000);
  const status = await proc.status;
  clearTimeout(timer);
  await pumps;
  return { ok: status.success, code: status.code, ms: performance.now() - t0, stdout, stderr };
}
