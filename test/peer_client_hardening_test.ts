/**
 * The client side of peer protocol hardening (issue #20, items 1 and 2): a
 * pager holding a token never trusts a peer that cannot prove it holds the
 * same token, and a READ reply of the wrong size never becomes a page.
 *
 * Fake peers (test/helpers/fake_peer.ts) play the hostile part; the pager and
 * the verifying target (testing/targets/memcheck.c) are real processes.
 */
import { test } from "../testing/harness.ts";
import { assert, assertEquals, assertMatch } from "./helpers/assert.ts";
import { type FakePeer, startFakePeer } from "./helpers/fake_peer.ts";
import { buildTarget, Proc, REMOTE_PAGER_PERMS, startPager } from "../testing/procs.ts";
import { makeTokenFile } from "../testing/peers.ts";
import { pagesFor } from "../testing/pages.ts";
import { openPeerStore } from "../transport/tcp.ts";
import { PAGE_SIZE, PageLostError, StoreUnavailableError } from "../transport/store.ts";

const memcheck = await buildTarget("memcheck");
const TOKEN = crypto.randomUUID();
const token = new TextEncoder().encode(TOKEN);
/** Generous: the machine is shared and slow at times; only correctness is asserted. */
const PATIENCE_MS = 180_000;

function rounds(p: Proc): number {
  return p.count(/round \d+ ok/);
}

async function moreRounds(target: Proc, n: number): Promise<void> {
  await target.waitFor(new RegExp(`round ${rounds(target) + n - 1} ok`), PATIENCE_MS);
}

function assertVerified(target: Proc, pager?: Proc): void {
  assert(
    !/MISMATCH/.test(target.text()),
    `the target read a wrong word:\n${target.text()}\npager:\n${pager?.text() ?? ""}`,
  );
}

/**
 * Starts memcheck and, once it filled its memory, a pager attached to it
 * (`--local 4M`) with `peer` as its only backend and the test's token; runs
 * `fn`, then kills both, closes the peer and removes the token file.
 */
async function underPager(
  peer: FakePeer,
  tokenFile: string,
  fn: (pager: Proc, target: Proc) => Promise<void>,
): Promise<void> {
  const target = new Proc(memcheck, ["12", "0", "1", "0", "20"]);
  let pager: Proc | undefined;
  try {
    await target.waitFor(/round 0 ok/, PATIENCE_MS);
    pager = startPager(
      [
        "--pid",
        String(target.pid),
        "--local",
        "4M",
        "--backend",
        peer.url,
        "--token-file",
        tokenFile,
      ],
      { perms: REMOTE_PAGER_PERMS },
    );
    await fn(pager, target);
  } finally {
    pager?.kill("SIGKILL");
    target.kill("SIGKILL");
    await Promise.allSettled([pager?.exit(), target.exit()]);
    await peer.close();
    await Deno.remove(tokenFile);
  }
}

test("a pager with --token-file refuses a peer that says 'no auth' and cannot prove the token; the target runs on unharmed", async () => {
  const tokenFile = await makeTokenFile(TOKEN);
  // It answers READs with bytes of its own: accepted, the target would read them.
  const impostor = startFakePeer({
    impostor: true,
    readReply: (n) => new Uint8Array(n * PAGE_SIZE),
  });
  await underPager(impostor, tokenFile, async (pager, target) => {
    // Before the fix the pager attached, the target read the impostor's zeros
    // (MISMATCH) and exited, and the pager exited 0 with it.
    const code = await pager.exit(PATIENCE_MS);
    assertEquals(
      code,
      1,
      `waited for the pager to refuse the impostor and exit 1:\n${pager.text()}`,
    );
    const lines = pager.err.filter((l) => l.trim() !== "");
    assertEquals(lines.length, 1, `one line:\n${pager.text()}`);
    assertMatch(
      lines[0],
      /^remora: peer 127\.0\.0\.1:\d+ did not prove it holds the token: refusing it \(is it a remora peer started with the same --token-file\?\)$/,
    );
    assertEquals(impostor.seen.writes, 0, "no page was sent to the impostor");
    assert(!/attached to pid/.test(pager.text()), `the target was never touched:\n${pager.text()}`);
    await moreRounds(target, 2);
    assertVerified(target, pager);
  });
});

test("the peer store refuses an impostor at open, and a pager without a token still needs none", async () => {
  const tokenFile = await makeTokenFile(TOKEN);
  const impostor = startFakePeer({ impostor: true });
  try {
    let error: unknown;
    try {
      const s = await openPeerStore([impostor.url], { replicas: 1, namespace: "t", tokenFile });
      await s.close();
    } catch (e) {
      error = e;
    }
    assert(error instanceof StoreUnavailableError, `waited for a refusal, got ${error}`);
    assertMatch((error as Error).message, /did not prove it holds the token/);
    // Without a token there is nothing to prove (an --insecure-no-auth setup).
    const open = await openPeerStore([impostor.url], { replicas: 1, namespace: "t" });
    await open.close();
  } finally {
    await impostor.close();
    await Deno.remove(tokenFile);
  }
});

const BAD_READS: [string, (n: number, data: Uint8Array) => Uint8Array][] = [
  ["an empty OK", () => new Uint8Array(0)],
  ["one byte short", (_n, d) => d.subarray(0, d.length - 1)],
  ["one page too many", (_n, d) => new Uint8Array(d.length + PAGE_SIZE).fill(0x5a)],
  ["half the pages", (n, d) => d.subarray(0, Math.floor(n / 2) * PAGE_SIZE)],
];

for (const [what, readReply] of BAD_READS) {
  test(`a READ answered with ${what} is a failed replica, never a page`, async () => {
    const tokenFile = await makeTokenFile(TOKEN);
    const bad = startFakePeer({ token, readReply });
    const lost: number[] = [];
    const store = await openPeerStore([bad.url], {
      replicas: 1,
      namespace: "t",
      tokenFile,
      slabPages: 64,
      onLoss: (keys) => lost.push(...keys),
    });
    try {
      for (const keys of [Uint32Array.of(3), Uint32Array.of(10, 11, 12)]) {
        await store.put(keys, pagesFor(keys));
        const into = new Uint8Array(keys.length * PAGE_SIZE).fill(0xee);
        let error: unknown;
        try {
          await store.get(keys, into);
        } catch (e) {
          error = e;
        }
        assert(
          error instanceof PageLostError,
          `waited for get of keys ${keys} to fail as lost, got ${error ?? "pages"}`,
        );
        assert(into.every((b) => b === 0xee), "no byte of the bad reply reached the buffer");
      }
      assert(lost.includes(3) && lost.includes(10), `reported lost: ${lost}`);
    } finally {
      await store.close();
      await bad.close();
      await Deno.remove(tokenFile);
    }
  });
}

test("with two replicas, a READ of the wrong size falls back to the good replica", async () => {
  const tokenFile = await makeTokenFile(TOKEN);
  const bad = startFakePeer({ token, readReply: () => new Uint8Array(0) });
  const good = startFakePeer({ token });
  const lost: number[] = [];
  const store = await openPeerStore([bad.url, good.url], {
    replicas: 2,
    namespace: "t",
    tokenFile,
    slabPages: 64,
    onLoss: (keys) => lost.push(...keys),
  });
  try {
    const keys = Uint32Array.from({ length: 40 }, (_, i) => i * 3);
    const want = pagesFor(keys);
    await store.put(keys, want);
    // Single pages (the fault path) and a batch, several times: reads rotate over replicas.
    for (let round = 0; round < 4; round++) {
      for (const k of keys.subarray(0, 8)) {
        const one = new Uint8Array(PAGE_SIZE);
        await store.get(Uint32Array.of(k), one);
        assert(
          one.every((b, i) => b === want[keys.indexOf(k) * PAGE_SIZE + i]),
          `page ${k} round ${round}`,
        );
      }
      const all = new Uint8Array(keys.length * PAGE_SIZE);
      await store.get(keys, all);
      assert(all.every((b, i) => b === want[i]), `batch round ${round}`);
    }
    assertEquals(lost, [], "nothing lost while a good replica answers");
  } finally {
    await store.close();
    await bad.close();
    await good.close();
    await Deno.remove(tokenFile);
  }
});

test("under a real pager, empty READ replies from the only replica are reported as lost pages; the target never reads a wrong word", async () => {
  const tokenFile = await makeTokenFile(TOKEN);
  const bad = startFakePeer({ token, readReply: () => new Uint8Array(0) });
  await underPager(bad, tokenFile, async (pager, target) => {
    // Before the fix the target read a stale buffer as page 0 (MISMATCH) and
    // exited; now the pages are lost: exit 3, the target stopped, not fed.
    const code = await pager.exit(PATIENCE_MS);
    assertVerified(target, pager);
    assertEquals(code, 3, `waited for the pager to report lost pages (exit 3):\n${pager.text()}`);
    assertMatch(pager.text(), /answered a READ of \d+ page\(s\) with 0 bytes/);
    assert(bad.seen.pagesWritten > 0, "pages went to the peer before the reads");
  });
});
