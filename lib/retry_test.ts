import assert from "node:assert/strict";
import { Backoff, parseRetryAfter, sleep } from "./retry.ts";

Deno.test("Backoff grows exponentially within [cap/2, cap] and resets", () => {
  let r = 0;
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => r });
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [
    50,
    100,
    200,
    400,
    500,
  ]);
  r = 0.999999;
  assert.equal(b.next(), 1000);
  b.reset();
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 100);
});

Deno.test("Backoff honours a longer Retry-After, capped at 10 minutes", () => {
  const b = new Backoff({ initialMs: 100, random: () => 0 });
  assert.equal(b.next(7000), 7000);
  assert.equal(b.next(10), 100);
  assert.equal(b.next(3_600_000), 600_000);
});

Deno.test("parseRetryAfter() reads seconds and HTTP dates", () => {
  const now = Date.parse("Sun, 22 Nov 2026 10:00:00 GMT");
  assert.equal(parseRetryAfter("5", now), 5000);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("Sun, 22 Nov 2026 10:00:30 GMT", now), 30_000);
  assert.equal(parseRetryAfter("Sun, 22 Nov 2026 09:00:00 GMT", now), 0);
  assert.equal(parseRetryAfter(null, now), undefined);
  assert.equal(parseRetryAfter("-1", now), undefined);
  assert.equal(parseRetryAfter("soon", now), undefined);
});

Deno.test("sleep() rejects with the abort reason", async () => {
  const c = new AbortController();
  const p = sleep(10_000, c.signal);
  c.abort(new Error("stop"));
  await assert.rejects(p, /stop/);
});

Deno.test("sleep() is not stretched by a wall-clock step backwards", async () => {
  const realNow = Date.now;
  let calls = 0;
  // The wall clock jumps an hour back right after the sleep starts.
  Date.now = () => realNow() - (calls++ === 0 ? 0 : 3_600_000);
  const ac = new AbortController();
  try {
    const done = await Promise.race([
      sleep(50, ac.signal).then(() => "slept"),
      new Promise((r) => setTimeout(() => r("stuck"), 1000)),
    ]);
    assert.equal(done, "slept");
  } finally {
    Date.now = realNow;
    ac.abort();
  }
});
