import assert from "node:assert/strict";
import { countAbortListeners } from "./listeners.ts";
import { sleep } from "./retry.ts";

Deno.test("countAbortListeners() follows listeners added and removed, and clears on abort", async () => {
  const ac = new AbortController();
  const count = countAbortListeners(ac.signal);
  const a = () => {};
  ac.signal.addEventListener("abort", a);
  ac.signal.addEventListener("other", a);
  assert.equal(count(), 1);
  for (let i = 0; i < 20; i++) await sleep(0, ac.signal);
  assert.equal(count(), 1, "sleep() leaves no listener behind");
  ac.signal.removeEventListener("abort", a);
  assert.equal(count(), 0);
  ac.signal.addEventListener("abort", () => {});
  ac.abort();
  assert.equal(count(), 0);
});
