/**
 * The dashboard in headless Chromium (Debian's `/usr/bin/chromium`, driven by
 * playwright-core; no browser is downloaded).
 *
 * By default it is served by `serveControl` over a simulated pager whose
 * numbers move with time. With `REMORA_DASHBOARD_URL=http://127.0.0.1:PORT/`
 * the generic checks (loads cleanly, stays self-contained, numbers move) run
 * against that live pager instead; the fake-only checks (resize, detach,
 * auth) are skipped then, since they would change or end the real pager.
 *
 * Skipped, with a message, when `/usr/bin/chromium` is missing.
 *
 * @module
 */

// Pinned here rather than in deno.json's imports so this file runs as is;
// moving it to an import map entry is equally fine.
// deno-lint-ignore no-import-prefix
import { type Browser, chromium, type Page } from "npm:playwright-core@1.65.1";
import { FakePager } from "../control/fake.ts";
import { test, waitUntil } from "../testing/harness.ts";
import { buildTarget, Proc, rssAnonKiB, startPager } from "../testing/procs.ts";
import { httpBase, serveControl } from "../control/http.ts";
import { assert, assertSameJson } from "./helpers/assert.ts";

const CHROMIUM = "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const LIVE_URL = Deno.env.get("REMORA_DASHBOARD_URL");
const SHOT_DIR = new URL("./.build/", import.meta.url).pathname;

let haveChromium = false;
try {
  haveChromium = Deno.statSync(CHROMIUM).isFile;
} catch { /* not installed */ }
if (!haveChromium) {
  console.error(`dashboard tests skipped: ${CHROMIUM} not installed (apt-get install chromium)`);
}

async function launch(): Promise<Browser> {
  return await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
}

/** Everything the page complained about or tried to load from elsewhere. */
function watch(page: Page, base: string): string[] {
  const problems: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") {
      problems.push(`console ${m.type()}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("request", (r) => {
    const url = r.url();
    if (!url.startsWith(base) && !url.startsWith("data:")) problems.push(`outside request: ${url}`);
  });
  page.on("requestfailed", (r) => {
    // The page's own poll may be cut short when the test closes it.
    if (!r.url().endsWith("/stats")) problems.push(`request failed: ${r.url()}`);
  });
  return problems;
}

async function text(page: Page, id: string): Promise<string> {
  return (await page.textContent(`#${id}`)) ?? "";
}

/** Waits until `#id`'s text satisfies `ok`, returning it. */
async function waitText(page: Page, id: string, ok: (t: string) => boolean): Promise<string> {
  let t = "";
  await waitUntil(
    () => `#${id} to change (it stayed "${t}")`,
    async () => ok(t = await text(page, id)),
  );
  return t;
}

/** Non-transparent pixels on a canvas: proof that a chart was drawn. */
async function inkedPixels(page: Page, id: string): Promise<number> {
  // A string, not a function: this module is type-checked without the DOM lib.
  return await page.evaluate(`(() => {
    const c = document.getElementById(${JSON.stringify(id)});
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
    return n;
  })()`) as number;
}

/** The checks that hold for any live pager, fake or real. */
async function checkLive(page: Page, base: string, problems: string[]): Promise<void> {
  const res = await page.goto(`${base}/`);
  assertSameJson(res?.status(), 200, "dashboard status");
  assertSameJson(await page.title(), "remora");
  await waitText(page, "conn", (t) => t === "live");
  // Numbers move while the stats move.
  const uptime1 = await text(page, "uptime");
  const faults1 = await text(page, "faults-total");
  await waitText(page, "uptime", (t) => t !== uptime1);
  await waitText(page, "faults-total", (t) => t !== faults1);
  for (const id of ["resident", "remote", "budget", "p50", "p99", "prefetch-counts"]) {
    assert(/\d/.test(await text(page, id)), `#${id} shows no number: "${await text(page, id)}"`);
  }
  // Each chart draws something once it has a few samples.
  for (const id of ["chart-memory", "chart-faults", "chart-latency"]) {
    let ink = 0;
    await waitUntil(
      () => `#${id} to draw (${ink} inked pixels)`,
      async () => (ink = await inkedPixels(page, id)) > 500,
    );
  }
  assertSameJson(problems, [], "console errors or outside requests");
}

test({
  name: "dashboard: loads cleanly, numbers and charts follow the stats, resize and detach work",
  ignore: !haveChromium || LIVE_URL !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const fake = new FakePager({
      endpoints: [
        {
          address: "tcp://10.0.0.2:7070",
          state: "up",
          requests: 5,
          medianLatencyUs: 40,
          pages: 6000,
        },
        {
          address: "tcp://10.0.0.3:7070",
          state: "draining",
          requests: 5,
          medianLatencyUs: 95,
          pages: 6288,
        },
      ],
    });
    const server = await serveControl(fake, { hostname: "127.0.0.1", port: 0 });
    const base = httpBase(server.addr);
    const browser = await launch();
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const problems = watch(page, base);
      await checkLive(page, base, problems);

      // The prefetch hit rate is over the prefetches whose fate is known.
      assert(/^\d+%$/.test(await text(page, "prefetch-hits")), await text(page, "prefetch-hits"));

      // Per-peer state.
      const peers = await text(page, "peers");
      assert(peers.includes("tcp://10.0.0.2:7070") && peers.includes("tcp://10.0.0.3:7070"), peers);
      assertSameJson(await page.locator("#peers .state.draining").count(), 1, "draining badge");
      assertSameJson(await page.locator("#peers .state.up").count(), 1, "up badge");

      await Deno.mkdir(SHOT_DIR, { recursive: true });
      await page.screenshot({ path: `${SHOT_DIR}dashboard.png`, fullPage: true });

      // Resize: a refusal is shown as an error, a good size changes the budget.
      await page.fill("#resize-input", "16 apples");
      await page.click("#resize-btn");
      await waitText(
        page,
        "msg",
        (t) => t.startsWith("Resize failed:") && t.includes("unknown unit"),
      );
      assertSameJson(await page.getAttribute("#msg", "class"), "error");
      assertSameJson(fake.resizes, [], "a refused size reached the pager");
      // Chromium logs every 4xx answer to the console; this one was asked for.
      assertSameJson(problems.splice(0).filter((p) => !p.includes("status of 400")), []);
      await page.fill("#resize-input", "8M");
      await page.click("#resize-btn");
      await waitText(page, "msg", (t) => t === "Local budget is now 8.00 MiB.");
      assertSameJson(fake.resizes, [8 << 20]);
      await waitText(page, "budget", (t) => t === "8.00 MiB");

      // Detach: dismissing the confirmation does nothing; accepting detaches.
      page.once("dialog", (d) => d.dismiss());
      await page.click("#detach-btn");
      await page.waitForTimeout(300);
      assertSameJson(fake.detaches, 0, "detach without confirmation");
      page.once("dialog", (d) => d.accept());
      await page.click("#detach-btn");
      await waitText(page, "msg", (t) => t.startsWith("Detached:"));
      assertSameJson(fake.detaches, 1);
      assertSameJson(await text(page, "conn"), "detached");
      assertSameJson(await text(page, "remote"), "0 B");
      assert(await page.isDisabled("#detach-btn"), "detach button still enabled");
      await page.screenshot({ path: `${SHOT_DIR}dashboard-detached.png`, fullPage: true });
      assertSameJson(problems, [], "console errors or outside requests");
    } finally {
      await browser.close();
      await server.shutdown();
    }
  },
});

test({
  name: "dashboard: with a token, the browser gets in with Basic credentials only",
  ignore: !haveChromium || LIVE_URL !== undefined,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const fake = new FakePager();
    const server = await serveControl(fake, { hostname: "127.0.0.1", port: 0, token: "t0ken" });
    const base = httpBase(server.addr);
    const browser = await launch();
    try {
      // (A browser page without credentials fails with ERR_INVALID_AUTH_CREDENTIALS
      // in headless mode, as it cannot show the prompt; check the challenge directly.)
      const res = await fetch(`${base}/`);
      await res.body?.cancel();
      assertSameJson(res.status, 401, "dashboard without credentials");
      assert(res.headers.get("www-authenticate")?.startsWith("Basic"), "no Basic challenge");
      const ctx = await browser.newContext({
        httpCredentials: { username: "remora", password: "t0ken" },
      });
      const page = await ctx.newPage();
      const problems = watch(page, base);
      await checkLive(page, base, problems);
    } finally {
      await browser.close();
      await server.shutdown();
    }
  },
});

test({
  name: "[real pager] the dashboard of a pager paging a real target loads cleanly, its numbers " +
    "move, and resize from the page shrinks the target",
  ignore: !haveChromium,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    let base = LIVE_URL?.replace(/\/+$/, "");
    let target: Proc | undefined, pager: Proc | undefined;
    if (base === undefined) {
      target = new Proc(await buildTarget("memcheck"), ["64", "0", "1", "0", "20"]);
      await target.waitFor(/round 1 ok/);
      const port = freePort();
      base = `http://127.0.0.1:${port}`;
      pager = startPager(
        ["--pid", String(target.pid), "--local", "32M", "--http", `127.0.0.1:${port}`],
        { perms: ["--allow-ffi", "--allow-net"] },
      );
      await pager.waitFor(/attached to pid/);
    }
    const browser = await launch();
    try {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      const problems = watch(page, base);
      await checkLive(page, base, problems);
      await Deno.mkdir(SHOT_DIR, { recursive: true });
      await page.screenshot({ path: `${SHOT_DIR}dashboard-real.png`, fullPage: true });
      if (target !== undefined && pager !== undefined) {
        await page.fill("#resize-input", "16M");
        await page.click("#resize-btn");
        await waitText(page, "msg", (t) => t === "Local budget is now 16.0 MiB.");
        await waitUntil(
          () => `RssAnon to fall under 20 MiB after resize to 16M (${rssAnonKiB(target!.pid)} KiB)`,
          () => rssAnonKiB(target!.pid) <= (16 + 4) * 1024,
        );
        page.once("dialog", (d) => d.accept());
        await page.click("#detach-btn");
        await waitText(page, "msg", (t) => t.startsWith("Detached:"));
        assertSameJson(await pager.exit(), 0, pager.text());
        const n = target.count(/round \d+ ok/);
        await target.waitFor(new RegExp(`round ${n + 1} ok`));
        assert(!/MISMATCH/.test(target.text()), `the target read wrong data:\n${target.text()}`);
      }
      assertSameJson(problems, [], "console errors or outside requests");
    } finally {
      await browser.close();
      pager?.kill("SIGTERM");
      await pager?.exit();
      target?.kill();
      await target?.exit();
    }
  },
});

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
