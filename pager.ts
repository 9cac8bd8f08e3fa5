/**
 * remora command line: `pager.ts [options] --pid N`, `pager.ts [options] -- cmd...`,
 * and the subcommands `peer`, `status`, `resize`, `detach`.
 *
 * @module
 */
// Placeholder entry point; the attach command lands with the core pager.
if (import.meta.main) {
  console.error("remora: not built yet");
  Deno.exit(2);
}
