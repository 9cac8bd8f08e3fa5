/**
 * Stand-alone entry point of the peer daemon, equivalent to `pager.ts peer`:
 * `deno run --allow-net --allow-read --allow-ffi transport/peer/main.ts --listen 127.0.0.1:0 ...`.
 * It imports nothing that needs FFI, so it runs with network and read rights only.
 *
 * @module
 */

import { peerCommand } from "./cli.ts";

Deno.exit(await peerCommand(Deno.args));
