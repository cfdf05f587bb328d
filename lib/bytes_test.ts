import {
  deepStrictEqual as assertEquals,
  ok as assert,
} from "node:assert/strict";
import { concatBytes, readBounded } from "./bytes.ts";

Deno.test("readBounded() reads a stream whole up to the limit and stops past it", async () => {
  const chunks = (n: number, size: number) => {
    let sent = 0;
    let pulls = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        pulls++;
        if (sent >= n) return c.close();
        sent++;
        c.enqueue(new Uint8Array(size).fill(0x7b));
      },
    });
    return { stream, pulls: () => pulls };
  };
  const small = await readBounded(chunks(4, 1000).stream, 4000);
  assertEquals(small?.length, 4000);
  // An endless stdin is cut off just past the limit, not read to its end.
  const endless = chunks(1_000_000, 64 * 1024);
  assertEquals(await readBounded(endless.stream, 1 << 20), undefined);
  assert(endless.pulls() <= 18, `read ${endless.pulls()} chunks`);
});

Deno.test("concatBytes() joins parts in order", () => {
  const a = new Uint8Array([1, 2]);
  assertEquals(concatBytes([a]), a);
  assertEquals(
    [...concatBytes([a, new Uint8Array(), new Uint8Array([3])])],
    [1, 2, 3],
  );
});
