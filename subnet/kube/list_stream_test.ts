import assert from "node:assert/strict";
import { ListSplitter, OversizedItem } from "./list_stream.ts";

const doc = {
  kind: "NodeList",
  apiVersion: "v1",
  metadata: {
    resourceVersion: "4711",
    continue: "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
  },
  items: [
    {
      metadata: {
        name: "a",
        annotations: {
          tricky: 'x"}],{[\\"items\\":[',
          "ends-in-backslash": "C:\\",
          "\\": '\\\\"',
        },
      },
      spec: { podCIDRs: ["10.244.1.0/24"] },
    },
    {
      metadata: { name: "ノード-ü" },
      status: { images: [{ names: ["€".repeat(50)] }] },
    },
    {
      metadata: { name: "c", labels: { items: "[]" } },
      list: [[1, 2], [], {}],
    },
  ],
};

function split(
  chunks: Uint8Array[],
  drop?: string,
): { items: unknown[]; rest: unknown } {
  const s = new ListSplitter(drop === undefined ? {} : { drop });
  const items: unknown[] = [];
  for (const c of chunks) items.push(...s.push(c));
  return { items, rest: s.finish() };
}

const bytes = (v: unknown, space?: number) =>
  new TextEncoder().encode(JSON.stringify(v, null, space));

Deno.test("ListSplitter yields each item whatever the chunk boundaries", () => {
  const rest = { ...doc, items: [] };
  for (const space of [undefined, 2]) {
    const body = bytes(doc, space);
    for (let cut = 0; cut <= body.length; cut++) {
      const out = split([body.subarray(0, cut), body.subarray(cut)]);
      assert.deepEqual(out.items, doc.items);
      assert.deepEqual(out.rest, rest);
    }
    assert.deepEqual(
      split([...body].map((b) => new Uint8Array([b]))).items,
      doc.items,
    );
  }
});

Deno.test("ListSplitter returns items as soon as they are complete", () => {
  const body = bytes(doc);
  const firstEnd = new TextEncoder().encode(
    JSON.stringify(doc).split(',{"metadata":{"name":"ノード')[0],
  ).length;
  const s = new ListSplitter();
  assert.equal(s.push(body.subarray(0, firstEnd - 1)).length, 0);
  assert.deepEqual(s.push(body.subarray(firstEnd - 1, firstEnd)), [
    doc.items[0],
  ]);
  assert.equal(s.count, 1);
});

Deno.test("ListSplitter handles metadata after items, empty and null items", () => {
  const late = { items: [{ a: 1 }], metadata: { resourceVersion: "9" } };
  assert.deepEqual(split([bytes(late)]), {
    items: [{ a: 1 }],
    rest: { items: [], metadata: { resourceVersion: "9" } },
  });
  assert.deepEqual(split([bytes({ items: [] })]), {
    items: [],
    rest: { items: [] },
  });
  assert.deepEqual(split([bytes({ items: null })]), {
    items: [],
    rest: { items: null },
  });
});

Deno.test("ListSplitter refuses a truncated body and scalar items", () => {
  const body = bytes(doc);
  const s = new ListSplitter();
  s.push(body.subarray(0, 100));
  assert.throws(() => s.finish(), /the body ended early \(after 0 items\)/);
  assert.throws(
    () => new ListSplitter().push(new TextEncoder().encode('{"items":[1]}')),
    /item 0 is not an object/,
  );
});

Deno.test("ListSplitter stops at a huge line outside the items, and passes over a huge item (named when it can) to go on with the list", () => {
  const enc = new TextEncoder();
  const s = new ListSplitter({ maxRest: 1024, maxItem: 4096 });
  s.push(enc.encode('{"kind":"NodeList","result":"'));
  assert.throws(
    () => s.push(enc.encode("x".repeat(2048))),
    /more than 1024 bytes outside its items/,
  );
  const t = new ListSplitter({ maxRest: 1024, maxItem: 4096, drop: "status" });
  const out: unknown[] = [];
  out.push(...t.push(enc.encode('{"items":[{"metadata":{"name":"n1"}},')));
  out.push(...t.push(enc.encode('{"metadata":{"name":"big","x":"')));
  for (let i = 0; i < 10; i++) {
    out.push(...t.push(enc.encode("y".repeat(1000))));
  }
  out.push(...t.push(enc.encode('"}},{"a":"')));
  for (let i = 0; i < 10; i++) {
    out.push(...t.push(enc.encode("z".repeat(1000))));
  }
  out.push(
    ...t.push(
      enc.encode(
        '"},{"metadata":{"name":"n2"}}],"metadata":{"resourceVersion":"9"}}',
      ),
    ),
  );
  assert.equal(out.length, 4);
  assert.deepEqual(out[0], { metadata: { name: "n1" } });
  assert.ok(out[1] instanceof OversizedItem);
  assert.equal(out[1].name, "big");
  assert.equal(out[1].limit, 4096);
  // Whole lengths, however the body came in chunks.
  assert.equal(out[1].bytes, '{"metadata":{"name":"big","x":"'.length + 10003);
  assert.ok(out[2] instanceof OversizedItem && out[2].name === undefined);
  assert.equal(out[2].bytes, '{"a":"'.length + 10002);
  assert.deepEqual(out[3], { metadata: { name: "n2" } });
  assert.deepEqual(t.finish(), {
    items: [],
    metadata: { resourceVersion: "9" },
  });
});

Deno.test("ListSplitter replaces a dropped member's object value by null, whatever the chunk boundaries", () => {
  const withStatus = {
    ...doc,
    items: [
      ...doc.items,
      {
        metadata: { name: "d", status: { kept: "nested, not the item's" } },
        status: "a scalar is kept",
        spec: { podCIDR: "10.244.4.0/24" },
      },
      { status: [{ "status": 1 }, "}]"], spec: { after: true } },
    ],
  };
  const want = withStatus.items.map((item) =>
    "status" in item && typeof item.status === "object"
      ? { ...item, status: null }
      : item
  );
  for (const space of [undefined, 2]) {
    const body = bytes(withStatus, space);
    for (let cut = 0; cut <= body.length; cut++) {
      const out = split([body.subarray(0, cut), body.subarray(cut)], "status");
      assert.deepEqual(out.items, want);
      assert.deepEqual(out.rest, { ...withStatus, items: [] });
    }
    assert.deepEqual(
      split([...body].map((b) => new Uint8Array([b])), "status").items,
      want,
    );
  }
});
