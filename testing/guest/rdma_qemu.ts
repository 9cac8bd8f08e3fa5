/**
 * Boots the soft-RoCE guest (`rdma_build.sh`, `rdma_init.sh`) under QEMU/TCG
 * with the host's root shared read-only over 9p, runs one script inside it and
 * collects its console. Used by `test/rdma_guest_test.ts`; by hand:
 *
 * ```sh
 * deno run -A testing/guest/rdma_qemu.ts testing/guest/rdma_scenario.sh
 * ```
 *
 * @module
 */

import { track } from "../harness.ts";

const ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
/** Where `rdma_build.sh` puts the kernel, initramfs and the test's target. */
export const RDMA_GUEST_DIR: string = Deno.env.get("REMORA_RDMA_GUEST_DIR") ??
  `${ROOT}/build/rdma-guest`;

/** What a finished guest run left. */
export interface GuestRun {
  /** Everything on the serial console. */
  console: string;
  /** The script's exit status inside the guest (125: the guest could not set up). */
  rc: number | null;
}

/** Builds the guest (kernel, initramfs) and the verifying target it runs; idempotent. */
export async function buildRdmaGuest(): Promise<void> {
  const run = async (cmd: string, args: string[]) => {
    const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n");
      throw new Error(`${cmd} ${args.join(" ")} failed:\n${err}`);
    }
  };
  await run("sh", [`${ROOT}/testing/guest/rdma_build.sh`]);
  // On the host: the guest has no compiler of its own, it uses the host's
  // root read-only, and this binary is in it.
  await run("gcc", [
    "-O2",
    "-Wall",
    "-pthread",
    "-o",
    `${RDMA_GUEST_DIR}/memcheck`,
    `${ROOT}/testing/targets/memcheck.c`,
  ]);
}

/**
 * QEMU's arguments: TCG (no KVM here), 2 vCPUs, 2 GiB, a virtio NIC on user
 * networking for rxe0, the host's root as 9p tag `host`, and `script`
 * (a path in the host's root) to run with `arg`.
 *
 * @example
 * ```ts
 * const args = rdmaGuestArgs("/work/main/testing/guest/rdma_scenario.sh", "/work/main");
 * ```
 */
export function rdmaGuestArgs(script: string, arg: string): string[] {
  return [
    "-accel",
    "tcg",
    "-smp",
    "2",
    "-m",
    "2G",
    "-nographic",
    "-no-reboot",
    "-kernel",
    `${RDMA_GUEST_DIR}/vmlinuz`,
    "-initrd",
    `${RDMA_GUEST_DIR}/initramfs.gz`,
    "-append",
    `console=ttyS0 panic=-1 quiet remora_run=${script} remora_arg=${arg}`,
    "-netdev",
    "user,id=n0",
    "-device",
    "virtio-net-pci,netdev=n0",
    // multidevs=remap: / spans several host filesystems; without it inode
    // numbers of different devices may collide inside the guest.
    "-virtfs",
    "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
  ];
}

/**
 * Boots the guest, runs `script` in it and resolves when the guest powered
 * off. `onLine` sees each console line as it arrives.
 *
 * @example
 * ```ts
 * await buildRdmaGuest();
 * const run = await runRdmaGuest(`${Deno.cwd()}/testing/guest/rdma_scenario.sh`, Deno.cwd());
 * console.log(run.rc);
 * ```
 */
export async function runRdmaGuest(
  script: string,
  arg: string,
  onLine: (line: string) => void = () => {},
): Promise<GuestRun> {
  const child = new Deno.Command("qemu-system-x86_64", {
    args: rdmaGuestArgs(script, arg),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let partial = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      // The console is a terminal: drop escape sequences and carriage returns.
      // deno-lint-ignore no-control-regex
      const clean = chunk.replace(/\x1b\[[0-9;?]*[a-zA-Z]|\x1bc|\r/g, "");
      text += clean;
      const lines = (partial + clean).split("\n");
      partial = lines.pop()!;
      lines.forEach(onLine);
    }
    if (partial) onLine(partial);
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  track("qemu (soft-RoCE guest)", child, () => text, pumps);
  await child.status;
  await pumps;
  const m = /remora-rdma-guest: exit rc=(\d+)/.exec(text);
  return { console: text, rc: m ? Number(m[1]) : null };
}

if (import.meta.main) {
  await buildRdmaGuest();
  const script = Deno.args[0] ?? `${ROOT}/testing/guest/rdma_scenario.sh`;
  const run = await runRdmaGuest(Deno.realPathSync(script), ROOT, (l) => console.log(l));
  Deno.exit(run.rc ?? 1);
}
