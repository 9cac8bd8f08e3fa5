/**
 * Boots remora's tiny test guest under QEMU (TCG, RAM in a shared memfd) and
 * talks to it over its second serial port; measures the guest RAM's resident
 * pages from outside QEMU.
 *
 * The guest is built by `testing/guest/build.sh` (Debian kernel
 * `linux-image-cloud-amd64`, busybox-static, the static `memverify` workload);
 * {@link bootGuest} runs the build first (it is cached). Its command channel
 * is described in `testing/guest/init.sh`.
 *
 * @module
 */

import { PATIENCE_MS, track } from "../harness.ts";
import { ROOT } from "../procs.ts";
import { freePort } from "../servers.ts";

const HERE = new URL(".", import.meta.url).pathname;

/** Directory holding vmlinuz and initramfs.gz (`$REMORA_GUEST_DIR` or build/guest). */
export const GUEST_DIR: string = Deno.env.get("REMORA_GUEST_DIR") ?? `${ROOT}build/guest`;

/** Page size of guest RAM as the pager sees it (the memfd's page size). */
export const PAGE_SIZE = 4096;

/** The name QEMU gives the memfd of `memory-backend-memfd`. */
const MEMFD_NAME = "/memfd:memory-backend-memfd (deleted)";
/** Guest RAM files of `ram: "file"` guests are named like this in /dev/shm. */
const SHM_PREFIX = "/dev/shm/remora-guest-";

function isGuestRamName(link: string): boolean {
  return link === MEMFD_NAME || link.startsWith(SHM_PREFIX);
}

/** Options of {@link bootGuest}. */
export interface GuestOptions {
  /** Guest RAM in MiB (the memfd has exactly this size). Default 128. */
  ramMiB?: number;
  /** Size of the background memverify in MiB; 0 disables it. Default 1. */
  verifyMiB?: number;
  /** Sleep between background memverify rounds, ms. Default 1000. */
  verifyPeriodMs?: number;
  /** Give up when the guest does not answer `ping` within this time. Default 60 s. */
  bootTimeoutMs?: number;
  /** Where the guest console (ttyS0) goes, kept after kill(). Default: a temp file removed by kill(). */
  consoleLog?: string;
  /**
   * Where guest RAM lives: `memfd` (default: `memory-backend-memfd,share=on`),
   * `file` (`memory-backend-file,share=on` on a file in /dev/shm, removed by
   * kill()) or `anon` (plain `-m`: private anonymous memory of QEMU, which a
   * pager pages like any process memory; the memfd helpers do not apply).
   */
  ram?: "memfd" | "file" | "anon";
  /**
   * An `ssh-ed25519` public key line (e.g. from `testing/guest/ssh.ts`
   * sshKeyPair): boots `initramfs-ssh.gz` with a virtio-net NIC on QEMU
   * user-mode networking, port 22 forwarded from 127.0.0.1:{@link Guest.sshPort},
   * and dropbear accepting this key for root. Default: no network.
   */
  sshPublicKey?: string;
  /** Extra QEMU arguments (appended). */
  extraArgs?: string[];
  /** Extra kernel command line (appended). */
  extraAppend?: string;
}

/** The line-oriented command channel on the guest's ttyS1. */
export interface GuestSerial {
  /**
   * Sends one command (e.g. `ping`, `status`, `run-verify 4`) and resolves
   * with the guest's one-line answer (tag stripped). Rejects on timeout, or
   * at once if QEMU exits meanwhile.
   */
  command(line: string, timeoutMs?: number): Promise<string>;
  /** Closes the TCP connection to QEMU's serial chardev. */
  close(): void;
}

/** A running guest. */
export interface Guest {
  /** Pid of qemu-system-x86_64 (the process a pager attaches to). */
  pid: number;
  /** The QEMU child process. */
  proc: Deno.ChildProcess;
  /** Command channel on ttyS1. */
  serial: GuestSerial;
  /** `/proc/<pid>/fd/<n>` of the guest RAM memfd or file (opened from outside); "" for `anon`. */
  memfdPath: string;
  /** Guest RAM size in bytes. */
  ramBytes: number;
  /** Path of the console log (ttyS0). */
  consoleLog: string;
  /** Host port forwarded to the guest's port 22 (0 without `sshPublicKey`). */
  sshPort: number;
  /** Milliseconds from QEMU spawn to the first `pong`. */
  bootMs: number;
  /** Resolves with QEMU's exit code once it exits. */
  exited: Promise<number>;
  /** True while QEMU runs. */
  alive(): boolean;
  /** Last `lines` lines of the guest console and of QEMU's stderr (for error messages). */
  diagnostics(lines?: number): string;
  /** Stops QEMU (SIGTERM, then SIGKILL after 5 s) and releases everything. */
  kill(): Promise<void>;
}

/**
 * QEMU arguments and kernel parameters of the SSH variant: a virtio-net NIC on
 * user-mode networking with `hostfwd` to the guest's port 22, and the key's
 * base64 blob for init (a kernel parameter without dots reaches init as an
 * environment variable). `romfile=` skips the NIC's boot ROM, which
 * `--no-install-recommends` QEMU may lack and a `-kernel` boot never uses.
 */
function sshArgs(publicKey: string, port: number): { args: string[]; append: string } {
  const [type, blob] = publicKey.trim().split(/\s+/);
  if (type !== "ssh-ed25519" || !/^[A-Za-z0-9+/=]+$/.test(blob ?? "")) {
    throw new Error(`sshPublicKey must be an ssh-ed25519 key line, got '${publicKey}'`);
  }
  return {
    args: [
      "-netdev",
      `user,id=net0,hostfwd=tcp:127.0.0.1:${port}-:22`,
      "-device",
      "virtio-net-pci,netdev=net0,romfile=",
    ],
    append: `remora_ssh_key=${blob}`,
  };
}

async function requireSshInitramfs(): Promise<void> {
  try {
    await Deno.stat(`${GUEST_DIR}/initramfs-ssh.gz`);
  } catch {
    throw new Error(
      `${GUEST_DIR}/initramfs-ssh.gz is missing: testing/guest/build.sh builds it only when ` +
        `/usr/sbin/dropbear exists (apt-get install dropbear-bin)`,
    );
  }
}

/** Runs `testing/guest/build.sh` (cheap when cached); throws with its output on failure. */
export async function buildGuest(): Promise<void> {
  const out = await new Deno.Command("sh", {
    args: [`${HERE}build.sh`],
    env: { REMORA_GUEST_DIR: GUEST_DIR },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const dec = new TextDecoder();
    throw new Error(
      `testing/guest/build.sh failed (code ${out.code}):\n${dec.decode(out.stdout)}${
        dec.decode(out.stderr)
      }`,
    );
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function tail(text: string, lines: number): string {
  return text.split("\n").slice(-lines).join("\n");
}

interface Waiter {
  request: string;
  resolve: (answer: string) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Client side of the guest's ttyS1 protocol. Every request carries a fresh
 * numeric tag and only the answer with that tag resolves it, so answers to
 * timed-out requests, boot-time echo (the tty echoes until init switches it to
 * raw) and pings queued before the guest listened are all told apart.
 */
class SerialChannel implements GuestSerial {
  #conn: Deno.TcpConn;
  #waiters = new Map<number, Waiter>();
  #nextTag = 1;
  #dead: string | null = null;
  /** Lines that matched no request (boot echo, stale answers), most recent last. */
  readonly stray: string[] = [];
  readonly done: Promise<void>;

  constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.done = this.#readLoop();
  }

  async #readLoop(): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of this.#conn.readable) {
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, nl).replace(/\r$/, ""));
          buf = buf.slice(nl + 1);
        }
      }
      this.fail("serial connection closed by QEMU");
    } catch (e) {
      this.fail(`serial connection error: ${e}`);
    }
  }

  #line(line: string): void {
    const m = /^(\d+) (.*)$/.exec(line);
    const w = m ? this.#waiters.get(Number(m[1])) : undefined;
    // An exact copy of the request is the tty's echo, not the answer.
    if (!m || !w || line === w.request) {
      this.stray.push(line);
      if (this.stray.length > 50) this.stray.shift();
      return;
    }
    this.#waiters.delete(Number(m[1]));
    clearTimeout(w.timer);
    w.resolve(m[2]);
  }

  /** Rejects every pending and future command with `why`. */
  fail(why: string): void {
    if (this.#dead) return;
    this.#dead = why;
    for (const w of this.#waiters.values()) {
      clearTimeout(w.timer);
      w.reject(new Error(`guest command '${w.request}' failed: ${why}`));
    }
    this.#waiters.clear();
  }

  command(line: string, timeoutMs = PATIENCE_MS): Promise<string> {
    if (this.#dead) {
      return Promise.reject(new Error(`guest command '${line}' failed: ${this.#dead}`));
    }
    const tag = this.#nextTag++;
    const request = `${tag} ${line}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(tag);
        reject(new Error(`guest did not answer '${line}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(tag, { request, resolve, reject, timer });
      this.#conn.write(new TextEncoder().encode(request + "\n")).catch((e) => {
        this.fail(`serial write failed: ${e}`);
      });
    });
  }

  close(): void {
    this.fail("serial channel closed");
    try {
      this.#conn.close();
    } catch {
      // already closed by QEMU
    }
  }
}

/** Where QEMU keeps the guest RAM memfd. */
export interface GuestRamLocation {
  /** `/proc/<pid>/fd/<n>`: opening it reopens the memfd itself. */
  fdPath: string;
  /** Size of the memfd (= guest RAM) in bytes. */
  size: number;
  /** Start and end (exclusive) of QEMU's mapping of it, if found in maps. */
  mapping?: { start: bigint; end: bigint };
}

/**
 * Finds the guest RAM memfd of QEMU process `pid`: the fd whose link is
 * `/memfd:memory-backend-memfd (deleted)` (the largest, should QEMU hold
 * more than one), and its mapping in `/proc/<pid>/maps`.
 */
export async function findGuestRam(pid: number): Promise<GuestRamLocation> {
  let best: { fdPath: string; size: number } | undefined;
  for await (const e of Deno.readDir(`/proc/${pid}/fd`)) {
    const fdPath = `/proc/${pid}/fd/${e.name}`;
    let link: string;
    try {
      link = await Deno.readLink(fdPath);
    } catch {
      continue; // fd closed meanwhile
    }
    if (!isGuestRamName(link)) continue;
    const st = await Deno.stat(fdPath);
    if (!best || st.size > best.size) best = { fdPath, size: st.size };
  }
  if (!best) {
    throw new Error(
      `QEMU ${pid} holds no '${MEMFD_NAME}' fd: was it started with ` +
        `-object memory-backend-memfd,...,share=on -machine memory-backend=...?`,
    );
  }
  let mapping: GuestRamLocation["mapping"];
  const maps = await Deno.readTextFile(`/proc/${pid}/maps`);
  for (const line of maps.split("\n")) {
    if (!line.endsWith(MEMFD_NAME) && !line.includes(` ${SHM_PREFIX}`)) continue;
    const [range] = line.split(" ");
    const [a, b] = range.split("-").map((h) => BigInt("0x" + h));
    if (b - a === BigInt(best.size)) mapping = { start: a, end: b };
  }
  return { ...best, mapping };
}

/**
 * Resident (allocated) pages of the guest RAM memfd of QEMU process `pid`,
 * measured from outside.
 *
 * It is the memfd inode's allocated block count (`st_blocks * 512 / 4096`).
 * For a shmem file that count is exactly the pages the file holds: the
 * kernel adds a page's worth when a page is allocated (guest touch, or the
 * pager's UFFDIO_COPY) and removes it on fallocate(PUNCH_HOLE), the pager's
 * way to evict; it needs no mmap and no scan. smaps `Rss` of QEMU's mapping
 * is not the right measure: it counts only pages mapped in QEMU's page tables,
 * so a page still allocated in the file but unmapped would be missed.
 * {@link guestRamUsage} reports the alternatives for cross-checking.
 */
export async function guestRamResidentPages(pid: number): Promise<number> {
  const { fdPath } = await findGuestRam(pid);
  return blocksToPages((await Deno.stat(fdPath)).blocks);
}

function blocksToPages(blocks: number | null): number {
  if (blocks === null) throw new Error("stat gave no st_blocks");
  return Math.ceil((blocks * 512) / PAGE_SIZE);
}

/** Guest RAM residency by several measures (see {@link guestRamUsage}). */
export interface GuestRamUsage {
  /** Guest RAM size in pages. */
  totalPages: number;
  /** Allocated pages of the memfd (st_blocks): the reference measure. */
  allocatedPages: number;
  /** Pages found by a SEEK_DATA/SEEK_HOLE walk of the memfd (needs FFI); null if unavailable. */
  dataPages: number | null;
  /** `Rss` of QEMU's mapping of the memfd in /proc/PID/smaps, in pages; null if not found. */
  smapsRssPages: number | null;
}

/**
 * Measures guest RAM residency three ways: the memfd's allocated blocks,
 * a SEEK_DATA/SEEK_HOLE walk (shmem reports data at page granularity for
 * pages present in the file; needs `--allow-ffi`, else null), and smaps Rss of
 * QEMU's mapping (pages mapped by QEMU only; a lower bound).
 */
export async function guestRamUsage(pid: number): Promise<GuestRamUsage> {
  const loc = await findGuestRam(pid);
  const allocatedPages = blocksToPages((await Deno.stat(loc.fdPath)).blocks);
  let dataPages: number | null = null;
  try {
    dataPages = seekDataPages(loc.fdPath, loc.size);
  } catch {
    dataPages = null;
  }
  let smapsRssPages: number | null = null;
  if (loc.mapping) {
    const smaps = await Deno.readTextFile(`/proc/${pid}/smaps`);
    const head = `${loc.mapping.start.toString(16).padStart(8, "0")}-`;
    const at = smaps.split("\n").findIndex((l) =>
      l.startsWith(head) && (l.endsWith(MEMFD_NAME) || l.includes(` ${SHM_PREFIX}`))
    );
    if (at >= 0) {
      const rss = smaps.split("\n").slice(at + 1, at + 30).find((l) => l.startsWith("Rss:"));
      if (rss) smapsRssPages = Math.round((Number(rss.split(/\s+/)[1]) * 1024) / PAGE_SIZE);
    }
  }
  return { totalPages: loc.size / PAGE_SIZE, allocatedPages, dataPages, smapsRssPages };
}

/** An open handle on a guest RAM memfd for repeated residency samples. */
export interface GuestRamProbe {
  /**
   * Resident pages now, by the file's allocated blocks (fstat `st_blocks`)
   * and by a SEEK_DATA/SEEK_HOLE walk (shmem reports data exactly where the
   * file holds pages): two outside measures that need no mmap.
   */
  sample(): { blocks: number; data: number };
  /** Closes the fd and unloads libc. */
  close(): void;
}

/**
 * Opens the guest RAM memfd of QEMU `pid` once (`/proc/<pid>/fd/<n>`) so
 * that samples cost two syscalls per data extent and no path lookup: cheap
 * enough to sample every few tens of milliseconds (needs `--allow-ffi`).
 *
 * @example
 * ```ts
 * const probe = await openGuestRamProbe(guest.pid);
 * const { blocks, data } = probe.sample();
 * probe.close();
 * ```
 */
export async function openGuestRamProbe(pid: number): Promise<GuestRamProbe> {
  const loc = await findGuestRam(pid);
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const fd = libc.symbols.open(new TextEncoder().encode(loc.fdPath + "\0"), O_RDONLY);
  if (fd < 0) {
    libc.close();
    throw new Error(`open ${loc.fdPath} failed`);
  }
  const file = await Deno.open(loc.fdPath, { read: true });
  return {
    sample: () => ({
      blocks: blocksToPages(file.statSync().blocks),
      data: dataPages(libc.symbols.lseek, fd, loc.size),
    }),
    close: () => {
      file.close();
      libc.symbols.close(fd);
      libc.close();
    },
  };
}

/**
 * Resident pages of the guest RAM of a plain `-m` guest (`ram: "anon"`):
 * `Rss` in /proc/PID/smaps of QEMU's private anonymous mapping of exactly
 * `ramBytes` (the guest RAM block; QEMU's other large anonymous mapping, the
 * TCG code buffer, is executable and sized differently). Throws if there is
 * no such mapping.
 *
 * @example
 * ```ts
 * const pages = await anonGuestRamRssPages(guest.pid, guest.ramBytes);
 * ```
 */
export async function anonGuestRamRssPages(pid: number, ramBytes: number): Promise<number> {
  const lines = (await Deno.readTextFile(`/proc/${pid}/smaps`)).split("\n");
  let best = -1;
  for (let i = 0; i < lines.length; i++) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) rw-p 00000000 00:00 0\s*$/.exec(lines[i]);
    if (!m || Number(BigInt("0x" + m[2]) - BigInt("0x" + m[1])) !== ramBytes) continue;
    const rss = lines.slice(i + 1, i + 30).find((l) => l.startsWith("Rss:"));
    if (rss) best = Math.max(best, Math.round((Number(rss.split(/\s+/)[1]) * 1024) / PAGE_SIZE));
  }
  if (best < 0) throw new Error(`QEMU ${pid} has no rw-p anonymous mapping of ${ramBytes} bytes`);
  return best;
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const O_RDONLY = 0;

type Lseek = (fd: number, off: bigint, whence: number) => bigint;

/** Pages in the data extents of open file `fd` of `size` bytes. */
function dataPages(lseek: Lseek, fd: number, size: number): number {
  let pages = 0;
  let off = 0;
  while (off < size) {
    const data = Number(lseek(fd, BigInt(off), SEEK_DATA));
    if (data < 0) break; // ENXIO: no data past off
    const hole = Number(lseek(fd, BigInt(data), SEEK_HOLE));
    const end = hole < 0 ? size : hole;
    pages += Math.ceil((end - data) / PAGE_SIZE);
    off = end;
  }
  return pages;
}

/** Counts pages in data extents of `path` with lseek(SEEK_DATA/SEEK_HOLE) via libc FFI. */
function seekDataPages(path: string, size: number): number {
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
    close: { parameters: ["i32"], result: "i32" },
  });
  try {
    const fd = libc.symbols.open(new TextEncoder().encode(path + "\0"), O_RDONLY);
    if (fd < 0) throw new Error(`open ${path} failed`);
    try {
      return dataPages(libc.symbols.lseek, fd, size);
    } finally {
      libc.symbols.close(fd);
    }
  } finally {
    libc.close();
  }
}

/**
 * Punches a hole in the guest RAM memfd of QEMU `pid` (fallocate
 * PUNCH_HOLE|KEEP_SIZE, via util-linux `fallocate`), as a pager evicts.
 * Without a pager the guest then reads zeros there: only for negative tests.
 */
export async function punchGuestRam(pid: number, offset: number, length: number): Promise<void> {
  const { fdPath } = await findGuestRam(pid);
  const out = await new Deno.Command("fallocate", {
    args: ["--punch-hole", "--keep-size", "-o", String(offset), "-l", String(length), fdPath],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`fallocate failed: ${new TextDecoder().decode(out.stderr)}`);
}

/**
 * Boots the test guest: QEMU with `-accel tcg`, guest RAM in a shared memfd
 * (`memory-backend-memfd,share=on`, so a pager can open and punch it from
 * outside), console on ttyS0 into a log file, command channel on ttyS1 as a
 * TCP server on 127.0.0.1. `-no-reboot` and `panic=-1` turn any guest crash
 * or reset into a QEMU exit, which callers see through {@link Guest.alive}
 * and failing commands. Resolves once the guest answers `ping`.
 */
export async function bootGuest(opts: GuestOptions = {}): Promise<Guest> {
  const ramMiB = opts.ramMiB ?? 128;
  const verifyMiB = opts.verifyMiB ?? 1;
  const period = opts.verifyPeriodMs ?? 1000;
  const bootTimeoutMs = opts.bootTimeoutMs ?? PATIENCE_MS;
  await buildGuest();
  if (opts.sshPublicKey) await requireSshInitramfs();
  const ownLog = opts.consoleLog === undefined;
  const consoleLog = opts.consoleLog ??
    await Deno.makeTempFile({ prefix: "remora-guest-", suffix: ".log" });
  const port = freePort();
  const ram = opts.ram ?? "memfd";
  const sshPort = opts.sshPublicKey ? freePort() : 0;
  const ssh = opts.sshPublicKey ? sshArgs(opts.sshPublicKey, sshPort) : undefined;
  const shmFile = ram === "file" ? `${SHM_PREFIX}${Deno.pid}-${port}` : "";
  const backend = ram === "memfd"
    ? [
      "-object",
      `memory-backend-memfd,id=ram0,size=${ramMiB}M,share=on`,
      "-machine",
      "memory-backend=ram0",
    ]
    : ram === "file"
    ? [
      "-object",
      `memory-backend-file,id=ram0,size=${ramMiB}M,share=on,mem-path=${shmFile}`,
      "-machine",
      "memory-backend=ram0",
    ]
    : [];
  const append = [
    "console=ttyS0",
    "panic=-1", // reboot at once on panic; -no-reboot turns that into a QEMU exit
    "nowatchdog", // a guest slowed down by paging is not locked up
    "rcupdate.rcu_cpu_stall_suppress=1",
    "tsc=reliable", // no clocksource watchdog flapping when the vCPU stalls
    `remora_verify=${verifyMiB}`,
    `remora_period=${period}`,
    ssh?.append ?? "",
    opts.extraAppend ?? "",
  ].join(" ").trim();
  const args = [
    "-accel",
    "tcg",
    "-m",
    `${ramMiB}M`,
    "-smp",
    "1",
    ...backend,
    // No default NIC, VGA, floppy or CD-ROM: less guest RAM touched, faster boot.
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-monitor",
    "none",
    "-no-reboot",
    "-kernel",
    `${GUEST_DIR}/vmlinuz`,
    "-initrd",
    `${GUEST_DIR}/${ssh ? "initramfs-ssh.gz" : "initramfs.gz"}`,
    "-append",
    append,
    "-serial",
    `file:${consoleLog}`,
    "-serial",
    `tcp:127.0.0.1:${port},server=on,wait=off`,
    ...(ssh?.args ?? []),
    ...(opts.extraArgs ?? []),
  ];
  const t0 = performance.now();
  const proc = new Deno.Command("qemu-system-x86_64", {
    args,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const stderrDone = (async () => {
    const dec = new TextDecoder();
    for await (const c of proc.stderr) stderr = tail(stderr + dec.decode(c, { stream: true }), 40);
  })();
  track("qemu", proc, () => diagnostics(25), stderrDone);
  let running = true;
  let serial: SerialChannel | undefined;
  const exited = proc.status.then((s) => {
    running = false;
    serial?.fail(`QEMU exited with code ${s.code}${s.signal ? ` (${s.signal})` : ""}`);
    return s.code;
  });
  const diagnostics = (lines = 15): string => {
    let console = "";
    try {
      console = tail(Deno.readTextFileSync(consoleLog).trimEnd(), lines);
    } catch {
      console = "(no console log)";
    }
    return `--- guest console (${consoleLog}) ---\n${console}\n--- qemu stderr ---\n${
      stderr.trim() || "(empty)"
    }`;
  };
  const kill = async (): Promise<void> => {
    serial?.close();
    if (running) {
      try {
        proc.kill("SIGTERM");
      } catch {
        // exited meanwhile
      }
      const t = setTimeout(() => {
        try {
          proc.kill("SIGKILL");
        } catch {
          // exited meanwhile
        }
      }, 5000);
      await exited;
      clearTimeout(t);
    }
    await exited;
    await stderrDone;
    await serial?.done;
    // Error messages already carry the console tail (diagnostics()); a
    // caller that wants the whole log passes its own consoleLog path.
    if (ownLog) await Deno.remove(consoleLog).catch(() => {});
    if (shmFile !== "") await Deno.remove(shmFile).catch(() => {});
  };

  try {
    // QEMU opens the listening socket during startup; retry until it does.
    let conn: Deno.TcpConn | undefined;
    while (!conn) {
      if (!running) throw new Error(`QEMU exited during startup`);
      if (performance.now() - t0 > PATIENCE_MS) {
        throw new Error(`QEMU did not listen on port ${port}`);
      }
      try {
        conn = await Deno.connect({ hostname: "127.0.0.1", port });
      } catch {
        await delay(50);
      }
    }
    // One short line per request: without TCP_NODELAY, Nagle plus delayed
    // ACKs add about 40 ms to every other command.
    conn.setNoDelay(true);
    serial = new SerialChannel(conn);
    // Ping until the first pong; earlier pings queue up in the tty and get
    // answered later with their own (now ignored) tags.
    let bootMs = -1;
    while (bootMs < 0) {
      if (!running) throw new Error(`QEMU exited while booting`);
      if (performance.now() - t0 > bootTimeoutMs) {
        throw new Error(`guest did not answer ping within ${bootTimeoutMs} ms`);
      }
      try {
        const a = await serial.command("ping", 1000);
        if (a === "pong") bootMs = performance.now() - t0;
      } catch (e) {
        if (!running) throw e;
      }
    }
    const fdPath = ram === "anon" ? "" : (await findGuestRam(proc.pid)).fdPath;
    const ch = serial;
    return {
      pid: proc.pid,
      proc,
      serial: ch,
      memfdPath: fdPath,
      sshPort,
      ramBytes: ramMiB * 1024 * 1024,
      consoleLog,
      bootMs,
      exited,
      alive: () => running,
      diagnostics,
      kill,
    };
  } catch (e) {
    const msg = `${(e as Error).message}\n${diagnostics()}`;
    await kill();
    throw new Error(`bootGuest: ${msg}`);
  }
}

/** Result of {@link runVerify}. */
export interface VerifyResult {
  /** Whether the guest reported `verify ok`. */
  ok: boolean;
  /** Guest-measured time of the one-shot run (fill + one check pass), ms. */
  ms: number;
  /** Wall time host side, ms (includes the command round trip). */
  wallMs: number;
  /** The guest's answer line. */
  line: string;
}

/** Runs a one-shot `memverify MIB 1 0` in the guest. */
export async function runVerify(
  guest: Guest,
  mib: number,
  timeoutMs = PATIENCE_MS,
): Promise<VerifyResult> {
  const t0 = performance.now();
  const line = await guest.serial.command(`run-verify ${mib}`, timeoutMs);
  const m = /^verify ok .* ms=(\d+)/.exec(line);
  return { ok: !!m, ms: m ? Number(m[1]) : NaN, wallMs: performance.now() - t0, line };
}

/** The background memverify's state, parsed from the guest's `status` answer. */
export interface BackgroundStatus {
  /** Last completed round, or -1 if the line is no `round K ok`. */
  round: number;
  /** True if the last line is a `round K ok`. */
  ok: boolean;
  /** The raw line (e.g. a `MISMATCH ...` or `bg exited rc=1`). */
  line: string;
}

/** Asks the guest for its background memverify's last line. */
export async function backgroundStatus(
  guest: Guest,
  timeoutMs = PATIENCE_MS,
): Promise<BackgroundStatus> {
  const line = await guest.serial.command("status", timeoutMs);
  const m = /^round (\d+) ok/.exec(line);
  return { round: m ? Number(m[1]) : -1, ok: !!m, line };
}
