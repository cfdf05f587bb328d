import assert from "node:assert/strict";
import { logger, quote, QUOTE_MAX_CHARS, setLogSink } from "./log.ts";

Deno.test("quote() escapes every character that could break or forge a log line", () => {
  assert.equal(quote("plain"), '"plain"');
  assert.equal(
    quote('a\nI1206 forged] x\r"\\\t\x1b[31m\x7f\u0085\u2028\u202e'),
    '"a\\nI1206 forged] x\\r\\"\\\\\\t\\u001b[31m\\u007f\\u0085\\u2028\\u202e"',
  );
  assert.equal(quote("\ud800"), '"\\ud800"');
});

Deno.test("quote() cuts a long string and states its full length in bytes", () => {
  const big = "é".repeat(102_400); // 204800 bytes
  const q = quote(big);
  assert.equal(q, `"${"é".repeat(QUOTE_MAX_CHARS)}…" (204800 bytes)`);
  assert.equal(quote("x".repeat(QUOTE_MAX_CHARS)).length, QUOTE_MAX_CHARS + 2);
  assert.equal(quote("abcdef", 3), '"abc…" (6 bytes)');
});

Deno.test("quote() shows a non-string as its JSON, escaped once", () => {
  assert.equal(quote(["a\nb", 'q"']), '["a\\nb","q\\""]');
  assert.equal(quote(7), "7");
  assert.equal(quote(undefined), "undefined");
  assert.equal(quote({ k: "\u2028" }), '{"k":"\\u2028"}');
  assert.equal(quote(["abcdef"], 4), '["ab… (10 bytes)');
});

Deno.test("A quoted peer string in a log message stays on its one line", () => {
  const lines: string[] = [];
  const prev = setLogSink((l) => lines.push(l));
  try {
    logger("test").warn(
      `Skipping ${quote("k\nE1206 00:00:00.0 1 kube] owned")}`,
    );
  } finally {
    setLogSink(prev);
  }
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.split("\n").length, 1);
  assert.match(lines[0]!, /Skipping "k\\nE1206 00:00:00\.0 1 kube\] owned"$/);
});
