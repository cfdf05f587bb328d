import assert from "node:assert/strict";
import { BodyTooLarge, forEachChunk, readBody } from "./_body.ts";
import { FakeApi } from "./_fake_api.ts";
import { KubeApiError, MAX_OBJECT_BYTES } from "./client.ts";
import { setLogSink } from "../../lib/log.ts";

setLogSink(() => {});

/** An endless body of 1 KiB chunks that records pulls and its cancel. */
function endless(bytes: boolean) {
  const seen = { pulls: 0, cancelled: false, reason: undefined as unknown };
  const chunk = new Uint8Array(1024).fill(0x78);
  const source = {
    pull(ctl: ReadableStreamDefaultController<Uint8Array>) {
      seen.pulls++;
      ctl.enqueue(chunk.slice());
    },
    cancel(reason: unknown) {
      seen.cancelled = true;
      seen.reason = reason;
    },
  };
  const body = bytes
    ? new ReadableStream<Uint8Array>({ ...source, type: "bytes" } as never)
    : new ReadableStream<Uint8Array>(source);
  return { body, seen };
}

for (const bytes of [true, false]) {
  const kind = bytes ? "a byte stream" : "a plain stream";
  Deno.test(`forEachChunk cancels ${kind} when the callback throws`, async () => {
    const { body, seen } = endless(bytes);
    const boom = new Error("over the limit");
    let n = 0;
    const err = await forEachChunk(body, () => {
      if (++n === 3) throw boom;
    }).catch((e) => e);
    assert.equal(err, boom);
    assert.equal(seen.reason, boom);
    // Nothing keeps reading what nobody will use.
    const pulls = seen.pulls;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(seen.pulls, pulls);
  });
}

Deno.test("readBody returns a body within its limit", async () => {
  const body = new Blob(["ab", "cd"]).stream();
  assert.equal(new TextDecoder().decode(await readBody(body, 4, "x")), "abcd");
  assert.equal((await readBody(null, 4, "x")).byteLength, 0);
});

Deno.test("readBody refuses and cancels an endless body, naming it", async () => {
  const { body, seen } = endless(true);
  const err = await readBody(body, 10_000, "GET /api/v1/nodes/a").catch((
    e,
  ) => e);
  assert.ok(err instanceof BodyTooLarge);
  assert.match(err.message, /GET \/api\/v1\/nodes\/a: body larger than 10000/);
  assert.ok(seen.cancelled);
});

Deno.test("KubeClient refuses a Node answer larger than an object can be", async () => {
  const { body, seen } = endless(true);
  const api = new FakeApi(() =>
    new Response(body, { headers: { "content-type": "application/json" } })
  );
  const err = await api.client().getJson("/api/v1/nodes/a").catch((e) => e);
  assert.ok(err instanceof BodyTooLarge, String(err));
  assert.ok(seen.pulls * 1024 <= MAX_OBJECT_BYTES + 2 * 1024);
  assert.ok(seen.cancelled);
});

Deno.test("KubeClient keeps a 500's status line when its body is endless", async () => {
  const { body, seen } = endless(true);
  const api = new FakeApi(() => new Response(body, { status: 500 }));
  const err = await api.client().getJson("/api/v1/nodes/a").catch((e) => e);
  assert.ok(err instanceof KubeApiError, String(err));
  assert.equal(err.status, 500);
  assert.ok(seen.cancelled);
});
