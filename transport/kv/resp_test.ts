/**
 * Unit tests of the RESP2 parser and encoder: every reply type, replies cut
 * at any byte (incomplete, never wrong), garbage and the other kind of store
 * refused, and the cluster hash slot against Redis's own reference values.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  crc16,
  encodeCommand,
  hashSlot,
  parseRedirect,
  parseResp,
  type Resp,
  RespError,
  respToJs,
} from "./resp.ts";

const te = new TextEncoder();
const bytes = (s: string) => te.encode(s);

/** Parses all of `text`; fails unless exactly one whole reply is there. */
function parseWhole(text: string): Resp {
  const b = bytes(text);
  const r = parseResp(b, 0, b.length);
  assert.ok(r !== undefined, `complete: ${JSON.stringify(text)}`);
  assert.equal(r.next, b.length);
  return r.value;
}

Deno.test("each RESP2 reply type parses", () => {
  assert.equal(parseWhole("+OK\r\n"), "OK");
  const err = parseWhole("-MOVED 3999 127.0.0.1:6381\r\n");
  assert.ok(err instanceof RespError);
  assert.equal(err.message, "MOVED 3999 127.0.0.1:6381");
  assert.equal(parseWhole(":1000\r\n"), 1000);
  assert.equal(parseWhole(":-42\r\n"), -42);
  assert.equal(parseWhole("$-1\r\n"), null);
  assert.equal(parseWhole("*-1\r\n"), null);
  assert.deepEqual(parseWhole("*0\r\n"), []);
  assert.deepEqual(respToJs(parseWhole("$5\r\nhello\r\n")), "hello");
  assert.deepEqual(respToJs(parseWhole("$0\r\n\r\n")), "");
  assert.deepEqual(
    respToJs(parseWhole("*3\r\n$3\r\nfoo\r\n:7\r\n*2\r\n+a\r\n$-1\r\n")),
    ["foo", 7, ["a", null]],
  );
});

Deno.test("a bulk string may hold CR, LF and any byte", () => {
  const payload = new Uint8Array([13, 10, 0, 255, 36, 13]);
  const wire = new Uint8Array([...bytes("$6\r\n"), ...payload, 13, 10]);
  const r = parseResp(wire, 0, wire.length);
  assert.deepEqual(r?.value, payload);
  assert.equal(r?.next, wire.length);
});

Deno.test("a reply cut at any byte is incomplete, then parses whole", () => {
  const replies = [
    "+OK\r\n",
    ":123\r\n",
    "-ERR wrong\r\n",
    "$5\r\nhello\r\n",
    "*2\r\n$3\r\nabc\r\n*1\r\n:9\r\n",
  ];
  for (const text of replies) {
    const b = bytes(text);
    for (let cut = 0; cut < b.length; cut++) {
      assert.equal(parseResp(b, 0, cut), undefined, `${JSON.stringify(text)} cut at ${cut}`);
    }
    assert.equal(parseResp(b, 0, b.length)?.next, b.length);
  }
});

Deno.test("pipelined replies parse one after the other from an offset", () => {
  const b = bytes("+OK\r\n:5\r\n$2\r\nhi\r\n");
  const got: unknown[] = [];
  for (let at = 0; at < b.length;) {
    const r = parseResp(b, at, b.length)!;
    got.push(respToJs(r.value));
    at = r.next;
  }
  assert.deepEqual(got, ["OK", 5, "hi"]);
});

Deno.test("malformed replies are refused, never guessed", () => {
  const bad = [
    "$5\r\nhelloXX", // bulk not followed by CRLF
    "$-2\r\n", // a null bulk is exactly $-1
    "*-5\r\n", // a null array is exactly *-1
    "$abc\r\n", // length not a number
    ":\r\n", // empty integer
    "+O\rK\r\n", // bare CR in a line
    "$12345678901234567\r\n", // absurd length
  ];
  for (const text of bad) {
    const b = bytes(text);
    assert.throws(() => parseResp(b, 0, b.length), Error, JSON.stringify(text));
  }
});

Deno.test("an unknown type byte is refused, naming a memcached server as such", () => {
  const memcached = bytes("ERROR\r\n");
  assert.throws(() => parseResp(memcached, 0, memcached.length), /memcached server, not Redis/);
  const garbage = bytes("\x00\x01junk\r\n");
  assert.throws(() => parseResp(garbage, 0, garbage.length), /unexpected RESP type byte 0x0/);
});

Deno.test("a line that never ends is refused once it is absurdly long", () => {
  const long = new Uint8Array(70_000).fill(65);
  long[0] = 43; // "+AAAA..." with no CRLF
  assert.equal(parseResp(long, 0, 1000), undefined, "short: still waiting");
  assert.throws(() => parseResp(long, 0, long.length), /too long/);
});

Deno.test("commands encode as arrays of bulk strings, bytes kept as they are", () => {
  const value = new Uint8Array([0, 13, 10, 255]);
  const wire = encodeCommand(["SET", "k", value]);
  const expected = new Uint8Array([
    ...bytes("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n"),
    ...value,
    13,
    10,
  ]);
  assert.deepEqual(wire, expected);
  // And the parser reads back what the encoder wrote.
  const r = parseResp(wire, 0, wire.length)!;
  assert.deepEqual(r.value, [bytes("SET"), bytes("k"), value]);
});

Deno.test("CRC16 and hash slots match Redis Cluster's reference values", () => {
  assert.equal(crc16(bytes("123456789")), 0x31c3); // the XMODEM check value in Redis's spec
  assert.equal(hashSlot(bytes("foo")), 12182);
  assert.equal(hashSlot(bytes("bar")), 5061);
  // Hash tags: only the part inside the first {...} counts, if not empty.
  assert.equal(hashSlot(bytes("{user1000}.following")), hashSlot(bytes("user1000")));
  assert.equal(hashSlot(bytes("foo{}{bar}")), crc16(bytes("foo{}{bar}")) & 16383);
  assert.equal(hashSlot(bytes("foo{{bar}}zap")), hashSlot(bytes("{bar")));
  assert.equal(hashSlot(bytes("foo{bar")), crc16(bytes("foo{bar")) & 16383, "no closing brace");
  // `len` limits the key to a prefix of the buffer.
  assert.equal(hashSlot(bytes("fooXYZ"), 3), hashSlot(bytes("foo")));
});

Deno.test("error replies are classified by their code; redirections are parsed", () => {
  assert.equal(new RespError("OOM command not allowed").code, "OOM");
  assert.equal(new RespError("CLUSTERDOWN").code, "CLUSTERDOWN");
  assert.deepEqual(parseRedirect(new RespError("MOVED 3999 127.0.0.1:6381")), {
    kind: "MOVED",
    slot: 3999,
    host: "127.0.0.1",
    port: 6381,
  });
  assert.deepEqual(parseRedirect(new RespError("ASK 12 [::1]:7000")), {
    kind: "ASK",
    slot: 12,
    host: "::1",
    port: 7000,
  });
  assert.equal(parseRedirect(new RespError("ERR MOVED elsewhere")), undefined);
  assert.throws(() => parseRedirect(new RespError("MOVED 12")), /bad redirection/);
});
