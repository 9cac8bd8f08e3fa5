/**
 * `deno task demo`: a program that fills 256 MiB and verifies it in rounds
 * runs under the pager with a 32 MiB local budget, on the embedded backend.
 * Live progress shows resident vs remote memory and faults/s; the end shows
 * the program's own verification result and the pager's counters.
 *
 * ```
 * deno task demo                       # 256 MiB, 6 rounds, --local 32M
 * deno task demo --mib 512 --local 64M --rounds 4
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { buildTarget, ROOT } from "../testing/procs.ts";
import { freePort } from "../testing/servers.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    mib: { type: "string", default: "256" },
    rounds: { type: "string", default: "6" },
    local: { type: "string", default: "32M" },
    backend: { type: "string", default: "embedded" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("usage: deno task demo [--mib 256] [--rounds 6] [--local 32M] [--backend URLS]");
  Deno.exit(0);
}

const target = await buildWorkload();
const port = freePort();
const pager = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-ffi",
    "--allow-net",
    "--allow-read",
    `${ROOT}pager.ts`,
    "--local",
    values.local,
    "--backend",
    values.backend,
    "--http",
    `127.0.0.1:${port}`,
    "--",
    target,
    values.mib,
    values.rounds,
  ],
  stdout: "piped",
  stderr: "piped",
  stdin: "null",
}).spawn();

console.log(
  `demo: ${values.mib} MiB workload verifying itself in ${values.rounds} rounds, ` +
    `local budget ${values.local}, backend ${values.backend}`,
);
const programLines: string[] = [];
const pagerLines: string[] = [];
const readers = [
  collect(pager.stdout, (l) => {
    programLines.push(l);
    if (/round \d+ ok|MISMATCH/.test(l)) console.log(`  program: ${l}`);
  }),
  collect(pager.stderr, (l) => pagerLines.push(l)),
];

let lastFaults = 0, lastAt = performance.now();
const ticker = setInterval(async () => {
  try {
    const s = await (await fetch(`http://127.0.0.1:${port}/stats`)).json();
    const now = performance.now();
    const rate = (s.counters.faults - lastFaults) / ((now - lastAt) / 1000);
    lastFaults = s.counters.faults;
    lastAt = now;
    console.log(
      `  pager:   resident ${mib(s.residentPages)} MiB, remote ${mib(s.remotePages)} MiB, ` +
        `${Math.round(rate)} faults/s, fetched ${s.counters.pagesFetched}, ` +
        `evicted ${s.counters.pagesEvicted}`,
    );
  } catch {
    // not listening yet, or already gone
  }
}, 1000);

const status = await pager.status;
clearInterval(ticker);
await Promise.all(readers);

const mismatch = programLines.find((l) => l.includes("MISMATCH"));
const finished = programLines.some((l) => /parent done/.test(l));
console.log("");
for (const l of pagerLines.filter((l) => !/\[INF\]|\[DBG\]/.test(l))) console.log(l);
console.log("");
if (mismatch !== undefined || !finished || status.code !== 0) {
  console.log(`demo: FAILED: ${mismatch ?? `exit code ${status.code}`}`);
  Deno.exit(1);
}
console.log(
  `demo: verification passed: every byte of ${values.mib} MiB read back correctly in every ` +
    `round, with at most ${values.local} of it resident`,
);

/** The verifying workload, built once; a failed build ends the demo with gcc's words. */
async function buildWorkload(): Promise<string> {
  try {
    return await buildTarget("memcheck");
  } catch (e) {
    console.error(`demo: ${(e as Error).message}`);
    Deno.exit(1);
  }
}

async function collect(stream: ReadableStream<Uint8Array>, onLine: (l: string) => void) {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    const parts = rest.split("\n");
    rest = parts.pop()!;
    parts.forEach(onLine);
  }
  if (rest !== "") onLine(rest);
}

function mib(pages: number): string {
  return (pages / 256).toFixed(1);
}
