/**
 * The pager's control endpoint: Prometheus metrics, JSON stats, a live
 * dashboard, Server-Sent Events, and the resize/detach controls.
 *
 * It only ever talks to a {@linkcode PagerControl}; it knows nothing of
 * userfaultfd or backends, so it cannot stall a fault by itself.
 *
 * Security model: by default it listens on loopback only and needs no token.
 * Binding any other address requires a token, and once a token is set every
 * request must carry it (`Authorization: Bearer <token>`, or HTTP Basic with
 * the token as password so that a browser can open the dashboard). Without a
 * token, loopback requests are still checked for a loopback `Host` header
 * (DNS rebinding) and a same-origin `Origin` on POST (cross-site forms),
 * because any web page the user visits can send requests to 127.0.0.1.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { PagerControl, PagerStats } from "../pager/stats.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";
import { formatPrometheus, PROMETHEUS_CONTENT_TYPE } from "./metrics.ts";
import { parseBudget, parseSize } from "../pager/size.ts";

const log = getLogger(["remora", "http"]);

/** Port used when `--http` names no port. */
export const DEFAULT_HTTP_PORT = 9477;

/** Address used by the subcommands when `--http` is not given. */
export const DEFAULT_HTTP_ADDRESS = `127.0.0.1:${DEFAULT_HTTP_PORT}`;

/** How often `/events` pushes a stats snapshot, in milliseconds. */
export const EVENTS_INTERVAL_MS = 500;

/** Largest request body accepted; control requests are tiny JSON objects. */
const MAX_BODY_BYTES = 4096;

/** Where the control endpoint listens. */
export interface HttpAddress {
  /** Host name or IP literal (IPv6 without brackets). */
  hostname: string;
  /** TCP port; 0 asks the kernel for a free one. */
  port: number;
}

/** Options of {@linkcode serveControl}. */
export interface ServeControlOptions {
  /** Address to bind; `127.0.0.1` (loopback) is the safe default. */
  hostname: string;
  /** Port to bind; 0 picks a free port (see the returned `addr`). */
  port: number;
  /** Shared secret; mandatory for a non-loopback hostname, enforced on every request when set. */
  token?: string;
  /** Called once listening, with the actual address (useful with port 0). */
  onListen?(addr: HttpAddress): void;
}

/** A running control endpoint. */
export interface ControlServer {
  /**
   * Stops accepting connections, ends `/events` streams, and resolves once
   * in-flight responses are sent; so `await shutdown()` after a detach still
   * delivers the detach answer. Safe to call more than once.
   */
  shutdown(): Promise<void>;
  /** The bound address (the real port when 0 was asked). */
  addr: HttpAddress;
}

/**
 * True for names and literals that only reach this machine: `localhost`,
 * `127.0.0.0/8` and `::1`.
 *
 * @param hostname A host name or IP literal, IPv6 with or without brackets.
 */
export function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return m !== null && m.slice(1).every((o) => Number(o) <= 255);
}

/**
 * Parses `--http` values: `HOST:PORT`, `[v6]:PORT`, `:PORT`, `PORT`, `HOST`,
 * optionally prefixed with `http://`. Missing parts default to
 * `127.0.0.1` and {@linkcode DEFAULT_HTTP_PORT}.
 *
 * @param text The address as typed.
 * @returns Hostname (IPv6 without brackets) and port.
 * @throws {RangeError} With a one-line message meant for the user.
 */
export function parseHttpAddress(text: string): HttpAddress {
  let s = text.trim().replace(/^http:\/\//i, "").replace(/\/+$/, "");
  const bad = (why: string) =>
    new RangeError(
      `invalid --http address "${text}": ${why} (expected HOST:PORT, e.g. 127.0.0.1:9477)`,
    );
  if (s === "") throw bad("empty");
  let hostname = "127.0.0.1";
  let portText: string | undefined;
  const v6 = /^\[([0-9a-fA-F:.]+)\](?::(.*))?$/.exec(s);
  if (v6) {
    hostname = v6[1];
    portText = v6[2];
  } else if (/^\d+$/.test(s)) {
    portText = s;
  } else {
    if (s.startsWith(":")) s = "127.0.0.1" + s;
    const parts = s.split(":");
    if (parts.length > 2) throw bad("put an IPv6 address in brackets, e.g. [::1]:9477");
    hostname = parts[0];
    portText = parts[1];
    if (!/^[A-Za-z0-9.-]+$/.test(hostname)) throw bad("bad host name");
  }
  let port = DEFAULT_HTTP_PORT;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw bad("bad port");
    port = Number(portText);
  }
  return { hostname, port };
}

/**
 * The base URL of a control endpoint, e.g. `http://127.0.0.1:9477` or
 * `http://[::1]:9477`.
 *
 * @param addr Hostname and port.
 */
export function httpBase(addr: HttpAddress): string {
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return `http://${host}:${addr.port}`;
}

const encoder = new TextEncoder();

async function sha256(s: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(s)));
}

/**
 * Compares the presented secret to the expected digest in constant time.
 * Hashing first makes both sides 32 bytes, so neither the length nor the
 * position of the first differing byte leaks through timing.
 */
async function tokenMatches(presented: string, expected: Uint8Array): Promise<boolean> {
  const got = await sha256(presented);
  let diff = 0;
  for (let i = 0; i < expected.length; i++) diff |= got[i] ^ expected[i];
  return diff === 0;
}

/** The secret carried by `Authorization: Bearer x` or `Basic base64(user:x)`, if any. */
function presentedToken(req: Request): string | undefined {
  const auth = req.headers.get("authorization");
  if (!auth) return undefined;
  const m = /^(\w+)\s+(.+)$/.exec(auth.trim());
  if (!m) return undefined;
  const scheme = m[1].toLowerCase();
  if (scheme === "bearer") return m[2].trim();
  if (scheme === "basic") {
    try {
      const decoded = new TextDecoder().decode(
        Uint8Array.from(atob(m[2].trim()), (c) => c.charCodeAt(0)),
      );
      const colon = decoded.indexOf(":");
      return colon < 0 ? undefined : decoded.slice(colon + 1);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

const COMMON_HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
};

/** A one-line JSON body, as every answer of this endpoint is. */
function json(body: unknown, status = 200, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { ...COMMON_HEADERS, "content-type": "application/json", ...extra },
  });
}

function jsonError(status: number, message: string, extra: Record<string, string> = {}): Response {
  return json({ error: message.split("\n")[0] }, status, extra);
}

/** Reads a small body, refusing anything larger than {@linkcode MAX_BODY_BYTES}. */
async function readSmallBody(req: Request): Promise<string> {
  if (!req.body) return "";
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel();
      throw new HttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.length;
  }
  return new TextDecoder().decode(all);
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/**
 * Validates a `POST /resize` body: `{"bytes": N}` or `{"local": "16M"}`
 * (a number for `local` is bytes too). Returns the budget in bytes.
 */
function parseResizeBody(text: string): number {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'body is not JSON; send {"bytes": N} or {"local": "16M"}');
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'body must be an object: {"bytes": N} or {"local": "16M"}');
  }
  const o = body as Record<string, unknown>;
  const keys = Object.keys(o);
  const unknown = keys.filter((k) => k !== "bytes" && k !== "local");
  if (unknown.length) throw new HttpError(400, `unknown field "${unknown[0]}" in resize request`);
  if (("bytes" in o) === ("local" in o)) {
    throw new HttpError(400, 'give exactly one of "bytes" (a number) or "local" (e.g. "16M")');
  }
  let bytes: number;
  if ("bytes" in o) {
    if (typeof o.bytes !== "number" || !Number.isSafeInteger(o.bytes)) {
      throw new HttpError(400, '"bytes" must be a whole number of bytes');
    }
    bytes = o.bytes;
  } else if (typeof o.local === "number") {
    if (!Number.isSafeInteger(o.local)) {
      throw new HttpError(400, '"local" must be a size such as "16M" or a whole number of bytes');
    }
    bytes = o.local;
  } else if (typeof o.local === "string") {
    try {
      bytes = parseSize(o.local);
    } catch (e) {
      throw new HttpError(400, (e as Error).message);
    }
  } else {
    throw new HttpError(400, '"local" must be a size such as "16M"');
  }
  // The same check as --local and `pager.ts resize`: one answer everywhere.
  try {
    return parseBudget(bytes);
  } catch (e) {
    throw new HttpError(400, (e as Error).message);
  }
}

/**
 * Starts the control endpoint for `control`.
 *
 * @param control The running pager.
 * @param opts Where to listen and the optional token.
 * @returns A handle with the bound address and `shutdown()`.
 * @throws {Error} If a non-loopback hostname is given without a token, or the
 *   address cannot be bound (the message says which and what to do).
 *
 * @example
 * ```ts
 * const server = await serveControl(control, { hostname: "127.0.0.1", port: 9477 });
 * // ... at exit:
 * await server.shutdown();
 * ```
 */
export async function serveControl(
  control: PagerControl,
  opts: ServeControlOptions,
): Promise<ControlServer> {
  const hostname = opts.hostname || "127.0.0.1";
  const loopback = isLoopback(hostname);
  const token = opts.token === "" ? undefined : opts.token;
  if (!loopback && token === undefined) {
    throw new Error(
      `refusing to serve the control endpoint on ${hostname} without a token: anyone who can ` +
        `reach it could resize or detach the pager; pass --http-token, or bind 127.0.0.1`,
    );
  }
  const tokenDigest = token === undefined ? undefined : await sha256(token);

  /** Open `/events` streams, closed at shutdown: the server waits for every response to end. */
  const streams = new Set<() => void>();
  let detaching = false;

  const statsOr500 = (): PagerStats => {
    try {
      return control.stats();
    } catch (e) {
      throw new HttpError(500, `cannot read pager stats: ${(e as Error).message}`);
    }
  };

  const events = (): Response => {
    let timer: ReturnType<typeof setInterval> | undefined;
    let close = () => {};
    const body = new ReadableStream<Uint8Array>({
      start(ctrl) {
        const send = () => {
          try {
            ctrl.enqueue(encoder.encode(`data: ${JSON.stringify(control.stats())}\n\n`));
          } catch (e) {
            log.warn("stats for /events failed: {error}", { error: String(e) });
            close();
          }
        };
        close = () => {
          clearInterval(timer);
          streams.delete(close);
          try {
            ctrl.close();
          } catch { /* already closed or cancelled */ }
        };
        streams.add(close);
        ctrl.enqueue(encoder.encode(`retry: 2000\n\n`));
        send();
        timer = setInterval(send, EVENTS_INTERVAL_MS);
      },
      cancel() {
        clearInterval(timer);
        streams.delete(close);
      },
    });
    return new Response(body, {
      headers: { ...COMMON_HEADERS, "content-type": "text/event-stream" },
    });
  };

  const route = async (req: Request, url: URL): Promise<Response> => {
    const method = req.method === "HEAD" ? "GET" : req.method;
    const allow = (m: string) => {
      if (method !== m) {
        throw new HttpError(405, `${url.pathname} accepts ${m} only`);
      }
    };
    switch (url.pathname) {
      case "/":
        allow("GET");
        return new Response(DASHBOARD_HTML, {
          headers: {
            ...COMMON_HEADERS,
            "content-type": "text/html; charset=utf-8",
            // The page is self-contained; this makes the browser enforce it.
            "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; " +
              "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; " +
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
          },
        });
      case "/metrics":
        allow("GET");
        return new Response(formatPrometheus(statsOr500()), {
          headers: { ...COMMON_HEADERS, "content-type": PROMETHEUS_CONTENT_TYPE },
        });
      case "/stats":
        allow("GET");
        return json(statsOr500());
      case "/events":
        allow("GET");
        return events();
      case "/resize": {
        allow("POST");
        const bytes = parseResizeBody(await readSmallBody(req));
        if (detaching) throw new HttpError(409, "the pager is detaching");
        log.info("resize to {bytes} bytes requested over HTTP", { bytes });
        try {
          return json(await control.resize(bytes));
        } catch (e) {
          const status = e instanceof RangeError ? 400 : 500;
          throw new HttpError(status, `resize failed: ${(e as Error).message}`);
        }
      }
      case "/detach": {
        allow("POST");
        await readSmallBody(req);
        if (detaching) throw new HttpError(409, "a detach is already in progress");
        detaching = true;
        log.info("detach requested over HTTP");
        try {
          return json(await control.detach());
        } catch (e) {
          // Let a later request try again: the pager is still attached.
          detaching = false;
          throw new HttpError(500, `detach failed: ${(e as Error).message}`);
        }
      }
      default:
        throw new HttpError(404, `no such endpoint ${url.pathname}; try /, /stats or /metrics`);
    }
  };

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    try {
      if (tokenDigest) {
        const presented = presentedToken(req);
        if (presented === undefined || !(await tokenMatches(presented, tokenDigest))) {
          // Basic on the dashboard page lets a browser prompt for the token;
          // API clients get Bearer so that scripts are not shown a prompt.
          const challenge = url.pathname === "/"
            ? 'Basic realm="remora", charset="UTF-8"'
            : 'Bearer realm="remora"';
          return jsonError(
            401,
            presented === undefined
              ? "missing token: send Authorization: Bearer <token>"
              : "wrong token",
            { "www-authenticate": challenge },
          );
        }
      } else {
        const host = req.headers.get("host") ?? "";
        const hostName = host.replace(/:\d+$/, "");
        if (!isLoopback(hostName)) {
          return jsonError(403, `Host "${host}" is not a loopback name (DNS rebinding guard)`);
        }
      }
      const origin = req.headers.get("origin");
      if (req.method !== "GET" && req.method !== "HEAD" && origin !== null) {
        let same = false;
        try {
          same = new URL(origin).host === req.headers.get("host");
        } catch { /* "null" or garbage: not same-origin */ }
        if (!same) return jsonError(403, "cross-origin control request refused");
      }
      const res = await route(req, url);
      log.debug("{method} {path} -> {status}", {
        method: req.method,
        path: url.pathname,
        status: res.status,
      });
      if (req.method !== "HEAD") return res;
      // Cancel the unsent body: for /events that also stops its timer.
      await res.body?.cancel();
      return new Response(null, { status: res.status, headers: res.headers });
    } catch (e) {
      if (e instanceof HttpError) {
        const extra: Record<string, string> = {};
        if (e.status === 405) {
          extra.allow = ["/resize", "/detach"].includes(url.pathname) ? "POST" : "GET, HEAD";
        }
        if (e.status >= 500) log.warn("{path}: {error}", { path: url.pathname, error: e.message });
        return jsonError(e.status, e.message, extra);
      }
      log.error("{method} {path} failed: {error}", {
        method: req.method,
        path: url.pathname,
        error: String(e),
      });
      return jsonError(500, `internal error: ${(e as Error).message ?? e}`);
    }
  };

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname,
      port: opts.port,
      // Without onListen Deno prints "Listening on ..." to stdout, which
      // belongs to the target program's output.
      onListen: () => {},
    }, handler);
  } catch (e) {
    const why = e instanceof Deno.errors.AddrInUse
      ? "address already in use (another pager? pick another port with --http)"
      : (e as Error).message;
    throw new Error(`cannot listen on ${httpBase({ hostname, port: opts.port })}: ${why}`);
  }
  const addr: HttpAddress = { hostname: server.addr.hostname, port: server.addr.port };
  opts.onListen?.(addr);

  let stopping: Promise<void> | undefined;
  return {
    addr,
    shutdown(): Promise<void> {
      stopping ??= (async () => {
        for (const close of [...streams]) close();
        await server.shutdown();
      })();
      return stopping;
    },
  };
}
