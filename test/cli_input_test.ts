/**
 * Clear messages and files (issue #20, "Clear messages and files"): each bad
 * input gets one clear line and a non-zero exit, never a stack trace, and
 * leaves the target alone. Real processes throughout: the pager and peer
 * CLIs, memcached, redis-server, a verifying C target.
 */
import { test } from "../testing/harness.ts";
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { buildTarget, Proc, ROOT, runPager, startPager } from "../testing/procs.ts";
import { startMemcached, startRedis } from "../testing/servers.ts";
import { resizeCommand } from "../control/cli.ts";
import { FakePager } from "../control/fake.ts";
import { httpBase, serveControl } from "../control/http.ts";
import { findSyscallInstruction } from "../ffi/ptrace.ts";
import { openStore } from "../transport/open.ts";

const memcheck = await buildTarget("memcheck");
/** Generous: the machine is shared and slow at times; only correctness is asserted. */
const PATIENCE_MS = 180_000;

/** Asserts the process printed exactly one non-empty stderr line, no stack trace; returns it. */
function oneLine(p: Proc): string {
  const lines = p.err.filter((l) => l.trim() !== "");
  assertEquals(lines.length, 1, `waited for exactly one line on stderr:\n${p.text()}`);
  assert(!/^\s+at /m.test(p.text()), `no stack trace:\n${p.text()}`);
  return lines[0];
}

function closedPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

test("a store of the wrong kind is named as such in one line", async () => {
  const mc = await startMemcached();
  const redis = await startRedis(["--maxmemory-policy", "noeviction"]);
  try {
    const cases: [string, RegExp][] = [
      [
        `redis://${mc.hostPort}`,
        new RegExp(`Redis at ${mc.hostPort}: .*it is a memcached server, not Redis`),
      ],
      [
        `memcached://${redis.hostPort}`,
        new RegExp(`memcached at ${redis.hostPort}: .*it is a Redis server, not memcached`),
      ],
    ];
    for (const [backend, want] of cases) {
      const { code, p } = await runPager(["--local", "1M", "--backend", backend, "--", "true"]);
      assertEquals(code, 1, `waited for the pager to refuse ${backend}:\n${p.text()}`);
      assertMatch(oneLine(p), want);
      assertMatch(p.text(), /wrong kind of store/);
    }
  } finally {
    await mc.stop();
    await redis.stop();
  }
});

test("--pid is decimal only", async () => {
  for (const pid of ["0x10", "1e1", "+16", "16.0", " 16", "0", "99999999999"]) {
    const { code, p } = await runPager(["--pid", pid]);
    assertEquals(code, 2, `--pid "${pid}" refused as bad usage:\n${p.text()}`);
    assertMatch(oneLine(p), /--pid must be a process id in decimal/);
  }
});

test("a target whose maps the pager may not read is reported as such, and keeps running", async () => {
  const target = new Proc(memcheck, ["4", "0", "1", "0", "20"]);
  try {
    await target.waitFor(/round 0 ok/, PATIENCE_MS);
    // A pager in a user namespace of its own may not inspect the target.
    const p = new Proc("unshare", [
      "--user",
      "--map-root-user",
      "deno",
      "run",
      "--allow-ffi",
      `${ROOT}pager.ts`,
      "--pid",
      String(target.pid),
      "--local",
      "1M",
    ]);
    assertEquals(await p.exit(PATIENCE_MS), 1, p.text());
    const line = oneLine(p);
    assertMatch(line, new RegExp(`cannot read /proc/${target.pid}/maps \\(EACCES\\)`));
    assert(!/no syscall instruction/.test(line), line);
    const before = target.count(/round \d+ ok/);
    await target.waitFor(new RegExp(`round ${before + 1} ok`), PATIENCE_MS);
    assert(!/MISMATCH/.test(target.text()), target.text());
  } finally {
    target.kill("SIGKILL");
    await target.exit();
  }
});

test("a target gone before its syscall instruction is found is reported as gone", async () => {
  const child = new Deno.Command("true").spawn();
  await child.status; // exited and reaped: its /proc entry is gone
  let message = "";
  try {
    findSyscallInstruction(child.pid);
  } catch (e) {
    message = (e as Error).message;
  }
  assertEquals(message, `pid ${child.pid} exited while attaching`);
});

test("--stats-json: 0600, never through a symlink, and a failure is one line after a clean run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ok = `${dir}/stats.json`;
    let r = await runPager(["--local", "1M", "--stats-json", ok, "--", memcheck, "4", "2"]);
    assertEquals(r.code, 0, r.p.text());
    assertEquals((await Deno.stat(ok)).mode! & 0o777, 0o600, "stats file mode");
    assert(JSON.parse(await Deno.readTextFile(ok)).counters, "stats are JSON");

    const victim = `${dir}/victim`;
    await Deno.writeTextFile(victim, "keep me\n");
    await Deno.symlink(victim, `${dir}/link.json`);
    r = await runPager(
      ["--local", "1M", "--stats-json", `${dir}/link.json`, "--", memcheck, "4", "2"],
    );
    assertEquals(r.code, 0, `a clean run keeps its status:\n${r.p.text()}`);
    assertMatch(r.p.text(), /--stats-json not written: .*link\.json is a symbolic link/);
    assertEquals(await Deno.readTextFile(victim), "keep me\n", "the link's target is untouched");

    r = await runPager(
      ["--local", "1M", "--stats-json", `${dir}/no/such/dir.json`, "--", memcheck, "4", "2"],
    );
    assertEquals(r.code, 0, `a clean run keeps its status:\n${r.p.text()}`);
    assertMatch(
      r.p.text(),
      /^remora: --stats-json not written: cannot create a file in .*ENOENT$/m,
    );
    assert(!/^\s+at /m.test(r.p.text()), `no stack trace:\n${r.p.text()}`);
    assertEquals(
      [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".tmp")).length,
      0,
      "no temporary file left behind",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Token files the one reader refuses, and what it says. */
async function badTokenFiles(dir: string): Promise<[string, RegExp][]> {
  const open = `${dir}/open`;
  await Deno.writeTextFile(open, crypto.randomUUID() + "\n", { mode: 0o644 });
  await Deno.chmod(open, 0o644);
  const empty = `${dir}/empty`;
  await Deno.writeTextFile(empty, "\n", { mode: 0o600 });
  const short = `${dir}/short`;
  await Deno.writeTextFile(short, "s3cret\n", { mode: 0o600 });
  const fifo = `${dir}/fifo`;
  const mk = await new Deno.Command("mkfifo", { args: ["-m", "600", fifo] }).output();
  assert(mk.success, "mkfifo");
  return [
    [open, new RegExp(`mode 0644\\): run chmod 600 ${open}$`)],
    [empty, /is empty$/],
    [short, /holds 6 byte\(s\): use at least 16/],
    [fifo, /is a FIFO: give a regular file$/],
  ];
}

test("token files: group/world-readable, empty, short and FIFO are refused in one line by the pager and the peer", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const peerUrl = `tcp://127.0.0.1:${closedPort()}`;
    for (const [file, want] of await badTokenFiles(dir)) {
      const pager = await runPager(
        ["--local", "1M", "--backend", peerUrl, "--token-file", file, "--", "true"],
      );
      assertEquals(pager.code, 1, `pager refuses ${file}:\n${pager.p.text()}`);
      assertMatch(oneLine(pager.p), want);
      const peer = startPager(
        ["peer", "--listen", "127.0.0.1:0", "--capacity", "16M", "--token-file", file],
        { perms: ["--allow-net", "--allow-read"] },
      );
      assertEquals(await peer.exit(PATIENCE_MS), 1, `peer refuses ${file}:\n${peer.text()}`);
      assertMatch(oneLine(peer), want);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

test("a Redis password file follows the same rules, but its length is Redis's business", async () => {
  const dir = await Deno.makeTempDir();
  const redis = await startRedis(["--maxmemory-policy", "noeviction", "--requirepass", "pw"]);
  try {
    const open = `${dir}/open`;
    await Deno.writeTextFile(open, "pw\n");
    await Deno.chmod(open, 0o640);
    let message = "";
    try {
      await openStore([`redis://${redis.hostPort}`], {
        replicas: 1,
        namespace: "t",
        tokenFile: open,
      });
    } catch (e) {
      message = (e as Error).message;
    }
    assertMatch(message, new RegExp(`mode 0640\\): run chmod 600 ${open}$`));
    await Deno.chmod(open, 0o600);
    const store = await openStore([`redis://${redis.hostPort}`], {
      replicas: 1,
      namespace: "t",
      tokenFile: open,
    });
    await store.close();
  } finally {
    await redis.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

test("one budget check: the resize CLI and POST /resize refuse the same sizes with the reason", async () => {
  const fake = new FakePager();
  const server = await serveControl(fake, { hostname: "127.0.0.1", port: 0 });
  const base = httpBase(server.addr);
  try {
    const cases: [unknown, RegExp][] = [
      [4097, /below the workable minimum of 65536 bytes/],
      [65537, /not a whole number of 4 KiB pages: use 65536 or 69632/],
      [9007199254740991, /above the maximum of 17592186044416 bytes/],
      ["1000000T", /too large/],
      ["17T", /above the maximum/],
      ["4K", /below the workable minimum of 65536 bytes/],
      ["100000", /not a whole number of 4 KiB pages: use 98304 or 102400/],
    ];
    for (const [value, want] of cases) {
      const body = typeof value === "number" ? { bytes: value } : { local: value };
      const res = await fetch(`${base}/resize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await res.json() as { error?: string };
      assertEquals(res.status, 400, `POST /resize ${JSON.stringify(body)}: ${answer.error}`);
      assertMatch(String(answer.error), want);
      const err: string[] = [];
      const io = { out: () => {}, err: (l: string) => err.push(l) };
      const code = await resizeCommand([
        String(value),
        "--http",
        server.addr.hostname + ":" + server.addr.port,
      ], io);
      assertEquals(code, 2, `resize ${value}: ${err.join("\n")}`);
      assertMatch(err.join("\n"), want);
    }
    assertEquals(fake.resizes, [], "no bad size reached the pager");
    const ok = await fetch(`${base}/resize`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ bytes: 65536 }),
    });
    assertEquals(ok.status, 200);
    await ok.body?.cancel();
    assertEquals(fake.resizes, [65536]);
  } finally {
    await server.shutdown();
  }
});
