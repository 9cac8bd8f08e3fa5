/**
 * Checks every struct layout, constant and symbol in `ffi/verbs.ts` against
 * the installed rdma-core: a C program is generated from the TypeScript tables
 * (so no member can be left out of the check), compiled with gcc against
 * /usr/include/infiniband/verbs.h, and its output compared field by field.
 *
 * Needs gcc and libibverbs-dev; no RDMA device.
 *
 * @module
 */

import assert from "node:assert/strict";
import { IBV, LAYOUTS, VERBS_LIBRARY, VERBS_SYMBOLS } from "../ffi/verbs.ts";

/** The C source that prints what the compiler thinks of each table entry. */
function generateC(): string {
  const lines = [
    "#include <stdio.h>",
    "#include <stddef.h>",
    "#include <infiniband/verbs.h>",
    "int main(void) {",
  ];
  for (const l of LAYOUTS) {
    lines.push(`  printf("S|${l.c}|%zu\\n", sizeof(${l.c}));`);
    for (const name of Object.keys(l.fields)) {
      lines.push(
        `  printf("F|${l.c}|${name}|%zu|%zu\\n", offsetof(${l.c}, ${name}), sizeof(((${l.c} *)0)->${name}));`,
      );
    }
  }
  for (const name of Object.keys(IBV)) {
    lines.push(`  printf("K|${name}|%lld\\n", (long long)(${name}));`);
  }
  lines.push("  return 0;", "}", "");
  return lines.join("\n");
}

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

Deno.test("verbs.ts layouts and constants match the installed verbs.h", async () => {
  const dir = await Deno.makeTempDir({ prefix: "remora-verbs-" });
  try {
    await Deno.writeTextFile(`${dir}/layout.c`, generateC());
    await run("gcc", ["-Wall", "-Werror", "-o", `${dir}/layout`, `${dir}/layout.c`]);
    const out = await run(`${dir}/layout`, []);
    const wrong: string[] = [];
    let checked = 0;
    for (const line of out.trim().split("\n")) {
      const p = line.split("|");
      checked++;
      if (p[0] === "S") {
        const l = LAYOUTS.find((x) => x.c === p[1])!;
        if (l.size !== Number(p[2])) wrong.push(`sizeof(${p[1]}) is ${p[2]}, table says ${l.size}`);
      } else if (p[0] === "F") {
        const l = LAYOUTS.find((x) => x.c === p[1])!;
        const [off, size] = l.fields[p[2]];
        if (off !== Number(p[3]) || size !== Number(p[4])) {
          wrong.push(`${p[1]}.${p[2]} is [${p[3]}, ${p[4]}], table says [${off}, ${size}]`);
        }
      } else {
        const ts = (IBV as Record<string, number>)[p[1]];
        if (ts !== Number(p[2])) wrong.push(`${p[1]} is ${p[2]}, table says ${ts}`);
      }
    }
    const expected = LAYOUTS.reduce((n, l) => n + 1 + Object.keys(l.fields).length, 0) +
      Object.keys(IBV).length;
    assert.equal(checked, expected, "the C program printed fewer lines than the tables hold");
    assert.deepEqual(wrong, [], `layout mismatches:\n${wrong.join("\n")}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("every bound symbol is exported by libibverbs.so.1", async () => {
  const path = (await run("sh", ["-c", `ldconfig -p | awk '/${VERBS_LIBRARY}/{print $NF; exit}'`]))
    .trim();
  assert.ok(path !== "", `${VERBS_LIBRARY} not found by ldconfig`);
  const nm = await run("nm", ["-D", "--defined-only", path]);
  // `name@@VERSION` is the default version dlsym returns.
  const defaults = new Set(
    nm.split("\n").map((l) => l.split(" ").pop() ?? "").filter((s) => s.includes("@@"))
      .map((s) => s.split("@@")[0]),
  );
  const missing = Object.keys(VERBS_SYMBOLS).filter((s) => !defaults.has(s));
  assert.deepEqual(missing, [], `symbols missing from ${path}`);
  // And the real loader agrees (dlopen fails if any symbol is absent).
  const lib = Deno.dlopen(VERBS_LIBRARY, VERBS_SYMBOLS);
  lib.close();
});
