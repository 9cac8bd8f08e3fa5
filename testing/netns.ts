/**
 * Test hosts: each in its own network namespace with its own address, all
 * joined by veth pairs to a bridge in the test's own namespace, so that a
 * peer can be cut off (its link set down: packets vanish, no reset) and
 * healed while the pager keeps running. Needs root and iproute2.
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
 * });
 * ```
 *
 * @module
 */

/** One host: a network namespace with one interface. */
export interface Host {
  /** The namespace (`ip netns exec NAME ...`). */
  readonly netns: string;
  /** Its IPv4 address, reachable from the test's namespace. */
  readonly address: string;
  /** The bridge side of its veth pair: down means cut off. */
  readonly link: string;
}

async function ip(...args: string[]): Promise<void> {
  const out = await new Deno.Command("ip", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    const why = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`ip ${args.join(" ")} failed: ${why} (test hosts need root and iproute2)`);
  }
}

/** Hosts on one bridge; see the module documentation. */
export class TestHosts {
  readonly hosts: Host[] = [];
  readonly #bridge: string;
  readonly #subnet: string;
  readonly #id: string;

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
    const host = {
      netns: `rm${this.#id}h${i}`,
      address: `${this.#subnet}.${i + 2}`,
      link: `rmv${this.#id}${i}`,
    };
    const inner = `rmi${this.#id}${i}`;
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

  /** Removes every namespace, link and the bridge; never throws. */
  async remove(): Promise<void> {
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
