/**
 * Test hosts: each in its own network namespace with its own address, all
 * joined by veth pairs to a bridge in the test's own namespace, so that a
 * peer can be cut off (its link set down: packets vanish, no reset) and
 * healed while the pager keeps running. Needs root and iproute2.
 *
 * Links can be shaped: a rate (tc tbf on both ends of the veth), random
 * loss (nftables `numgen`, both directions) and a one-way delay with jitter.
 * This kernel has no `sch_netem`, so the delay is a relay in the host's
 * namespace (testing/targets/linkdelay.c) on a port of its own in front of
 * a server's port; {@linkcode TestHosts.linkRoundTrip} measures the round
 * trip such a link gives a C program, relay included.
 *
 * Names carry a random id, so that suites running side by side never meet;
 * {@linkcode withHosts} removes everything, also when the test fails.
 *
 * @example
 * ```ts
 * import { withHosts } from "./netns.ts";
 * await withHosts(2, async (hosts) => {
 *   console.log(hosts.hosts[0].address); // e.g. 10.213.77.2
 *   await hosts.partition(0);
 *   await hosts.heal(0);
 *   await hosts.shape(1, { lossPercent: 0.5, rate: "1gbit" });
 *   const port = await hosts.delayedPort(1, 4000, { delayUs: 25 }); // in front of :4000
 * });
 * ```
 *
 * @module
 */

import { buildTarget } from "./procs.ts";

/** One host: a network namespace with one interface. */
export interface Host {
  /** The namespace (`ip netns exec NAME ...`). */
  readonly netns: string;
  /** Its IPv4 address, reachable from the test's namespace. */
  readonly address: string;
  /** The bridge side of its veth pair: down means cut off. */
  readonly link: string;
  /** The host's side of the pair, inside its namespace. */
  readonly inner: string;
}

/** How {@linkcode TestHosts.shape} shapes a host's link (both directions). */
export interface LinkShape {
  /** Packets dropped at random, percent (0.1 steps). */
  lossPercent?: number;
  /** A tc rate, e.g. `1gbit` or `100mbit`. */
  rate?: string;
}

/** A delay relay's settings: one-way delay plus uniform random jitter, microseconds. */
export interface LinkDelay {
  delayUs: number;
  jitterUs?: number;
}

async function run(cmd: string, args: string[], hint: string): Promise<string> {
  let out;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${(e as Error).message} (${hint})`);
  }
  if (!out.success) {
    const why = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`${cmd} ${args.join(" ")} failed: ${why} (${hint})`);
  }
  return new TextDecoder().decode(out.stdout);
}

let linkdelay: Promise<string> | null = null;

/** testing/targets/linkdelay.c, built once per process. */
function linkdelayTool(): Promise<string> {
  return linkdelay ??= buildTarget("linkdelay");
}

async function ip(...args: string[]): Promise<void> {
  await run("ip", args, "test hosts need root and iproute2");
}

/** Hosts on one bridge; see the module documentation. */
export class TestHosts {
  readonly hosts: Host[] = [];
  readonly #bridge: string;
  readonly #subnet: string;
  readonly #id: string;
  readonly #relays: Deno.ChildProcess[] = [];

  private constructor(id: string, subnet: string) {
    this.#id = id;
    this.#bridge = `rmb${id}`;
    this.#subnet = subnet;
  }

  /** Creates `count` hosts; on failure removes what it made and throws one line. */
  static async create(count: number): Promise<TestHosts> {
    const rand = crypto.getRandomValues(new Uint8Array(3));
    const id = Array.from(rand.subarray(0, 2), (b) => b.toString(16).padStart(2, "0")).join("");
    const net = new TestHosts(id, `10.213.${rand[2]}`);
    try {
      await ip("link", "add", net.#bridge, "type", "bridge");
      await ip("addr", "add", `${net.#subnet}.1/24`, "dev", net.#bridge);
      await ip("link", "set", net.#bridge, "up");
      for (let i = 0; i < count; i++) await net.#addHost(i);
    } catch (e) {
      await net.remove();
      throw e;
    }
    return net;
  }

  async #addHost(i: number): Promise<void> {
    const inner = `rmi${this.#id}${i}`;
    const host = {
      netns: `rm${this.#id}h${i}`,
      address: `${this.#subnet}.${i + 2}`,
      link: `rmv${this.#id}${i}`,
      inner,
    };
    await ip("netns", "add", host.netns);
    this.hosts.push(host);
    await ip("link", "add", host.link, "type", "veth", "peer", "name", inner);
    await ip("link", "set", inner, "netns", host.netns);
    await ip("link", "set", host.link, "master", this.#bridge);
    await ip("link", "set", host.link, "up");
    const inNs = (...args: string[]) => ip("-n", host.netns, ...args);
    await inNs("link", "set", "lo", "up");
    await inNs("addr", "add", `${host.address}/24`, "dev", inner);
    await inNs("link", "set", inner, "up");
  }

  /** The command line that runs `argv` inside host `i`. */
  command(i: number, argv: string[]): string[] {
    return ["ip", "netns", "exec", this.hosts[i].netns, ...argv];
  }

  /** Cuts host `i` off: from now on its packets vanish, with no reset to tell anyone. */
  partition(i: number): Promise<void> {
    return ip("link", "set", this.hosts[i].link, "down");
  }

  /** Joins host `i` again. */
  heal(i: number): Promise<void> {
    return ip("link", "set", this.hosts[i].link, "up");
  }

  /**
   * Shapes host `i`'s link in both directions: a rate (tbf on each end of the
   * veth) and random loss (an nftables table in the host's namespace that
   * drops a share of what enters and leaves it). Replaces an earlier shape.
   */
  async shape(i: number, shape: LinkShape): Promise<void> {
    const host = this.hosts[i];
    const inNs = (cmd: string, args: string[], hint: string) =>
      run("ip", ["netns", "exec", host.netns, cmd, ...args], hint);
    if (shape.rate) {
      const tbf = ["root", "tbf", "rate", shape.rate, "burst", "256kb", "latency", "50ms"];
      await run("tc", ["qdisc", "replace", "dev", host.link, ...tbf], "needs tc from iproute2");
      await inNs("tc", ["qdisc", "replace", "dev", host.inner, ...tbf], "needs tc from iproute2");
    }
    if (shape.lossPercent !== undefined) {
      const perThousand = Math.round(shape.lossPercent * 10);
      const rules = [
        "table inet remora_loss {}",
        "flush table inet remora_loss",
        "table inet remora_loss {",
        `  chain in { type filter hook input priority 0; numgen random mod 1000 < ${perThousand} drop; }`,
        `  chain out { type filter hook output priority 0; numgen random mod 1000 < ${perThousand} drop; }`,
        "}",
      ].join("\n");
      const file = await Deno.makeTempFile({ prefix: "remora-nft-" });
      try {
        await Deno.writeTextFile(file, rules + "\n");
        await inNs("nft", ["-f", file], "random loss needs nft from Debian's nftables");
      } finally {
        await Deno.remove(file);
      }
    }
  }

  /**
   * Starts a delay relay in host `i` on a port of its own, in front of
   * `upstreamPort` on the host's address; resolves to the relay's port.
   * Everything sent through it in either direction arrives `delayUs` (plus
   * up to `jitterUs`) later, in order.
   */
  async delayedPort(i: number, upstreamPort: number, delay: LinkDelay): Promise<number> {
    const host = this.hosts[i];
    const argv = [
      await linkdelayTool(),
      "relay",
      `${host.address}:0`,
      `${host.address}:${upstreamPort}`,
      String(delay.delayUs),
      String(delay.jitterUs ?? 0),
    ];
    return await this.#startTool(i, argv);
  }

  /** Starts an echo server in host `i` (it writes back what it reads); resolves to its port. */
  async echoPort(i: number): Promise<number> {
    return await this.#startTool(i, [await linkdelayTool(), "echo", `${this.hosts[i].address}:0`]);
  }

  /**
   * The round trip of host `i`'s link as a C program sees it: p50 and p99 of
   * `count` one-byte round trips to an echo server on the host, through a
   * relay with `delay` when given (the same relay a server's delayed port has).
   */
  async linkRoundTrip(
    i: number,
    delay?: LinkDelay,
    count = 2000,
  ): Promise<{ p50Us: number; p99Us: number }> {
    const tool = await linkdelayTool();
    let port = await this.echoPort(i);
    if (delay) port = await this.delayedPort(i, port, delay);
    const out = await run(
      tool,
      ["ping", `${this.hosts[i].address}:${port}`, String(count)],
      "linkdelay ping",
    );
    const m = /rtt p50 ([\d.]+) us p99 ([\d.]+) us/.exec(out);
    if (!m) throw new Error(`linkdelay ping printed: ${out.trim()}`);
    return { p50Us: Number(m[1]), p99Us: Number(m[2]) };
  }

  async #startTool(i: number, argv: string[]): Promise<number> {
    const child = new Deno.Command("ip", {
      args: ["netns", "exec", this.hosts[i].netns, ...argv],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    this.#relays.push(child);
    child.stderr.pipeTo(new WritableStream()).catch(() => {});
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (true) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${argv.join(" ")} exited before listening: ${text}`);
      text += value;
      const m = /linkdelay ready on port (\d+)/.exec(text);
      if (m) {
        reader.read().then(function drain(r): unknown {
          return r.done ? undefined : reader.read().then(drain);
        }).catch(() => {});
        return Number(m[1]);
      }
    }
  }

  /** Removes every relay, namespace, link and the bridge; never throws. */
  async remove(): Promise<void> {
    for (const child of this.#relays) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status.catch(() => {});
    }
    for (const host of this.hosts) {
      await ip("link", "del", host.link).catch(() => {});
      await ip("netns", "del", host.netns).catch(() => {});
    }
    await ip("link", "del", this.#bridge).catch(() => {});
  }
}

/** Runs `fn` with `count` fresh hosts and removes them after, whatever happens. */
export async function withHosts<T>(
  count: number,
  fn: (hosts: TestHosts) => Promise<T>,
): Promise<T> {
  const hosts = await TestHosts.create(count);
  try {
    return await fn(hosts);
  } finally {
    await hosts.remove();
  }
}
