import assert from "node:assert/strict";
import { NdjsonDecoder } from "./ndjson.ts";

const enc = new TextEncoder();

function values(d: NdjsonDecoder, chunk: Uint8Array): unknown[] {
  return d.push(chunk).map((r) => {
    assert.ok(r.ok, r.ok ? "" : r.reason);
    return r.value;
  });
}

Deno.test("NdjsonDecoder yields nothing until a line is complete", () => {
  const d = new NdjsonDecoder();
  assert.deepEqual(values(d, enc.encode('{"result":{"hea')), []);
  assert.deepEqual(values(d, enc.encode('der":1}}')), []);
  assert.deepEqual(values(d, enc.encode("\n")), [{ result: { header: 1 } }]);
  assert.equal(d.pending, "");
});

Deno.test("NdjsonDecoder splits a chunk carrying several lines", () => {
  const d = new NdjsonDecoder();
  assert.deepEqual(values(d, enc.encode('{"a":1}\n{"a":2}\r\n\n{"a":')), [
    { a: 1 },
    { a: 2 },
  ]);
  assert.deepEqual(values(d, enc.encode("3}\n")), [{ a: 3 }]);
});

Deno.test("NdjsonDecoder survives a UTF-8 character split across chunks", () => {
  const bytes = enc.encode('{"k":"é✓"}\n');
  // Cut inside every position, including inside the multi-byte characters.
  for (let cut = 1; cut < bytes.length; cut++) {
    const d = new NdjsonDecoder();
    const out = [
      ...values(d, bytes.subarray(0, cut)),
      ...values(d, bytes.subarray(cut)),
    ];
    assert.deepEqual(out, [{ k: "é✓" }], `cut at ${cut}`);
  }
});

Deno.test("NdjsonDecoder byte by byte gives the same messages", () => {
  const text = '{"result":{"events":[{"kv":{"key":"L2EveA=="}}]}}\n' +
    '{"result":{"canceled":true,"compact_revision":"4"}}\n';
  const d = new NdjsonDecoder();
  const out: unknown[] = [];
  for (const b of enc.encode(text)) out.push(...values(d, new Uint8Array([b])));
  assert.deepEqual(out, [
    { result: { events: [{ kv: { key: "L2EveA==" } }] } },
    { result: { canceled: true, compact_revision: "4" } },
  ]);
});

Deno.test("NdjsonDecoder reports a line that is not JSON and carries on", () => {
  const d = new NdjsonDecoder();
  const out = d.push(enc.encode('oops\n{"a":1}\n'));
  assert.equal(out.length, 2);
  assert.equal(out[0]!.ok, false);
  assert.match(
    out[0]!.ok ? "" : out[0]!.reason,
    /Cannot parse stream line "oops"/,
  );
  assert.deepEqual(out[1], { ok: true, value: { a: 1 } });
});
