import assert from "node:assert/strict";
import { LineSplitter, parseJsonLine } from "./ndjson.ts";

const events = [
  { type: "ADDED", object: { metadata: { name: "a", resourceVersion: "1" } } },
  {
    type: "MODIFIED",
    object: { metadata: { name: "ünïcødé-ノード", resourceVersion: "2" } },
  },
  { type: "BOOKMARK", object: { metadata: { resourceVersion: "3" } } },
  {
    type: "DELETED",
    object: {
      metadata: { name: "a", resourceVersion: "4" },
      note: "€".repeat(300),
    },
  },
];
const body = new TextEncoder().encode(
  events.map((e) => JSON.stringify(e)).join("\n") + "\n",
);

function split(chunks: Uint8Array[]): unknown[] {
  const s = new LineSplitter();
  const out: unknown[] = [];
  for (const c of chunks) for (const l of s.push(c)) out.push(JSON.parse(l));
  for (const l of s.flush()) out.push(JSON.parse(l));
  return out;
}

Deno.test("LineSplitter yields whole events whatever the chunk boundaries", () => {
  // Every single cut point, including inside multi-byte characters.
  for (let cut = 0; cut <= body.length; cut++) {
    assert.deepEqual(
      split([body.subarray(0, cut), body.subarray(cut)]),
      events,
    );
  }
  // One byte at a time.
  assert.deepEqual(split([...body].map((b) => new Uint8Array([b]))), events);
  // Random chunk sizes.
  for (let round = 0; round < 200; round++) {
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < body.length;) {
      const n = 1 + Math.floor(Math.random() * 64);
      chunks.push(body.subarray(i, i + n));
      i += n;
    }
    assert.deepEqual(split(chunks), events);
  }
});

Deno.test("LineSplitter returns a last line without newline on flush only", () => {
  const s = new LineSplitter();
  assert.deepEqual(s.push(new TextEncoder().encode('{"a":1}\n\n{"b"')), [
    '{"a":1}',
  ]);
  assert.equal(s.pending, 4);
  assert.deepEqual(s.push(new TextEncoder().encode(":2}")), []);
  assert.deepEqual(s.flush(), ['{"b":2}']);
  assert.deepEqual(s.flush(), []);
});

Deno.test("LineSplitter refuses a line longer than its limit", () => {
  const s = new LineSplitter(10);
  assert.throws(
    () => s.push(new TextEncoder().encode("x".repeat(11))),
    /Watch line longer than 10 bytes/,
  );
});

Deno.test("parseJsonLine() reports a line that is not JSON, quoting it", () => {
  const s = new LineSplitter();
  const out = s.push(new TextEncoder().encode('oops\n{"a":1}\r\n')).map(
    parseJsonLine,
  );
  assert.equal(out.length, 2);
  assert.ok(
    !out[0]!.ok && /Cannot parse stream line "oops"/.test(out[0]!.reason),
  );
  assert.deepEqual(out[1], { ok: true, value: { a: 1 } });
});
